"""The bundle folder's names and ``manifest.json`` (contract): read, written and validated here only.

``SHA256SUMS`` is owned by ``bundle.sums``, ``README.txt`` by ``pack.readme``. Each chunk is a standalone 7z
archive named by its content (``chunk_name``); the manifest's chunk list is the writing and unpacking
order. A file larger than a chunk is stored as parts named ``<path>.part-0001``, ... that are
concatenated in order on unpack.
"""

import functools
import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amsrepomirror import __version__
from amsrepomirror.config import LUIGI_FILES
from amsrepomirror.errors import IntegrityError
from amsrepomirror.util.fsutil import NotReadable, atomic_write_bytes, read_bounded
from amsrepomirror.util.jsonread import parse_json
from amsrepomirror.util.paths import VERSION_PATTERN, path_problem, printable, tree_path_problems
from amsrepomirror.util.skipped_files import Lacking, reason_problem

SCHEMA = "amsrepomirror/bundle-manifest/1"
#: The schema of a manifest with ``copies``: a tool that cannot place them refuses the bundle
#: instead of installing a tree without them.
SCHEMA_WITH_COPIES = "amsrepomirror/bundle-manifest/2"
# Schema 3: fields an older reader must not skip (docs/bundle-format.md); such manifests say which
# tool version reads them first (``requires_tool``), so a newer schema is refused with that version.
SCHEMA_3 = "amsrepomirror/bundle-manifest/3"
SCHEMA_3_SINCE = "0.2.0"
SCHEMAS = (SCHEMA, SCHEMA_WITH_COPIES, SCHEMA_3)
SCHEMA_FAMILY = re.compile(r"amsrepomirror/bundle-manifest/([1-9][0-9]{0,5})")
MANIFEST_NAME = "manifest.json"
MANIFEST_LIMIT = 2**30  # bytes: a manifest takes well under 1 KB per file
SUMS_NAME = "SHA256SUMS"
README_NAME = "README.txt"
#: The transfer report (``bundle.transfer_report`` owns its format): listed in the manifest's ``report``.
REPORT_JSON_NAME = "transfer-report.json"
REPORT_HTML_NAME = "TRANSFER-REPORT.html"
REPORT_NAMES = (REPORT_JSON_NAME, REPORT_HTML_NAME)
#: An OpenSSH SHA256 key fingerprint, as ``ssh-keygen -l`` prints it (the manifest's ``signer``).
FINGERPRINT_PATTERN = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
COMPRESSIONS = ("copy", "zstd", "lzma2")
CHUNK_SUFFIX = ".7z"
#: The folder of a bundle made with ``--with-tool``: wheels of amsrepomirror and install.sh (``pack.tool``).
TOOL_DIR = "tool"


def is_tool_path(name) -> bool:
    """A file of the bundle's tool folder (``tool/...``), a safe relative path."""
    return isinstance(name, str) and name.startswith(TOOL_DIR + "/") and path_problem(name) is None


#: What 7-Zip or an admin could take for a chunk (``looks_like_chunk``): ``*.7z`` in any case, hidden or not,
#: or a volume of one (``*.7z.001``).
_CHUNK_LIKE = re.compile(r".*\.7z(\.[0-9]+)?", re.IGNORECASE | re.DOTALL)


#: Settings files a command reads from the folder it runs in (Luigi's ./luigi.cfg and ./client.cfg). The admin
#: works in the bundle folder: one added there would be settings nobody listed (allowed signers, say).
WORKING_FOLDER_SETTINGS = tuple(name for name in LUIGI_FILES if "/" not in name)


def refuse_settings_read_from(bundle_dir: Path) -> None:
    """IntegrityError when this command runs in ``bundle_dir`` (or a folder in it) and that folder holds a
    ``WORKING_FOLDER_SETTINGS`` file: Luigi read it as this process's settings when it was imported, so it
    would act ([worker] settings import modules, [trust] chooses signers) before ``unlisted_files`` refuses it."""
    try:
        here, bundle = Path.cwd().resolve(), Path(bundle_dir).resolve()
    except OSError:
        return
    if here != bundle and bundle not in here.parents:
        return
    for name in WORKING_FOLDER_SETTINGS:
        if os.path.lexists(name):  # guard: settings-read-from-bundle
            raise IntegrityError(f"{here / name} was read as this command's settings (Luigi reads {name} from the "
                                 f"folder a command runs in), but it is in the bundle folder {bundle_dir} and no list "
                                 "names it: remove it; nothing was checked or changed")


#: The prefix of the AppleDouble files (extended attributes) macOS writes beside each file it copies to FAT.
APPLE_DOUBLE = "._"


def looks_like_chunk(name: str) -> bool:
    """Whether a file named ``name`` could be taken for a chunk (by ``7z x '*.7z'``, 7-Zip or an admin),
    also with the trailing dots and spaces Windows drops from a name."""
    return _CHUNK_LIKE.fullmatch(name.rstrip(". ")) is not None


#: par2 reads every file of this suffix beside its index that shares the index's base name (any case).
PAR2_SUFFIX = ".par2"


