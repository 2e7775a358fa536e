"""Hardened extraction: real (hostile) 7z archives built with py7zr and 7zz."""

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import py7zr
import pytest

from amsrepomirror.bundle.chunks import check_members
from amsrepomirror.bundle.format import BundleFile, BundleManifest, Chunk, Part, chunk_name, part_member
from amsrepomirror.errors import DiskSpaceError, IntegrityError
from amsrepomirror.offline.extract import (
    EXTRACT_TMP,
    extract_chunk,
    partial_name,
    reassemble,
    space_needed,
    sync_tree,
    verify_tree,
)

COPY = [{"id": py7zr.FILTER_COPY}]
SEVENZIP = shutil.which("7zz") or "/usr/bin/7zz"


# ---------------------------------------------------------------------------------------------
# test bundle builder (the real writer lives in pipeline/bundle.py, owned elsewhere)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_bundle(out: Path, files: dict, chunk_size: int = 64, version: str = "AMS2026.1") -> BundleManifest:
    """Write a bundle folder at ``out``: copy-filter 7z chunks of at most ~chunk_size payload
    bytes, files larger than a chunk split into ``.part-NNNN`` members, and manifest.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    members = []  # (member, data)
    bfiles = []
    pending_parts = {}
    for path in sorted(files):
        data = files[path]
        if len(data) <= chunk_size:
            members.append((path, data))
            pending_parts[path] = [(path, 0, data)]
        else:
            plist = []
            for i, off in enumerate(range(0, len(data), chunk_size), start=1):
                piece = data[off:off + chunk_size]
                m = part_member(path, i)
                members.append((m, piece))
                plist.append((m, off, piece))
            pending_parts[path] = plist
    groups, cur, cur_size = [], [], 0
    for m, data in members:
        if cur and cur_size + len(data) > chunk_size:
            groups.append(cur)
            cur, cur_size = [], 0
        cur.append((m, data))
        cur_size += len(data)
    if cur:
        groups.append(cur)
    chunks, where = [], {}
    for i, group in enumerate(groups, start=1):
        name = chunk_name(sha(f"{version} chunk {i}".encode()))  # named by content: unrelated to the order
        with py7zr.SevenZipFile(out / name, "w", filters=COPY) as sz:
            for m, data in group:
                sz.writestr(data, m)
                where[m] = name
        blob = (out / name).read_bytes()
        chunks.append(Chunk(name=name, size=len(blob), sha256=sha(blob), members=sorted(m for m, _ in group)))
    for path in sorted(files):
        parts = [Part(chunk=where[m], member=m, offset=off, size=len(p), sha256=sha(p))
                 for m, off, p in pending_parts[path]]
        bfiles.append(BundleFile(path=path, size=len(files[path]), sha256=sha(files[path]), parts=parts))
    manifest = BundleManifest(version=version, files=bfiles, chunks=chunks, chunk_size=chunk_size)
    manifest.write(out / "manifest.json")
    return manifest


def expected_members(manifest: BundleManifest) -> dict:
    return {p.member: (p.size, p.sha256) for f in manifest.files for p in f.parts}


def unpack_bundle(bundle_dir: Path, dest: Path, in_place: bool = False) -> BundleManifest:
    """What the Unpack task does between recover() and swap_into_place() (``in_place``: parts
    written straight into their split file, as amsrepomirror.offline.unpack does; else as part files)."""
    manifest = BundleManifest.read(Path(bundle_dir) / "manifest.json")
    exp = expected_members(manifest)
    for c in manifest.chunks:
        extract_chunk(Path(bundle_dir) / c.name, c, dest, exp, files=manifest.files if in_place else None)
    reassemble(dest, manifest.files)
    verify_tree(dest, manifest.files)
    return manifest


def tree(path: Path) -> dict:
    """{relative path: sha256} of every entry under path (symlinks as 'LINK->target')."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = "LINK->" + os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                result[rel] = sha(full.read_bytes())
            else:
                result[rel] = "DIR"
    return result


def write_7z(path: Path, entries) -> None:
    """entries: list of (arcname, bytes); names are stored verbatim (py7zr's own name checks and
    normalisation are bypassed by patching the header: we want hostile names)."""
    with py7zr.SevenZipFile(path, "w", filters=COPY) as sz:
        for name, data in entries:
            sz.writestr(data, "placeholder")
            sz.header.files_info.files[-1]["filename"] = name


