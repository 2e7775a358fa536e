"""Every JSON document read from a bundle, a receipt or the mirror's state goes through one bounded
reader: whatever bytes are there (random, mutated, nested without end, huge), the manifest and
receipt parsers fail only with their documented error, in one line, and the commands exit 4."""

import base64
import gzip
import json
import re
from pathlib import Path

import pytest
from clihelp import run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_offline_hostile import copy_of, error_lines, manifest_body, resign, source  # noqa: F401 (a fixture)

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, BundleFile, BundleManifest, Chunk, Part, chunk_name
from amsrepomirror.bundle.receipt import InstalledFile, make_receipt, receipt_lacking, receipt_tree
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.offline.placement import RECEIPT, read_receipt
from amsrepomirror.util.jsonread import LIMITS, MAX_DEPTH, JsonDamaged, nesting_depth, parse_json
from amsrepomirror.util.skipped_files import Lacking

VERSION = "AMS2026.1"
DEEP = 100_000  # far beyond Python's recursion limit


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def a_manifest() -> bytes:
    sha = "ab" * 32
    chunk = chunk_name("cd" * 32)
    files = [BundleFile(f"{VERSION}.yml", 3, sha, [Part(chunk, f"{VERSION}.yml", 0, 3, sha)]),
             BundleFile("linux/x86_64/adf.tar.zst", 5, sha, [Part(chunk, "linux/x86_64/adf.tar.zst", 0, 5, sha)])]
    body = BundleManifest(version=VERSION, files=files, chunks=[Chunk(chunk, 100, "ef" * 32, sorted(f.path for f in files))],
                          created="2026-11-27T00:00:00Z", sequence=3).to_json()
    BundleManifest.from_bytes(body, Path("m"))  # a valid one to start from
    return body


def a_receipt(rows: int) -> bytes:
    tree = [InstalledFile(f"common/f{i:05d}.dat", i, f"{i:064x}", 10**18 + i, i) for i in range(rows)]
    receipt = make_receipt("ab" * 32, VERSION, "/b", tree=tree, bundle_created="2026-01-31T12:00:00Z",
                           bundle_sequence=2, lacking=[Lacking("licensed/x.tar.zst", "not licensed")])
    return json.dumps(receipt).encode()