def unlisted_files(bundle_dir: Path, listed: Collection[str]) -> tuple[list[str], list[str]]:
    """What a bundle folder holds besides the files ``listed`` (paths relative to it), as (refused, ignored).

    The one rule for what the far side may find in a bundle folder. Refused: anything under ``tool/`` (also
    ``TOOL/``, which a case-insensitive filesystem finds for it) that is not listed: install.sh and the wheels
    run as code; ``tool`` when it is not a folder; every chunk-like name (``looks_like_chunk``:
    ``CHUNK-....7Z``, ``.chunk-....7z``) but the ``._*`` files macOS leaves beside each file it copies to FAT;
    settings the tool would read when run in the folder (``WORKING_FOLDER_SETTINGS``: ``luigi.cfg``); any
    ``*.par2`` (``par2``, which verify and repair run in the folder, finds recovery files by name and reads them).
    Ignored: the rest (those, ``.DS_Store``, a stick's own folders, shown with a trailing ``/``), never
    opened. Found by name only: links are not followed, nothing is read.
    """
    root = Path(bundle_dir)
    refused: list[str] = []
    ignored: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name in listed:
            continue
        apple_double = entry.name.startswith(APPLE_DOUBLE)
        chunk_like = (looks_like_chunk(entry.name) or entry.name.casefold().endswith(PAR2_SUFFIX)) and not apple_double
        tool = entry.name.casefold() == TOOL_DIR  # also TOOL/ or Tool/: on FAT or macOS, tool/... finds it
        if tool and entry.is_dir(follow_symlinks=False):
            refused += _unlisted_under(Path(entry.path), entry.name, listed)
        elif tool or chunk_like or entry.name.casefold() in WORKING_FOLDER_SETTINGS:  # guard: unlisted-chunk-like
            refused.append(entry.name)
        else:
            ignored.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    return refused, ignored


def _unlisted_under(folder: Path, prefix: str, listed: Collection[str]) -> list[str]:
    """Every entry below ``folder`` (named ``prefix/...``) that is not a listed path, folders aside; links
    (also to folders) are entries, never followed; a folder that cannot be read is one."""
    found: list[str] = []

    def unreadable(exc: OSError) -> None:
        inner = Path(exc.filename).relative_to(folder).as_posix() if exc.filename else "."
        found.append(prefix if inner == "." else f"{prefix}/{inner}")

    for parent, dirs, files in os.walk(folder, onerror=unreadable):
        here = Path(parent).relative_to(folder)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(parent, d))]:
            rel = f"{prefix}/{(here / name).as_posix()}"
            if rel not in listed:  # guard: unlisted-tool-file
                found.append(rel)
    return sorted(found)


def part_member(path: str, index: int) -> str:
    """Archive member name of part ``index`` (1-based) of a split file."""
    return f"{path}.part-{index:04d}"


CHUNK_PREFIX = "chunk-"
CHUNK_KEY_HEX = 16


def chunk_name(key: str) -> str:
    """File name of the chunk whose content key (a sha256 hex, see ``plan.chunk_key``) is ``key``.

    Named by content, not by position: a chunk keeps its name when chunks before it are added or
    removed, so an unchanged chunk is the same file, under the same name, in the next bundle.
    """
    return f"{CHUNK_PREFIX}{key[:CHUNK_KEY_HEX]}{CHUNK_SUFFIX}"


def chunk_name_pattern(version: str) -> "re.Pattern[str]":
    """The chunk names a manifest of ``version`` may use (for ``fullmatch``): ASCII only.

    ``chunk-<16 hex>.7z``, or ``<version>-0001.7z`` ... of bundles written before chunks were named by
    content (their names sort in writing order, and so does their chunk list).
    """
    return re.compile(re.escape(CHUNK_PREFIX) + f"[0-9a-f]{{{CHUNK_KEY_HEX}}}" + re.escape(CHUNK_SUFFIX)
                      + "|" + re.escape(version) + r"-[0-9]{4,}" + re.escape(CHUNK_SUFFIX))


SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


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
    parts: list[Part]  # one part (member == path) unless the file is split


@dataclass(frozen=True)
class Chunk:
    name: str
    size: int
    sha256: str
    members: list[str]  # sorted


def part_layout_problem(bf: BundleFile, chunk_order: Mapping[str, int] | None = None) -> str | None:
    """Why ``bf``'s parts do not lay out the file, or None: the one part-layout rule.

    Parts, by offset, must be contiguous from byte 0 and cover exactly the file's size, so a file
    can be joined. With ``chunk_order`` (chunk name -> its place in the manifest's chunk list, the
    writing and unpacking order) they must also sit in successive chunks of that list, so a file
    can be hashed whole, chunk after chunk. (Chunk names say nothing about the order.)
    """
    offset, previous = 0, -1
    for part in sorted(bf.parts, key=lambda p: p.offset):
        if part.offset != offset or part.size < 0:
            return f"parts of {bf.path} are not contiguous at offset {offset}"
        if chunk_order is not None and len(bf.parts) > 1:
            place = chunk_order.get(part.chunk, -1)
            if place <= previous:
                return f"parts of {bf.path} are not in successive chunks"
            previous = place
        offset += part.size
    if offset != bf.size:
        return f"parts of {bf.path} add up to {offset} bytes, the file has {bf.size}"
    return None


@dataclass(frozen=True)
class TreeFile:
    """One file of a whole repository tree (a delta's target): what must be there after unpack."""
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ReusedFile:
    """A file a bundle does not carry under its own path: the same bytes are at ``source``.

    In a delta's ``reused`` list, ``source`` is a path of the base tree (e.g. a rename); in a
    bundle's ``copies`` list, it is a file the bundle carries (identical bytes under several paths).
    """
    path: str
    size: int
    sha256: str
    source: str


