"""The package version, in a module of its own so that any module can read it
without importing the package (and with it everything the package imports)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
