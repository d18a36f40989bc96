"""The package version (one place: the wheel metadata reads it from here)."""
__version__ = "0.2.0"