@dataclass(frozen=True)
class ToolFile:
    """A file of the bundle's ``tool/`` folder: listed with its sha256, so SHA256SUMS and a signature
    of the manifest cover the tool that will check the bundle."""
    path: str  # relative to the bundle folder, under tool/
    size: int
    sha256: str


#: The PAR2 files of a bundle made with ``bundle --parity`` (``bundle.parity``): the index ``parity.par2`` and its
#: recovery volumes ``parity.vol<first>+<count>.par2``, in the bundle folder beside the chunks.
PARITY_NAME_PATTERN = re.compile(r"parity(\.vol[0-9]{1,6}\+[0-9]{1,6})?\.par2")
PARITY_INDEX = "parity.par2"


@dataclass(frozen=True)
class Parity:
    """``bundle --parity``: PAR2 recovery data over the chunks. ``files`` (the index and its volumes, each
    listed with size and sha256, so SHA256SUMS and a signature of the manifest cover them); ``block_size`` and
    ``recovery_blocks``: what par2 made, to say how much damage it can rebuild."""
    redundancy: int  # percent of the chunks' blocks asked for (bundle --parity PERCENT)
    block_size: int
    recovery_blocks: int
    files: list[ToolFile]  # path: a plain name in the bundle folder (PARITY_NAME_PATTERN)
    #: bundle --parity one-stick: sized and placed on the sticks so that losing any one whole stick is repairable
    #: (``redundancy`` then says what that came to, as a percent of the chunks' blocks)
    one_stick: bool = False

    @property
    def volumes(self) -> list[str]:
        """The recovery volumes (every file but the index ``parity.par2``)."""
        return sorted(f.path for f in self.files if f.path != PARITY_INDEX)


@dataclass(frozen=True)
class StickPlan:
    """Which chunks go on which USB stick (``bundle --stick-size``), in stick order, and with ``--parity`` which
    recovery volumes; every other file of the bundle folder (manifest, sums, README, signature, tool/, the PAR2
    index parity.par2) goes on every stick."""
    size: int  # bytes of one stick
    chunks: list[list[str]]
    parity: list[list[str]] = field(default_factory=list)  # the recovery volumes per stick ([]: no parity)

    @functools.cached_property
    def _stick(self) -> dict[str, int]:  # once per plan: a chunk's stick is looked up for every chunk
        return {name: i for i, names in enumerate(self.chunks, start=1) for name in names} | {
            name: i for i, names in enumerate(self.parity, start=1) for name in names}

    def stick_of(self, chunk: str) -> int:
        """The 1-based number of the stick that carries ``chunk`` (or recovery volume)."""
        return self._stick[chunk]

    def holds(self, name: str) -> bool:
        """Whether the plan puts ``name`` (a chunk or recovery volume) on a stick."""
        return name in self._stick

    def files_on(self, number: int) -> list[str]:
        """The chunks and recovery volumes of stick ``number`` (1-based)."""
        return list(self.chunks[number - 1]) + (list(self.parity[number - 1]) if self.parity else [])

    def label(self, number: int) -> str:
        return f"stick {number} of {len(self.chunks)}"


@dataclass(frozen=True)
class ReportFile:
    """A transfer report file of the bundle folder (``REPORT_NAMES``): listed with its sha256, so a signature of
    the manifest covers what the security officer reads."""
    name: str
    size: int
    sha256: str


