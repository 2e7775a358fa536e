"""The receipt: what ``$AMSHOME/repository`` holds after an unpack (the bundle manifest installed, the
tree with its identity, what each version needs), its format and its checks.

Written by the offline side (``offline.placement``); read there and, carried back, by the online side as
the base of a delta (``pack.delta_base``). A tree is named by :func:`tree_identity` everywhere.
"""

import base64
import gzip
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from amsrepomirror.bundle.format import SHA256_PATTERN
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.util.jsonread import decompress_bounded, parse_json
from amsrepomirror.util.paths import VERSION_PATTERN, path_problem, printable
from amsrepomirror.util.skipped_files import Lacking, reason_problem
from amsrepomirror.util.timestamps import utc_now

#: receipt/2 adds ``version_paths`` (each installed version's paths); receipt/1 is still read.
RECEIPT_SCHEMA = "amsrepomirror/receipt/2"


RECEIPT_SCHEMAS = ("amsrepomirror/receipt/1", RECEIPT_SCHEMA)


#: A receipt's tree is stored as plain JSON up to this size, else gzip-compressed (base64).
TREE_INLINE_BYTES = 256 << 10


@dataclass(frozen=True)
class InstalledFile:
    """A file of the installed tree as the receipt records it, right after the swap that placed it."""
    path: str
    size: int
    sha256: str
    mtime_ns: int
    ino: int


def tree_identity(files: Iterable) -> str:
    """The identity of a whole tree (anything with path, size and sha256): sha256 of its sorted
    (path, size, sha256) list. Bundles, deltas and receipts name trees by it, whatever the chunks."""
    rows = sorted([f.path, f.size, f.sha256] for f in files)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode("utf-8")).hexdigest()


