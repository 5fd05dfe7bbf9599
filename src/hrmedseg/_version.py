"""The package version (one place: pyproject reads it, modules import it from here)."""
__version__ = "0.1.0"
