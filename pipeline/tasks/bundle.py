"""Bundle wiring: BundleArchive (after VerifyTree, or the last verified mirror) → WriteChunk per chunk.

The packing code (``pack.build``: 7z, signatures) is imported in the methods that pack: every run registers
these tasks (``amsrepomirror.tasks``), and a mirror run should not load what only a bundle needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import luigi
from luigi.util import inherits

from amsrepomirror.bundle.format import COMPRESSIONS, MANIFEST_NAME, SUMS_NAME, BundleManifest
from amsrepomirror.errors import MirrorError
from amsrepomirror.online.manifest import Manifest, union_manifest
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.pack.delta_base import read_base
from amsrepomirror.pack.parity import parity_setting
from amsrepomirror.pack.tool import check_spec, tool_matches
from amsrepomirror.tasks.base import MirrorTask, ReportsFailure
from amsrepomirror.tasks.mirror import VerifyTree
from amsrepomirror.util import progress
from amsrepomirror.util.units import parse_size

if TYPE_CHECKING:
    from amsrepomirror.pack import build


class VerifiedMirror(luigi.ExternalTask):
    """The latest verified manifest of a mirror, for bundling without contacting the server."""

    version = luigi.Parameter()
    mirror = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(str(Workspace(self.mirror).manifest_path(self.version)))


class UnionTarget(luigi.Target):
    """Exists when the union manifest on disk is the union of the versions' current verified manifests."""

    def __init__(self, path: str, sources):
        self.path, self.sources = path, list(sources)

    def union(self) -> Manifest:
        return union_manifest([Manifest.read(Path(source)) for source in self.sources])

    def exists(self):
        try:
            return Path(self.path).read_bytes() == self.union().to_json()
        except (OSError, MirrorError):
            return False


class VersionsUnion(ReportsFailure, luigi.Task):
    """Several versions' verified mirrors as one tree: what a bundle of them carries, each path once."""

    versions = luigi.ListParameter()
    mirror = luigi.Parameter()

    def requires(self):
        return [VerifiedMirror(version=v, mirror=self.mirror) for v in self.versions]

    def output(self):
        return UnionTarget(str(Workspace(self.mirror).union_manifest_path(self.versions)), [t.path for t in self.input()])

    def run(self):
        self.output().union().write(Path(self.output().path))


class BundleTarget(luigi.Target):
    """Exists when the bundle folder is finished (SHA256SUMS written last) for this mirror manifest,
    settings and delta base (None: a full bundle), with a tool/ folder or without, signed when ``signed``."""

    def __init__(self, out: str, mirror_manifest_path: str, chunk_size: str, compression: str,
                 base: str | None = None, with_tool: bool = False, signed: bool = False, tool_for=((), ()),
                 dropped=(), stick_size: int = 0, parity: str = ""):
        self.out, self.mirror_manifest_path = Path(out), Path(mirror_manifest_path)
        self.stick_size, self.parity = stick_size, parity
        self.dropped = sorted(dropped)
        self.chunk_size, self.compression, self.base = parse_size(chunk_size), compression, base
        self.with_tool, self.signed, self.tool_for = with_tool, signed, tool_for

    def exists(self):
        if not (self.out / SUMS_NAME).exists() or not self.mirror_manifest_path.exists():
            return False
        from amsrepomirror.bundle.signature import is_signed  # here: see the module's docstring

        if self.signed and not is_signed(self.out):
            return False
        try:
            built = BundleManifest.read(self.out / MANIFEST_NAME)
        except MirrorError:
            return False
        sticks = built.sticks.size if built.sticks else 0
        parity = parity_setting(built.parity)
        return ((built.chunk_size, built.compression, built.base, bool(built.tool), built.dropped, sticks, parity)
                == (self.chunk_size, self.compression, self.base, self.with_tool, self.dropped, self.stick_size, self.parity)
                and built.mirror_manifest_sha256 == Manifest.read(self.mirror_manifest_path).sha256()
                and tool_matches(self.out, self.with_tool, *self.tool_for))


