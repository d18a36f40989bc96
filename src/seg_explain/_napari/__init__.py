"""The napari wing of napari-seg-explain: the only package that imports napari, Qt or magicgui.

Modules (each imported only when napari calls the command the manifest names):

- :mod:`.widget`      Explain dock (image, model, class, RoI, method + parameters, Explain/Cancel)
- :mod:`.agg_dock`    Agg2Exp dock (heatmap + graph in a themed matplotlib canvas)
- :mod:`.workers`     running the core's generators in napari thread workers (progress, cancel)
- :mod:`.layers`      arrays <-> layers (geometry, transparent diverging colormaps, outlines)
- :mod:`.reader`, :mod:`.writer`, :mod:`.sample_data`
"""
