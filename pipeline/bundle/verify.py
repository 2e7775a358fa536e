"""``verify``: check a bundle folder offline with the checks unpack applies, and report every problem."""

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from amsrepomirror.bundle.chunks import check_members, hash_members
from amsrepomirror.bundle.format import (
    CHUNK_SUFFIX,
    MANIFEST_NAME,
    PARITY_INDEX,
    README_NAME,
    REPORT_NAMES,
    SUMS_NAME,
    BundleManifest,
    Chunk,
    copy_problems,
    is_tool_path,
    looks_like_chunk,
    part_layout_problem,
    read_manifest_bytes,
    unlisted_files,
)
from amsrepomirror.bundle.parity import NO_PAR2, Par2Verdict, find_par2, verify_with_par2
from amsrepomirror.bundle.signature import SIGNATURE_LIMIT, SIGNATURE_NAME
from amsrepomirror.bundle.sums import read_sums
from amsrepomirror.errors import IntegrityError
from amsrepomirror.util.fsutil import read_bounded
from amsrepomirror.util.hashing import sha256_file
from amsrepomirror.util.paths import STATE_DIR, is_plain_file_name, printable
from amsrepomirror.util.units import counted, format_size

#: verify_bundle hashes this many chunks at a time (hashlib releases the GIL on large buffers).
HASH_THREADS = 2
#: verify_bundle's ``manifest_bytes`` when the caller has not read manifest.json (None: it found none).
READ_MANIFEST = object()
#: The command that rebuilds damaged chunks from a bundle's parity (cli/repair.py).
REPAIR_COMMAND = "amsrepomirror repair"


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
    problems: list[Problem] = field(default_factory=list)
    manifest: BundleManifest | None = None
    chunks_checked: int = 0
    bytes_checked: int = 0
    not_here: list[str] = field(default_factory=list)  # with ``partial``: chunks not (yet) in the folder
    warnings: list[str] = field(default_factory=list)  # what does not make the bundle unusable
    #: a bundle with parity whose chunks are damaged: what ``par2 verify`` said (None: not asked, or no par2)
    repair: Par2Verdict | None = None
    parity_unchecked: bool = False  # damaged chunks, parity in the bundle, but no par2 here to tell
    parity_damaged: bool = False  # damaged chunks, and recovery files not as listed: par2 is not run on them here

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_chunks(self) -> list[str]:
        """Chunks to copy again (missing, truncated, corrupt, ...); not the unexpected ones."""
        return sorted({p.name for p in self.problems if p.chunk and p.problem != "unexpected"})

    @property
    def unexpected_chunks(self) -> list[str]:
        return sorted({p.name for p in self.problems if p.chunk and p.problem == "unexpected"})

    def problem_of(self, name: str) -> list[str]:
        return [p.problem for p in self.problems if p.name == name]

    def message(self) -> str:
        """One line naming what is wrong and what to do."""
        if self.ok:
            return f"bundle {self.bundle_dir} is intact ({counted(self.chunks_checked, 'chunk')}, {self.bytes_checked} bytes)"
        repairable = self.repair is not None and self.repair.repairable
        parts = self._bad_chunk_parts(("on", "damaged chunks") if repairable else ("re-copy", "re-copy these chunks"))
        if self.unexpected_chunks:
            parts.append("chunks not in manifest.json (remove them): " + ", ".join(self.unexpected_chunks))
        others = [str(p) for p in self.problems if not p.chunk]
        if others:
            parts.append("; ".join(others))
        if repairable:  # guard: verify-repairable-verdict
            return (f"bundle {self.bundle_dir} is damaged but repairable: " + "; ".join(parts) + self._repair_note())
        return f"bundle {self.bundle_dir} failed verification: " + "; ".join(parts) + self._repair_note()

    def _bad_chunk_parts(self, words: tuple[str, str]) -> list[str]:
        """The bad chunks (``words``: before a stick, before a list of chunks), each with its problem; by stick
        when the bundle has a stick plan."""
        verb, lead = words
        parts: list[str] = []
        bad = self.bad_chunks
        if not bad:
            return parts
        why: dict[str, str] = {}
        for p in self.problems:
            if p.chunk and p.name in bad:
                why.setdefault(p.name, p.problem)
        sticks = self.manifest.sticks if self.manifest else None
        if sticks:  # the stick to copy again, and which of its chunks are the trouble
            on = {n: sticks.stick_of(n) for n in bad if sticks.holds(n)}
            parts += [f"{verb} {sticks.label(i)} ({', '.join(f'{n} ({why[n]})' for n in bad if on.get(n) == i)})"
                      for i in sorted(set(on.values()))]
            bad = [n for n in bad if n not in on]
        if bad:
            parts.append(f"{lead}: " + ", ".join(f"{n} ({why[n]})" for n in bad))
        return parts

    def _repair_note(self) -> str:
        """What the bundle's parity can do about the damage (nothing when it has none)."""
        if self.parity_unchecked:
            return f"; the bundle has parity that may repair this: {NO_PAR2}"
        if self.parity_damaged:
            return (f"; some of its recovery files are damaged too: {REPAIR_COMMAND} {self.bundle_dir} --into DIR uses "
                    "the intact ones only and says whether they suffice (the bundle is not changed)")
        verdict = self.repair
        if verdict is None:
            return ""
        if verdict.repairable:
            return (f"; its parity rebuilds them without another trip: {REPAIR_COMMAND} {self.bundle_dir} --into DIR "
                    "(DIR: an empty folder outside the bundle; the bundle is not changed), then unpack DIR")
        parity = self.manifest.parity
        short = (f"{verdict.blocks_short} more block(s) of {parity.block_size} bytes "
                 f"({format_size(verdict.blocks_short * parity.block_size)})" if verdict.blocks_short else "more")
        return f"; not repairable: the damage is beyond the bundle's parity by {short}: carry the chunks named above again"