SAMPLE = {
    "AMS2026.1.yml": b"index: 1\n" * 3,
    "packages/a/a-1.0.zip": bytes(range(256)) * 2,  # 512 bytes -> split
    "packages/b/b.txt": b"bee\n",
    "empty.txt": b"",
}


# ---------------------------------------------------------------------------------------------
# happy path


def test_extract_reassemble_verify(tmp_path):
    m = build_bundle(tmp_path / "bundle", SAMPLE, chunk_size=100)
    assert any(len(f.parts) > 1 for f in m.files)
    dest = tmp_path / "dest"
    unpack_bundle(tmp_path / "bundle", dest)
    assert tree(dest) == {**{k: sha(v) for k, v in SAMPLE.items()},
                          "packages": "DIR", "packages/a": "DIR", "packages/b": "DIR"}
    for f in SAMPLE:
        assert stat.S_IMODE(os.lstat(dest / f).st_mode) == 0o644
    assert space_needed(m.files) == sum(map(len, SAMPLE.values())) + 512
    # idempotent: extracting and reassembling again gives the same tree
    before = tree(dest)
    unpack_bundle(tmp_path / "bundle", dest)
    assert tree(dest) == before


def test_directory_entries_that_are_parents_are_allowed(tmp_path):
    src = tmp_path / "src"
    (src / "pkgs" / "x").mkdir(parents=True)
    (src / "pkgs" / "x" / "f.bin").write_bytes(b"data")
    arc = tmp_path / "c.7z"
    subprocess.run([SEVENZIP, "a", "-mx=0", str(arc), "pkgs"], cwd=src, check=True, capture_output=True)
    chunk = Chunk(name="c.7z", size=0, sha256="", members=["pkgs/x/f.bin"])
    assert check_members(arc, chunk) == {"pkgs/x/f.bin": 4}
    extract_chunk(arc, chunk, tmp_path / "dest", {"pkgs/x/f.bin": (4, sha(b"data"))})
    assert (tmp_path / "dest/pkgs/x/f.bin").read_bytes() == b"data"
    assert sorted(os.listdir(tmp_path / "dest")) == ["pkgs"]

    # a directory entry that is not the parent of an expected member is refused
    (src / "other").mkdir()
    arc2 = tmp_path / "c2.7z"
    subprocess.run([SEVENZIP, "a", "-mx=0", str(arc2), "pkgs", "other"], cwd=src, check=True, capture_output=True)
    with pytest.raises(IntegrityError, match="'other'.*directory entry"):
        check_members(arc2, chunk)


# ---------------------------------------------------------------------------------------------
# hostile archives


def _snapshot(root: Path) -> dict:
    return tree(root)


_GOOD = ("good.txt", b"good")
_EVIL = b"evil"

#: Hostile archives py7zr writes with names stored verbatim: kind -> (entries, members listed besides good.txt).
_WRITTEN = {
    "dotdot": ([_GOOD, ("../evil", _EVIL)], ["../evil"]),
    "dotdot-inner": ([_GOOD, ("a/../../evil", _EVIL)], []),
    "absolute": ([_GOOD, ("/tmp/abs-evil", _EVIL)], []),
    "drive": ([_GOOD, ("C:/evil", _EVIL)], []),
    "empty-segment": ([_GOOD, ("a//evil", _EVIL)], []),
    "empty-name": ([_GOOD, ("", _EVIL)], []),
    "dot-segment": ([_GOOD, ("./good.txt", _EVIL)], []),
    "backslash-dotdot": ([_GOOD, ("..\\evil", _EVIL)], []),  # py7zr turns '\\' into '/', so this reads as '../evil'
    "reserved": ([_GOOD, (EXTRACT_TMP + "/x", _EVIL)], []),
    "reserved-partial": ([_GOOD, ("good.txt." + partial_name("good.txt"), _EVIL)], []),
    "duplicate": ([_GOOD, ("good.txt", _EVIL)], []),
    "not-in-manifest": ([_GOOD, ("extra.txt", _EVIL)], []),
    "missing": ([_GOOD], ["absent.txt"]),
    "wrong-size": ([("good.txt", b"good, but longer")], []),
}


