"""Viewer-agnostic front-end logic: what a viewer builds, shows and says, without a viewer.

Nothing here imports napari, Qt, magicgui or the CLI, so a napari dock and a 3D Slicer
module share it; functions take plain data (arrays, dicts, dataclasses), never widgets or
layers:

- :mod:`~seg_explain.frontend.reading` legends in plain words, per-method display defaults,
  colour-scale ticks, short names;
- :mod:`~seg_explain.frontend.requests` explain requests from plain inputs and the job that
  answers them; the entries of the object-valued parameter choosers (by parameter kind);
- :mod:`~seg_explain.frontend.results` result names and records, colour limits, display maps,
  outlines, result texts;
- :mod:`~seg_explain.frontend.evidence` the 3D view's evidence volumes and surfaces;
- :mod:`~seg_explain.frontend.agg2exp` Agg2Exp jobs and the data of a clicked cell;
- :mod:`~seg_explain.frontend.messages` one-line errors, why-not texts, cost lines;
- :mod:`~seg_explain.frontend.jobs` failures, the model cache, the model-loading job.
"""
