"""SCM's listing: one absolute URL per line, mapped onto repository paths.

The repository root is the URL folder that holds ``listings/``; the file at ``<root>/X`` is
stored at ``<mirror>/X``. Every URL is checked before anything is fetched, so a bad listing
never touches the mirror.
"""

import codecs
import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from re import Pattern
from urllib.parse import unquote_to_bytes, urlsplit

from amsrepomirror.errors import UsageError
from amsrepomirror.util.paths import VERSION_PATTERN, path_problem, tree_path_problems

log = logging.getLogger(__name__)
DEFAULT_LISTING_URL = "https://downloads.scm.com/Downloads/packages/listings/{version}.txt"


@dataclass(frozen=True)
class ListedFile:
    url: str
    path: str  # relative to the repository root, '/'-separated, never '..'


def listing_sha256(text: str) -> str:
    """The listing's content as a digest (part of a run's identity): the same text, the same digest."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def redact(url: str) -> str:
    """The URL without any ``user:password@`` part, safe for logs and manifests."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()


def listing_url_for(version: str, listing_url: str = "") -> str:
    """The listing URL to use: the given one, or SCM's for ``version``."""
    if not VERSION_PATTERN.fullmatch(version or ""):
        given = (version or "").strip()
        guess = given.upper() if given.upper().startswith("AMS") else f"AMS{given}"
        suggestion = guess if VERSION_PATTERN.fullmatch(guess) else ""
        raise UsageError(f"invalid version {version!r}: " + (f"did you mean --version {suggestion}?" if suggestion else
                                                              "expected AMS followed by digits and dots, e.g. AMS2026.1"))
    url = listing_url or DEFAULT_LISTING_URL.format(version=version)
    if "@" in urlsplit(url).netloc:
        raise UsageError("the listing URL must not carry a user or password: use SCM_USER/SCM_PASSWORD or ~/.netrc")
    return url


def repository_root(listing_url: str) -> str:
    """The URL folder that holds ``listings/`` (with a trailing slash)."""
    parts = urlsplit(listing_url)
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"listing URL must be http or https: {redact(listing_url)}")
    folder = posixpath.dirname(parts.path)
    if posixpath.basename(folder) != "listings":
        raise UsageError(
            f"cannot tell the repository root: the listing {redact(listing_url)} is not inside a 'listings/' folder"
        )
    root_path = posixpath.dirname(folder).rstrip("/") + "/"
    return parts._replace(path=root_path, query="", fragment="").geturl()


def _relative_path(url: str, root: str, lineno: int) -> str:
    where = f"listing line {lineno}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"{where}: refusing non-HTTP(S) URL {redact(url)!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"{where}: refusing URL with a query or fragment: {redact(url)}")
    root_parts = urlsplit(root)
    if (parts.scheme, parts.netloc.lower()) != (root_parts.scheme, root_parts.netloc.lower()) or not parts.path.startswith(
        root_parts.path
    ):
        raise UsageError(f"{where}: URL outside the repository root {redact(root)}: {redact(url)}")
    raw = parts.path[len(root_parts.path):]
    try:  # strict: unquote() would turn every undecodable escape into the same U+FFFD
        segments = [unquote_to_bytes(s).decode("utf-8") for s in raw.split("/")]
    except UnicodeDecodeError:
        raise UsageError(f"{where}: the path {raw!r} is not UTF-8 once percent-decoded") from None
    why = "an encoded '/' in a name" if any("/" in seg for seg in segments) else path_problem("/".join(segments))
    if why:
        raise UsageError(f"{where}: refusing unsafe path {raw!r} ({why}) in {redact(url)!r}")
    if WINDOWS and any(_bad_on_windows(seg) for seg in segments):
        raise UsageError(f"{where}: {raw!r} cannot be stored on Windows (reserved name or character)")
    return "/".join(segments)


WINDOWS = os.name == "nt"
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def _bad_on_windows(segment: str) -> bool:
    return (any(c in segment for c in '<>:"|?*') or segment.endswith((".", " "))
            or segment.split(".")[0].lower() in _WINDOWS_RESERVED)


def decode_listing(body: bytes, listing_url: str) -> str:
    """The listing's text, read as UTF-8 (BOM tolerated) whatever charset the server claims.

    A ``.txt`` file is typically served as ``text/plain`` without a charset, which HTTP clients
    then read as ISO-8859-1: a BOM and every non-ASCII name would come out wrong.
    """
    body = body.removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = body.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"listing line {lineno}: the listing {redact(listing_url)} is not UTF-8 text "
                         f"(byte 0x{body[exc.start]:02X})") from None


def parse_listing(text: str, listing_url: str) -> list[ListedFile]:
    """Parse listing text: tolerate blank lines, ``#`` comments and CRLF; drop duplicates; refuse unsafe URLs
    and a tree of paths that ``tree_path_problems`` refuses (its warnings are logged)."""
    root = repository_root(listing_url)
    seen: dict[str, ListedFile] = {}
    # Lines end at LF only (CR is stripped): splitlines() would also break at U+0085 or U+2028 inside a name.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = _relative_path(line, root, lineno)
        if path not in seen:
            seen[path] = ListedFile(url=line, path=path)
    if not seen:
        raise UsageError(f"the listing {redact(listing_url)} lists no files")
    tree = tree_path_problems(seen)
    if tree.problems:  # guard: listing-tree-rule
        raise UsageError(f"the listing {redact(listing_url)} cannot be mirrored: {tree.problems[0]}")
    for warning in tree.warnings[:3]:
        log.warning(f"the listing {redact(listing_url)}: {warning}")
    if len(tree.warnings) > 3:
        log.warning(f"the listing {redact(listing_url)} names {len(tree.warnings) - 3} more such pairs")
    return list(seen.values())


def compile_platform_rules(rules: Mapping[str, str]) -> dict[str, Pattern]:
    """Compile ``{platform: regex}``; a path belongs to the first platform whose regex it matches."""
    compiled = {}
    for name, pattern in rules.items():
        try:
            compiled[name.lower()] = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise UsageError(f"invalid platform rule for {name!r} in luigi.cfg [platforms]: {exc}") from exc
    return compiled


def platform_of(path: str, rules: Mapping[str, Pattern]) -> str | None:
    """The platform a path is built for, or None when it is platform-independent."""
    for name, pattern in rules.items():
        if pattern.search(path):
            return name
    return None


def select_platforms(files: Iterable[ListedFile], platforms: Sequence[str], rules: Mapping[str, Pattern]) -> list[ListedFile]:
    """Keep files of the given platforms plus platform-independent ones (all files when none given)."""
    wanted = {p.lower() for p in platforms}
    unknown = wanted - set(rules)
    if unknown:
        raise UsageError(
            f"unknown platform(s) {', '.join(sorted(unknown))}: known are {', '.join(sorted(rules))} (luigi.cfg [platforms])"
        )
    files = list(files)
    if not wanted:
        return files
    return [f for f in files if platform_of(f.path, rules) in wanted | {None}]


def excluded_platforms(files: Iterable[ListedFile], platforms: Sequence[str], rules: Mapping[str, Pattern]) -> dict[str, str]:
    """``{path: platform}`` of the files ``select_platforms`` leaves out: the platform rule that excluded each."""
    kept = {f.path for f in select_platforms(files, platforms, rules)}
    return {f.path: platform_of(f.path, rules) for f in files if f.path not in kept}
