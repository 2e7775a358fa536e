"""The bundle folder format (contract): 7z chunks, ``manifest.json``, ``SHA256SUMS``, ``README.txt``.

This module owns reading and writing that folder's metadata. Each chunk is a standalone 7z
archive; a file larger than a chunk is stored as parts named ``<path>.part-0001``, ... that are
concatenated in order on unpack.
"""

import hashlib
import io
import json
import re
import unicodedata
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .errors import IntegrityError
from .fsutil import atomic_write_bytes

SCHEMA = "amsrepomirror/bundle-manifest/1"
MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
README_NAME = "README.txt"
COMPRESSIONS = ("copy", "zstd", "lzma2")
CHUNK_SUFFIX = ".7z"
#: verify_bundle hashes this many chunks at a time (hashlib releases the GIL on large buffers).
HASH_THREADS = 2
HASH_BLOCK = 8 * 1024 * 1024


def part_member(path: str, index: int) -> str:
    """Archive member name of part ``index`` (1-based) of a split file."""
    return f"{path}.part-{index:04d}"


def chunk_name(version: str, index: int, count: int) -> str:
    """File name of chunk ``index`` (1-based) of ``count``; zero-padded so names sort in order."""
    return f"{version}-{index:0{max(4, len(str(count)))}d}{CHUNK_SUFFIX}"


def chunk_name_pattern(version: str) -> "re.Pattern[str]":
    """What :func:`chunk_name` gives for ``version`` (for ``fullmatch``): ASCII only."""
    return re.compile(re.escape(version) + r"-[0-9]{4,}" + re.escape(CHUNK_SUFFIX))


#: An AMS version as bundles carry it: AMS, then digits and dots (AMS2026.1).
VERSION_PATTERN = re.compile(r"AMS[0-9]+(?:\.[0-9]+)*")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
#: Names holding this, at any level of a tree, are the tool's own temporary files, never content.
RESERVED_PREFIX = ".amsrepomirror-"


def shown(text: str) -> str:
    """``text`` as it may appear in a one-line message: as it is when printable, else escaped."""
    return text if text.isprintable() else repr(text)


def path_problem(name) -> Optional[str]:
    """Why ``name`` is not an acceptable relative path in a bundle or a placed tree, or None.

    The one path check for bundle content (manifest paths, archive members, the tree on disk).
    UTF-8 names are fine; control and format characters, line separators, backslashes, absolute
    paths, drive letters, ``.``/``..``/empty segments and our reserved names are not.
    """
    if not isinstance(name, str):
        return "not a string"
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL byte in name"
    for ch in name:
        kind = unicodedata.category(ch)
        if kind.startswith("C") or kind in ("Zl", "Zp"):
            return f"control character {ch!r} in name"
    if "\\" in name:
        return "backslash in name"
    if name.startswith("/"):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "drive letter"
    for seg in name.split("/"):
        if seg == "":
            return "empty path segment"
        if seg in (".", ".."):
            return f"'{seg}' path segment"
        if RESERVED_PREFIX in seg:
            return f"reserved name {seg!r}"
    return None


@dataclass(frozen=True)
class Part:
    chunk: str   # chunk file name
    member: str  # member name inside that chunk
    offset: int  # byte offset of this part within the file
    size: int
    sha256: str


@dataclass(frozen=True)
class BundleFile:
    path: str
    size: int
    sha256: str
    parts: List[Part]  # one part (member == path) unless the file is split


@dataclass(frozen=True)
class Chunk:
    name: str
    size: int
    sha256: str
    members: List[str]  # sorted


@dataclass
class BundleManifest:
    version: str
    files: List[BundleFile]
    chunks: List[Chunk]
    compression: str = "copy"
    chunk_size: int = 0
    tool_version: str = ""
    created: str = ""
    mirror_manifest_sha256: str = ""
    base: Optional[str] = None  # room for delta bundles: sha256 of the manifest this one applies to
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        body = {
            "schema": SCHEMA,
            "version": self.version,
            "tool_version": self.tool_version,
            "created": self.created,
            "compression": self.compression,
            "chunk_size": self.chunk_size,
            "mirror_manifest_sha256": self.mirror_manifest_sha256,
            "base": self.base,
            "files": [asdict(f) for f in sorted(self.files, key=lambda f: f.path)],
            "chunks": [asdict(c) for c in sorted(self.chunks, key=lambda c: c.name)],
        }
        body.update(self.extra)
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    def write(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_json())

    @classmethod
    def read(cls, path: Path) -> "BundleManifest":
        """Read and check ``manifest.json``: IntegrityError naming the first bad field, its value escaped.

        Every string is checked before anything uses it in a path, a log line or a message.
        """
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"cannot read bundle manifest {path}: {exc}") from exc
        if not isinstance(body, dict) or body.get("schema") != SCHEMA:
            found = body.get("schema") if isinstance(body, dict) else body
            raise IntegrityError(f"{path} is not a bundle manifest of schema {SCHEMA} (found {_escaped(found)})")
        try:
            return _manifest_from(body)
        except IntegrityError as exc:
            raise IntegrityError(f"bad bundle manifest {path}: {exc}") from None


