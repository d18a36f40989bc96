"""One result on stage at a time (both docks).

- the selected result shows its colour bar, no other layer does (two colour bars drew on top
  of each other);
- a new result hides the previous ones (they stay in the layer list, one click away);
- label layers (prediction, RoI, atlas) are hidden, not dimmed, while a result is shown
  (dimmed labels still tinted the anatomy), and come back as they were when no result is
  visible any more; the RoI outline stays.
"""
from __future__ import annotations

from .layers import META_KEY


def _kind(layer) -> str | None:
    md = layer.metadata.get(META_KEY) if isinstance(getattr(layer, "metadata", None), dict) else None
    return (md or {}).get("kind")


def layer_key(layer) -> str:
    """A layer's identity that survives napari's proxy objects (the docks get a proxied viewer)."""
    return str(getattr(layer, "unique_id", None) or id(layer))


def result_layers(viewer) -> list:
    return [ly for ly in viewer.layers if _kind(ly) == "attribution"]


class ResultStage:
    """The display rules above for one viewer (each dock holds one)."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.hidden: dict[str, object] = {}      # label layer key -> the layer this stage hid

    def present(self, layer, keep=()) -> None:
        """``layer`` is the new result: the only visible result, selected, with the only colour
        bar; label layers hidden (``keep``: layers left alone, e.g. its RoI outline)."""
        for ly in result_layers(self.viewer):
            if layer_key(ly) != layer_key(layer):
                ly.visible = False
        layer.visible = True
        self.hide_labels(keep)
        self.select(layer)

    def select(self, layer) -> None:
        """The colour bar follows the selected result (other results' bars are hidden)."""
        if layer is None or _kind(layer) != "attribution":
            return
        key = layer_key(layer)       # the docks hold napari's proxies: compare identities, not objects
        for ly in result_layers(self.viewer):
            ly.colorbar.visible = layer_key(ly) == key

    def hide_labels(self, keep=()) -> None:
        keys = {layer_key(k) for k in keep}
        for ly in self.viewer.layers:
            if (ly.__class__.__name__ == "Labels" and layer_key(ly) not in keys and _kind(ly) != "roi_outline"
                    and ly.visible):
                ly.visible = False
                self.hidden[layer_key(ly)] = ly

    def release(self) -> None:
        """No result visible any more: the label layers this stage hid come back."""
        if any(ly.visible for ly in result_layers(self.viewer)):
            return
        for ly in self.viewer.layers:
            if layer_key(ly) in self.hidden:
                ly.visible = True
        self.hidden.clear()
