"""Byte sizes as people write them: ``5MiB``, ``3900MiB``, ``64GB``, ``123``.

One rule each way. Read: ``KiB``/``MiB``/``GiB``/``TiB`` are powers of 1024, ``kB``/``MB``/``GB``/``TB``
powers of 1000 (as USB sticks are sold); a bare ``K``/``M``/``G``/``T`` is refused as ambiguous (``split``
and ``dd`` read it as 1024-based, a stick's label as 1000-based: a 64G stick taken as GiB would be
overfilled). A fraction is exact (``1.005kB`` is 1005 bytes), and a byte fraction is dropped.
Shown: always 1024-based, with IEC names (KiB, MiB, GiB, TiB).
"""

import re

from amsrepomirror.errors import UsageError

_FACTORS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+)(?:\.([0-9]+))?\s*([a-zA-Z]*)\s*$", re.ASCII)
#: Sizes above this many bytes (8 EiB) are refused: no disk, stick or chunk is that large.
MAX_SIZE = 2**63 - 1


def parse_size(text: str) -> int:
    """Parse a size with an optional SI (kB, MB, GB) or binary (KiB, MiB, GiB) unit into bytes."""
    match = _SIZE.match(str(text))
    unit = match.group(3).lower() if match else None
    if match and unit in ("k", "m", "g", "t"):
        number, letter = match.group(1) + (f".{match.group(2)}" if match.group(2) else ""), match.group(3).upper()
        raise UsageError(f"size {text!r} is ambiguous: write {number}{letter}iB (1024-based, as split and dd read it) "
                         f"or {number}{letter}B (1000-based, as USB sticks are sold)")
    if not match or unit not in _FACTORS:
        raise UsageError(f"cannot read size {text!r}: use a number with an optional unit such as 5MiB, 3900MiB or 4GB")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(whole) + len(fraction) > 30:  # no real size has this many digits
        raise UsageError(f"size {text!r} has too many digits")
    factor = _FACTORS[unit]  # in whole numbers: a float would make 1.005kB 1004 bytes
    value = int(whole) * factor + int(fraction or "0") * factor // 10 ** len(fraction)
    if value <= 0:
        raise UsageError(f"size {text!r} must be greater than zero")
    if value > MAX_SIZE:
        raise UsageError(f"size {text!r} is too large (at most {MAX_SIZE} bytes)")
    return value


def format_size(n: float) -> str:
    """Render a byte count for humans (binary units, IEC names)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def plural(n: int) -> str:
    """The -s a noun takes after the count ``n`` ("" for one)."""
    return "" if n == 1 else "s"


def counted(n: int, noun: str) -> str:
    """``1 file``, ``2 files``: a count and its noun in the right number (nouns that take an -s)."""
    return f"{n} {noun}{plural(n)}"
