"""Small things both docks need: notifications and a clean shutdown when the viewer closes
(without napari's private window attributes)."""
from __future__ import annotations

from collections.abc import Callable

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


class _ParentWatcher(QObject):
    """Calls ``callback`` when the watched widget gets a new parent."""

    def __init__(self, callback: Callable[[], None], parent=None):
        super().__init__(parent)
        self.callback = callback

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ParentChange:
            self.callback()
        return False


class ClosingDock:
    """Mixin for a dock QWidget that owns worker threads: :meth:`shutdown` (the subclass's
    ``_shutdown_workers`` plus disconnecting viewer events) runs once when the viewer window
    closes, when the dock is closed, and when napari removes the dock (its ×, or
    ``remove_dock_widget``: the widget is taken out of its QDockWidget without being closed)."""

    _closed = False
    _docked = False

    def start_jobs(self, viewer) -> None:
        """What a dock that runs jobs does first, on the GUI thread: the malloc tuning (before
        any worker thread has its own arena), the heavy imports (never in a worker, where they
        would race the main thread's), its job runner and its model picker."""
        from ..allocator import tune_allocator
        from .model_picker import ModelPicker
        from .workers import JobRunner, ensure_imports

        tune_allocator()
        ensure_imports()
        self.viewer = viewer
        self.runner = JobRunner()
        self.picker = ModelPicker()
        self.cache = self.picker.cache

    def wait_model(self, timeout_s: float = 60.0) -> bool:
        """Block (processing Qt events) until the picker's model is loaded; for scripts and tests."""
        import time

        from qtpy.QtWidgets import QApplication

        t0 = time.perf_counter()
        while self.picker.info is None and time.perf_counter() - t0 < timeout_s:
            QApplication.processEvents()
            time.sleep(0.01)
        return self.picker.info is not None

    def _shutdown_workers(self) -> None:
        """Stop and join the workers :meth:`start_jobs` made (docks stop their timers first)."""
        self.runner.shutdown()
        self.picker.shutdown()

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

    def _watch_main_window(self) -> None:
        """Watch the QMainWindow the dock lives in (found by walking up the parents; a dock
        being added may not be in it yet, so this runs again on the next parent change/show)."""
        from qtpy.QtWidgets import QMainWindow

        w, top = self.parent(), self
        while w is not None and not isinstance(w, QMainWindow):
            top, w = w, w.parent()
        if w is None:
            # not in the main window yet (napari wraps the widget in a QDockWidget first and
            # adds that later): look again when the topmost wrapper gets a parent. Only ids
            # are kept, never the wrappers (a reference would keep napari's viewer alive).
            if top is not self and id(top) != getattr(self, "_pending_top", None):
                self._pending_top = id(top)
                top.installEventFilter(_ParentWatcher(self._watch_main_window, self))
            return
        if id(w) != getattr(self, "_watched_window", None):
            self._watched_window = id(w)
            w.installEventFilter(_CloseWatcher(self.shutdown, self))   # owned by the dock (Qt parent)

    def event(self, ev) -> bool:
        t = ev.type()
        if t == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
                self._watch_main_window()
            elif self._docked:
                self.shutdown()
        elif t in (QEvent.Type.Show, QEvent.Type.Polish) and not self._closed:
            self._watch_main_window()
        return super().event(ev)