def _encode_tree(rows: list[InstalledFile]) -> dict[str, object]:
    listed = [[r.path, r.size, r.sha256, r.mtime_ns, r.ino] for r in sorted(rows, key=lambda r: r.path)]
    text = json.dumps(listed, separators=(",", ":"))
    if len(text) <= TREE_INLINE_BYTES:
        return {"tree": listed}
    return {"tree_gz": base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")}


def _encode_version_paths(version_paths: Mapping[str, Iterable[str]]) -> dict[str, object]:
    listed = {v: sorted(paths) for v, paths in sorted(version_paths.items())}
    text = json.dumps(listed, separators=(",", ":"))
    if len(text) <= TREE_INLINE_BYTES:
        return {"version_paths": listed}
    return {"version_paths_gz": base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")}


def make_receipt(manifest_sha256: str, version: str, bundle_path, *, tree: list[InstalledFile] | None = None,
                 bundle_created: str = "", bundle_sequence: int = 0,
                 lacking: Sequence[Lacking] = (), trust_installed: bool = False,
                 version_paths: Mapping[str, Iterable[str]] | None = None) -> dict[str, object]:
    """The receipt of an unpack: the bundle manifest installed and, with ``tree``, the installed
    tree itself (what a delta is built against and checked with); ``lacking``, the listed files the
    bundle did not carry and why (kept so the admin can still tell why amspackages misses them);
    ``trust_installed``: a delta took installed files by size, mtime and inode without hashing them
    (so a scrub can say the tree was trusted, not checked); ``version_paths``, the paths each
    installed AMS version needs (None: not known, as in receipts of older tools; then no delta may
    remove a file: ``bundle.delta_rules.removal_problems``)."""
    receipt = {
        "schema": RECEIPT_SCHEMA,
        "manifest_sha256": manifest_sha256,
        "version": version,
        "bundle_path": str(Path(bundle_path).absolute()) if bundle_path else "",
        "installed": utc_now(),
    }
    if tree is not None:
        receipt.update(bundle_created=bundle_created, bundle_sequence=bundle_sequence, tree_sha256=tree_identity(tree),
                       files=len(tree), bytes=sum(r.size for r in tree), **_encode_tree(tree))
    if lacking:  # absent when nothing is lacking: such receipts read as before
        receipt["lacking"] = [{"path": e.path, "reason": e.reason} for e in sorted(lacking, key=lambda e: e.path)]
    if trust_installed:  # absent when every reused file was hashed: such receipts read as before
        receipt["trust_installed"] = True
    if version_paths is not None:
        receipt.update(_encode_version_paths(version_paths))
    return receipt


def receipt_version_paths(receipt: dict, where, tree: Iterable[InstalledFile]) -> dict[str, set[str]] | None:
    """The paths each installed version needs, as the receipt records them: None when it does not
    (a receipt/1, or a bundle of several versions that did not say); IntegrityError naming ``where``
    when damaged (a version that is not one, a path not in the installed ``tree``, the receipt's
    ``version`` not among them)."""
    if "version_paths" not in receipt and "version_paths_gz" not in receipt:
        return None
    paths_of_tree = {r.path for r in tree}
    try:
        if "version_paths" in receipt:
            raw = receipt["version_paths"]
        else:
            raw = json.loads(gzip.decompress(base64.b64decode(str(receipt["version_paths_gz"]), validate=True)))
        if not isinstance(raw, dict) or receipt.get("version") not in raw:
            raise ValueError("its version_paths do not name its version")
        held = {}
        for version, paths in raw.items():
            if not VERSION_PATTERN.fullmatch(version) or not isinstance(paths, list):
                raise ValueError(f"its version_paths hold {printable(repr(version))[:40]}, not a version and its paths")
            held[version] = set(paths)
            if not held[version] <= paths_of_tree:
                raise ValueError(f"its version_paths of {version} name a path its tree does not hold")
    except (OSError, ValueError, EOFError, TypeError) as exc:
        raise IntegrityError(f"receipt {where} is damaged: {exc}") from None
    return held


def receipt_lacking(receipt: dict, where) -> list[Lacking]:
    """The lacking files a receipt records (none in receipts written before they were kept), each
    row checked; IntegrityError naming ``where`` when one is damaged."""
    entries = []
    for row in receipt.get("lacking", []):
        if not (isinstance(row, dict) and set(row) == {"path", "reason"} and not path_problem(row["path"])
                and not reason_problem(row["reason"])):
            raise IntegrityError(f"receipt {where} is damaged: a lacking file reads {printable(repr(row))[:120]}")
        entries.append(Lacking(row["path"], row["reason"]))
    return entries


def _decoded_rows(receipt: dict):
    if "tree" in receipt:
        return receipt["tree"]
    try:
        return parse_json(decompress_bounded(base64.b64decode(str(receipt["tree_gz"]), validate=True), "receipt tree"),
                          "receipt tree")
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"its compressed tree does not decode ({exc})") from None


def receipt_tree(receipt: dict, where) -> list[InstalledFile]:
    """The installed tree a receipt records, every row checked and the whole against its
    ``tree_sha256``: IntegrityError naming ``where`` when damaged, UsageError when the receipt
    predates installed trees (written before delta bundles)."""
    if "tree_sha256" not in receipt or ("tree" not in receipt and "tree_gz" not in receipt):
        raise UsageError(f"receipt {where} does not list the installed tree (written by an older amsrepomirror): "
                         "unpack a full bundle once, then its receipt can base a delta")
    try:
        rows = _decoded_rows(receipt)
        if not isinstance(rows, list):
            raise ValueError("its tree is not a list")
        tree = []
        for row in rows:
            if not (isinstance(row, list) and len(row) == 5 and not path_problem(row[0])
                    and all(type(v) is int and v >= 0 for v in (row[1], row[3], row[4]))
                    and isinstance(row[2], str) and SHA256_PATTERN.fullmatch(row[2])):
                raise ValueError(f"row {printable(repr(row)[:80])} is not a safe path, size, sha256, mtime and inode")
            tree.append(InstalledFile(*row))
        if len({r.path for r in tree}) != len(tree):
            raise ValueError("it lists a path twice")
        if tree_identity(tree) != receipt["tree_sha256"]:
            raise ValueError("its tree does not match its tree_sha256 (truncated or edited)")
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"receipt {where} is damaged: {exc}") from None
    return tree