@inherits(VerifyTree)
class BundleArchive(MirrorTask):
    """The bundle folder: independent 7z chunks, manifest.json, README.txt and SHA256SUMS."""

    out = luigi.Parameter(description="bundle folder to write")
    chunk_size = luigi.Parameter(description="largest chunk file (fits FAT32 below 4 GiB)")
    compression = luigi.ChoiceParameter(choices=COMPRESSIONS, description="copy: packages are already compressed")
    offline = luigi.BoolParameter(default=False, description="bundle the last verified mirror without the network")
    versions = luigi.ListParameter(default=[], description="several versions in one bundle, version first "
                                   "(bundles their last verified mirrors: mirror each first)")
    since = luigi.Parameter(default="", description="delta base snapshot (pack.delta_base.write_base); empty: a full bundle")
    with_tool = luigi.BoolParameter(default=False, description="add tool/: wheels of amsrepomirror and install.sh")
    tool_pythons = luigi.ListParameter(default=[], description="with_tool: Python versions X.Y (default: this one)")
    tool_platforms = luigi.ListParameter(default=[], description="with_tool: pip platform tags (default: this machine's)")
    tool_wheel = luigi.Parameter(default="", significant=False,
                                 description="with_tool: amsrepomirror's own wheel (default: made from this install)")
    stick_size = luigi.IntParameter(default=0, description="bytes of one USB stick: the stick plan recorded in "
                                    "manifest.json (0: none)")
    parity = luigi.Parameter(default="", description="PAR2 recovery data over the chunks: a percent, or one-stick "
                             "(with stick_size: enough to lose any one stick); empty: none")
    sign_key = luigi.Parameter(default="", significant=False,
                               description="OpenSSH key (path; or its .pub with the key in ssh-agent) to sign manifest.json")

    def requires(self):
        if len(self.versions) > 1:
            return VersionsUnion(versions=self.versions, mirror=self.mirror)
        if self.offline:
            return VerifiedMirror(version=self.version, mirror=self.mirror)
        return self.clone(VerifyTree)

    def output(self):
        base = read_base(self.since) if self.since else None
        return BundleTarget(self.out, self.input().path, self.chunk_size, self.compression, base and base.identity,
                            self.with_tool, bool(self.sign_key), (self.tool_pythons, self.tool_platforms),
                            list(base.dropped) if base else [], self.stick_size, self.parity)

    def run(self):
        from amsrepomirror.pack import build  # here: see the module's docstring

        manifest_path = self.input().path
        # Refused before any chunk is written (UsageError, exit 2: nothing was changed).
        tool = check_spec(self.tool_pythons, self.tool_platforms, self.tool_wheel) if self.with_tool else None
        plan = build.plan_for(manifest_path, self.chunk_size, self.version, self.compression, self.since)
        build.prepare_out(self.out, plan)
        progress.shared_total(sum(piece.size for chunk in plan.chunks for piece in chunk.pieces))
        yield [WriteChunk(mirror=self.mirror, version=self.version, out=self.out, manifest_path=manifest_path,
                          chunk_size=self.chunk_size, compression=self.compression, since=self.since, index=i)
               for i in range(len(plan.chunks))]
        build.assemble_bundle(self.mirror, self.out, plan, tool, self.sign_key, self.stick_size, self.parity)


class ChunkTarget(luigi.Target):
    """Exists when chunk ``index`` of this plan is in place with the size its done-marker records."""

    def __init__(self, out: str, plan: build.BundlePlan, index: int):
        self.out, self.plan, self.index = out, plan, index

    def exists(self):
        from amsrepomirror.pack import build  # here: see the module's docstring

        return build.chunk_done(self.out, self.plan, self.index)


class WriteChunk(ReportsFailure, luigi.Task):
    """One chunk of a bundle; its own target, so a killed bundle run resumes at the chunk where it stopped."""

    mirror = luigi.Parameter()
    version = luigi.Parameter()
    out = luigi.Parameter()
    manifest_path = luigi.Parameter()
    chunk_size = luigi.Parameter()
    compression = luigi.Parameter()
    since = luigi.Parameter(default="")
    index = luigi.IntParameter()

    def plan(self):
        from amsrepomirror.pack import build  # here: see the module's docstring

        return build.plan_for(self.manifest_path, self.chunk_size, self.version, self.compression, self.since)

    def requires(self):
        from amsrepomirror.pack import build  # here: see the module's docstring

        # A chunk that continues a split file resumes its hash where the chunk before left it.
        previous = build.continued_from(self.plan(), self.index)
        return [] if previous is None else self.clone(index=previous)

    def output(self):
        return ChunkTarget(self.out, self.plan(), self.index)

    def run(self):
        from amsrepomirror.pack import build  # here: see the module's docstring

        build.write_planned_chunk(self.mirror, self.out, self.plan(), self.index, on_bytes=progress.shared_done)