@dataclass
class BundleManifest:
    version: str
    files: list[BundleFile]
    chunks: list[Chunk]
    compression: str = "copy"
    chunk_size: int = 0
    tool_version: str = ""
    created: str = ""
    mirror_manifest_sha256: str = ""
    # The mirror's count of bundles written, this one included: a later bundle of that mirror has a
    # higher one, so unpack can refuse to go back to an older bundle (0: written before it was kept).
    sequence: int = 0
    # A delta bundle (base set): ``files`` holds only what is new or changed since the base tree.
    base: str | None = None  # tree identity (bundle.receipt.tree_identity) of the tree this applies to
    base_created: str = ""  # when the base's bundle was made, to name it in messages
    removed: list[str] = field(default_factory=list)  # base paths gone from the target
    reused: list[ReusedFile] = field(default_factory=list)  # target files taken from the base by sha256
    target: list[TreeFile] = field(default_factory=list)  # the whole tree after unpack
    extra: dict[str, object] = field(default_factory=dict)
    # Carried once: each is placed by unpack from ``source``, a path in ``files`` with the same bytes.
    copies: list[ReusedFile] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)  # every AMS version whose tree this is, ``version`` first
    # Listed files the tree does not hold (not licensed, or left out by --platform): a delta's are its target's.
    lacking: list[Lacking] = field(default_factory=list)
    tool: list[ToolFile] = field(default_factory=list)  # bundle --with-tool: the tool/ folder's files
    # Not in the JSON: what tree_path_problems warned of when the manifest was read (names that
    # differ only in case, kept on a case-sensitive system).
    path_warnings: list[str] = field(default_factory=list, compare=False, repr=False)
    # Several versions: the paths of the tree each one needs (one version needs the whole tree). What a
    # later delta of one version may remove is decided from it (``bundle.delta_rules.removal_problems``).
    version_paths: dict[str, list[str]] = field(default_factory=dict)
    # A delta only: versions of its base it removes on purpose (bundle --drop-version; unpack --drop-version).
    dropped: list[str] = field(default_factory=list)
    #: bundle --stick-size: the stick plan (None: made without one; verify then names chunks only)
    sticks: StickPlan | None = None
    # sha256 of the bundle's README.txt (additive): a signature of the manifest then covers the instructions
    # an admin follows too ("" in bundles written before it was kept).
    readme_sha256: str = ""
    #: bundle --parity: the PAR2 recovery files over the chunks (None: made without)
    parity: Parity | None = None
    # The transfer report's files (schema 3: verify must check them). The report is made from the manifest
    # without this list, so the manifest can name the report's sha256 (bundle.transfer_report).
    report: list[ReportFile] = field(default_factory=list)
    # The signing key's fingerprint (bundle --sign-key; additive), for the report: "" when unsigned.
    signer: str = ""
    # A delta (additive): the base's record of each path it removes, and of each path it gives other bytes
    # (None: not recorded, a delta of an older tool): what the report lists with sizes.
    removed_files: list[TreeFile] | None = None
    replaced_files: list[TreeFile] | None = None

    @property
    def all_versions(self) -> list[str]:
        return list(self.versions) or [self.version]

    @property
    def paths_by_version(self) -> dict[str, set[str]] | None:
        """The paths of the tree each version needs; None when a bundle of several versions does not
        say (written before it was kept)."""
        if len(self.all_versions) == 1:
            return {self.version: {t.path for t in self.tree}}
        if not self.version_paths:
            return None
        return {v: set(paths) for v, paths in self.version_paths.items()}

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def chunk_order(self) -> dict[str, int]:
        """Chunk name -> its place in the chunk list (the writing and unpacking order)."""
        return {c.name: i for i, c in enumerate(self.chunks)}

    @property
    def is_delta(self) -> bool:
        return self.base is not None

    @property
    def tree(self) -> list[TreeFile]:
        """The whole tree this bundle installs: a delta's target; else the files and their copies."""
        if self.is_delta:
            return list(self.target)
        return [TreeFile(f.path, f.size, f.sha256) for f in self.files] + [
            TreeFile(c.path, c.size, c.sha256) for c in self.copies]

    @property
    def needs_schema_3(self) -> bool:
        """Whether it holds what an older reader must not skip (docs/bundle-format.md): ``version_paths``
        and ``dropped`` decide what may be removed, so a tool that ignores them must refuse the bundle; the
        ``report`` files are in SHA256SUMS, which an older verify refuses as files the manifest does not list."""
        return bool(self.dropped) or bool(self.report) or (bool(self.version_paths) and len(self.all_versions) > 1)

    def to_json(self) -> bytes:
        schema = SCHEMA_3 if self.needs_schema_3 else SCHEMA_WITH_COPIES if self.copies else SCHEMA  # guard: schema-3-written
        body = {
            "schema": schema,
            "version": self.version,
            "tool_version": self.tool_version,
            "created": self.created,
            "compression": self.compression,
            "chunk_size": self.chunk_size,
            "mirror_manifest_sha256": self.mirror_manifest_sha256,
            "base": self.base,
            "versions": self.all_versions,
            "files": [asdict(f) for f in sorted(self.files, key=lambda f: f.path)],
            "chunks": [asdict(c) for c in self.chunks],  # in writing (and unpacking) order
        }
        if self.readme_sha256:  # absent from bundles written before it was kept
            body["readme_sha256"] = self.readme_sha256
        if self.needs_schema_3:  # an older tool names the version it needs
            body["requires_tool"] = SCHEMA_3_SINCE
        if self.sequence:  # absent from manifests of tools that kept no sequence
            body["sequence"] = self.sequence
        if self.copies:  # absent when no bytes repeat: such manifests read as before
            body["copies"] = _records(self.copies)
        if self.lacking:  # absent when nothing is lacking: such manifests read as before
            body["lacking"] = [asdict(e) for e in sorted(self.lacking, key=lambda e: e.path)]
        if self.tool:  # absent without --with-tool
            body["tool"] = [asdict(t) for t in sorted(self.tool, key=lambda t: t.path)]
        if self.version_paths and len(self.all_versions) > 1:  # absent for one version: it needs the whole tree
            body["version_paths"] = {v: sorted(paths) for v, paths in self.version_paths.items()}
        if self.dropped:  # absent unless a delta drops a version on purpose
            body["dropped"] = sorted(self.dropped)
        if self.sticks:  # absent without --stick-size: such manifests read as before
            body["sticks"] = {"size": self.sticks.size, "chunks": self.sticks.chunks}
            if self.sticks.parity:  # only with --parity: which stick carries each recovery volume
                body["sticks"]["parity"] = self.sticks.parity
        if self.parity:  # absent without --parity: an older reader ignores it (its files are then unlisted, not chunks)
            body["parity"] = {"redundancy": self.parity.redundancy, "block_size": self.parity.block_size,
                              "recovery_blocks": self.parity.recovery_blocks,
                              "files": [asdict(f) for f in sorted(self.parity.files, key=lambda f: f.path)]}
            if self.parity.one_stick:  # only with --parity one-stick
                body["parity"]["one_stick"] = True
        body.update(self._report_fields())
        if body["schema"] == SCHEMA_3:
            body["requires_tool"] = SCHEMA_3_SINCE
        if self.is_delta:
            body.update({
                "base_created": self.base_created,
                "removed": sorted(self.removed),
                "reused": _records(self.reused),
                "target": [asdict(t) for t in sorted(self.target, key=lambda t: t.path)],
            })
        body.update(self.extra)
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    def _report_fields(self) -> dict:
        """What the transfer report needs beyond the rest: its files, the signer, a delta's base records."""
        body: dict[str, object] = {}
        if self.report:  # absent from bundles without a transfer report
            body["report"] = [asdict(r) for r in sorted(self.report, key=lambda r: r.name)]
        if self.signer:  # absent from unsigned bundles
            body["signer"] = self.signer
        for name, records in (("removed_files", self.removed_files), ("replaced_files", self.replaced_files)):
            if self.is_delta and records is not None:  # absent from deltas of tools that did not record them
                body[name] = [asdict(t) for t in sorted(records, key=lambda t: t.path)]
        return body

    def write(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_json())

    @classmethod
    def read(cls, path: Path) -> "BundleManifest":
        """Read and check ``manifest.json``: IntegrityError naming the first bad field, its value escaped."""
        try:
            with open(path, "rb") as f:
                data = f.read(MANIFEST_LIMIT + 1)  # more is refused by from_bytes, never read whole
        except OSError as exc:
            raise IntegrityError(f"cannot read bundle manifest {path}: {exc}") from exc
        return cls.from_bytes(data, path)

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> "BundleManifest":
        """Check and parse ``manifest.json`` as already read (``path``: where, for messages): what a
        signature was checked on is then exactly what is used. IntegrityError naming the first bad
        field, its value escaped.

        Every string is checked before anything uses it in a path, a log line or a message.
        """
        try:
            body = parse_json(data, "bundle manifest")
        except ValueError as exc:
            raise IntegrityError(f"cannot read bundle manifest {path}: {exc}") from exc
        if not isinstance(body, dict) or body.get("schema") not in SCHEMAS:
            raise IntegrityError(unknown_schema_message(body, path))
        try:
            return _manifest_from(body)
        except IntegrityError as exc:
            raise IntegrityError(f"bad bundle manifest {path}: {exc}") from None


