"""Bytes that change in the mirror under the same size and mtime (a bad disk, a stray write) never
cross the air gap: bundle hashes every byte as it packs it, and verify checks every byte of every
member the way unpack does, so a bundle that verifies is one that unpack accepts."""

import fcntl
import hashlib
import json
import os
from pathlib import Path

import py7zr
import pytest
from clihelp import cli_env, run_cli, served_tree, tree_hashes

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, BundleFile, BundleManifest, Chunk, Part
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.online.manifest import Manifest
from amsrepomirror.pack.plan import chunk_plan

pytestmark = pytest.mark.slow  # every test here is of the slow tier (make test-all)

VERSION = "AMS2026.1"
CHUNK = "1MiB"
BIG = "linux/x86_64/python3.11-2026.101.tar.zst"  # 3 MiB: split over four chunks of 1 MiB
SMALL = "common/data/basis-sets-2026.101.tar.zst"  # 200 kB, whole in one chunk
WORK_DIR = ".amsrepomirror-work"


def mirror(double, dest):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION))


def bundle_offline(mirror_dir, out):
    return run_cli("bundle", "--version", VERSION, "--mirror", mirror_dir, "--out", out, "--chunk-size", CHUNK,
                   "--offline")


def unpack(out, amshome):
    amshome.mkdir(exist_ok=True)
    return run_cli("unpack", out, "--amshome", amshome)


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def rot(path: Path, offset: int) -> None:
    """Flip one byte in place and put the mtime back: size and mtime say nothing changed."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def file_gets(double, relpath):
    return [r for r in double.records("GET") if r.relpath == relpath and r.body_bytes > 0]


# --- bundle ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("victim, offset", [(SMALL, 1000), (BIG, 10), (BIG, 1_600_000), (BIG, 3 * 1024 * 1024 - 1)],
                         ids=["whole-file", "split-first-part", "split-middle-part", "split-last-byte"])
def test_rotted_file_stops_the_bundle_is_marked_stale_and_fetched_again(scm_double, repo_tree, tmp_path, victim,
                                                                         offset):
    dest, out = tmp_path / "mirror", tmp_path / "bundle"
    assert mirror(scm_double, dest).returncode == 0
    rot(dest / victim, offset)

    refused = bundle_offline(dest, out)
    assert refused.returncode == 4, refused.stderr
    line = error_line(refused.stderr)
    assert victim in line
    assert "does not match the sha256 recorded when it was downloaded" in line
    assert "marked stale" in line and "run mirror again" in line
    assert not (out / "SHA256SUMS").exists()
    # No chunk holding a part of the rotted file is kept for a resumed run to reuse.
    plan = chunk_plan(Manifest.read(dest / ".amsrepomirror" / f"{VERSION}.manifest.json").files, 1024 * 1024, VERSION)
    holding = {spec.name for spec in plan if any(piece.path == victim for piece in spec.pieces)}
    markers = {p.name[:-len(".json")] for p in (out / WORK_DIR).glob("*/*.json")}
    assert markers and not markers & holding

    scm_double.clear_log()
    again = mirror(scm_double, dest)  # no --deep: the stale mark alone makes it fetch the file again
    assert again.returncode == 0, again.stderr
    assert len(file_gets(scm_double, victim)) == 1
    assert [r.relpath for r in scm_double.records("GET") if r.body_bytes > 0
            and not r.relpath.startswith("listings/")] == [victim]
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)

    done = bundle_offline(dest, out)
    assert done.returncode == 0, done.stderr
    assert run_cli("verify", out).returncode == 0
    assert unpack(out, tmp_path / "ams").returncode == 0
    assert tree_hashes(tmp_path / "ams" / "repository") == served_tree(repo_tree, VERSION)


# --- verify applies unpack's checks to hand-made chunks -----------------------------------------------

@pytest.fixture
def made(scm_double, tmp_path):
    """A verified mirror and a finished bundle of it (chunks of 1 MiB)."""
    dest, out = tmp_path / "mirror", tmp_path / "bundle"
    assert mirror(scm_double, dest).returncode == 0
    result = bundle_offline(dest, out)
    assert result.returncode == 0, result.stderr
    return out


def members_of(out: Path, chunk: Chunk, scratch: Path) -> dict:
    """{member: bytes} of a chunk (small test chunks)."""
    with py7zr.SevenZipFile(out / chunk.name, "r") as archive:
        archive.extractall(scratch)
    return {m: (scratch / m).read_bytes() for m in chunk.members}


def write_7z(path: Path, members, scratch: Path) -> None:
    """A 7z file of ``members``: (name, bytes) for a regular file, (name, "-> target") for a symlink.
    py7zr refuses to write names with ``..``: such a member is written under another name and
    renamed in the header."""
    scratch.mkdir(parents=True, exist_ok=True)
    path.unlink()
    with py7zr.SevenZipFile(path, "w", filters=[{"id": py7zr.FILTER_COPY}]) as archive:
        for i, (name, data) in enumerate(members):
            source = scratch / f"m{i}"
            if isinstance(data, str):
                os.symlink(data[len("-> "):], source)
            else:
                source.write_bytes(data)
            archive.write(source, "placeholder" if ".." in name else name)
            if ".." in name:
                archive.header.files_info.files[-1]["filename"] = name


def reseal(out: Path, manifest: BundleManifest, name: str) -> None:
    """Record chunk ``name`` as it now is in manifest.json, and every file in SHA256SUMS."""
    blob = (out / name).read_bytes()
    manifest.chunks = [Chunk(c.name, len(blob), hashlib.sha256(blob).hexdigest(), c.members) if c.name == name else c
                       for c in manifest.chunks]
    manifest.write(out / MANIFEST_NAME)
    write_sums(out, [c.name for c in manifest.chunks] + [MANIFEST_NAME, README_NAME])


def hand_made(out: Path, scratch: Path, case: str) -> list:
    """Rewrite the chunk holding SMALL (for "split": one holding a part of BIG) as ``case`` says;
    return what verify must say about it."""
    manifest = BundleManifest.read(out / MANIFEST_NAME)
    if case == "split":
        big = next(f for f in manifest.files if f.path == BIG)
        part = big.parts[1]
        chunk = next(c for c in manifest.chunks if c.name == part.chunk)
        members = members_of(out, chunk, scratch / "orig")
        data = bytearray(members[part.member])
        data[100] ^= 0xFF  # the part's sha256 is updated to match: only the whole file's sha256 can tell
        members[part.member] = bytes(data)
        new_part = Part(part.chunk, part.member, part.offset, part.size, hashlib.sha256(data).hexdigest())
        manifest.files = [BundleFile(f.path, f.size, f.sha256, [new_part if p == part else p for p in f.parts])
                          if f.path == BIG else f for f in manifest.files]
        write_7z(out / chunk.name, sorted(members.items()), scratch / "new")
        reseal(out, manifest, chunk.name)
        return [BIG, "does not match manifest.json"]
    chunk = next(c for c in manifest.chunks if SMALL in c.members)
    members = members_of(out, chunk, scratch / "orig")
    entries = sorted(members.items())
    size = len(members[SMALL])
    if case == "sha256":
        data = bytearray(members[SMALL])
        data[1000] ^= 0xFF  # same size, other bytes
        entries = [(m, bytes(data) if m == SMALL else d) for m, d in entries]
        said = [f"member {SMALL} does not match manifest.json"]
    elif case == "dotdot":
        entries.append(("../x", b"outside"))
        said = ["member '../x': '..' path segment"]
    elif case == "symlink":
        entries = [(m, "-> /etc/passwd" if m == SMALL else d) for m, d in entries]
        said = [f"member '{SMALL}': symlink"]
    elif case == "unlisted":
        entries.append(("common/data/extra.dat", b"not in the manifest"))
        said = ["member 'common/data/extra.dat': not listed for this chunk"]
    else:  # bigger
        entries = [(m, d + b"more" if m == SMALL else d) for m, d in entries]
        said = [f"member '{SMALL}': declared size {size + 4} != expected {size}"]
    write_7z(out / chunk.name, entries, scratch / "new")
    reseal(out, manifest, chunk.name)
    return [chunk.name] + said


@pytest.mark.parametrize("case", ["sha256", "dotdot", "symlink", "unlisted", "bigger", "split"])
def test_verify_refuses_what_unpack_refuses(made, tmp_path, case):
    out = made
    said = hand_made(out, tmp_path / "scratch", case)
    assert run_cli("verify", out, "--no-test").returncode == 0  # chunks match SHA256SUMS and manifest.json

    verify = run_cli("verify", out)
    assert verify.returncode == 4, verify.stdout + verify.stderr
    for words in said:
        assert words in verify.stderr
    assert "intact" not in verify.stdout

    refused = unpack(out, tmp_path / "ams")
    assert refused.returncode == 4, refused.stderr
    assert not (tmp_path / "ams" / "repository").exists()


# --- the scrub: verify --installed re-hashes the installed tree against its receipt ----------------------

def test_verify_installed_names_every_file_that_differs_from_the_receipt_and_changes_nothing(made, tmp_path):
    amshome = tmp_path / "ams"
    assert unpack(made, amshome).returncode == 0
    repo = amshome / "repository"
    intact = run_cli("verify", "--installed", "--amshome", amshome)
    assert intact.returncode == 0, intact.stderr
    assert f"{repo} is intact" in intact.stdout and "hashed against its receipt" in intact.stdout
    from_env = run_cli("verify", "--installed", env=cli_env(AMSHOME=str(amshome)))
    assert from_env.returncode == 0 and "from the environment" in from_env.stderr, from_env.stderr

    rot(repo / SMALL, 1000)  # size, mtime and inode kept
    (repo / "common" / "docs" / "manual-2026.101.tar.zst").unlink()
    with open(repo / BIG, "ab") as f:
        f.write(b"x")
    (repo / "common" / "stray.dat").write_bytes(b"not installed by amsrepomirror")
    (repo / "newdir" / "deeper").mkdir(parents=True)
    os.symlink("/etc/passwd", repo / "linux" / "link")
    before = tree_hashes(repo), (amshome / ".amsrepomirror-receipt.json").read_bytes()

    scrub = run_cli("verify", "--installed", "--amshome", amshome)
    assert scrub.returncode == 4, scrub.stderr
    listed = [line.strip() for line in scrub.stderr.splitlines() if line.startswith("  ")]
    assert listed == [f"changed: {SMALL}: bytes other than the sha256 the receipt records (changed in place, or "
                      "rotted on disk)",
                      f"changed: {BIG}: size {3 * 1024 * 1024 + 1}, the receipt says {3 * 1024 * 1024}",
                      "missing: common/docs/manual-2026.101.tar.zst",
                      "added: common/stray.dat", "added: linux/link", "added: newdir"]
    line = error_line(scrub.stderr)
    assert "2 changed, 1 missing, 3 added" in line and "--reinstall" in line
    assert "intact" not in scrub.stdout
    assert (tree_hashes(repo), (amshome / ".amsrepomirror-receipt.json").read_bytes()) == before


def test_verify_installed_lists_at_most_twenty_differences_and_counts_the_rest(made, tmp_path):
    amshome = tmp_path / "ams"
    assert unpack(made, amshome).returncode == 0
    for i in range(25):
        (amshome / "repository" / f"extra-{i:02d}.dat").write_bytes(b"x")
    scrub = run_cli("verify", "--installed", "--amshome", amshome)
    assert scrub.returncode == 4, scrub.stderr
    assert len([line for line in scrub.stderr.splitlines() if line.startswith("  added: ")]) == 20
    assert "  ... and 5 more" in scrub.stderr and "0 changed, 0 missing, 25 added" in error_line(scrub.stderr)


def test_verify_installed_refuses_without_a_receipt_beside_an_unpack_or_with_a_bundle(made, tmp_path):
    amshome = tmp_path / "ams"
    amshome.mkdir()
    result = run_cli("verify", "--installed", "--amshome", amshome)
    assert result.returncode == 2 and "no receipt" in error_line(result.stderr), result.stderr
    assert unpack(made, amshome).returncode == 0

    result = run_cli("verify", made, "--installed", "--amshome", amshome)
    assert result.returncode == 2 and "takes no bundle" in error_line(result.stderr), result.stderr
    result = run_cli("verify")
    assert result.returncode == 2 and "verify --installed" in error_line(result.stderr), result.stderr
    result = run_cli("verify", made, "--amshome", amshome)
    assert result.returncode == 2 and "--amshome goes with --installed" in error_line(result.stderr), result.stderr

    with open(amshome / ".amsrepomirror.lock", "r+b") as lock:  # an unpack is running
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_cli("verify", "--installed", "--amshome", amshome)
    assert result.returncode == 75 and "unpack is running" in error_line(result.stderr), result.stderr

    (amshome / ".repository.staging").mkdir()  # left by a killed unpack
    result = run_cli("verify", "--installed", "--amshome", amshome)
    assert result.returncode == 2 and "interrupted unpack" in error_line(result.stderr), result.stderr
    (amshome / ".repository.staging").rmdir()

    receipt = amshome / ".amsrepomirror-receipt.json"
    body = json.loads(receipt.read_text())
    body["tree"][0][2] = "0" * 64  # edited: no longer its tree_sha256
    receipt.write_text(json.dumps(body))
    result = run_cli("verify", "--installed", "--amshome", amshome)
    assert result.returncode == 4 and "damaged" in error_line(result.stderr), result.stderr
