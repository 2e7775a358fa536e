"""chunk_plan (amsrepomirror.pack.plan), describe_plan (amsrepomirror.cli.plan) and write_chunk (amsrepomirror.pack.sevenzip)."""

import os
import random
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import py7zr
import pytest

from amsrepomirror.bundle.format import chunk_name, part_member
from amsrepomirror.cli.plan import describe_plan
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.pack.build import remove_partial_files
from amsrepomirror.pack.plan import (
    DEFAULT_CHUNK_SIZE,
    FIXED_OVERHEAD,
    MAX_PARTS,
    ChunkSpec,
    build_bundle_manifest,
    chunk_key,
    chunk_plan,
    member_overhead,
)
from amsrepomirror.pack.sevenzip import ChunkResult, ContentMismatch, Sha256State, write_chunk
from amsrepomirror.util.hashing import sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
KiB, MiB = 1024, 1024**2


def entries_for(root: Path):
    """FileEntry objects with real sizes and sha256s for every file under ``root``."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out.append(FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p)))
    return out


def make_tree(root: Path, spec):
    """``spec``: {relative path: size or bytes}; random (incompressible) content."""
    rng = random.Random(1234)
    for rel, content in spec.items():
        p = root.joinpath(*rel.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            content = rng.randbytes(content)
        p.write_bytes(content)
    return entries_for(root)


def fake_entries(sizes):
    return [FileEntry(path, size, "0" * 64) for path, size in sizes.items()]


def check_plan_invariants(plan, files, chunk_size):
    by_path = {f.path: f for f in files}
    covered = {f.path: [] for f in files}
    for spec in plan:
        assert spec.name == chunk_name(chunk_key(spec.compression, spec.pieces, {f.path: f.sha256 for f in files}))
        assert spec.max_size <= chunk_size
        assert spec.payload == sum(p.size for p in spec.pieces)
        assert spec.pieces, "no empty chunks"
        for p in spec.pieces:
            covered[p.path].append((p.offset, p.size, p.member, spec.name))
    assert len({s.name for s in plan}) == len(plan)
    members = [p.member for s in plan for p in s.pieces]
    assert len(members) == len(set(members))
    split = {}
    for path, pieces in covered.items():
        pieces.sort()
        pos = 0
        for offset, size, _member, _ in pieces:
            assert offset == pos, f"{path}: gap or overlap at {pos}"
            pos += size
        assert pos == by_path[path].size, f"{path}: {pos} of {by_path[path].size} bytes covered"
        if len(pieces) == 1:
            assert pieces[0][2] == path
        else:
            assert [m for _, _, m, _ in pieces] == [part_member(path, i) for i in range(1, len(pieces) + 1)]
            assert all(size > 0 for _, size, _, _ in pieces)
            split[path] = [c for _, _, _, c in pieces]
    return split


# --- chunk_plan ----------------------------------------------------------------------------------

def test_plan_is_deterministic_and_sorted_by_path():
    rng = random.Random(7)
    sizes = {f"dir{d}/file{i:03d}.zip": rng.randrange(0, 300 * KiB) for d in range(3) for i in range(40)}
    sizes["big/huge.iso"] = 5 * MiB
    files = fake_entries(sizes)
    shuffled = files[:]
    rng.shuffle(shuffled)
    a = chunk_plan(files, 1 * MiB, "V1")
    b = chunk_plan(shuffled, 1 * MiB, "V1")
    assert a == b
    order = [p.member for s in a for p in s.pieces]
    assert order == sorted(order, key=lambda m: m)  # greedy in path order


@pytest.mark.parametrize("compression", ["copy", "zstd", "lzma2"])
def test_plan_invariants(compression):
    rng = random.Random(compression)
    sizes = {f"pkgs/{chr(97 + i % 26)}/pkg-{i:04d}.tar.gz": rng.randrange(0, 200 * KiB) for i in range(120)}
    sizes["pkgs/b/zz-big.iso"] = 3 * MiB + 12345        # split over >= 3 chunks
    sizes["pkgs/c/exactly-empty"] = 0
    sizes["pkgs/d/near-chunk"] = 1 * MiB - 16 * KiB      # fits an empty chunk: must not be split
    files = fake_entries(sizes)
    plan = chunk_plan(files, 1 * MiB, "V1", compression)
    split = check_plan_invariants(plan, files, 1 * MiB)
    assert set(split) == {"pkgs/b/zz-big.iso"}
    assert len(set(split["pkgs/b/zz-big.iso"])) >= 3
    assert all(s.compression == compression and s.chunk_size == 1 * MiB for s in plan)


def test_split_file_parts_have_chunks_of_their_own_and_the_last_starts_the_stream():
    files = fake_entries({"a/small1": 100 * KiB, "b/big": 2500 * KiB, "c/after": 10 * KiB})
    plan = chunk_plan(files, 1 * MiB, "V1")
    check_plan_invariants(plan, files, 1 * MiB)
    members = [[p.member for p in s.pieces] for s in plan]
    assert members[0] == ["a/small1"]
    assert members[1:3] == [[part_member("b/big", 1)], [part_member("b/big", 2)]]
    assert members[3][0] == part_member("b/big", 3)
    assert [m for ms in members for m in ms][-1] == "c/after"


def test_file_that_fits_a_chunk_starts_a_new_chunk_instead_of_splitting():
    files = fake_entries({"a": 600 * KiB, "b": 600 * KiB})
    plan = chunk_plan(files, 1 * MiB, "V1")
    assert [[p.member for p in s.pieces] for s in plan] == [["a"], ["b"]]


def test_chunk_size_too_small_is_refused():
    files = fake_entries({"a": 10})
    with pytest.raises(UsageError, match="too small"):
        chunk_plan(files, FIXED_OVERHEAD, "V1")
    with pytest.raises(UsageError, match="too small"):
        chunk_plan(files, 100, "V1")
    long_name = "d/" + "x" * 2000
    with pytest.raises(UsageError, match="too small"):
        chunk_plan(fake_entries({long_name: 10}), FIXED_OVERHEAD + 2000, "V1")
    # just enough room for the header and one byte per part
    tiny = FIXED_OVERHEAD + member_overhead(part_member("a", MAX_PARTS)) + 1
    plan = chunk_plan(fake_entries({"a": 100}), tiny, "V1")
    assert [p.size for s in plan for p in s.pieces] == [1] * 100
    assert all(s.max_size <= tiny for s in plan)


def test_part_name_collision_is_refused():
    files = fake_entries({"big": 3 * MiB, part_member("big", 2): 10})
    with pytest.raises(UsageError, match="collides"):
        chunk_plan(files, 1 * MiB, "V1")
    # a real file matching the glob big.part-* would break `cat big.part-* > big`
    files = fake_entries({"big": 3 * MiB, "big.part-notes.txt": 10})
    with pytest.raises(UsageError, match="collides"):
        chunk_plan(files, 1 * MiB, "V1")
    # no split, no collision
    chunk_plan(fake_entries({"big": 10, part_member("big", 1): 10}), 1 * MiB, "V1")


@pytest.mark.parametrize("bad", ["/abs", "a/../b", "./a", "a//b", "a/", "a\\b", ""])
def test_unsafe_paths_are_refused(bad):
    with pytest.raises(UsageError):
        chunk_plan(fake_entries({bad: 1}), 1 * MiB, "V1")


def test_bad_settings_are_refused():
    with pytest.raises(UsageError, match="compression"):
        chunk_plan(fake_entries({"a": 1}), 1 * MiB, "V1", "gzip")
    with pytest.raises(UsageError, match="twice"):
        chunk_plan([FileEntry("a", 1, "0" * 64), FileEntry("a", 2, "0" * 64)], 1 * MiB, "V1")
    assert DEFAULT_CHUNK_SIZE < 4 * 1024**3 - 1


def test_describe_plan_says_one_file_one_chunk_one_stick_in_the_singular():
    files = fake_entries({"only": 100 * KiB})
    plan = chunk_plan(files, 1 * MiB, "AMS2026.1")
    text = describe_plan(plan, files, stick_size=2 * MiB)
    assert text.startswith("1 file, 100.0 KiB (102400 bytes) in 1 chunk of at most"), text
    assert "\n1 stick of 2.0 MiB needed" in text and "  stick 1: 1 chunk, " in text, text
    assert "1 files" not in text and "1 chunks" not in text and "1 sticks" not in text


def test_describe_plan_counts_chunks_and_sticks():
    files = fake_entries({f"f{i}": 700 * KiB for i in range(5)} | {"huge": 2 * MiB})
    plan = chunk_plan(files, 1 * MiB, "AMS2026.1")
    text = describe_plan(plan, files, stick_size=2 * MiB)
    assert f"{len(files)} files" in text
    assert f"{len(plan)} chunks" in text
    for spec in plan:
        assert spec.name in text
    assert "huge: 3 parts" in text
    # 8 chunks of ~1 MiB on 2 MiB sticks: two per stick
    assert f"{(len(plan) + 1) // 2} sticks of" in text
    bad = describe_plan(plan, files, stick_size=512 * KiB)
    assert "ERROR" in bad and "not fit on a stick" in bad
    assert "sticks" not in describe_plan(plan, files)


# --- write_chunk ---------------------------------------------------------------------------------

def write_all(plan, mirror, dest, files, compression):
    """Every chunk in order, each resuming the split-file hash state the one before left."""
    expected = {f.path: f for f in files}
    results = []
    for spec in plan:
        results.append(write_chunk(spec, mirror, dest, compression, expected,
                                   resume=results[-1].sha256_state if results else None))
    return results


@pytest.mark.parametrize("compression", ["copy", "zstd", "lzma2"])
def test_size_budget_holds_for_many_tiny_files_with_long_names(tmp_path, compression):
    rng = random.Random(5)
    spec = {}
    for i in range(600):
        name = f"repo/{'ünïcødé-' * rng.randrange(1, 12)}/{'long-package-name-' * rng.randrange(2, 9)}{i:04d}.pkg"
        spec[name] = rng.randrange(0, 120)
    spec["repo/zz/incompressible.bin"] = 700 * KiB  # random bytes: worst case for zstd/lzma2
    files = make_tree(tmp_path / "mirror", spec)
    chunk_size = 256 * KiB
    plan = chunk_plan(files, chunk_size, "V1", compression)
    assert len(plan) >= 4
    results = write_all(plan, tmp_path / "mirror", tmp_path / "bundle", files, compression)
    for spec_, result in zip(plan, results, strict=True):
        path = tmp_path / "bundle" / spec_.name
        assert result.chunk.size == path.stat().st_size <= spec_.max_size <= chunk_size
        assert result.chunk.sha256 == sha256_file(path)
        assert result.chunk.members == spec_.members
        with py7zr.SevenZipFile(path) as z:
            assert sorted(z.getnames()) == spec_.members
            assert z.testzip() is None


def test_write_chunk_returns_piece_hashes_and_round_trips(tmp_path):
    files = make_tree(tmp_path / "m", {"a/one.bin": 50 * KiB, "b/big.bin": 2 * MiB + 7, "c/empty": b""})
    plan = chunk_plan(files, 1 * MiB, "V1")
    results = write_all(plan, tmp_path / "m", tmp_path / "out", files, "copy")
    assert all(isinstance(r, ChunkResult) for r in results)
    big = (tmp_path / "m" / "b" / "big.bin").read_bytes()
    import hashlib

    for spec, result in zip(plan, results, strict=True):
        assert set(result.piece_sha256) == {p.member for p in spec.pieces}
        for p in spec.pieces:
            if p.path == "b/big.bin":
                assert result.piece_sha256[p.member] == hashlib.sha256(big[p.offset:p.offset + p.size]).hexdigest()
            else:
                assert result.piece_sha256[p.member] == {f.path: f for f in files}[p.path].sha256
    bm = build_bundle_manifest(plan, results, files, version="V1")
    assert [len(f.parts) for f in bm.files] == [1, 3, 1]
    assert bm.chunks == [r.chunk for r in results]
    assert not list((tmp_path / "out").glob(".*"))


def test_write_chunk_detects_file_changed_since_verification(tmp_path):
    mirror = tmp_path / "m"
    files = make_tree(mirror, {"a.bin": 10 * KiB, "b.bin": 20 * KiB, "big.bin": 3 * MiB})
    plan = chunk_plan(files, 1 * MiB, "V1")
    expected = {f.path: f for f in files}
    out = tmp_path / "out"
    # same size, different content
    data = bytearray((mirror / "b.bin").read_bytes())
    data[100] ^= 0xFF
    (mirror / "b.bin").write_bytes(bytes(data))
    holding_b = next(spec for spec in plan if any(p.path == "b.bin" for p in spec.pieces))
    with pytest.raises(ContentMismatch, match=r"b\.bin does not match the sha256 recorded when it was downloaded") as caught:
        write_chunk(holding_b, mirror, out, "copy", expected)
    assert caught.value.path == "b.bin" and caught.value.exit_code == 4
    assert not (out / holding_b.name).exists()
    assert list(out.iterdir()) == []  # temp file removed too
    # a split file whose size changed
    with open(mirror / "big.bin", "ab") as f:
        f.write(b"x")
    with pytest.raises(IntegrityError, match=r"big\.bin changed since it was verified"):
        write_chunk(next(spec for spec in plan if spec.pieces[0].path == "big.bin"), mirror, out, "copy", expected)
    # a file that vanished
    (mirror / "a.bin").unlink()
    with pytest.raises(IntegrityError, match=r"a\.bin is missing"):
        write_chunk(plan[0], mirror, out, "copy", expected)
    assert list(out.iterdir()) == []


def test_write_chunk_refuses_other_compression_than_planned(tmp_path):
    files = make_tree(tmp_path / "m", {"a": 10})
    plan = chunk_plan(files, 1 * MiB, "V1", "copy")
    with pytest.raises(UsageError, match="planned"):
        write_chunk(plan[0], tmp_path / "m", tmp_path / "out", "zstd", {f.path: f for f in files})


def test_write_chunk_over_budget_is_an_error_and_leaves_nothing(tmp_path):
    files = make_tree(tmp_path / "m", {"a": 10 * KiB})
    spec = chunk_plan(files, 1 * MiB, "V1")[0]
    lying = ChunkSpec(name=spec.name, pieces=spec.pieces, payload=spec.payload, chunk_size=5 * KiB,
                      compression="copy", max_size=spec.max_size)
    with pytest.raises(Exception, match="over the chunk size"):
        write_chunk(lying, tmp_path / "m", tmp_path / "out", "copy", {f.path: f for f in files})
    assert list((tmp_path / "out").iterdir()) == []


KILL_SCRIPT = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import amsrepomirror.pack.sevenzip as sz
from amsrepomirror.pack.plan import chunk_plan
from amsrepomirror.util.hashing import sha256_file
from amsrepomirror.online.manifest import FileEntry
mirror, out = Path(sys.argv[2]), Path(sys.argv[3])
orig = sz._PieceReader.read
def slow_read(self, n=-1):
    data = orig(self, min(n, 64 * 1024) if n and n > 0 else 64 * 1024)
    if self.hashed > 256 * 1024:
        print("writing", flush=True)
        time.sleep(60)
    return data
sz._PieceReader.read = slow_read
p = mirror / "f.bin"
files = [FileEntry("f.bin", p.stat().st_size, sha256_file(p))]
spec = chunk_plan(files, 4 * 1024 * 1024, "V1")[0]
sz.write_chunk(spec, mirror, out, "copy", {"f.bin": files[0]})
print("done", flush=True)
"""