def unknown_schema_message(body, path) -> str:
    """Why a manifest of a schema this tool does not read is refused: for a newer schema of the
    family, the tool version its maker says reads it (``requires_tool``); else what was found."""
    found = body.get("schema") if isinstance(body, dict) else body
    newer = SCHEMA_FAMILY.fullmatch(found) if isinstance(found, str) else None
    known = max(int(SCHEMA_FAMILY.fullmatch(s).group(1)) for s in SCHEMAS)
    if newer and int(newer.group(1)) > known:
        needs = body.get("requires_tool")
        need = (f"this bundle needs amsrepomirror {needs} or newer" if isinstance(needs, str) and not _is_tool_version(needs)
                else "this bundle needs a newer amsrepomirror")
        return (f"{path} is schema {found}, newer than amsrepomirror {__version__} reads (1 to {known}): {need} "
                "(a bundle made with --with-tool carries it in tool/)")
    return f"{path} is not a bundle manifest of schema {' or '.join(SCHEMAS)} (found {_escaped(found)})"


def read_manifest_bytes(bundle_dir: Path) -> bytes | None:
    """A bundle folder's manifest.json, read once and whole (metadata, small beside the chunks);
    None when there is none. Check (signature, SHA256SUMS) and parse these bytes, never the file
    again: it may be other bytes by the next read. IntegrityError when it cannot be read."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        return read_bounded(path, MANIFEST_LIMIT)
    except FileNotFoundError:
        return None
    except NotReadable as exc:
        raise IntegrityError(f"cannot read bundle manifest: {exc}") from exc
    except OSError as exc:
        raise IntegrityError(f"cannot read bundle manifest {path}: {exc}") from exc


def _records(files: list[ReusedFile]) -> list[dict]:
    return [asdict(r) for r in sorted(files, key=lambda r: r.path)]


def copy_problems(manifest: BundleManifest) -> list[str]:
    """How ``copies`` contradicts the carried files: each copy's source must be a carried file with
    its size and sha256, and no path may be both carried and a copy, or a copy twice."""
    carried = {f.path: (f.size, f.sha256) for f in manifest.files}
    problems, seen = [], set()
    for c in manifest.copies:
        if carried.get(c.source) != (c.size, c.sha256) or c.path in carried or c.path in seen:
            problems.append(f"copy {printable(c.path)} does not name a carried file with its size and sha256 as its "
                            "source, or its path is carried or listed twice")
        seen.add(c.path)
    return problems


# --- checking manifest.json field by field --------------------------------------------------------

_REQUIRED = object()
Check = Callable[[object], str | None]  # why a value is bad, or None


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


def _list_of(value) -> str | None:
    return None if isinstance(value, list) else "not a list"


def _count(value) -> str | None:
    return None if type(value) is int and value >= 0 else "not a whole number of at least 0"


def _matching(pattern: "re.Pattern[str]", expected: str, empty_ok: bool = False) -> Check:
    def check(value) -> str | None:
        if isinstance(value, str) and ((empty_ok and value == "") or pattern.fullmatch(value)):
            return None
        return f"expected {expected}"
    return check


_is_version = _matching(VERSION_PATTERN, "AMS followed by digits and dots, e.g. AMS2026.1")
_is_sha256 = _matching(SHA256_PATTERN, "64 lowercase hex digits (sha256)")
_is_optional_sha256 = _matching(SHA256_PATTERN, "64 lowercase hex digits (sha256) or nothing", empty_ok=True)
_is_tool_version = _matching(re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}"), "a version like 0.1.0", empty_ok=True)
_is_signer = _matching(FINGERPRINT_PATTERN, "an SSH key fingerprint like SHA256:<43 base64 characters>")
_is_created = _matching(re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"),
                        "a UTC time like 2026-01-31T12:00:00Z", empty_ok=True)


def _compression(value) -> str | None:
    return None if value in COMPRESSIONS else f"expected one of {', '.join(COMPRESSIONS)}"


def _base(value) -> str | None:
    return None if value is None else _is_sha256(value)


def _versions_of(version: str) -> Check:
    """Check of ``versions``: distinct AMS versions, ``version`` (the field read by older tools) first."""
    def check(value) -> str | None:
        if not isinstance(value, list) or not value:
            return "not a list of AMS versions"
        if any(_is_version(v) for v in value):
            return "expected AMS versions, e.g. AMS2026.1"
        if value[0] != version or len(set(value)) != len(value):
            return f"expected distinct versions, {version} (the field version) first"
        return None
    return check


def _reused_files(body: dict, name: str, default=_REQUIRED) -> list[ReusedFile]:
    """The list ``name`` of {path, size, sha256, source} records (``reused``, ``copies``)."""
    files = []
    for i, raw in enumerate(_field(body, name, name, _list_of, default)):
        r = _record(raw, f"{name}[{i}]", {"path", "size", "sha256", "source"})
        files.append(ReusedFile(path=_field(r, "path", f"{name}[{i}].path", path_problem),
                                size=_field(r, "size", f"{name}[{i}].size", _count),
                                sha256=_field(r, "sha256", f"{name}[{i}].sha256", _is_sha256),
                                source=_field(r, "source", f"{name}[{i}].source", path_problem)))
    return files


def _tool_path(value) -> str | None:
    return None if is_tool_path(value) else f"expected a safe path under {TOOL_DIR}/"


def _path_records(items: list, where: str, path_check) -> list[ToolFile]:
    """A list of {path, size, sha256} records (``where``: the field, for messages), each path passing
    ``path_check`` and listed once: the tool/ files and the PAR2 files alike."""
    files, seen = [], set()
    for i, raw in enumerate(items):
        t = _record(raw, f"{where}[{i}]", {"path", "size", "sha256"})
        path = _field(t, "path", f"{where}[{i}].path", path_check)
        if path in seen:
            raise IntegrityError(f"field {where}[{i}].path is {_escaped(path)}: listed twice")
        seen.add(path)
        files.append(ToolFile(path=path, size=_field(t, "size", f"{where}[{i}].size", _count),
                              sha256=_field(t, "sha256", f"{where}[{i}].sha256", _is_sha256)))
    return files


def _tool_files(body: dict) -> list[ToolFile]:
    """The ``tool`` list of {path, size, sha256} records (bundle --with-tool), each path once."""
    return _path_records(_field(body, "tool", "tool", _list_of, []), "tool", _tool_path)


def _tree_files(body: dict, name: str, default=_REQUIRED) -> list[TreeFile] | None:
    """The list ``name`` of {path, size, sha256} records (``target``, ``removed_files``, ``replaced_files``)."""
    raw = _field(body, name, name, _list_of, default)
    if raw is None:
        return None
    files = []
    for i, record in enumerate(raw):
        t = _record(record, f"{name}[{i}]", {"path", "size", "sha256"})
        files.append(TreeFile(path=_field(t, "path", f"{name}[{i}].path", path_problem),
                              size=_field(t, "size", f"{name}[{i}].size", _count),
                              sha256=_field(t, "sha256", f"{name}[{i}].sha256", _is_sha256)))
    return files


def _base_records(body: dict, removed: list[str], target: list[TreeFile]) -> dict:
    """A delta's optional ``removed_files`` (exactly its removed paths) and ``replaced_files`` (paths of its
    target, each once): the base's size and sha256 of what it removes or replaces, for the transfer report."""
    removed_files = _tree_files(body, "removed_files", None)
    if removed_files is not None and sorted(t.path for t in removed_files) != sorted(removed):
        raise IntegrityError("field removed_files does not name exactly the removed paths")
    replaced_files = _tree_files(body, "replaced_files", None)
    paths = [t.path for t in replaced_files or []]
    if len(set(paths)) != len(paths) or not set(paths) <= {t.path for t in target}:
        raise IntegrityError("field replaced_files names a path twice or one that is not in the target")
    return dict(removed_files=removed_files, replaced_files=replaced_files)


