"""The mirror manifest: what VerifyTree found in the mirror, one entry per repository file.

It is the single record of "this tree is exactly what SCM served": path, size, sha256, the URL
it came from and the server's validators. Bundles are built from it; later delta bundles will
compare two of them, so it carries a schema version and a stable hash of its own.
"""

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amsrepomirror.errors import IntegrityError
from amsrepomirror.util.fsutil import atomic_write_bytes
from amsrepomirror.util.jsonread import read_json
from amsrepomirror.util.skipped_files import Lacking, merged

SCHEMA = "amsrepomirror/mirror-manifest/1"


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the repository root, '/'-separated
    size: int
    sha256: str
    url: str = ""
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class Manifest:
    version: str  # the AMS version, e.g. AMS2026.1
    files: list[FileEntry]
    listing_url: str = ""
    created: str = ""
    tool_version: str = ""
    skipped_unauthorized: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)  # several versions in one tree: all of them, ``version`` first
    # Listed files the tree does not hold (not licensed, or left out by --platform), with the reason.
    lacking: list[Lacking] = field(default_factory=list)
    # Several versions in one tree: the paths each one lists and the tree holds (what a bundle records, so
    # that a later delta of one version keeps what another still needs).
    version_paths: dict[str, list[str]] = field(default_factory=dict)

    @property
    def all_versions(self) -> list[str]:
        return list(self.versions) or [self.version]

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        body = {
            "schema": SCHEMA,
            "version": self.version,
            "listing_url": self.listing_url,
            "created": self.created,
            "tool_version": self.tool_version,
            "skipped_unauthorized": sorted(self.skipped_unauthorized),
            "files": [asdict(f) for f in sorted(self.files, key=lambda f: f.path)],
        }
        if len(self.all_versions) > 1:  # a one-version manifest stays byte for byte what it was
            body["versions"] = self.all_versions
            body["version_paths"] = {v: sorted(paths) for v, paths in self.version_paths.items()}
        if self.lacking:  # absent when nothing is lacking: such manifests stay what they were
            body["lacking"] = [asdict(e) for e in sorted(self.lacking, key=lambda e: e.path)]
        # Encoded piece by piece: the same bytes as json.dumps(...).encode(), without a whole str beside
        # them (tens of MB for 100,000 files).
        out = io.BytesIO()
        for piece in json.JSONEncoder(indent=1, sort_keys=True).iterencode(body):
            out.write(piece.encode())
        out.write(b"\n")
        return out.getvalue()

    def sha256(self) -> str:
        """Stable identity of this manifest (its canonical JSON bytes)."""
        return hashlib.sha256(self.to_json()).hexdigest()

    def write(self, path: Path) -> bytes:
        """Write the manifest; returns its bytes (for a copy without serialising thousands of entries again)."""
        body = self.to_json()
        atomic_write_bytes(Path(path), body)
        return body

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        try:
            body = read_json(Path(path), "mirror manifest")
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"cannot read mirror manifest {path}: {exc}") from None
        if not isinstance(body, dict) or body.get("schema") != SCHEMA:
            found = body.get("schema") if isinstance(body, dict) else type(body).__name__
            raise IntegrityError(f"cannot read mirror manifest {path}: not of schema {SCHEMA} (found {found!r})")
        try:
            return cls(
                version=body["version"],
                files=[FileEntry(**f) for f in body["files"]],
                listing_url=body.get("listing_url", ""),
                created=body.get("created", ""),
                tool_version=body.get("tool_version", ""),
                skipped_unauthorized=list(body.get("skipped_unauthorized", [])),
                versions=list(body.get("versions", [])),
                lacking=[Lacking(**e) for e in body.get("lacking", [])],
                version_paths={v: list(paths) for v, paths in body.get("version_paths", {}).items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"cannot read mirror manifest {path}: a field is missing or of the wrong type "
                                 f"({exc.__class__.__name__}: {exc}); run mirror again") from None


def union_manifest(manifests: Sequence[Manifest]) -> Manifest:
    """One manifest over the trees of several versions, each path once, ``version`` the first one's.

    Versions that list the same path share one mirror file, so their manifests must agree on it; when
    they do not, one of them was verified before the server changed the file.
    """
    files: dict[str, FileEntry] = {}
    owner: dict[str, str] = {}
    for manifest in manifests:
        for entry in manifest.files:
            other = files.setdefault(entry.path, entry)
            owner.setdefault(entry.path, manifest.version)
            if (other.size, other.sha256) != (entry.size, entry.sha256):
                raise IntegrityError(f"{entry.path} differs between the verified mirrors of {owner[entry.path]} and "
                                     f"{manifest.version}; run mirror for both versions again, then bundle")
    skipped = {p for m in manifests for p in m.skipped_unauthorized} - set(files)
    return Manifest(version=manifests[0].version, files=sorted(files.values(), key=lambda f: f.path),
                    listing_url=manifests[0].listing_url, created=max(m.created for m in manifests),
                    tool_version=manifests[0].tool_version, skipped_unauthorized=sorted(skipped),
                    versions=[m.version for m in manifests],
                    version_paths={m.version: sorted(f.path for f in m.files) for m in manifests},
                    lacking=merged((m.lacking for m in manifests), held=files))