def require_intact(report: VerifyReport) -> VerifyReport:
    """Raise IntegrityError with a one-line message when the report has problems."""
    if not report.ok:
        raise IntegrityError(report.message())
    return report


def _check_manifest_consistency(manifest: BundleManifest) -> list[str]:
    """Problems inside manifest.json itself (parts vs chunks, copies vs files); a few at most."""
    issues = copy_problems(manifest)[:1]
    tree = {t.path for t in manifest.tree}
    for index in (f"{version}.yml" for version in manifest.all_versions):
        if index not in tree:  # unpack refuses a tree without the index amspackages needs
            issues.append(f"it lists no {index}, the index amspackages needs")
    held = sorted(tree & {e.path for e in manifest.lacking})
    if held:
        issues.append(f"{printable(held[0])} is listed as lacking and as part of the tree")
    chunks = {c.name: c for c in manifest.chunks}
    if len(chunks) != len(manifest.chunks):
        issues.append("a chunk is listed twice")
    referenced: dict[str, set] = {name: set() for name in chunks}
    order = manifest.chunk_order
    for f in manifest.files:
        why = part_layout_problem(f, order)
        unknown = [p.chunk for p in f.parts if p.chunk not in chunks]
        if why:
            issues.append(why)
        elif unknown:
            issues.append(f"{f.path} refers to chunk {unknown[0]}, which is not listed")
        else:
            for p in f.parts:
                referenced[p.chunk].add(p.member)
        if len(issues) >= 3:
            return issues
    for name, chunk in chunks.items():
        if referenced[name] != set(chunk.members):
            issues.append(f"members of chunk {name} do not match the files' parts")
            if len(issues) >= 3:
                break
    return issues


class _ContentCheck:
    """What verify checks inside the chunks, in the one pass that decompresses them (in the order of
    the manifest's chunk list).

    Per chunk: ``bundle.chunks.check_members`` (unsafe names, links and special files, members not in
    the manifest or missing, declared sizes), as unpack does before it writes anything; then every
    member decompressed (CRCs) and hashed, to compare with the manifest's size and sha256. Each
    file is also hashed whole: a split file's parts are fed, in chunk order, to one hash that is
    compared with the file's sha256 at the end (what unpack checks after joining the parts).
    """

    def __init__(self, manifest: BundleManifest | None, on_bytes: Callable[[int], None] | None = None):
        self.on_bytes = on_bytes
        self.members: dict[str, dict[str, tuple]] = {}  # chunk name -> {member: (BundleFile, Part)}
        self.whole: dict[str, list] = {}  # split file -> [its hash, bytes hashed]
        self.files = manifest.files if manifest is not None else []
        for f in self.files:
            for p in f.parts:
                self.members.setdefault(p.chunk, {})[p.member] = (f, p)
            if len(f.parts) > 1:
                self.whole[f.path] = [hashlib.sha256(), 0]

    def check(self, path: Path, chunk: Chunk | None) -> list[Problem]:
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
        got, trouble = hash_members(path, also, self.on_bytes)
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

    def finish(self) -> list[Problem]:
        problems = []
        for f in self.files:
            running = self.whole.get(f.path)
            if running is not None and running[1] == f.size and running[0].hexdigest() != f.sha256.lower():
                problems.append(Problem(f.path, f"does not match {MANIFEST_NAME}",
                                        f"its {len(f.parts)} parts joined have sha256 {running[0].hexdigest()}; "
                                        "the bundle itself is bad: build it again"))
        return problems