def _delta_fields(body: dict, base: str | None) -> dict:
    """``base_created``, ``removed``, ``reused``, ``target`` (and the optional ``removed_files`` and
    ``replaced_files``) of a delta (base set); none of them otherwise."""
    names = ("base_created", "removed", "reused", "target", "removed_files", "replaced_files")
    if base is None:
        present = [name for name in names if name in body]
        if present:
            raise IntegrityError(f"field {present[0]} is set, but base is not (only a delta bundle has it)")
        return {}
    removed = _field(body, "removed", "removed", _list_of)
    for i, path in enumerate(removed):
        why = path_problem(path)
        if why:
            raise IntegrityError(f"field removed[{i}] is {_escaped(path)}: {why}")
    reused = _reused_files(body, "reused")
    target = _tree_files(body, "target")
    return dict(base_created=_field(body, "base_created", "base_created", _is_created, ""),
                removed=removed, reused=reused, target=target, **_base_records(body, removed, target))


def _version_fields(body: dict, manifest: BundleManifest) -> None:
    """``version_paths`` (several versions: each one's paths, every one a path of the tree, together the
    whole tree) and ``dropped`` (a delta: versions it removes, none of those it holds)."""
    versions, tree = manifest.all_versions, {t.path for t in manifest.tree}
    raw = _field(body, "version_paths", "version_paths",
                 lambda v: None if isinstance(v, dict) else "not an object", {})
    if raw and (len(versions) == 1 or set(raw) != set(versions)):
        raise IntegrityError(f"field version_paths names {_escaped(sorted(raw))}: expected the versions "
                             f"{_escaped(versions)} (only a bundle of several versions has it)")
    needed: set[str] = set()
    for version in versions if raw else []:
        paths = _field(raw, version, f"version_paths.{version}", _list_of)
        for i, path in enumerate(paths):
            if not isinstance(path, str) or path not in tree:
                raise IntegrityError(f"field version_paths.{version}[{i}] is {_escaped(path)}: not a path of its tree")
        needed.update(paths)
    if raw and needed != tree:
        raise IntegrityError(f"field version_paths leaves {_escaped(sorted(tree - needed)[:1])} of its tree to no version")
    dropped = _field(body, "dropped", "dropped", _list_of, [])
    for i, version in enumerate(dropped):
        if manifest.base is None or _is_version(version) or version in versions or dropped.count(version) > 1:
            raise IntegrityError(f"field dropped[{i}] is {_escaped(version)}: expected a version the delta does "
                                 "not hold, once (only a delta drops versions)")
    if dropped and body.get("schema") != SCHEMA_3:  # an older reader would skip it: only schema 3 may drop
        raise IntegrityError(f"field dropped is set, but the schema is {_escaped(body.get('schema'))}, not {SCHEMA_3}")
    manifest.version_paths, manifest.dropped = {v: list(raw[v]) for v in raw}, list(dropped)


