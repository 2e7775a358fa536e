"""``SHA256SUMS`` of a bundle folder, in ``sha256sum -c`` format: written and read here only."""

from pathlib import Path

from amsrepomirror.bundle.format import SUMS_NAME, is_tool_path
from amsrepomirror.errors import IntegrityError
from amsrepomirror.util.fsutil import atomic_write_bytes
from amsrepomirror.util.hashing import sha256_file
from amsrepomirror.util.paths import is_plain_file_name

_HEX = set("0123456789abcdef")


def write_sums(bundle_dir: Path, names, known: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``SHA256SUMS`` (``<hex>  <name>``, sorted) for ``names`` in ``bundle_dir``.

    Files are hashed (streaming) unless their sha256 is given in ``known``. Returns the sums.
    """
    bundle_dir = Path(bundle_dir)
    known = known or {}
    sums: dict[str, str] = {}
    for name in sorted(set(names)):
        if not (is_plain_file_name(name) or is_tool_path(name)) or name == SUMS_NAME:
            raise ValueError(f"cannot list {name!r} in {SUMS_NAME}")
        sums[name] = known[name] if name in known else sha256_file(bundle_dir / name)
    body = "".join(f"{sums[name]}  {name}\n" for name in sorted(sums))
    atomic_write_bytes(bundle_dir / SUMS_NAME, body.encode("utf-8"))
    return sums


def read_sums(bundle_dir: Path) -> dict[str, str]:
    """Parse ``SHA256SUMS`` into ``name -> hex``; IntegrityError if missing or malformed."""
    path = Path(bundle_dir) / SUMS_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing: the bundle is incomplete (it is written last)") from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read {path}: {exc}") from exc
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        if name.startswith((" ", "*")):
            name = name[1:]
        digest = digest.lower()
        if not sep or len(digest) != 64 or not set(digest) <= _HEX or not (is_plain_file_name(name) or is_tool_path(name)):
            raise IntegrityError(f"{path} line {number} is malformed: {line[:80]!r}")
        if name in sums:
            raise IntegrityError(f"{path} lists {name} twice")
        sums[name] = digest
    return sums
