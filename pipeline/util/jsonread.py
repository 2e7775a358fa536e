"""The one reader of every JSON document that comes from outside this process: a bundle's
manifest.json and BASE files, a receipt and the swap journal, and the mirror's state (snapshots,
records, ranges records, manifests, selections, the bundle history, chunk markers).

Such a file may be damaged, cut short or made by someone else, so it is read bounded in size and
in nesting depth: Python's parser would raise RecursionError (a traceback) a few thousand levels
down, and read a file of any size whole. Every problem is one ``JsonDamaged`` (a ValueError) with a
one-line reason; each caller turns it into its documented error, as it does with other damage.
"""

import json
import re
import zlib
from pathlib import Path
from typing import Any

from amsrepomirror.util.units import format_size

#: Deeper than any document the project writes (at most 5 levels) by far; shallow enough for any stack.
MAX_DEPTH = 64

MIB = 1 << 20
#: Size limits by kind of document (bytes of JSON; for a receipt's compressed tree, once decompressed).
LIMITS = {
    "bundle manifest": 1 << 30,
    "transfer report": 1 << 30,
    "receipt": 64 * MIB,
    "receipt tree": 1 << 30,
    "swap journal": 64 * MIB,
    "delta base": 1 << 30,
    "listing snapshot": 1 << 30,
    "mirror manifest": 1 << 30,
    "selection": 1 << 30,
    "file record": MIB,
    "download record": MIB,
    "ranges record": 64 * MIB,
    "chunk marker": 64 * MIB,
    "failure record": MIB,
}

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonDamaged(ValueError):
    """A document that is too large, nested too deep, not UTF-8 or not JSON (one line)."""


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data`` (brackets inside strings left out),
    found without parsing: a C-speed pass, then one step per bracket."""
    depth = deepest = 0
    for byte in _STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        depth += _STEP[byte]
        deepest = max(deepest, depth)
    return deepest


def parse_json(data: bytes, kind: str) -> Any:
    """``data`` as a JSON document of ``kind`` (a key of LIMITS), or JsonDamaged saying why not."""
    limit = LIMITS[kind]
    if len(data) > limit:
        raise JsonDamaged(f"the {kind} is larger than {format_size(limit)}")
    depth = nesting_depth(data)
    if depth > MAX_DEPTH:  # guard: json-depth-bound
        raise JsonDamaged(f"the {kind} is nested {depth} levels deep (at most {MAX_DEPTH})")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:  # cannot happen within MAX_DEPTH; kept so that no traceback can
        raise JsonDamaged(f"the {kind} is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise JsonDamaged(f"the {kind} is not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise JsonDamaged(f"the {kind} is not valid JSON ({str(exc).splitlines()[0] if str(exc) else 'empty'})") from None


def read_json(path: Path, kind: str) -> Any:
    """The JSON document of ``kind`` in the file ``path``, read no further than its limit allows.
    OSError as from open(); JsonDamaged for what parse_json refuses."""
    with open(path, "rb") as f:
        data = f.read(LIMITS[kind] + 1)
    return parse_json(data, kind)


def parse_json_lines(data: bytes, kind: str) -> list:
    """Every line of ``data`` that holds a JSON document of ``kind``, each bounded; damaged lines left out."""
    found = []
    for line in data.splitlines():
        if line.strip():
            try:
                found.append(parse_json(line, kind))
            except JsonDamaged:
                continue
    return found


def decompress_bounded(data: bytes, kind: str) -> bytes:
    """gzip ``data`` inflated to at most the limit of ``kind`` (a small file must not inflate without end)."""
    limit = LIMITS[kind]
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise JsonDamaged(f"the {kind} does not decompress ({exc})") from None
    if len(out) > limit:
        raise JsonDamaged(f"the {kind} inflates to more than {format_size(limit)}")
    if not inflater.eof:
        raise JsonDamaged(f"the {kind} is cut short")
    return out