def _stick_plan(body: dict, chunks: list[str]) -> StickPlan | None:
    """The optional ``sticks`` record {size, chunks: [[chunk name, ...] per stick], and with parity
    parity: [[recovery volume, ...] per stick]}: each chunk of the manifest on exactly one stick, each recovery
    volume the ``parity`` record lists on exactly one stick, no other name, no empty stick."""
    raw = _field(body, "sticks", "sticks", lambda v: None if isinstance(v, dict) else "not an object", None)
    if raw is None:
        return None
    r = _record(raw, "sticks", {"size", "chunks", "parity"} if isinstance(raw, dict) and "parity" in raw
                else {"size", "chunks"})
    size = _field(r, "size", "sticks.size", lambda v: _count(v) or (None if v > 0 else "not above 0"))
    plan = _names_per_stick(_field(r, "chunks", "sticks.chunks", _list_of), "sticks.chunks", set(chunks), "chunk")
    volumes = _parity_volumes(body)
    placed = _names_per_stick(_field(r, "parity", "sticks.parity", _list_of, []), "sticks.parity", volumes,
                              "recovery volume", every=False)
    if placed and len(placed) != len(plan):
        raise IntegrityError(f"field sticks.parity has {len(placed)} sticks, sticks.chunks {len(plan)}")
    for i, names in enumerate(plan):
        if not names and not (placed and placed[i]):
            raise IntegrityError(f"field sticks.chunks[{i}] is []: a stick that carries nothing")
    return StickPlan(size=size, chunks=plan, parity=placed)


def _parity_volumes(body: dict) -> set[str]:
    """The recovery volumes the ``parity`` record names (checked in full by ``_parity``)."""
    raw = body.get("parity")
    files = raw.get("files") if isinstance(raw, dict) else None
    return {f.get("path") for f in files if isinstance(f, dict) and f.get("path") != PARITY_INDEX
            and isinstance(f.get("path"), str)} if isinstance(files, list) else set()


def _names_per_stick(raw: list, name: str, known: set[str], what: str, every: bool = True) -> list[list[str]]:
    """Per stick, a list of names of ``known``; every one of them on exactly one stick (with ``every`` False,
    none may be when ``raw`` is [])."""
    plan, seen = [], set()
    for i, names in enumerate(raw):
        if not isinstance(names, list):
            raise IntegrityError(f"field {name}[{i}] is {_escaped(names)}: not a list of {what} names")
        for item in names:
            if not isinstance(item, str) or item not in known or item in seen:  # guard: stick-plan-chunks
                raise IntegrityError(f"field {name}[{i}] names {_escaped(item)}: "
                                     + ("on two sticks" if item in seen else f"not a {what} of this manifest"))
            seen.add(item)
        plan.append(list(names))
    if (raw or every) and seen != known:
        raise IntegrityError(f"field {name} puts no stick for {what} {sorted(known - seen)[0]}")
    return plan


def _parity_name(value) -> str | None:
    if isinstance(value, str) and PARITY_NAME_PATTERN.fullmatch(value):
        return None
    return "expected parity.par2 or parity.volN+M.par2"