def _source_folder(tmp_path, name: str) -> Path:
    """A fresh folder holding good.txt, for archives 7zz or py7zr write from files on disk."""
    src = tmp_path / name
    src.mkdir()
    (src / "good.txt").write_bytes(b"good")
    return src


def _absolute_7zz(tmp_path, arc: Path, kind: str) -> list[str]:
    src = _source_folder(tmp_path, "abs-src")
    subprocess.run([SEVENZIP, "a", "-spf", "-mx=0", str(arc), str(src / "good.txt")],
                   check=True, capture_output=True)
    return []


def _symlink(tmp_path, arc: Path, kind: str) -> list[str]:
    src = _source_folder(tmp_path, "link-src")
    os.symlink("/etc/passwd", src / "link")
    if kind == "symlink-py7zr":
        with py7zr.SevenZipFile(arc, "w", filters=COPY) as sz:
            sz.write(src / "good.txt", "good.txt")
            sz.write(src / "link", "link")
    else:
        subprocess.run([SEVENZIP, "a", "-snl", "-mx=0", str(arc), "good.txt", "link"], cwd=src,
                       check=True, capture_output=True)
    return ["link"]


def _device(tmp_path, arc: Path, kind: str) -> list[str]:
    with py7zr.SevenZipFile(arc, "w", filters=COPY) as sz:
        sz.writestr(b"good", "good.txt")
        sz.writestr(b"", "dev")
        sz.header.files_info.files[-1]["attributes"] = 0x8000 | 0x20 | ((stat.S_IFCHR | 0o644) << 16)
    return ["dev"]


def _fifo(tmp_path, arc: Path, kind: str) -> list[str]:
    src = _source_folder(tmp_path, "fifo-src")
    os.mkfifo(src / "fifo")
    subprocess.run([SEVENZIP, "a", "-mx=0", str(arc), "good.txt", "fifo"], cwd=src, check=True,
                   capture_output=True)
    return ["fifo"]


def _dir_as_file(tmp_path, arc: Path, kind: str) -> list[str]:
    src = tmp_path / "dir-src"
    (src / "good.txt").mkdir(parents=True)
    subprocess.run([SEVENZIP, "a", "-mx=0", str(arc), "good.txt"], cwd=src, check=True, capture_output=True)
    return []


def _truncated(tmp_path, arc: Path, kind: str) -> list[str]:
    write_7z(arc, [_GOOD])
    arc.write_bytes(arc.read_bytes()[:20])
    return []


#: Hostile archives made from files on disk or patched after writing: kind -> maker (returns the
#: members listed besides good.txt).
_BUILT = {
    "absolute-7zz": _absolute_7zz,
    "symlink-py7zr": _symlink,
    "symlink-7zz": _symlink,
    "device": _device,
    "fifo": _fifo,
    "dir-as-file": _dir_as_file,
    "truncated": _truncated,
}


def _hostile(tmp_path, kind):
    """Build a hostile archive; return (archive, chunk, expected)."""
    arc = tmp_path / "arc" / f"{kind}.7z"
    arc.parent.mkdir(exist_ok=True)
    if kind in _WRITTEN:
        entries, listed = _WRITTEN[kind]
        write_7z(arc, entries)
    elif kind in _BUILT:
        listed = _BUILT[kind](tmp_path, arc, kind)
    else:
        raise AssertionError(kind)
    members = ["good.txt", *listed]
    chunk = Chunk(name=arc.name, size=arc.stat().st_size, sha256="", members=sorted(members))
    expected = {m: (4, sha(b"good")) for m in members}
    return arc, chunk, expected