def test_killed_write_leaves_no_final_chunk(tmp_path):
    files = make_tree(tmp_path / "m", {"f.bin": 1 * MiB})
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(REPO_ROOT), str(tmp_path / "m"), str(out)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    name = chunk_plan(files, 4 * MiB, "V1")[0].name
    assert not (out / name).exists()
    leftovers = list(out.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".{name}.") and leftovers[0].name.endswith(".tmp")
    assert remove_partial_files(out) == leftovers
    assert list(out.iterdir()) == []


def test_error_mid_write_removes_temp_file(tmp_path, monkeypatch):
    import amsrepomirror.pack.sevenzip as sz

    files = make_tree(tmp_path / "m", {"a": 300 * KiB, "b": 300 * KiB})
    spec = chunk_plan(files, 1 * MiB, "V1")[0]
    calls = {"n": 0}
    orig = sz._PieceReader.read

    def failing_read(self, n=-1):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk went away")
        return orig(self, min(n, 64 * KiB))

    monkeypatch.setattr(sz._PieceReader, "read", failing_read)
    with pytest.raises(OSError, match="disk went away"):
        write_chunk(spec, tmp_path / "m", tmp_path / "out", "copy", {f.path: f for f in files})
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("compression", ["copy", "zstd"])
def test_write_chunk_memory_does_not_grow_with_file_size(tmp_path, compression):
    size = 48 * MiB
    mirror = tmp_path / "m"
    mirror.mkdir()
    block = os.urandom(MiB)
    with open(mirror / "big.bin", "wb") as f:
        for i in range(size // MiB):
            f.write(bytes([i]) + block[1:])
    files = entries_for(mirror)
    spec = chunk_plan(files, 1024 * MiB, "V1", compression)[0]
    tracemalloc.start()
    try:
        write_chunk(spec, mirror, tmp_path / "out", compression, {f.path: f for f in files})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * MiB, f"peak {peak / MiB:.1f} MiB while writing a {size / MiB:.0f} MiB file"


def test_piece_reader_hashes_sequential_range(tmp_path):
    import hashlib
    import io

    from amsrepomirror.pack.sevenzip import _PieceReader

    data = os.urandom(10000)
    raw = io.BytesIO(data)
    piece, whole = hashlib.sha256(), Sha256State()
    r = _PieceReader(raw, 1000, 5000, (piece, whole))
    assert r.seek(0, io.SEEK_END) == 5000 and r.tell() == 5000
    r.seek(0)
    got = b""
    while True:
        chunk = r.read(777)
        if not chunk:
            break
        got += chunk
    assert got == data[1000:6000]
    assert piece.hexdigest() == whole.hexdigest() == hashlib.sha256(data[1000:6000]).hexdigest()
    r2 = _PieceReader(raw, 0, 100)
    r2.seek(50)
    with pytest.raises(RuntimeError):
        r2.read(10)


def test_sha256_state_resumes_where_it_was_saved():
    """A split file is hashed whole across chunk writers: the state saved after one part goes on with the next."""
    import hashlib

    data = random.Random(3).randbytes(300_001)
    first = Sha256State()
    first.update(data[:100_003])  # not a multiple of the 64-byte block: the pending bytes travel too
    saved = first.state()
    assert first.length == 100_003
    assert first.hexdigest() == hashlib.sha256(data[:100_003]).hexdigest()  # finishing leaves it usable
    second = Sha256State(saved)
    second.update(data[100_003:])
    assert second.length == len(data)
    assert second.hexdigest() == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError):
        Sha256State(saved[:-2])