# --- checking manifest.json field by field --------------------------------------------------------

_REQUIRED = object()
Check = Callable[[object], Optional[str]]  # why a value is bad, or None


def _escaped(value) -> str:
    """A value from an untrusted manifest, escaped (repr) and cut short for a one-line message."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _field(record: dict, key: str, name: str, check: Check, default=_REQUIRED):
    """``record[key]`` after ``check``; IntegrityError naming the field ``name`` otherwise."""
    if key not in record:
        if default is _REQUIRED:
            raise IntegrityError(f"field {name} is missing")
        return default
    value = record[key]
    why = check(value)
    if why:
        raise IntegrityError(f"field {name} is {_escaped(value)}: {why}")
    return value


def _record(value, name: str, keys: set) -> dict:
    """A JSON object with exactly ``keys``."""
    if not isinstance(value, dict):
        raise IntegrityError(f"field {name} is {_escaped(value)}: not an object")
    if set(value) != keys:
        odd = sorted(set(value) ^ keys, key=str)
        raise IntegrityError(f"field {name} has keys {_escaped(sorted(value, key=str))}: expected {sorted(keys)} "
                             f"(differs in {_escaped(odd)})")
    return value


def _list_of(value) -> Optional[str]:
    return None if isinstance(value, list) else "not a list"


def _count(value) -> Optional[str]:
    return None if type(value) is int and value >= 0 else "not a whole number of at least 0"


def _matching(pattern: "re.Pattern[str]", expected: str, empty_ok: bool = False) -> Check:
    def check(value) -> Optional[str]:
        if isinstance(value, str) and ((empty_ok and value == "") or pattern.fullmatch(value)):
            return None
        return f"expected {expected}"
    return check


_is_version = _matching(VERSION_PATTERN, "AMS followed by digits and dots, e.g. AMS2026.1")
_is_sha256 = _matching(SHA256_PATTERN, "64 lowercase hex digits (sha256)")
_is_optional_sha256 = _matching(SHA256_PATTERN, "64 lowercase hex digits (sha256) or nothing", empty_ok=True)
_is_tool_version = _matching(re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}"), "a version like 0.1.0", empty_ok=True)
_is_created = _matching(re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"),
                        "a UTC time like 2026-01-31T12:00:00Z", empty_ok=True)


def _compression(value) -> Optional[str]:
    return None if value in COMPRESSIONS else f"expected one of {', '.join(COMPRESSIONS)}"


def _base(value) -> Optional[str]:
    return None if value is None else _is_sha256(value)


def _manifest_from(body: dict) -> BundleManifest:
    """The manifest in ``body`` (parsed JSON), every field checked; IntegrityError names the first bad one."""
    version = _field(body, "version", "version", _is_version)
    is_chunk = _matching(chunk_name_pattern(version), f"a chunk name like {chunk_name(version, 1, 1)}")
    files = []
    for i, raw in enumerate(_field(body, "files", "files", _list_of)):
        f = _record(raw, f"files[{i}]", {"path", "size", "sha256", "parts"})
        path = _field(f, "path", f"files[{i}].path", path_problem)
        of = f"of file {shown(path)}"
        parts = []
        for j, raw_part in enumerate(_field(f, "parts", f"parts {of}", _list_of)):
            p = _record(raw_part, f"parts[{j}] {of}", {"chunk", "member", "offset", "size", "sha256"})
            parts.append(Part(chunk=_field(p, "chunk", f"parts[{j}].chunk {of}", is_chunk),
                              member=_field(p, "member", f"parts[{j}].member {of}", path_problem),
                              offset=_field(p, "offset", f"parts[{j}].offset {of}", _count),
                              size=_field(p, "size", f"parts[{j}].size {of}", _count),
                              sha256=_field(p, "sha256", f"parts[{j}].sha256 {of}", _is_sha256)))
        if not parts:
            raise IntegrityError(f"field parts {of} is empty")
        files.append(BundleFile(path=path, size=_field(f, "size", f"size {of}", _count),
                                sha256=_field(f, "sha256", f"sha256 {of}", _is_sha256), parts=parts))
    chunks = []
    for i, raw in enumerate(_field(body, "chunks", "chunks", _list_of)):
        c = _record(raw, f"chunks[{i}]", {"name", "size", "sha256", "members"})
        name = _field(c, "name", f"chunks[{i}].name", is_chunk)
        of = f"of chunk {name}"
        members = _field(c, "members", f"members {of}", _list_of)
        for j, member in enumerate(members):
            why = path_problem(member)
            if why:
                raise IntegrityError(f"field members[{j}] {of} is {_escaped(member)}: {why}")
        chunks.append(Chunk(name=name, size=_field(c, "size", f"size {of}", _count),
                            sha256=_field(c, "sha256", f"sha256 {of}", _is_sha256), members=members))
    return BundleManifest(
        version=version,
        files=files,
        chunks=chunks,
        compression=_field(body, "compression", "compression", _compression, "copy"),
        chunk_size=_field(body, "chunk_size", "chunk_size", _count, 0),
        tool_version=_field(body, "tool_version", "tool_version", _is_tool_version, ""),
        created=_field(body, "created", "created", _is_created, ""),
        mirror_manifest_sha256=_field(body, "mirror_manifest_sha256", "mirror_manifest_sha256", _is_optional_sha256, ""),
        base=_field(body, "base", "base", _base, None),
    )


# --- README.txt, SHA256SUMS, finishing and verifying a bundle folder ------------------------------

_HEX = set("0123456789abcdef")


def _is_safe_name(name: str) -> bool:
    """A plain file name inside the bundle folder (no folders, not hidden, printable)."""
    return (
        bool(name)
        and name not in (".", "..")
        and not name.startswith(".")
        and not any(c in name for c in "/\\\n\r\x00")
    )


def readme_text(manifest: BundleManifest) -> str:
    """The bundle's README.txt: how to check and unpack it, with amsrepomirror or by hand."""
    import shlex

    from .units import format_size

    split = [f for f in sorted(manifest.files, key=lambda f: f.path) if len(f.parts) > 1]
    lines = [
        f"AMS package repository bundle {manifest.version}",
        "",
        f"{len(manifest.files)} files, {format_size(manifest.total_bytes)} ({manifest.total_bytes} bytes), "
        f"in {len(manifest.chunks)} chunks (standalone 7z archives, compression {manifest.compression}).",
    ]
    if manifest.created or manifest.tool_version:
        lines.append(f"Created {manifest.created or '?'} by amsrepomirror {manifest.tool_version or '?'}.")
    lines += [
        "",
        "This folder holds",
        "  *.7z           the chunks",
        f"  {MANIFEST_NAME:<14} every repository file: size, sha256, and which chunk(s) hold it",
        f"  {SUMS_NAME:<14} sha256 of every other file here. It is written last: if it is",
        "                 missing, the bundle is incomplete.",
        f"  {README_NAME:<14} this file",
        "",
        "Chunks may be spread over several USB sticks: first copy all of them into one folder.",
        "",
        "1. Check the copy (run in this folder):",
        f"     sha256sum -c {SUMS_NAME}",
        "   Every line must end in OK. A chunk that fails was damaged or cut short: copy it again.",
        "   Optionally test the archives too:   7z t '*.7z'   (7zz or 7za work as well)",
        "",
        "2. Unpack with amsrepomirror (recommended: checks every chunk and every file, refuses unsafe",
        "   paths, joins split files and only then puts the tree in place):",
        "     amsrepomirror unpack BUNDLE --amshome DIR",
        "   e.g. amsrepomirror unpack . --amshome \"$AMSHOME\"",
        "",
        "3. Or unpack by hand:",
        "     mkdir repository",
        "     7z x -orepository '*.7z'",
        "   (or one by one: for c in *.7z; do 7z x -orepository \"$c\" || break; done)",
    ]
    if split:
        lines += [
            "   Files bigger than a chunk are stored as parts PATH.part-0001, PATH.part-0002, ...;",
            "   join each in order and remove its parts (in the repository folder):",
            "     cd repository",
        ]
        for f in split:
            stem = shlex.quote(f.path + ".part-")
            lines.append(f"     cat {stem}* > {shlex.quote(f.path)} && rm {stem}*")
        lines.append("   (on Windows: copy /b \"P.part-0001\" + \"P.part-0002\" + ... \"P\")")
    else:
        lines.append("   No file in this bundle is split into parts.")
    lines += [
        f"   Each file's size and sha256 are in {MANIFEST_NAME}. Then place the folder as",
        "   $AMSHOME/repository (move an existing one aside first):",
        "     mv \"$AMSHOME/repository\" \"$AMSHOME/repository.old\"",
        "     mv repository \"$AMSHOME/repository\"",
    ]
    if manifest.compression == "zstd":
        lines += [
            "",
            "NOTE: these chunks use zstd compression, which stock 7-Zip cannot unpack. Use",
            "amsrepomirror unpack, or a 7-Zip build with zstd support (e.g. 7-Zip-zstd).",
        ]
    return "\n".join(lines) + "\n"


