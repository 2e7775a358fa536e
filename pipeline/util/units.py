"""Byte sizes as people write them: ``5MiB``, ``3900MiB``, ``64GB``, ``123``.

One rule each way. Read: ``KiB``/``MiB``/``GiB``/``TiB`` are powers of 1024, ``kB``/``MB``/``GB``/``TB``
powers of 1000 (as USB sticks are sold); a bare ``K``/``M``/``G``/``T`` is refused as ambiguous (``split``
and ``dd`` read it as 1024-based, a stick's label as 1000-based: a 64G stick taken as GiB would be
overfilled). Shown: always 1024-based, with IEC names (KiB, MiB, GiB, TiB).
"""

import re

from amsrepomirror.errors import UsageError

_FACTORS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse a size with an optional SI (kB, MB, GB) or binary (KiB, MiB, GiB) unit into bytes."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match and unit in ("k", "m", "g", "t"):
        number, letter = match.group(1), match.group(2).upper()
        raise UsageError(f"size {text!r} is ambiguous: write {number}{letter}iB (1024-based, as split and dd read it) "
                         f"or {number}{letter}B (1000-based, as USB sticks are sold)")
    if not match or unit not in _FACTORS:
        raise UsageError(f"cannot read size {text!r}: use a number with an optional unit such as 5MiB, 3900MiB or 4GB")
    value = int(float(match.group(1)) * _FACTORS[unit])
    if value <= 0:
        raise UsageError(f"size {text!r} must be greater than zero")
    return value


def format_size(n: float) -> str:
    """Render a byte count for humans (binary units, IEC names)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
