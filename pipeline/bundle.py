"""The bundle folder format (contract): 7z chunks, ``manifest.json``, ``SHA256SUMS``, ``README.txt``.

This module owns reading and writing that folder's metadata. Each chunk is a standalone 7z
archive; a file larger than a chunk is stored as parts named ``<path>.part-0001``, ... that are
concatenated in order on unpack.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .errors import IntegrityError
from .fsutil import atomic_write_bytes

SCHEMA = "amsrepomirror/bundle-manifest/1"
MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
README_NAME = "README.txt"


def part_member(path: str, index: int) -> str:
    """Archive member name of part ``index`` (1-based) of a split file."""
    return f"{path}.part-{index:04d}"


def chunk_name(version: str, index: int, count: int) -> str:
    """File name of chunk ``index`` (1-based) of ``count``; zero-padded so names sort in order."""
    return f"{version}-{index:0{max(4, len(str(count)))}d}.7z"


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
        try:
            body = json.loads(Path(path).read_text(encoding="utf-8"))
            if body.get("schema") != SCHEMA:
                raise IntegrityError(f"{path} is not a bundle manifest of schema {SCHEMA} (found {body.get('schema')!r})")
            return cls(
                version=body["version"],
                files=[BundleFile(**{**f, "parts": [Part(**p) for p in f["parts"]]}) for f in body["files"]],
                chunks=[Chunk(**c) for c in body["chunks"]],
                compression=body.get("compression", "copy"),
                chunk_size=body.get("chunk_size", 0),
                tool_version=body.get("tool_version", ""),
                created=body.get("created", ""),
                mirror_manifest_sha256=body.get("mirror_manifest_sha256", ""),
                base=body.get("base"),
            )
        except IntegrityError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"cannot read bundle manifest {path}: {exc}") from exc