def not_a_bundle(path: Path, tool: str = "amsrepomirror") -> str | None:
    """Why ``path`` is not a bundle folder, and what to pass instead (``tool``: the command as it
    can be typed); None when it looks like one (a folder with manifest.json, SHA256SUMS or chunks;
    what they hold is for verify_bundle)."""
    path = Path(path)
    if path.is_file():
        if path.name.endswith(CHUNK_SUFFIX) or path.name in (MANIFEST_NAME, SUMS_NAME, README_NAME):
            what = "a chunk" if path.name.endswith(CHUNK_SUFFIX) else f"the {path.name}"
            return f"{path} is {what} of a bundle, not a bundle folder: pass the folder that holds it ({path.parent})"
        return f"{path} is a file, not a bundle folder"
    if not path.is_dir():
        return f"{path} does not exist: pass the bundle folder (the one holding manifest.json, SHA256SUMS and the chunks)"
    if any((path / name).exists() for name in (MANIFEST_NAME, SUMS_NAME)) or any(path.glob("*" + CHUNK_SUFFIX)):
        return None
    if (path / STATE_DIR).is_dir():
        return (f"{path} is a mirror, not a bundle folder: make a bundle of it with "
                f"{tool} bundle --offline --version VERSION --mirror {path} --out BUNDLE, then pass BUNDLE")
    return f"{path} is not a bundle folder: it holds no {MANIFEST_NAME}, {SUMS_NAME} or *{CHUNK_SUFFIX} chunks"


def verify_bundle(bundle_dir: Path, *, test_archives: bool = True, partial: bool = False,
                  on_bytes: Callable[[int], None] | None = None,
                  on_total: Callable[[int], None] | None = None,
                  manifest_bytes: bytes | None | object = READ_MANIFEST) -> VerifyReport:
    """Check a bundle folder; the report names every bad chunk and what is wrong with it.

    ``manifest_bytes``: manifest.json as the caller read it (unpack and verify: the bytes whose
    signature they check), checked and parsed instead of the file, which is then not read at all;
    None: the caller found none (it is then "missing", whatever the folder holds by now); left out
    (``READ_MANIFEST``): the file is read here, once. The report's manifest is parsed from exactly
    the bytes checked.

    Checks: SHA256SUMS present and well-formed; manifest.json readable, consistent, and agreeing
    with SHA256SUMS; README.txt agrees with SHA256SUMS; every chunk present, of the right size
    ("truncated" when short) and sha256 ("corrupt"); nothing else under tool/ and no chunk-like
    name that the manifest does not list ("unexpected"; ``format.unlisted_files``, whose other
    unlisted files are named in one warning); and, with ``test_archives``, what the chunks hold
    (``_ContentCheck``): the member checks unpack applies, correct CRCs, and every member and every file with the size
    and sha256 the manifest lists; the tool/ files of a --with-tool bundle with the size and sha256
    the manifest lists. So a bundle that verifies is one that unpack accepts.

    Each chunk of the right size is read once to hash it (streaming, ``HASH_THREADS`` chunks at
    a time); with ``test_archives`` each intact chunk is then read a second time, to decompress
    and hash its members. Chunks are taken in the order of the manifest's chunk list (the
    writing order: a split file's parts are hashed whole in that order), else of their names.

    README.txt only documents the bundle: its absence is a warning (``warnings``), not a problem.
    With ``partial`` (one stick of several) a missing chunk is not a problem but "not here yet"
    (``not_here``); what is present is checked as above. ``on_total`` hears, once the chunks are
    found, how many bytes will be read (chunks hashed, plus members decompressed with
    ``test_archives``); ``on_bytes`` each block as it is read (from several threads): a progress
    bar over the whole job.
    """
    bundle_dir = Path(bundle_dir)
    report = VerifyReport(bundle_dir=bundle_dir)
    if not bundle_dir.is_dir():
        report.problems.append(Problem(str(bundle_dir), "missing", "not a folder"))
        return report
    sums = _read_sums(report)
    manifest = _read_manifest(report, sums, manifest_bytes)
    _check_readme(report, sums, manifest)
    _check_signature_file(report, sums)
    if manifest is not None:
        _check_manifest(report, manifest, sums)
    expected = _expected_chunks(manifest, sums)
    content = _ContentCheck(manifest, on_bytes) if test_archives else None
    _check_chunks(report, expected, content, partial=partial, on_bytes=on_bytes, on_total=on_total)
    if manifest is not None or sums is not None:
        _check_unlisted(report, expected.size, side_paths(manifest) if manifest is not None else list(sums or {}))
    if manifest is not None and manifest.parity is not None and not partial:
        _ask_parity(report, manifest, sums)
    elif manifest is not None and manifest.parity is not None:
        _check_parity_here(report, manifest, sums)
    return report