def test_write_chunk_checks_a_split_file_whole_at_its_last_part(tmp_path):
    mirror = tmp_path / "m"
    files = make_tree(mirror, {"big.bin": 3 * MiB})
    plan = chunk_plan(files, 1 * MiB, "V1")
    expected = {f.path: f for f in files}
    first = write_chunk(plan[0], mirror, tmp_path / "out", "copy", expected)
    assert first.sha256_state and "big.bin" in first.sha256_state
    # without the state (the chunk before was kept from an earlier bundle) the file's start is hashed afresh
    resumed = write_chunk(plan[1], mirror, tmp_path / "resumed", "copy", expected, resume=first.sha256_state)
    afresh = write_chunk(plan[1], mirror, tmp_path / "afresh", "copy", expected)
    assert afresh == resumed
    # a byte of the last part rots after the earlier parts were packed
    with open(mirror / "big.bin", "r+b") as f:
        f.seek(3 * MiB - 1)
        last = f.read(1)
        f.seek(3 * MiB - 1)
        f.write(bytes([last[0] ^ 0xFF]))
    resume = first.sha256_state
    for spec in plan[1:-1]:
        resume = write_chunk(spec, mirror, tmp_path / "out", "copy", expected, resume=resume).sha256_state
    with pytest.raises(ContentMismatch, match="big.bin does not match"):
        write_chunk(plan[-1], mirror, tmp_path / "out", "copy", expected, resume=resume)
    assert not (tmp_path / "out" / plan[-1].name).exists()