HOSTILE = {
    "dotdot": "'..' path segment",
    "dotdot-inner": "'..' path segment",
    "absolute": "absolute path",
    "absolute-7zz": "absolute path",
    "drive": "drive letter",
    "empty-segment": "empty path segment",
    "empty-name": "empty name",
    "dot-segment": "'.' path segment",
    "backslash-dotdot": "'..' path segment",
    "reserved": "reserved name",
    "reserved-partial": "reserved name",
    "duplicate": "duplicate name",
    "not-in-manifest": "'extra.txt': not listed",
    "missing": "'absent.txt': listed in the bundle manifest but missing",
    "symlink-py7zr": "'link': symlink",
    "symlink-7zz": "'link': symlink",
    "device": "'dev': character device",
    "fifo": "'fifo': fifo",
    "dir-as-file": "'good.txt': directory entry",
    "wrong-size": "declared size 16 != expected 4",
    "truncated": "not a readable 7z archive",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archive_refused_before_writing_anything(tmp_path, kind):
    arc, chunk, expected = _hostile(tmp_path, kind)
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "dest"
    before_all = _snapshot(tmp_path)
    with pytest.raises(IntegrityError) as info:
        check_members(arc, chunk)  if kind != "wrong-size" else check_members(arc, chunk, expected)
    msg = str(info.value)
    assert HOSTILE[kind] in msg
    assert chunk.name in msg
    with pytest.raises(IntegrityError, match=chunk.name):
        extract_chunk(arc, chunk, dest, expected)
    # nothing at all was written: not dest, not next to it, not in /tmp
    assert _snapshot(tmp_path) == before_all
    assert not dest.exists()
    assert not Path("/tmp/abs-evil").exists()
    assert info.value.exit_code == 4


def test_wrong_content_same_size(tmp_path):
    arc = tmp_path / "c.7z"
    write_7z(arc, [("a.txt", b"evil"), ("b.txt", b"fine")])
    chunk = Chunk(name="c.7z", size=0, sha256="", members=["a.txt", "b.txt"])
    exp = {"a.txt": (4, sha(b"good")), "b.txt": (4, sha(b"fine"))}
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match=r"c\.7z.*'a\.txt': sha256"):
        extract_chunk(arc, chunk, dest, exp)
    assert os.listdir(dest) == []  # neither the bad nor the good member was placed
    assert sorted(os.listdir(tmp_path)) == ["c.7z", "dest"]


def test_symlink_already_in_dest_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "pkgs")              # a directory component is a symlink
    os.symlink(outside / "victim.txt", dest / "top.txt")  # the target file is a symlink
    arc = tmp_path / "c.7z"
    write_7z(arc, [("top.txt", b"new"), ("pkgs/victim.txt", b"evil")])
    chunk = Chunk(name="c.7z", size=0, sha256="", members=["pkgs/victim.txt", "top.txt"])
    exp = {"top.txt": (3, sha(b"new")), "pkgs/victim.txt": (4, sha(b"evil"))}
    with pytest.raises(IntegrityError, match="not a real directory"):
        extract_chunk(arc, chunk, dest, exp)
    assert (outside / "victim.txt").read_bytes() == b"precious"
    assert sorted(os.listdir(outside)) == ["victim.txt"]
    assert not (dest / EXTRACT_TMP).exists()

    # a symlink at a file's place is replaced by the regular file, its target untouched
    os.unlink(dest / "pkgs")
    extract_chunk(arc, chunk, dest, exp)
    assert not os.path.islink(dest / "top.txt")
    assert (dest / "top.txt").read_bytes() == b"new"
    assert (outside / "victim.txt").read_bytes() == b"precious"


def test_max_extract_size_stops_an_archive_that_lies_about_sizes(tmp_path, monkeypatch):
    import amsrepomirror.offline.extract as extract_mod

    data = b"x" * 1000
    arc = tmp_path / "c.7z"
    write_7z(arc, [("a.bin", data)])
    chunk = Chunk(name="c.7z", size=0, sha256="", members=["a.bin"])
    # pretend the header check passed (as it would for a header that under-declares sizes)
    monkeypatch.setattr(extract_mod, "check_members", lambda *a, **k: {"a.bin": 10})
    with pytest.raises(IntegrityError, match="expands beyond the expected 10 bytes"):
        extract_chunk(arc, chunk, tmp_path / "dest", {"a.bin": (10, sha(data[:10]))})
    assert os.listdir(tmp_path / "dest") == []