def side_paths(manifest: BundleManifest) -> list[str]:
    """The files the manifest lists besides its chunks and itself: tool/ files, PAR2 files, the transfer report."""
    parity = manifest.parity.files if manifest.parity else []
    return [t.path for t in manifest.tool] + [f.path for f in parity] + [r.name for r in manifest.report]


def _ask_parity(report: VerifyReport, manifest: BundleManifest, sums: dict[str, str] | None) -> None:
    """The PAR2 files as listed (a bad one is a warning: it only weakens the parity); when chunks are damaged and
    nothing else is, what ``par2 verify`` says about repairing them."""
    damaged_parity = parity_problems(report.bundle_dir, manifest, sums)
    for path, what in damaged_parity:
        report.warnings.append(f"{path}: {what} (a recovery file: the parity is weaker, the chunks are checked on their own)")
    if not report.bad_chunks or any(not p.chunk for p in report.problems) or report.unexpected_chunks:
        return
    if any(p.problem == "bad archive" or p.problem.startswith("member ") for p in report.problems):
        return  # a chunk as the manifest lists it, but bad inside: the bundle itself is bad
    if any(what != "missing" for _, what in damaged_parity):  # par2 would read them in place; repair takes only intact ones
        report.parity_damaged = True
        return
    if find_par2() is None:
        report.parity_unchecked = True
        return
    report.repair = verify_with_par2(report.bundle_dir)


def _check_parity_here(report: VerifyReport, manifest: BundleManifest, sums: dict[str, str] | None) -> None:
    """verify --partial: the recovery volumes here are checked like chunks (a bad one is a problem: copy it again
    while the stick is at hand); those not here are named with the chunks not here yet. parity.par2 goes on
    every stick: without it here, a warning."""
    for path, what in parity_problems(report.bundle_dir, manifest, sums):
        if what != "missing":
            report.problems.append(Problem(path, what, "a recovery volume: copy it again", chunk=True))
        elif path == PARITY_INDEX:
            report.warnings.append(f"{PARITY_INDEX} is not here: every stick carries a copy (par2 and repair read it "
                                   "first); copy it from another stick")
        else:
            report.not_here.append(path)


def parity_problems(bundle_dir: Path, manifest: BundleManifest, sums: dict[str, str] | None) -> list[tuple[str, str]]:
    """How the PAR2 files differ from the manifest's ``parity`` list and SHA256SUMS: (path, what) each."""
    if manifest.parity is None:
        return []
    problems = []
    for f in manifest.parity.files:
        path = Path(bundle_dir) / f.path
        if sums is not None and sums.get(f.path) != f.sha256:
            problems.append((f.path, f"{SUMS_NAME} disagrees with {MANIFEST_NAME}"))
        elif not path.is_file():
            problems.append((f.path, "missing"))
        elif path.stat().st_size < f.size:
            problems.append((f.path, "truncated"))
        elif path.stat().st_size != f.size or sha256_file(path) != f.sha256:  # guard: parity-file-hash
            problems.append((f.path, "corrupt"))
    return problems


