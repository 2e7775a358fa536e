"""Listed files a mirror (and so a bundle) does not hold, and why: the words used everywhere.

The offline admin reads these to learn why ``amspackages`` cannot install a package: the online
account was not licensed for the file, or ``--platform`` left it out. The reasons are a fixed
vocabulary, so a manifest from a stick can only say one of them.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from amsrepomirror.util.paths import printable

#: At most this many lacking files are listed, one line each, then "… and N more".
MAX_LISTED = 20

_REASON = re.compile(r"not licensed \(HTTP (?:401|403)\)|platform [a-z0-9][a-z0-9_.-]{0,31} excluded")


@dataclass(frozen=True)
class Lacking:
    path: str  # relative to the repository root, as the listing names it
    reason: str  # one of the vocabulary: see unlicensed / excluded_by


def unlicensed(status: int) -> str:
    """The reason for a file the server refused the account (HTTP 401 or 403)."""
    return f"not licensed (HTTP {status})"


def excluded_by(platform: str) -> str:
    """The reason for a file ``--platform`` left out: it belongs to ``platform``."""
    return f"platform {platform.lower()} excluded"


def reason_problem(value) -> str | None:
    """Why ``value`` is not a reason of the vocabulary, or None."""
    if isinstance(value, str) and _REASON.fullmatch(value):
        return None
    return "expected 'not licensed (HTTP 401)', 'not licensed (HTTP 403)' or 'platform NAME excluded'"


def merged(lists: Iterable[Iterable[Lacking]], held: Iterable[str] = ()) -> list[Lacking]:
    """The lacking files of several trees, each path once (the first reason), none that ``held`` names."""
    held = set(held)
    out: dict[str, Lacking] = {}
    for entries in lists:
        for entry in entries:
            if entry.path not in held:
                out.setdefault(entry.path, entry)
    return sorted(out.values(), key=lambda e: e.path)


def describe(entries: list[Lacking], what: str) -> list[str]:
    """Lines saying how many listed files ``what`` lacks and which, with the reason (capped)."""
    if not entries:
        return []
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.reason] = counts.get(entry.reason, 0) + 1
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    lines = [f"{what} lacks {len(entries)} listed file(s) ({why}); amspackages cannot install packages that need them:"]
    lines += [f"  {printable(e.path)}  ({e.reason})" for e in entries[:MAX_LISTED]]
    if len(entries) > MAX_LISTED:
        lines.append(f"  … and {len(entries) - MAX_LISTED} more")
    return lines