def test_writer_refuses_a_member_longer_than_expected(tmp_path, monkeypatch):
    """Each member's writer stops at its expected size, even when the chunk's total stays within
    max_extract_size (a header that swaps the sizes of two members)."""
    import amsrepomirror.offline.extract as extract_mod

    arc = tmp_path / "c.7z"
    write_7z(arc, [("a.bin", b"a" * 1000), ("b.bin", b"b" * 10)])
    chunk = Chunk(name="c.7z", size=0, sha256="", members=["a.bin", "b.bin"])
    monkeypatch.setattr(extract_mod, "check_members", lambda *a, **k: {"a.bin": 10, "b.bin": 1000})
    with pytest.raises(IntegrityError, match="'a.bin' is longer than the 10 bytes"):
        extract_chunk(arc, chunk, tmp_path / "dest", {"a.bin": (10, sha(b"a" * 10)), "b.bin": (1000, sha(b"b" * 1000))})
    assert os.listdir(tmp_path / "dest") == []


def test_extracted_members_are_not_read_back(tmp_path, monkeypatch):
    """Members are hashed as they are written: extract_chunk never re-reads a file."""
    import amsrepomirror.offline.extract as extract_mod

    m = build_bundle(tmp_path / "bundle", SAMPLE, chunk_size=100)

    def no_reading(*args, **kwargs):
        raise AssertionError("extract_chunk read a file back")

    monkeypatch.setattr(extract_mod, "_hash_regular", no_reading)
    monkeypatch.setattr(extract_mod, "sha256_fd", no_reading)
    for c in m.chunks:
        extract_chunk(tmp_path / "bundle" / c.name, c, tmp_path / "dest", expected_members(m), files=m.files)


def test_reassemble_rejects_inconsistent_manifest(tmp_path):
    bad = BundleFile(path="f", size=10, sha256=sha(b"0123456789"),
                     parts=[Part(chunk="c", member="f.part-0001", offset=0, size=4, sha256=""),
                            Part(chunk="c", member="f.part-0002", offset=5, size=5, sha256="")])
    (tmp_path / "d").mkdir()
    with pytest.raises(IntegrityError, match="not contiguous"):
        reassemble(tmp_path / "d", [bad])


def test_leftover_temp_of_killed_extraction_is_replaced(tmp_path):
    m = build_bundle(tmp_path / "bundle", SAMPLE, chunk_size=100)
    c = m.chunks[0]
    dest = tmp_path / "dest"
    junk = dest / EXTRACT_TMP / c.name
    junk.mkdir(parents=True)
    (junk / "junk").write_bytes(b"x")
    extract_chunk(tmp_path / "bundle" / c.name, c, dest, expected_members(m))
    assert not (dest / EXTRACT_TMP).exists()


# ---------------------------------------------------------------------------------------------
# reassembly


def _split_setup(tmp_path):
    data = os.urandom(1000)
    m = build_bundle(tmp_path / "bundle", {"big.bin": data, "small.txt": b"s"}, chunk_size=300)
    big = next(f for f in m.files if f.path == "big.bin")
    assert len(big.parts) == 4
    dest = tmp_path / "dest"
    for c in m.chunks:
        extract_chunk(tmp_path / "bundle" / c.name, c, dest, expected_members(m))
    return m, big, data, dest


def test_reassemble_resumes_from_partial_file(tmp_path):
    m, big, data, dest = _split_setup(tmp_path)
    (dest / partial_name("big.bin")).write_bytes(data[:123])  # killed mid-write
    assert reassemble(dest, m.files) == ["big.bin"]
    assert (dest / "big.bin").read_bytes() == data
    verify_tree(dest, m.files)


def test_reassemble_resumes_after_rename_before_part_removal(tmp_path):
    m, big, data, dest = _split_setup(tmp_path)
    (dest / "big.bin").write_bytes(data)
    os.unlink(dest / big.parts[0].member)  # some parts already removed
    assert reassemble(dest, m.files) == ["big.bin"]
    verify_tree(dest, m.files)
    assert reassemble(dest, m.files) == ["big.bin"]  # and again: nothing left to do, still fine
    verify_tree(dest, m.files)