def _hash_file(path: Path) -> str:
    from .hashing import sha256_file

    return sha256_file(path)


def _sha256_chunk(path: Path) -> str:
    """Hex SHA-256 of a (large) file: big reads into one reused buffer, so a hashing thread
    spends its time in hashlib and the kernel, outside the GIL."""
    hasher = hashlib.sha256()
    view = memoryview(bytearray(HASH_BLOCK))
    with io.FileIO(path, "rb") as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.hexdigest()


def write_sums(bundle_dir: Path, names, known: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Write ``SHA256SUMS`` (``<hex>  <name>``, sorted) for ``names`` in ``bundle_dir``.

    Files are hashed (streaming) unless their sha256 is given in ``known``. Returns the sums.
    """
    bundle_dir = Path(bundle_dir)
    known = known or {}
    sums: Dict[str, str] = {}
    for name in sorted(set(names)):
        if not _is_safe_name(name) or name == SUMS_NAME:
            raise ValueError(f"cannot list {name!r} in {SUMS_NAME}")
        sums[name] = known[name] if name in known else _hash_file(bundle_dir / name)
    body = "".join(f"{sums[name]}  {name}\n" for name in sorted(sums))
    atomic_write_bytes(bundle_dir / SUMS_NAME, body.encode("utf-8"))
    return sums


def read_sums(bundle_dir: Path) -> Dict[str, str]:
    """Parse ``SHA256SUMS`` into ``name -> hex``; IntegrityError if missing or malformed."""
    path = Path(bundle_dir) / SUMS_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing: the bundle is incomplete (it is written last)") from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read {path}: {exc}") from exc
    sums: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        if name.startswith((" ", "*")):
            name = name[1:]
        digest = digest.lower()
        if not sep or len(digest) != 64 or not set(digest) <= _HEX or not _is_safe_name(name):
            raise IntegrityError(f"{path} line {number} is malformed: {line[:80]!r}")
        if name in sums:
            raise IntegrityError(f"{path} lists {name} twice")
        sums[name] = digest
    return sums


def remove_partial_files(bundle_dir: Path) -> List[Path]:
    """Delete temp files a killed run may have left (``.<name>.<random>.tmp``); return them."""
    removed = []
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        return removed
    for p in sorted(bundle_dir.iterdir()):
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def finish_bundle(bundle_dir: Path, manifest: BundleManifest, *, rehash: bool = False) -> Dict[str, str]:
    """Write ``manifest.json``, ``README.txt`` and, last, ``SHA256SUMS``.

    Any old SHA256SUMS is removed first, so its presence always means a finished bundle. Each
    chunk must exist with its recorded size; its sha256 is taken from the manifest (computed from
    the finished file by ``write_chunk``) unless ``rehash``.
    """
    bundle_dir = Path(bundle_dir)
    sums_path = bundle_dir / SUMS_NAME
    if sums_path.exists():
        sums_path.unlink()
    for chunk in manifest.chunks:
        if not _is_safe_name(chunk.name) or chunk.name in (MANIFEST_NAME, SUMS_NAME, README_NAME):
            raise IntegrityError(f"bad chunk name {chunk.name!r} in bundle manifest")
        path = bundle_dir / chunk.name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"chunk {chunk.name} is missing from {bundle_dir}; re-run bundle") from None
        if size != chunk.size:
            raise IntegrityError(f"chunk {chunk.name} is {size} bytes, expected {chunk.size}; re-run bundle")
    manifest.write(bundle_dir / MANIFEST_NAME)
    atomic_write_bytes(bundle_dir / README_NAME, readme_text(manifest).encode("utf-8"))
    known = {} if rehash else {c.name: c.sha256 for c in manifest.chunks}
    names = [c.name for c in manifest.chunks] + [MANIFEST_NAME, README_NAME]
    return write_sums(bundle_dir, names, known)


@dataclass(frozen=True)
class Problem:
    name: str     # file in the bundle folder (a chunk, manifest.json, SHA256SUMS, README.txt)
    problem: str  # missing, truncated, wrong size, corrupt, unexpected, bad archive, ...
    detail: str = ""
    chunk: bool = False  # True when ``name`` is (or looks like) a chunk

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class VerifyReport:
    bundle_dir: Path
    problems: List[Problem] = field(default_factory=list)
    manifest: Optional[BundleManifest] = None
    chunks_checked: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_chunks(self) -> List[str]:
        """Chunks to copy again (missing, truncated, corrupt, ...); not the unexpected ones."""
        return sorted({p.name for p in self.problems if p.chunk and p.problem != "unexpected"})

    @property
    def unexpected_chunks(self) -> List[str]:
        return sorted({p.name for p in self.problems if p.chunk and p.problem == "unexpected"})

    def problem_of(self, name: str) -> List[str]:
        return [p.problem for p in self.problems if p.name == name]

    def message(self) -> str:
        """One line naming what is wrong and what to do."""
        if self.ok:
            return f"bundle {self.bundle_dir} is intact ({self.chunks_checked} chunks, {self.bytes_checked} bytes)"
        parts = []
        bad = self.bad_chunks
        if bad:
            why = {}
            for p in self.problems:
                if p.chunk and p.name in bad:
                    why.setdefault(p.name, p.problem)
            parts.append("re-copy these chunks: " + ", ".join(f"{n} ({why[n]})" for n in bad))
        if self.unexpected_chunks:
            parts.append("chunks not in manifest.json (remove them): " + ", ".join(self.unexpected_chunks))
        others = [str(p) for p in self.problems if not p.chunk]
        if others:
            parts.append("; ".join(others))
        return f"bundle {self.bundle_dir} failed verification: " + "; ".join(parts)

    def raise_for_problems(self) -> None:
        require_intact(self)


def require_intact(report: VerifyReport) -> VerifyReport:
    """Raise IntegrityError with a one-line message when the report has problems."""
    if not report.ok:
        raise IntegrityError(report.message())
    return report


def _check_manifest_consistency(manifest: BundleManifest) -> List[str]:
    """Problems inside manifest.json itself (parts vs chunks); a few at most."""
    issues = []
    chunks = {c.name: c for c in manifest.chunks}
    if len(chunks) != len(manifest.chunks):
        issues.append("a chunk is listed twice")
    referenced: Dict[str, set] = {name: set() for name in chunks}
    for f in manifest.files:
        pos, previous_chunk = 0, ""
        for p in sorted(f.parts, key=lambda p: p.offset):
            if p.offset != pos:
                issues.append(f"parts of {f.path} are not contiguous")
                break
            pos += p.size
            if p.chunk not in chunks:
                issues.append(f"{f.path} refers to chunk {p.chunk}, which is not listed")
                break
            if p.chunk <= previous_chunk:  # verify hashes a split file whole, chunk after chunk
                issues.append(f"parts of {f.path} are not in successive chunks")
                break
            previous_chunk = p.chunk
            referenced[p.chunk].add(p.member)
        else:
            if pos != f.size:
                issues.append(f"parts of {f.path} cover {pos} of {f.size} bytes")
        if len(issues) >= 3:
            return issues
    for name, chunk in chunks.items():
        if referenced[name] != set(chunk.members):
            issues.append(f"members of chunk {name} do not match the files' parts")
            if len(issues) >= 3:
                break
    return issues


class _ContentCheck:
    """What verify checks inside the chunks, in the one pass that decompresses them (name order).

    Per chunk: ``extract.check_members`` (unsafe names, links and special files, members not in
    the manifest or missing, declared sizes), as unpack does before it writes anything; then every
    member decompressed (CRCs) and hashed, to compare with the manifest's size and sha256. Each
    file is also hashed whole: a split file's parts are fed, in chunk order, to one hash that is
    compared with the file's sha256 at the end (what unpack checks after joining the parts).
    """

    def __init__(self, manifest: Optional[BundleManifest]):
        self.members: Dict[str, Dict[str, tuple]] = {}  # chunk name -> {member: (BundleFile, Part)}
        self.whole: Dict[str, list] = {}  # split file -> [its hash, bytes hashed]
        self.files = manifest.files if manifest is not None else []
        for f in self.files:
            for p in f.parts:
                self.members.setdefault(p.chunk, {})[p.member] = (f, p)
            if len(f.parts) > 1:
                self.whole[f.path] = [hashlib.sha256(), 0]

    def check(self, path: Path, chunk: Optional[Chunk]) -> List[Problem]:
        from .extract import check_members
        from .sevenzip import hash_members

        mine = self.members.get(path.name, {})
        if chunk is not None:
            try:
                check_members(path, chunk, {m: (p.size, p.sha256) for m, (_, p) in mine.items()})
            except IntegrityError as exc:
                self._forget(mine)
                return [Problem(path.name, "refused as unpack would refuse it", str(exc))]
        also = {}
        for m, (f, p) in mine.items():
            running = self.whole.get(f.path)
            if running is not None and running[1] == p.offset:
                also[m] = running[0]
                running[1] += p.size
            else:
                self.whole.pop(f.path, None)  # out of order: manifest inconsistent or an earlier chunk bad
        got, trouble = hash_members(path, also)
        if trouble is not None:
            self._forget(mine)
            return [Problem(path.name, "bad archive", trouble, chunk=True)]
        problems = []
        for m, (f, p) in sorted(mine.items()):
            size, digest = got.get(m, (0, "none: not decompressed"))
            wanted = {p.sha256.lower()} | ({f.sha256.lower()} if len(f.parts) == 1 else set())
            if size != p.size or wanted != {digest}:
                problems.append(Problem(path.name, f"member {m} does not match {MANIFEST_NAME}",
                                        f"{size} bytes, sha256 {digest}; the bundle itself is bad: build it again"))
        return problems

    def _forget(self, mine) -> None:
        """A chunk could not be read through: its split files cannot be hashed whole."""
        for f, _ in mine.values():
            self.whole.pop(f.path, None)

    def finish(self) -> List[Problem]:
        problems = []
        for f in self.files:
            running = self.whole.get(f.path)
            if running is not None and running[1] == f.size and running[0].hexdigest() != f.sha256.lower():
                problems.append(Problem(f.path, f"does not match {MANIFEST_NAME}",
                                        f"its {len(f.parts)} parts joined have sha256 {running[0].hexdigest()}; "
                                        "the bundle itself is bad: build it again"))
        return problems


def verify_bundle(bundle_dir: Path, *, test_archives: bool = True) -> VerifyReport:
    """Check a bundle folder; the report names every bad chunk and what is wrong with it.

    Checks: SHA256SUMS present and well-formed; manifest.json readable, consistent, and agreeing
    with SHA256SUMS; README.txt agrees with SHA256SUMS; every chunk present, of the right size
    ("truncated" when short) and sha256 ("corrupt"); no ``*.7z`` file that is not in the manifest
    ("unexpected"); and, with ``test_archives``, what the chunks hold (``_ContentCheck``): the
    member checks unpack applies, correct CRCs, and every member and every file with the size
    and sha256 the manifest lists. So a bundle that verifies is one that unpack accepts.

    Each chunk of the right size is read once to hash it (streaming, ``HASH_THREADS`` chunks at
    a time); with ``test_archives`` each intact chunk is then read a second time, to decompress
    and hash its members. The problems come in the order of the chunk names either way.
    """
    from .hashing import sha256_file

    bundle_dir = Path(bundle_dir)
    report = VerifyReport(bundle_dir=bundle_dir)
    add = report.problems.append

    if not bundle_dir.is_dir():
        add(Problem(str(bundle_dir), "missing", "not a folder"))
        return report

    sums: Optional[Dict[str, str]] = None
    try:
        sums = read_sums(bundle_dir)
    except IntegrityError as exc:
        missing = not (bundle_dir / SUMS_NAME).exists()
        add(Problem(SUMS_NAME, "missing" if missing else "corrupt",
                    "bundle incomplete: it is written last" if missing else str(exc)))

    manifest: Optional[BundleManifest] = None
    manifest_path = bundle_dir / MANIFEST_NAME
    if not manifest_path.exists():
        add(Problem(MANIFEST_NAME, "missing"))
    else:
        if sums is not None:
            actual = sha256_file(manifest_path)
            if sums.get(MANIFEST_NAME) != actual:
                add(Problem(MANIFEST_NAME, "corrupt", f"does not match {SUMS_NAME}"))
        try:
            manifest = BundleManifest.read(manifest_path)
        except IntegrityError as exc:
            add(Problem(MANIFEST_NAME, "unreadable", str(exc)))
    report.manifest = manifest

    readme_path = bundle_dir / README_NAME
    if not readme_path.exists():
        add(Problem(README_NAME, "missing"))
    elif sums is not None and sums.get(README_NAME) != sha256_file(readme_path):
        add(Problem(README_NAME, "corrupt", f"does not match {SUMS_NAME}"))

    # What the chunks should be: from the manifest, else (damaged manifest) from SHA256SUMS.
    expected: Dict[str, Optional[int]] = {}
    expected_sha: Dict[str, str] = {}
    chunks: Dict[str, Chunk] = {}
    if manifest is not None:
        for issue in _check_manifest_consistency(manifest):
            add(Problem(MANIFEST_NAME, "inconsistent", issue))
        for c in manifest.chunks:
            expected[c.name] = c.size
            expected_sha[c.name] = c.sha256
            chunks[c.name] = c
        if sums is not None:
            for c in manifest.chunks:
                if c.name not in sums:
                    add(Problem(c.name, f"not in {SUMS_NAME}", chunk=True))
                elif sums[c.name] != c.sha256:
                    add(Problem(c.name, f"{SUMS_NAME} disagrees with {MANIFEST_NAME}", chunk=True))
            for name in sorted(set(sums) - set(expected) - {MANIFEST_NAME, README_NAME}):
                add(Problem(name, f"listed in {SUMS_NAME} but not in {MANIFEST_NAME}", chunk=name.endswith(CHUNK_SUFFIX)))
    elif sums is not None:
        for name, digest in sums.items():
            if name not in (MANIFEST_NAME, README_NAME):
                expected[name] = None
                expected_sha[name] = digest

    # Sizes first (cheap); the chunks of the right size are hashed HASH_THREADS at a time while
    # the results are taken (and archives tested) in name order.
    hashing: Dict[str, "Future[str]"] = {}
    sizes: Dict[str, Optional[int]] = {}
    for name in sorted(expected):
        if not _is_safe_name(name) or name in (MANIFEST_NAME, SUMS_NAME, README_NAME):
            continue
        try:
            sizes[name] = (bundle_dir / name).stat().st_size
        except FileNotFoundError:
            sizes[name] = None
    content = _ContentCheck(manifest) if test_archives else None
    pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="amsrepomirror-verify")
    try:
        for name, size in sizes.items():
            want = expected[name]
            if size is not None and (want is None or size == want):
                hashing[name] = pool.submit(_sha256_chunk, bundle_dir / name)

        for name in sorted(expected):
            if not _is_safe_name(name) or name in (MANIFEST_NAME, SUMS_NAME, README_NAME):
                add(Problem(name, "unsafe chunk name", chunk=False))
                continue
            path = bundle_dir / name
            size = sizes[name]
            if size is None:
                add(Problem(name, "missing", chunk=True))
                continue
            want = expected[name]
            if want is not None and size < want:
                add(Problem(name, "truncated", f"{size} of {want} bytes", chunk=True))
                continue
            if want is not None and size > want:
                add(Problem(name, "wrong size", f"{size} bytes, expected {want}", chunk=True))
                continue
            digest = hashing[name].result()
            report.chunks_checked += 1
            report.bytes_checked += size
            if digest != expected_sha[name]:
                add(Problem(name, "corrupt", "sha256 differs", chunk=True))
                continue
            if content is not None:
                report.problems += content.check(path, chunks.get(name))
        if content is not None:
            report.problems += content.finish()
    finally:
        for future in hashing.values():
            future.cancel()
        pool.shutdown(wait=True)

    known_chunks = manifest is not None or sums is not None
    for path in sorted(bundle_dir.iterdir()) if known_chunks else []:
        if path.name.endswith(CHUNK_SUFFIX) and not path.name.startswith(".") and path.name not in expected:
            add(Problem(path.name, "unexpected", f"not in {MANIFEST_NAME}", chunk=True))
    return report
