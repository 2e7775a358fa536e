"""amsrepomirror: mirror, bundle and unpack the SCM package repository."""

__version__ = "0.1.0"