def test_reassemble_rebuilds_wrong_final_and_reports_missing_parts(tmp_path):
    m, big, data, dest = _split_setup(tmp_path)
    (dest / "big.bin").write_bytes(b"garbage")
    reassemble(dest, m.files)
    assert (dest / "big.bin").read_bytes() == data

    (dest / "big.bin").write_bytes(b"garbage")  # parts are gone now
    with pytest.raises(IntegrityError, match=r"part big\.bin\.part-0001 .* missing \(re-extract chunk"):
        reassemble(dest, m.files)
    assert not (dest / partial_name("big.bin")).exists()


def test_reassemble_rejects_tampered_part(tmp_path):
    m, big, data, dest = _split_setup(tmp_path)
    p = dest / big.parts[2].member
    p.write_bytes(b"X" * p.stat().st_size)
    with pytest.raises(IntegrityError, match="part-0003 of big.bin does not match"):
        reassemble(dest, m.files)
    assert not (dest / "big.bin").exists()


# ---------------------------------------------------------------------------------------------
# split files written in place (extract_chunk(..., files=...)), as amsrepomirror.offline.unpack does


def _in_place_setup(tmp_path, data=None):
    data = data if data is not None else os.urandom(1000)
    m = build_bundle(tmp_path / "bundle", {"big.bin": data, "small.txt": b"s", "d/e.txt": b"e" * 50},
                     chunk_size=300)
    big = next(f for f in m.files if f.path == "big.bin")
    assert len(big.parts) == 4
    return m, big, data, tmp_path / "dest"


def test_in_place_parts_go_straight_into_the_split_file(tmp_path):
    m, big, data, dest = _in_place_setup(tmp_path)
    partial = dest / partial_name("big.bin")
    for c in reversed(m.chunks):  # parts arriving out of order land at their offsets all the same
        extract_chunk(tmp_path / "bundle" / c.name, c, dest, expected_members(m), files=m.files)
        assert not any(n.startswith("big.bin.part-") for n in os.listdir(dest))  # no part files
    assert partial.read_bytes() == data and not (dest / "big.bin").exists()
    assert reassemble(dest, m.files) == ["big.bin"]
    assert not partial.exists()
    assert (dest / "big.bin").read_bytes() == data
    assert stat.S_IMODE(os.lstat(dest / "big.bin").st_mode) == 0o644
    verify_tree(dest, m.files)
    assert space_needed(m.files, in_place=True) == sum(f.size for f in m.files)

    # idempotent: again into the same tree (the final file is right: the new partial is dropped)
    before = tree(dest)
    unpack_bundle(tmp_path / "bundle", dest, in_place=True)
    assert tree(dest) == before


def test_in_place_unpack_of_sample(tmp_path):
    build_bundle(tmp_path / "bundle", SAMPLE, chunk_size=100)
    dest = tmp_path / "dest"
    unpack_bundle(tmp_path / "bundle", dest, in_place=True)
    assert tree(dest) == {**{k: sha(v) for k, v in SAMPLE.items()},
                          "packages": "DIR", "packages/a": "DIR", "packages/b": "DIR"}


def test_in_place_tampered_part_is_refused_at_extraction(tmp_path):
    """A part whose content differs from the manifest (same size, chunk rebuilt, as a chunk made
    by a buggy or hostile tool would be) is refused by extract_chunk, naming chunk and member;
    the split file is not left behind half-written."""
    m, big, data, dest = _in_place_setup(tmp_path)
    bad = big.parts[1]
    chunk = next(c for c in m.chunks if c.name == bad.chunk)
    others = [c for c in m.chunks if c.name != bad.chunk]
    for c in others:
        extract_chunk(tmp_path / "bundle" / c.name, c, dest, expected_members(m), files=m.files)
    arc = tmp_path / "bundle" / chunk.name
    content = {p.member: data[p.offset:p.offset + p.size] for p in big.parts}
    content.update({"small.txt": b"s", "d/e.txt": b"e" * 50})
    entries = [(name, b"X" * bad.size if name == bad.member else content[name]) for name in chunk.members]
    arc.unlink()
    write_7z(arc, entries)
    with pytest.raises(IntegrityError, match=rf"{chunk.name}.*'{bad.member}': sha256"):
        extract_chunk(arc, chunk, dest, expected_members(m), files=m.files)
    assert not (dest / partial_name("big.bin")).exists()
    assert not (dest / "big.bin").exists()
    with pytest.raises(IntegrityError, match="missing"):
        reassemble(dest, m.files)


