"""Errors a user can act on. Every public failure is a SegExplainError subclass
whose message is one line that says what was wrong and what to do."""


class SegExplainError(Exception):
    """Base class of all errors raised on bad input."""


class ImageLoadError(SegExplainError, OSError):
    """An image file is missing, unreadable or of an unsupported kind."""


class ModelLoadError(SegExplainError):
    """A model file/bundle is missing, corrupt, unsafe or inconsistent."""


class UnsafeConfigError(ModelLoadError):
    """A bundle config asks to run something outside the allow-list."""


class InputMismatchError(SegExplainError, ValueError):
    """An image, RoI, bank or target does not fit the model (shape, dims, channels)."""


class MethodError(SegExplainError, ValueError):
    """An explainer was asked for something it cannot do (unknown method, bad parameter)."""


class Cancelled(Exception):
    """A running computation was stopped by the user (not bad input, so not a SegExplainError)."""
