"""Transitional alias: the Explain dock lives in :mod:`.explain_dock` (removed before release)."""
from .explain_dock import ExplainWidget  # noqa: F401
from .model_picker import BROWSE_DIR, BROWSE_FILE, sample_models, settings  # noqa: F401
from .ui import notify_error, notify_info  # noqa: F401