def test_in_place_missing_chunk_is_caught_by_the_whole_file_hash(tmp_path):
    m, big, data, dest = _in_place_setup(tmp_path)
    skipped = big.parts[2].chunk
    for c in m.chunks:
        if c.name != skipped:
            extract_chunk(tmp_path / "bundle" / c.name, c, dest, expected_members(m), files=m.files)
    with pytest.raises(IntegrityError, match=rf"big\.bin, written in place.*does not match.*{skipped}"):
        reassemble(dest, m.files)
    assert not (dest / "big.bin").exists()
    assert not (dest / partial_name("big.bin")).exists()


def test_in_place_whole_file_hash_is_checked_end_to_end(tmp_path):
    """Every part matches, but the manifest's whole-file sha256 does not: refused, not placed."""
    m, big, data, dest = _in_place_setup(tmp_path)
    wrong = BundleFile(path=big.path, size=big.size, sha256=sha(b"something else"), parts=big.parts)
    files = [wrong if f.path == big.path else f for f in m.files]
    for c in m.chunks:
        extract_chunk(tmp_path / "bundle" / c.name, c, dest, expected_members(m), files=files)
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        reassemble(dest, files)
    assert not (dest / "big.bin").exists()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_in_place_partial_is_never_followed_or_shared(tmp_path, kind):
    m, big, data, dest = _in_place_setup(tmp_path)
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    partial = dest / partial_name("big.bin")
    if kind == "symlink":
        os.symlink(outside, partial)
    elif kind == "hardlink":
        os.link(outside, partial)
    else:
        os.mkfifo(partial)
    c = next(c for c in m.chunks if big.parts[0].member in c.members)
    with pytest.raises(IntegrityError, match=c.name):
        extract_chunk(tmp_path / "bundle" / c.name, c, dest, expected_members(m), files=m.files)
    assert outside.read_bytes() == b"precious"
    assert not (dest / EXTRACT_TMP).exists()


def test_in_place_stale_partial_of_a_killed_run_is_overwritten(tmp_path):
    m, big, data, dest = _in_place_setup(tmp_path)
    dest.mkdir()
    (dest / partial_name("big.bin")).write_bytes(os.urandom(5000))  # longer, other content
    unpack_bundle(tmp_path / "bundle", dest, in_place=True)
    assert (dest / "big.bin").read_bytes() == data


