"""Viewer-agnostic front-end logic: what a viewer shows and says, without a viewer.

Nothing here imports napari or Qt, so a napari dock and a 3D Slicer module read results the
same way (:mod:`seg_explain.frontend.reading`: legends in plain words, per-method display
defaults, colour-scale ticks, short layer names, why-not texts).
"""
