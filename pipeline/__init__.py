"""amsrepomirror: mirror, bundle and unpack the SCM package repository."""

__version__ = "0.2.0"