def test_in_place_with_non_solid_archives(tmp_path):
    """7zz -ms=off writes one 7z folder per file, which py7zr extracts in parallel threads: the
    writers and the hashing thread must cope (and the parts still land at their offsets). As the
    chunk plan does, each part of the split file sits in its own chunk, the last one with others."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    files = {"big.bin": data, "a.txt": b"a" * 1000, "sub/b.txt": b"b" * 2000, "sub/c/d.txt": b"dd"}
    cut = [0, 1024 * 1024, 2 * 1024 * 1024 + 5, len(data)]
    chunks = {"c1.7z": {}, "c2.7z": {}, "c3.7z": {}}
    for i, name in enumerate(chunks):
        chunks[name][part_member("big.bin", i + 1)] = data[cut[i]:cut[i + 1]]
    chunks["c3.7z"].update({p: c for p, c in files.items() if p != "big.bin"})
    bfiles = [BundleFile(path="big.bin", size=len(data), sha256=sha(data),
                         parts=[Part(chunk=f"c{i + 1}.7z", member=part_member("big.bin", i + 1), offset=cut[i],
                                     size=cut[i + 1] - cut[i], sha256=sha(data[cut[i]:cut[i + 1]]))
                                for i in range(3)])]
    bfiles += [BundleFile(path=p, size=len(c), sha256=sha(c), parts=[Part("c3.7z", p, 0, len(c), sha(c))])
               for p, c in files.items() if p != "big.bin"]
    dest = tmp_path / "dest"
    for name, members in chunks.items():
        src = tmp_path / ("src-" + name)
        for member, content in members.items():
            (src / member).parent.mkdir(parents=True, exist_ok=True)
            (src / member).write_bytes(content)
        arc = tmp_path / name
        subprocess.run([SEVENZIP, "a", "-mx=0", "-ms=off", str(arc), *sorted(members)], cwd=src, check=True,
                       capture_output=True)
        if name == "c3.7z":
            with py7zr.SevenZipFile(arc, "r") as sz:
                assert sz.header.main_streams.unpackinfo.numfolders > 1
        chunk = Chunk(name=name, size=0, sha256="", members=sorted(members))
        extract_chunk(arc, chunk, dest, {m: (len(c), sha(c)) for m, c in members.items()}, files=bfiles)
    reassemble(dest, bfiles)
    verify_tree(dest, bfiles)
    assert {p: (dest / p).read_bytes() for p in files} == files


def test_verify_tree_without_hashes_checks_the_shape(tmp_path):
    m = build_bundle(tmp_path / "bundle", SAMPLE, chunk_size=100)
    dest = tmp_path / "dest"
    unpack_bundle(tmp_path / "bundle", dest, in_place=True)
    (dest / "AMS2026.1.yml").write_bytes(b"index: 2\n" * 3)  # same size, other content
    verify_tree(dest, m.files, check_hashes=False)
    (dest / "extra.txt").write_bytes(b"x")
    (dest / "packages/b/b.txt").write_bytes(b"longer")
    with pytest.raises(IntegrityError) as info:
        verify_tree(dest, m.files, check_hashes=False)
    assert "extra file extra.txt" in str(info.value) and "wrong size packages/b/b.txt" in str(info.value)


# ---------------------------------------------------------------------------------------------
# sync_tree


def test_sync_tree(tmp_path, monkeypatch):
    import amsrepomirror.offline.extract as extract_mod

    (tmp_path / "f").write_bytes(b"x")
    synced = []
    monkeypatch.setattr(extract_mod.os, "sync", lambda: synced.append(True))
    sync_tree(tmp_path)  # syncfs(2) on Linux
    assert synced == ([] if hasattr(__import__("ctypes").CDLL(None), "syncfs") else [True])

    def no_libc(*args, **kwargs):
        raise OSError("no libc")

    monkeypatch.setattr(extract_mod.ctypes, "CDLL", no_libc)
    sync_tree(tmp_path)  # falls back to sync()
    assert synced[-1] is True


# ---------------------------------------------------------------------------------------------
# verify_tree


def test_verify_tree_lists_problems(tmp_path):
    m = build_bundle(tmp_path / "bundle", SAMPLE, chunk_size=100)
    dest = tmp_path / "dest"
    unpack_bundle(tmp_path / "bundle", dest)
    (dest / "extra.txt").write_bytes(b"x")
    (dest / "emptydir").mkdir()
    os.unlink(dest / "packages/b/b.txt")
    os.symlink("/etc/passwd", dest / "packages/b/b.txt")
    (dest / "AMS2026.1.yml").write_bytes(b"index: 2\n" * 3)  # same size, other content
    with pytest.raises(IntegrityError) as info:
        verify_tree(dest, m.files)
    msg = str(info.value)
    for part in ("extra file extra.txt", "extra directory emptydir", "not a regular file: packages/b/b.txt",
                 "wrong sha256 AMS2026.1.yml", "missing packages/b/b.txt"):
        assert part in msg


def test_verify_tree_truncates_long_lists(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    files = [BundleFile(path=f"f{i}", size=1, sha256=sha(b"x"), parts=[]) for i in range(20)]
    with pytest.raises(IntegrityError, match=r"20 problem\(s\).*\(and 15 more\)"):
        verify_tree(dest, files)


# ---------------------------------------------------------------------------------------------
# disk full


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_extract_on_full_disk_is_disk_space_error(tmp_path, tiny_tmpfs):
    data = os.urandom(1536 * 1024)
    arc = tmp_path / "c.7z"
    write_7z(arc, [("big.bin", data)])
    chunk = Chunk(name="c.7z", size=0, sha256="", members=["big.bin"])
    with pytest.raises(DiskSpaceError) as info:
        extract_chunk(arc, chunk, tiny_tmpfs / "dest", {"big.bin": (len(data), sha(data))})
    assert info.value.exit_code == 5
    assert os.listdir(tiny_tmpfs / "dest") == []
