"""The napari wing of napari-seg-explain: the only package that imports napari or Qt.

Modules (each imported only when napari calls the command the manifest names):

- :mod:`.explain_dock`  Explain dock (image, model, class, RoI, method + parameters, cost, Explain/Cancel,
  legend, display helpers, 3D evidence surfaces)
- :mod:`.agg_dock`      Agg2Exp dock (heatmap + graph in a themed matplotlib canvas)
- :mod:`.model_picker`  the model chooser both docks use
- :mod:`.params`        parameter forms built from the method registry
- :mod:`.workers`       relays the core's jobs from napari thread workers (progress, cancel, shutdown)
- :mod:`.layers`        arrays <-> layers (geometry, transparent colormaps, outlines, display helpers)
- :mod:`.ui`            notifications and the docks' closing rule
- :mod:`.reader`, :mod:`.writer`, :mod:`.sample_data`, :mod:`.launch`
"""
