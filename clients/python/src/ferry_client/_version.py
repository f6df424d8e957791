"""The distribution's version (pyproject.toml reads it here), also sent in the User-Agent header."""

__version__ = "0.1.0"