def _read_sums(report: VerifyReport) -> dict[str, str] | None:
    """SHA256SUMS as {name: sha256}; None (and a problem) when it is missing or malformed."""
    try:
        return read_sums(report.bundle_dir)
    except IntegrityError as exc:
        missing = not (report.bundle_dir / SUMS_NAME).exists()
        report.problems.append(Problem(SUMS_NAME, "missing" if missing else "corrupt",
                                       "bundle incomplete: it is written last" if missing else str(exc)))
        return None


def _read_manifest(report: VerifyReport, sums: dict[str, str] | None,
                   manifest_bytes: bytes | None | object) -> BundleManifest | None:
    """manifest.json parsed from exactly the bytes checked against SHA256SUMS (``verify_bundle`` says
    where they come from); also kept in the report, with its first path warnings."""
    add = report.problems.append
    manifest: BundleManifest | None = None
    try:
        if manifest_bytes is READ_MANIFEST:
            manifest_bytes = read_manifest_bytes(report.bundle_dir)
        if manifest_bytes is None:
            add(Problem(MANIFEST_NAME, "missing"))
        else:
            if sums is not None and sums.get(MANIFEST_NAME) != hashlib.sha256(manifest_bytes).hexdigest():  # guard: manifest-sums
                add(Problem(MANIFEST_NAME, "corrupt", f"does not match {SUMS_NAME}"))
            manifest = BundleManifest.from_bytes(manifest_bytes, report.bundle_dir / MANIFEST_NAME)
    except IntegrityError as exc:
        add(Problem(MANIFEST_NAME, "unreadable", str(exc)))
    report.manifest = manifest
    if manifest is not None:
        report.warnings.extend(manifest.path_warnings[:3])
    return manifest


def _check_readme(report: VerifyReport, sums: dict[str, str] | None, manifest: BundleManifest | None) -> None:
    """README.txt as SHA256SUMS and the (signed) manifest list it; a missing one is only a warning."""
    readme_path = report.bundle_dir / README_NAME
    if not readme_path.exists():  # documentation: its absence does not make the bundle unusable
        report.warnings.append(f"{README_NAME} is missing from {report.bundle_dir} (it only documents the bundle; "
                               "the chunks are checked against manifest.json and SHA256SUMS)")
        return
    if sums is None and (manifest is None or not manifest.readme_sha256):
        return
    add = report.problems.append
    try:
        digest = sha256_file(readme_path)
        if sums is not None and sums.get(README_NAME) != digest:
            add(Problem(README_NAME, "corrupt", f"does not match {SUMS_NAME}"))
        elif manifest is not None and manifest.readme_sha256 and digest != manifest.readme_sha256:  # guard: readme-signed
            add(Problem(README_NAME, "corrupt", f"does not match {MANIFEST_NAME}: do not follow it"))
    except OSError as exc:
        add(Problem(README_NAME, "unreadable", str(exc)))


def _check_signature_file(report: VerifyReport, sums: dict[str, str] | None) -> None:
    """The signature file is in SHA256SUMS exactly when it is in the folder, with that sha256 (what it
    proves is checked by bundle.signature)."""
    if sums is None:
        return
    signature_path = report.bundle_dir / SIGNATURE_NAME
    add = report.problems.append
    if signature_path.exists() != (SIGNATURE_NAME in sums):
        add(Problem(SIGNATURE_NAME, f"not in {SUMS_NAME}" if signature_path.exists() else "missing"))
    elif signature_path.exists():
        try:
            if sums[SIGNATURE_NAME] != hashlib.sha256(read_bounded(signature_path, SIGNATURE_LIMIT)).hexdigest():
                add(Problem(SIGNATURE_NAME, "corrupt", f"does not match {SUMS_NAME}"))
        except OSError as exc:
            add(Problem(SIGNATURE_NAME, "unreadable", str(exc)))


def _check_manifest(report: VerifyReport, manifest: BundleManifest, sums: dict[str, str] | None) -> None:
    """manifest.json's own consistency, its agreement with SHA256SUMS, and the tool/ files it lists."""
    for issue in _check_manifest_consistency(manifest):
        report.problems.append(Problem(MANIFEST_NAME, "inconsistent", issue))
    if sums is not None:
        _check_sums_agree(report, manifest, sums)
    report.problems += [Problem(path, what) for path, what in tool_problems(report.bundle_dir, manifest, sums)]
    _check_transfer_report(report, manifest, sums)


