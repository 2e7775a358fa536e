"""The one timestamp format of manifests, receipts and run ids: UTC, to the second."""

import datetime


def utc_now() -> str:
    """Now as ``2026-11-27T12:00:00Z`` (manifests, snapshots, receipts)."""
    return _now().strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_stamp() -> str:
    """Now as ``20261127T120000``, for names that sort by time (run ids)."""
    return _now().strftime("%Y%m%dT%H%M%S")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
