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


class NonFiniteResultError(SegExplainError, ValueError):
    """A model output, map or table holds NaN/Inf: the model (its weights or plans) made it."""


# ------------------------------------------------------------------- message text --
MESSAGE_MAX_CHARS = 600


def printable(text) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``, ``\\u202e`` ...), so a
    name taken from a file, a folder or a manifest cannot start a new line, move the cursor
    or colour the terminal when it is printed."""
    import unicodedata

    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch != "\u200d":
            out.append(ascii(ch)[1:-1])           # \n, \x1b, \u202e
        else:
            out.append(ch)
    return "".join(out)


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """One printable line for an exception: our own errors whole (their names escaped, so a
    newline inside a file name stays visible instead of forging a line), a library's error
    by its first line only (no pasted paragraphs), at most 600 characters. ``with_type``
    prefixes the error's class name (``KeyError: 'x'``)."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = repr(exc.args[0])
        with_type = True                     # a bare 'key' says nothing
    if not isinstance(exc, SegExplainError):
        text = text.splitlines()[0].strip() if text else ""
    if with_type or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = printable(text)
    if len(text) > MESSAGE_MAX_CHARS:
        text = text[:MESSAGE_MAX_CHARS - 1] + "…"
    return text