def _check_transfer_report(report: VerifyReport, manifest: BundleManifest, sums: dict[str, str] | None) -> None:
    """The transfer report's files as the (signed) manifest lists them (and SHA256SUMS, when it names them); a
    missing one is only a warning (it documents the bundle, as README.txt does)."""
    for r in manifest.report:
        path = report.bundle_dir / r.name
        if not path.is_file():
            report.warnings.append(f"{r.name} is missing from {report.bundle_dir} (the transfer report only documents "
                                   "the bundle; verify --transfer-report FILE makes it again)")
        elif sums is not None and r.name in sums and sums[r.name] != r.sha256:
            report.problems.append(Problem(r.name, "corrupt", f"{SUMS_NAME} disagrees with {MANIFEST_NAME}"))
        elif path.stat().st_size != r.size or sha256_file(path) != r.sha256:  # guard: transfer-report-signed
            report.problems.append(Problem(r.name, "corrupt", f"does not match {MANIFEST_NAME}: do not rely on it"))


def _check_sums_agree(report: VerifyReport, manifest: BundleManifest, sums: dict[str, str]) -> None:
    """SHA256SUMS names every chunk with the manifest's sha256, and nothing the manifest does not list."""
    add = report.problems.append
    for c in manifest.chunks:
        if c.name not in sums:
            add(Problem(c.name, f"not in {SUMS_NAME}", chunk=True))
        elif sums[c.name] != c.sha256:  # guard: verify-sums-agree
            add(Problem(c.name, f"{SUMS_NAME} disagrees with {MANIFEST_NAME}", chunk=True))
    listed = {c.name for c in manifest.chunks} | set(side_paths(manifest))
    for name in sorted(set(sums) - listed - {MANIFEST_NAME, README_NAME, SIGNATURE_NAME}):
        add(Problem(name, f"listed in {SUMS_NAME} but not in {MANIFEST_NAME}", chunk=name.endswith(CHUNK_SUFFIX)))


@dataclass
class _ExpectedChunks:
    """What the chunks should be: from the manifest, else (damaged manifest) from SHA256SUMS."""

    size: dict[str, int | None] = field(default_factory=dict)  # None: not known (from SHA256SUMS)
    sha256: dict[str, str] = field(default_factory=dict)
    chunks: dict[str, Chunk] = field(default_factory=dict)  # the manifest's entries, when it was read
    order: list[str] = field(default_factory=list)  # the manifest's chunk order, else the names sorted


def _expected_chunks(manifest: BundleManifest | None, sums: dict[str, str] | None) -> _ExpectedChunks:
    expected = _ExpectedChunks()
    if manifest is not None:
        for c in manifest.chunks:
            expected.size[c.name] = c.size
            expected.sha256[c.name] = c.sha256
            expected.chunks[c.name] = c
        expected.order = list(dict.fromkeys(c.name for c in manifest.chunks))
    elif sums is not None:
        for name, digest in sums.items():
            if name not in (MANIFEST_NAME, README_NAME, SIGNATURE_NAME, *REPORT_NAMES) and not is_tool_path(name):
                expected.size[name] = None
                expected.sha256[name] = digest
        expected.order = sorted(expected.size)
    return expected


def _is_chunk_name(name: str) -> bool:
    """A name verify may open as a chunk: a plain file name, not one of the bundle's own files."""
    return is_plain_file_name(name) and name not in (MANIFEST_NAME, SUMS_NAME, README_NAME, *REPORT_NAMES)


def _right_size(size: int | None, want: int | None) -> bool:
    """Present, and of the listed size when one is listed: worth hashing."""
    return size is not None and (want is None or size == want)


def _chunk_sizes(report: VerifyReport, order: list[str]) -> dict[str, int | None]:
    """Each chunk's size on disk (None: missing), before anything is read."""
    sizes: dict[str, int | None] = {}
    for name in order:
        if not _is_chunk_name(name):
            continue
        try:
            sizes[name] = (report.bundle_dir / name).stat().st_size
        except FileNotFoundError:
            sizes[name] = None
    return sizes


def _bytes_to_read(sizes: dict[str, int | None], expected: _ExpectedChunks, content: _ContentCheck | None,
                   manifest: BundleManifest | None) -> int:
    """What the progress bar counts to: the chunks hashed, plus the members decompressed."""
    present = {n for n, size in sizes.items() if _right_size(size, expected.size[n])}
    members = sum(p.size for f in manifest.files for p in f.parts if p.chunk in present) if content and manifest else 0
    return sum(sizes[n] for n in present) + members


