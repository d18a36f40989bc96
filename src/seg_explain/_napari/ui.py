"""Small things both docks need: notifications and a clean shutdown when the viewer closes."""
from __future__ import annotations

from typing import Callable

from qtpy.QtCore import QEvent, QObject


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


class _CloseWatcher(QObject):
    """Calls ``callback`` once when the watched window gets a Close event."""

    def __init__(self, callback: Callable[[], None], parent=None):
        super().__init__(parent)
        self.callback = callback
        self.done = False

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if not self.done and event.type() == QEvent.Type.Close:
            self.done = True
            try:
                self.callback()
            except Exception:  # noqa: BLE001 - closing must go on whatever happens
                pass
        return False


def on_viewer_close(viewer, callback: Callable[[], None], owner: QObject) -> None:
    """Run ``callback`` when ``viewer``'s window closes (before its widgets are deleted), so a
    dock can stop and join its worker threads; also when ``owner`` is destroyed."""
    try:
        win = viewer.window._qt_window  # noqa: SLF001 - napari has no public close hook
    except AttributeError:  # pragma: no cover - headless viewer
        win = None
    if win is not None:
        watcher = _CloseWatcher(callback, owner)
        win.installEventFilter(watcher)
        owner._close_watcher = watcher  # keep it alive with the dock


class ClosingDock:
    """Mixin for a dock QWidget that owns worker threads: :meth:`shutdown` (the subclass's
    ``_shutdown_workers`` plus disconnecting viewer events) runs once when the viewer window
    closes, when the dock is closed, and when napari removes the dock (its ×, or
    ``remove_dock_widget``: the widget is taken out of its QDockWidget without being closed)."""

    _closed = False
    _docked = False

    def watch_closing(self, viewer) -> None:
        on_viewer_close(viewer, self.shutdown, self)

    def _shutdown_workers(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for emitter, cb in getattr(self, "_viewer_hooks", []):
            try:
                emitter.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._shutdown_workers()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def event(self, ev) -> bool:
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.shutdown()
        return super().event(ev)