MANIFEST = a_manifest()
RECEIPTS = (a_receipt(3), a_receipt(3000))  # plain tree, compressed tree

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30)


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """``original`` with a few bytes flipped, cut, repeated, or a deep nest put in place of a value."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "nest", "swap-value"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 200))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif kind == "nest":
            data[at:at] = nested(draw(st.sampled_from([MAX_DEPTH, MAX_DEPTH + 1, 5000, DEEP]))).encode()
        else:  # a field's value replaced by any JSON value
            body = json.loads(bytes(data)) if data[:1] == b"{" and _parses(data) else None
            if isinstance(body, dict) and body:
                key = draw(st.sampled_from(sorted(body)))
                body[key] = draw(json_values)
                data = bytearray(json.dumps(body).encode())
    return bytes(data)


def _parses(data) -> bool:
    try:
        json.loads(bytes(data))
        return True
    except ValueError:
        return False


documents = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(MAX_DEPTH - 2, DEEP).map(lambda d: nested(d).encode()),
    st.integers(MAX_DEPTH - 2, 3000).map(lambda d: ('{"a":' * d + "1" + "}" * d).encode()),
)


@pytest.mark.slow
@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.one_of(documents, mutated(MANIFEST)))
def test_the_manifest_parser_fails_only_with_an_integrity_error(data):
    try:
        BundleManifest.from_bytes(data, Path("manifest.json"))
    except IntegrityError as exc:
        assert len(str(exc).splitlines()) == 1


THE_CHUNK = json.loads(MANIFEST)["chunks"][0]["name"]
stick_plans = st.one_of(
    json_values,
    st.fixed_dictionaries({"size": st.one_of(st.integers(-2, 2**40), json_values),
                           "chunks": st.lists(st.lists(st.sampled_from([THE_CHUNK, chunk_name("0" * 64), "../x", 7]),
                                                       max_size=3), max_size=3)}),
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(stick_plans)
@example({"size": 4_000_000_000, "chunks": [[THE_CHUNK]]})  # the plan bundle --stick-size writes here
@example({"size": 4_000_000_000, "chunks": [[THE_CHUNK], [THE_CHUNK]]})  # a chunk on two sticks
@example({"size": 4_000_000_000, "chunks": [[THE_CHUNK, chunk_name("0" * 64)]]})  # a chunk the manifest lacks
@example({"size": 4_000_000_000, "chunks": []})  # a chunk on no stick
def test_a_stick_plan_is_read_only_when_it_puts_every_chunk_on_exactly_one_stick(sticks):
    body = json.loads(MANIFEST)
    body["sticks"] = sticks
    try:
        manifest = BundleManifest.from_bytes(json.dumps(body).encode(), Path("manifest.json"))
    except IntegrityError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert manifest.sticks.size > 0 and manifest.sticks.chunks == [[THE_CHUNK]]  # the one plan that holds here
    assert BundleManifest.from_bytes(manifest.to_json(), Path("m")).sticks == manifest.sticks  # written as read


@pytest.mark.slow
@settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(documents, mutated(RECEIPTS[0]), mutated(RECEIPTS[1])))
def test_the_receipt_parser_fails_only_with_its_documented_errors(tmp_path, data):
    (tmp_path / RECEIPT).write_bytes(data)
    try:
        receipt = read_receipt(tmp_path)
        if receipt is not None:
            receipt_tree(receipt, "r")
            receipt_lacking(receipt, "r")
    except (IntegrityError, UsageError) as exc:  # 4: damaged; 2: a receipt without a tree (older tool)
        assert len(str(exc).splitlines()) == 1


def test_the_bounded_reader_refuses_depth_size_and_bad_bytes_in_one_line():
    assert parse_json(nested(MAX_DEPTH).encode(), "bundle manifest") == json.loads(nested(MAX_DEPTH))
    assert nesting_depth(b'{"a": "[[[[[[", "b": ["\\"]]]]"]}') == 2  # brackets in strings do not count
    for data, reason in ((nested(MAX_DEPTH + 1).encode(), f"nested {MAX_DEPTH + 1} levels deep (at most {MAX_DEPTH})"),
                         (nested(DEEP).encode(), f"nested {DEEP} levels deep"),
                         (b'{"a": "\xff"}', "not UTF-8"), (b'{"a": ', "not valid JSON"),
                         (b" " * (LIMITS["file record"] + 1), "larger than 1.0 MiB")):
        with pytest.raises(JsonDamaged, match=re.escape(reason)) as caught:
            parse_json(data, "file record")
        assert len(str(caught.value).splitlines()) == 1


def test_a_compressed_receipt_tree_that_inflates_without_end_is_refused(monkeypatch):
    monkeypatch.setitem(LIMITS, "receipt tree", 1 << 20)  # the mechanism, without inflating a GiB in a test
    receipt = json.loads(RECEIPTS[1])
    assert len(receipt_tree(receipt, "r")) == 3000
    receipt["tree_gz"] = base64.b64encode(gzip.compress(b"[" + b" " * (1 << 21) + b"]")).decode()
    with pytest.raises(IntegrityError, match=r"receipt r is damaged: .*the receipt tree inflates to more than 1.0 MiB"):
        receipt_tree(receipt, "r")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["verify", "unpack"])
def test_a_deeply_nested_manifest_is_one_line_and_exit_4(source, tmp_path, command):  # noqa: F811
    out = copy_of(source, tmp_path)
    body = manifest_body(out)
    body["extra_field"] = json.loads(nested(MAX_DEPTH - 2))  # deep but within the bound: still a manifest
    resign(out, body)
    assert run_cli("verify", out).returncode == 0
    (out / MANIFEST_NAME).write_text(json.dumps(body)[:-1] + ', "deep": ' + nested(DEEP) + "}")
    write_sums(out, [p.name for p in out.glob("*.7z")] + [MANIFEST_NAME, README_NAME])  # as a forger would
    amshome = tmp_path / "ams"
    amshome.mkdir()
    args = (command, out) + (("--amshome", amshome) if command == "unpack" else ())
    result = run_cli(*args)
    assert result.returncode == 4, result.stderr
    [line] = error_lines(result)
    assert f"cannot read bundle manifest {out / MANIFEST_NAME}: the bundle manifest is nested {DEEP + 1} levels deep " \
           f"(at most {MAX_DEPTH})" in line
    assert "Traceback" not in result.stderr
    if command == "unpack":
        assert not (amshome / "repository").exists()


@pytest.mark.slow
def test_a_deeply_nested_receipt_is_one_line_and_exit_4(source, tmp_path):  # noqa: F811
    amshome = tmp_path / "ams"
    amshome.mkdir()
    assert run_cli("unpack", source[1], "--amshome", amshome).returncode == 0
    (amshome / RECEIPT).write_text('{"schema": ' + nested(DEEP) + "}")
    result = run_cli("receipt", "--amshome", amshome, "--out", tmp_path / "receipt.json")
    assert result.returncode == 4, result.stderr
    assert error_lines(result) == [f"error: cannot read receipt {amshome / RECEIPT}: the receipt is nested "
                                   f"{DEEP + 1} levels deep (at most {MAX_DEPTH})"]
    assert "Traceback" not in result.stderr and not (tmp_path / "receipt.json").exists()