def _parity(body: dict) -> Parity | None:
    """The optional ``parity`` record {redundancy, block_size, recovery_blocks, files: [{path, size, sha256}]}:
    each file a PAR2 name of ours, once, the index among them."""
    raw = _field(body, "parity", "parity", lambda v: None if isinstance(v, dict) else "not an object", None)
    if raw is None:
        return None
    keys = {"redundancy", "block_size", "recovery_blocks", "files"}
    r = _record(raw, "parity", keys | {"one_stick"} if isinstance(raw, dict) and "one_stick" in raw else keys)
    files = _path_records(_field(r, "files", "parity.files", _list_of), "parity.files", _parity_name)
    if PARITY_INDEX not in {f.path for f in files}:
        raise IntegrityError("field parity.files lists no parity.par2 (the index par2 reads first)")
    one_stick = _field(r, "one_stick", "parity.one_stick", lambda v: None if v is True else "expected true", False)
    if one_stick and not body.get("sticks"):
        raise IntegrityError("field parity.one_stick is set, but the manifest has no stick plan (sticks)")
    return Parity(redundancy=_field(r, "redundancy", "parity.redundancy", _count),
                  block_size=_field(r, "block_size", "parity.block_size",
                                    lambda v: _count(v) or (None if v > 0 else "not above 0")),
                  recovery_blocks=_field(r, "recovery_blocks", "parity.recovery_blocks", _count), files=files,
                  one_stick=one_stick)


def _report_files(body: dict) -> list[ReportFile]:
    """The optional ``report`` list of {name, size, sha256} records: each a name of ``REPORT_NAMES``, once. Written
    with schema 3 (an older reader would refuse the files as unlisted, so it refuses the manifest plainly); read in
    any schema: it changes nothing that is placed or trusted."""
    files, seen = [], set()
    for i, raw in enumerate(_field(body, "report", "report", _list_of, [])):
        r = _record(raw, f"report[{i}]", {"name", "size", "sha256"})
        name = _field(r, "name", f"report[{i}].name",
                      lambda v: None if v in REPORT_NAMES and v not in seen else f"expected one of {REPORT_NAMES}, once")
        seen.add(name)
        files.append(ReportFile(name=name, size=_field(r, "size", f"report[{i}].size", _count),
                                sha256=_field(r, "sha256", f"report[{i}].sha256", _is_sha256)))
    return files


def _lacking(body: dict) -> list[Lacking]:
    """The optional ``lacking`` list of {path, reason} records: each path once, each reason of the vocabulary."""
    entries, seen = [], set()
    for i, raw in enumerate(_field(body, "lacking", "lacking", _list_of, [])):
        r = _record(raw, f"lacking[{i}]", {"path", "reason"})
        entry = Lacking(path=_field(r, "path", f"lacking[{i}].path", path_problem),
                        reason=_field(r, "reason", f"lacking[{i}].reason", reason_problem))
        if entry.path in seen:
            raise IntegrityError(f"field lacking[{i}].path is {_escaped(entry.path)}: listed twice")
        seen.add(entry.path)
        entries.append(entry)
    return entries


def _placed_paths(manifest: BundleManifest) -> list[str]:
    """Every path the manifest has unpack write or extract: they must form one tree (tree_path_problems).
    (Removed paths are not among them: the new tree is built beside the old one, without them.)"""
    paths = {t.path for t in manifest.tree}
    paths.update(f.path for f in manifest.files)
    paths.update(r.path for r in list(manifest.copies) + list(manifest.reused))
    paths.update(m for c in manifest.chunks for m in c.members)
    return sorted(paths)


def _manifest_from(body: dict) -> BundleManifest:
    """The manifest in ``body`` (parsed JSON), every field checked; IntegrityError names the first bad one."""
    version = _field(body, "version", "version", _is_version)
    versions = _field(body, "versions", "versions", _versions_of(version), [version])
    is_chunk = _matching(chunk_name_pattern(version), f"a chunk name like {chunk_name('0' * CHUNK_KEY_HEX)}")
    files = []
    for i, raw in enumerate(_field(body, "files", "files", _list_of)):
        f = _record(raw, f"files[{i}]", {"path", "size", "sha256", "parts"})
        path = _field(f, "path", f"files[{i}].path", path_problem)
        of = f"of file {printable(path)}"
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
    base = _field(body, "base", "base", _base, None)
    manifest = BundleManifest(
        version=version,
        files=files,
        chunks=chunks,
        compression=_field(body, "compression", "compression", _compression, "copy"),
        chunk_size=_field(body, "chunk_size", "chunk_size", _count, 0),
        tool_version=_field(body, "tool_version", "tool_version", _is_tool_version, ""),
        created=_field(body, "created", "created", _is_created, ""),
        mirror_manifest_sha256=_field(body, "mirror_manifest_sha256", "mirror_manifest_sha256", _is_optional_sha256, ""),
        sequence=_field(body, "sequence", "sequence", _count, 0),
        readme_sha256=_field(body, "readme_sha256", "readme_sha256", _is_optional_sha256, ""),
        base=base,
        versions=list(versions),
        copies=_reused_files(body, "copies", []),
        lacking=_lacking(body),
        tool=_tool_files(body),
        sticks=_stick_plan(body, [c.name for c in chunks]),
        parity=_parity(body),
        report=_report_files(body),
        signer=_field(body, "signer", "signer", _is_signer, ""),
        **_delta_fields(body, base),
    )
    tree = tree_path_problems(_placed_paths(manifest))
    if tree.problems:  # guard: manifest-tree-rule
        raise IntegrityError(f"its paths cannot be placed: {tree.problems[0]}")
    manifest.path_warnings = tree.warnings
    _version_fields(body, manifest)
    return manifest