def _check_chunks(report: VerifyReport, expected: _ExpectedChunks, content: _ContentCheck | None, *,
                  partial: bool, on_bytes: Callable[[int], None] | None,
                  on_total: Callable[[int], None] | None) -> None:
    """Sizes first (cheap); the chunks of the right size are hashed HASH_THREADS at a time while
    the results are taken (and archives tested) in the order of the chunk list."""
    sizes = _chunk_sizes(report, expected.order)
    if on_total is not None:
        on_total(_bytes_to_read(sizes, expected, content, report.manifest))
    hashing: dict[str, Future[str]] = {}
    pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="amsrepomirror-verify")
    try:
        for name, size in sizes.items():
            if _right_size(size, expected.size[name]):
                hashing[name] = pool.submit(sha256_file, report.bundle_dir / name, on_bytes)
        for name in expected.order:
            _check_chunk(report, name, sizes, hashing, expected, content, partial)
        if content is not None:
            report.problems += content.finish()
    finally:
        for future in hashing.values():
            future.cancel()
        pool.shutdown(wait=True)


def _check_chunk(report: VerifyReport, name: str, sizes: dict[str, int | None], hashing: dict[str, Future[str]],
                 expected: _ExpectedChunks, content: _ContentCheck | None, partial: bool) -> None:
    """One chunk: its name, presence, size and sha256, then (``content``) what it holds."""
    add = report.problems.append
    if not _is_chunk_name(name):
        add(Problem(name, "unsafe chunk name", chunk=False))
        return
    size = sizes[name]
    if size is None:
        if partial:
            report.not_here.append(name)
        else:
            add(Problem(name, "missing", chunk=True))
        return
    wrong = _size_problem(name, size, expected.size[name])
    if wrong is not None:
        add(wrong)
        return
    digest = hashing[name].result()
    report.chunks_checked += 1
    report.bytes_checked += size
    if digest != expected.sha256[name]:  # guard: verify-chunk-hash
        add(Problem(name, "corrupt", "sha256 differs", chunk=True))
        return
    if content is not None:
        report.problems += content.check(report.bundle_dir / name, expected.chunks.get(name))


def _size_problem(name: str, size: int, want: int | None) -> Problem | None:
    """A chunk shorter ("truncated") or longer than the manifest lists."""
    if want is not None and size < want:
        return Problem(name, "truncated", f"{size} of {want} bytes", chunk=True)
    if want is not None and size > want:
        return Problem(name, "wrong size", f"{size} bytes, expected {want}", chunk=True)
    return None


#: verify names at most this many files it ignored.
IGNORED_SHOWN = 20


def _check_unlisted(report: VerifyReport, chunks, others) -> None:
    """What the folder holds besides the bundle's files (``unlisted_files``): refused ones are problems,
    the others one warning."""
    listed = {MANIFEST_NAME, SUMS_NAME, README_NAME, SIGNATURE_NAME, *chunks, *others}
    refused, ignored = unlisted_files(report.bundle_dir, listed)
    for name in refused:
        chunk = "/" not in name and looks_like_chunk(name)
        what = f"not in {MANIFEST_NAME}" + ("" if chunk else ": remove it")
        report.problems.append(Problem(printable(name), "unexpected", what, chunk=chunk))
    if ignored:
        more = f" and {len(ignored) - IGNORED_SHOWN} more" if len(ignored) > IGNORED_SHOWN else ""
        report.warnings.append(f"ignored {len(ignored)} file(s) that {MANIFEST_NAME} does not list (never read): "
                               + ", ".join(printable(name) for name in ignored[:IGNORED_SHOWN]) + more)


def tool_problems(bundle_dir: Path, manifest: BundleManifest, sums: dict[str, str] | None) -> list[tuple[str, str]]:
    """How the tool/ folder differs from the manifest's ``tool`` list and SHA256SUMS: (path, what) each."""
    problems = []
    for t in manifest.tool:
        path = Path(bundle_dir) / t.path
        if sums is not None and sums.get(t.path) != t.sha256:
            problems.append((t.path, f"{SUMS_NAME} disagrees with {MANIFEST_NAME}"))
        elif not path.is_file():
            problems.append((t.path, "missing"))
        elif path.stat().st_size != t.size or sha256_file(path) != t.sha256:
            problems.append((t.path, "corrupt"))
    return problems
