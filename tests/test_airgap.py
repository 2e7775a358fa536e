"""End to end across the air gap: bundle → (sticks) → verify → unpack, with real 7-Zip and sha256sum."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import py7zr
import pytest
from clihelp import REPO, cli_env, kill_unpack_repeatedly, popen_cli, run_cli, served_tree, sha256, tree_hashes
from servers import require_tool

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, REPORT_NAMES, BundleManifest, Chunk
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.testing.repository import change_file
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = "AMS2026.1"
BIG = "linux/x86_64/python3.11-2026.101.tar.zst"  # 3 MiB: split across chunks of 1 MiB


def bundle(listing_url, mirror, out, *extra, env=None):
    return run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", listing_url,
                   "--out", out, "--chunk-size", "1MiB", *extra, env=env)


def unpack(out, amshome, *extra, env=None):
    return run_cli("unpack", out, "--amshome", amshome, *extra, env=env)


@pytest.fixture
def made(scm_double, repo_tree, tmp_path):
    """A mirror and a finished bundle of the double's repository."""
    mirror, out = tmp_path / "mirror", tmp_path / "bundle"
    result = bundle(scm_double.listing_url(VERSION), mirror, out)
    assert result.returncode == 0, result.stderr
    return mirror, out


def chunks(out):
    return sorted(Path(out).glob("*.7z"))


def chunk_names(out):
    """The bundle's chunk names in its manifest's order (the writing and unpacking order)."""
    return [c["name"] for c in json.loads((Path(out) / MANIFEST_NAME).read_text())["chunks"]]


@pytest.mark.slow
def test_round_trip_equals_mirror_and_peers_agree(made, repo_tree, tmp_path):
    mirror, out = made
    assert tree_hashes(mirror) == served_tree(repo_tree, VERSION)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert len(chunks(out)) >= 4 and all(c.stat().st_size <= 1024 * 1024 for c in chunks(out))
    big = [f for f in manifest["files"] if f["path"] == BIG][0]
    assert len({p["chunk"] for p in big["parts"]}) >= 3  # split across chunks
    expected = [c.name for c in chunks(out)] + [MANIFEST_NAME, README_NAME, "SHA256SUMS", *REPORT_NAMES]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)

    # Peers: coreutils and the real 7-Zip.
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(chunks(out)) + 2 + len(REPORT_NAMES)
    sevenzip = require_tool("7zz")
    for c in chunks(out):
        assert subprocess.run([sevenzip, "t", str(c)], capture_output=True).returncode == 0, c
    by_hand = tmp_path / "by-hand"
    for c in chunks(out):
        subprocess.run([sevenzip, "x", "-y", f"-o{by_hand}", str(c)], check=True, capture_output=True)
    for f in manifest["files"]:
        if len(f["parts"]) > 1:
            target = by_hand / f["path"]
            with open(target, "wb") as whole:
                for p in sorted(f["parts"], key=lambda p: p["offset"]):
                    whole.write((by_hand / p["member"]).read_bytes())
                    (by_hand / p["member"]).unlink()
    assert tree_hashes(by_hand) == tree_hashes(mirror)

    verify = run_cli("verify", out)
    assert verify.returncode == 0 and "intact" in verify.stdout

    amshome = tmp_path / "ams"
    amshome.mkdir()
    result = unpack(out, amshome)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == tree_hashes(mirror)
    assert f"SCM_AMSPKGS_REPO={amshome}/repository/{VERSION}.yml" in result.stdout
    assert "amspackages" in result.stdout
    again = unpack(out, amshome)
    assert again.returncode == 0 and "already holds" in again.stderr


def test_plan_and_dry_run_write_nothing(made, tmp_path):
    mirror, out = made
    result = run_cli("plan", "--mirror", mirror, "--chunk-size", "1MiB", "--stick-size", "2MiB")
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in chunk_names(out)) and "sticks" in result.stdout
    dry = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", tmp_path / "nothing",
                  "--chunk-size", "1MiB", "--dry-run")
    assert dry.returncode == 0 and all(name in dry.stdout for name in chunk_names(out))
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_offline_bundle_needs_no_server(repo_tree, tmp_path):
    mirror = tmp_path / "mirror"
    with ScmDouble(repo_tree) as double:
        assert run_cli("mirror", "--version", VERSION, "--mirror", mirror, "--listing-url",
                       double.listing_url(VERSION)).returncode == 0
    # The server is gone: --offline bundles the verified mirror all the same.
    result = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", tmp_path / "b",
                     "--chunk-size", "2MiB", "--offline")
    assert result.returncode == 0, result.stderr
    assert run_cli("verify", tmp_path / "b").returncode == 0
    none = run_cli("bundle", "--version", VERSION, "--mirror", tmp_path / "empty", "--out", tmp_path / "c", "--offline")
    assert none.returncode == 2 and "run mirror first" in none.stderr


@pytest.mark.slow
def test_killed_bundle_resumes_at_the_chunk(scm_double, tmp_path):
    mirror, out = tmp_path / "mirror", tmp_path / "b"
    url = scm_double.listing_url(VERSION)
    assert run_cli("mirror", "--version", VERSION, "--mirror", mirror, "--listing-url", url).returncode == 0
    proc = popen_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", out, "--chunk-size", "256KiB", "--offline")
    deadline = time.monotonic() + 180  # a guard against a hang only
    while time.monotonic() < deadline and len(chunks(out)) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "SHA256SUMS").exists()
    early = {c.name: c.stat().st_ino for c in chunks(out)}
    assert early
    result = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", out, "--chunk-size", "256KiB", "--offline")
    assert result.returncode == 0, result.stderr
    rewritten = [n for n, ino in early.items() if (out / n).stat().st_ino != ino]
    assert len(rewritten) < len(early)  # chunks finished before the kill were kept
    assert run_cli("verify", out).returncode == 0
    assert not list(out.glob(".*"))  # no temp files or work folder left


def _flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damaged_chunk_is_named_and_nothing_is_placed(made, tmp_path, damage):
    mirror, out = made
    amshome = tmp_path / "ams"
    amshome.mkdir()
    (amshome / "repository").mkdir()
    (amshome / "repository" / "old.txt").write_text("the previous repository")
    victim = chunks(out)[1]
    if damage == "flip":
        _flip_byte(victim, victim.stat().st_size // 2)
    elif damage == "truncate":
        os.truncate(victim, victim.stat().st_size - 100)
    else:
        victim.unlink()
    verify = run_cli("verify", out)
    assert verify.returncode == 4 and victim.name in verify.stderr
    assert {"flip": "corrupt", "truncate": "truncated", "missing": "missing"}[damage] in verify.stderr
    result = unpack(out, amshome)
    assert result.returncode == 4 and victim.name in result.stderr
    assert tree_hashes(amshome / "repository") == {"old.txt": sha256(amshome / "repository" / "old.txt")}
    assert sorted(p.name for p in amshome.iterdir() if not p.name.startswith(".amsrepomirror")) == ["repository"]


def _rewrite_chunk(out: Path, index: int, hostile) -> str:
    """Replace chunk ``index`` with one holding its members plus ``hostile``; fix manifest and sums to match."""
    manifest = BundleManifest.read(out / MANIFEST_NAME)
    chunk = manifest.chunks[index]
    path = out / chunk.name
    with py7zr.SevenZipFile(path, "r") as archive:
        contents = {name: bio.read() for name, bio in archive.readall().items()} if hasattr(archive, "readall") else None
    if contents is None:
        tmp = out.parent / "orig"
        with py7zr.SevenZipFile(path, "r") as archive:
            archive.extractall(tmp)
        contents = {m: (tmp / m).read_bytes() for m in chunk.members}
    path.unlink()
    extra = hostile(path, contents)
    blob = path.read_bytes()
    import hashlib
    manifest.chunks[index] = Chunk(chunk.name, len(blob), hashlib.sha256(blob).hexdigest(), sorted(chunk.members + [extra]))
    manifest.write(out / MANIFEST_NAME)
    write_sums(out, [c.name for c in manifest.chunks] + [MANIFEST_NAME, README_NAME])
    return chunk.name


def _with_dotdot(path, contents):
    with py7zr.SevenZipFile(path, "w", filters=[{"id": py7zr.FILTER_COPY}]) as archive:
        for name, data in contents.items():
            archive.writestr(data, name)
        archive.writestr(b"owned", "placeholder")
        archive.header.files_info.files[-1]["filename"] = "../../evil.txt"  # py7zr refuses such names itself
    return "../../evil.txt"


def _with_symlink(path, contents):
    src = path.parent.parent / "link-src"
    src.mkdir(exist_ok=True)
    os.symlink("/etc/passwd", src / "passwd-link")
    with py7zr.SevenZipFile(path, "w", filters=[{"id": py7zr.FILTER_COPY}]) as archive:
        for i, (name, data) in enumerate(contents.items()):  # py7zr cannot mix writestr with symlinks
            (src / f"m{i}").write_bytes(data)
            archive.write(src / f"m{i}", name)
        archive.write(src / "passwd-link", "common/passwd-link")
    return "common/passwd-link"


@pytest.mark.parametrize("hostile", [_with_dotdot, _with_symlink], ids=["dotdot", "symlink"])
def test_hostile_chunk_with_matching_sums_is_refused(made, tmp_path, hostile):
    mirror, out = made
    name = _rewrite_chunk(out, 0, hostile)
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True)
    assert sums.returncode == 0  # only our own checks stand in the way
    amshome = tmp_path / "ams"
    amshome.mkdir()
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    result = unpack(out, amshome)
    assert result.returncode == 4, result.stderr
    assert name in result.stderr
    assert not (amshome / "repository").exists()
    assert not (tmp_path / "evil.txt").exists() and not (amshome.parent / "evil.txt").exists()
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if ".amsrepomirror" not in p.name)
    assert after == [p for p in before] or set(after) <= set(before)


def test_amshome_problems_are_one_line_usage_errors(made, tmp_path):
    mirror, out = made
    missing = unpack(out, tmp_path / "no-such-ams")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert missing.stderr.count("error:") == 1 and "Traceback" not in missing.stderr
    other = tmp_path / "ams-2025"
    other.mkdir()
    (other / "VERSION.txt").write_text("AMS2025.1\n")
    wrong = unpack(out, other)
    assert wrong.returncode == 2 and "AMS2025.1" in wrong.stderr
    assert not (other / "repository").exists()


def test_read_only_amshome(made, tmp_path):
    mirror, out = made
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=4m,ro tmpfs {ro} 2>/dev/null") != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        result = unpack(out, ro)
        assert result.returncode == 2 and "read-only file system" in result.stderr
    finally:
        os.system(f"umount {ro}")


def test_full_disk_leaves_repository_unchanged(made, tmp_path):
    mirror, out = made
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=2m tmpfs {small} 2>/dev/null") != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        (small / "repository").mkdir()
        (small / "repository" / "keep.txt").write_text("old")
        result = unpack(out, small)
        assert result.returncode == 5, result.stderr
        assert "space" in result.stderr
        assert tree_hashes(small / "repository") == {"keep.txt": sha256(small / "repository" / "keep.txt")}
    finally:
        os.system(f"umount {small}")


@pytest.mark.slow
def test_kill_9_during_unpack_leaves_old_or_new_and_rerun_completes(scm_double, repo_tree, tmp_path):
    url = scm_double.listing_url(VERSION)
    mirror = tmp_path / "mirror"
    assert bundle(url, mirror, tmp_path / "old").returncode == 0
    old_tree = tree_hashes(mirror)
    change_file(repo_tree, "common/data/forcefields-2026.101.tar.zst", seed="v2", size=777_777)
    assert bundle(url, mirror, tmp_path / "new").returncode == 0
    new_tree = tree_hashes(mirror)
    assert old_tree != new_tree
    amshome = tmp_path / "ams"
    amshome.mkdir()
    assert unpack(tmp_path / "old", amshome).returncode == 0
    seen = kill_unpack_repeatedly(tmp_path / "new", amshome, old_tree, new_tree, seed=7)
    assert "old" in seen  # at least one kill landed before the swap
    result = unpack(tmp_path / "new", amshome)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == new_tree
    assert not (amshome / "repository.previous").exists()
    assert not [p.name for p in amshome.iterdir() if p.name.startswith(".repository")]


@pytest.mark.slow
def test_keep_previous(made, scm_double, repo_tree, tmp_path):
    mirror, out = made
    amshome = tmp_path / "ams"
    amshome.mkdir()
    assert unpack(out, amshome).returncode == 0
    first = tree_hashes(amshome / "repository")
    change_file(repo_tree, "common/data/empty.dat", seed="v2", size=10)
    assert bundle(scm_double.listing_url(VERSION), mirror, tmp_path / "b2").returncode == 0
    assert unpack(tmp_path / "b2", amshome, "--keep-previous").returncode == 0
    assert tree_hashes(amshome / "repository.previous") == first
    assert tree_hashes(amshome / "repository") == tree_hashes(mirror)


def _make(*targets, **variables):
    venv = REPO / ".venv" / "bin" / "amsrepomirror"
    if not venv.exists():
        if os.environ.get("AMSREPOMIRROR_REQUIRE_TOOLS") == "1":
            pytest.fail("make targets need the project's .venv (created by `make test`)")
        pytest.skip("the project's .venv does not exist (run through `make test`)")
    args = ["make", "-s", *targets] + [f"{k}={v}" for k, v in variables.items()]
    return subprocess.run(args, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("server", ["scm_double", "nginx_server"])
def test_make_bundle_and_make_unpack_do_the_whole_job(server, request, repo_tree, tmp_path):
    srv = request.getfixturevalue(server)
    mirror, out, amshome = tmp_path / "mirror", tmp_path / "bundle", tmp_path / "ams"
    amshome.mkdir()
    made = _make("bundle", VERSION=VERSION, MIRROR=mirror, BUNDLE=out, CHUNK_SIZE="1MiB",
                 ARGS=f"--listing-url {srv.listing_url(VERSION)}")
    assert made.returncode == 0, made.stderr
    placed = _make("unpack", BUNDLE=out, AMSHOME=amshome)
    assert placed.returncode == 0, placed.stderr
    assert tree_hashes(amshome / "repository") == served_tree(repo_tree, VERSION)


def test_bundle_refuses_a_split_file_changed_after_verification(made, tmp_path):
    """Parts of a split file travel in several chunks: a change after verification must stop the bundle."""
    mirror, out = made
    big = mirror / BIG
    data = bytearray(big.read_bytes())
    data[-5] ^= 0xFF  # same size, new content, new mtime
    big.write_bytes(bytes(data))
    result = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", tmp_path / "b2",
                     "--chunk-size", "1MiB", "--offline")
    assert result.returncode == 4 and BIG in result.stderr and "run mirror again" in result.stderr
    assert not (tmp_path / "b2" / "SHA256SUMS").exists()


@pytest.mark.slow
def test_rebundling_with_other_settings_rewrites_the_bundle(made):
    mirror, out = made
    before = len(chunks(out))
    result = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", out, "--chunk-size", "2MiB", "--offline")
    assert result.returncode == 0, result.stderr
    manifest = BundleManifest.read(out / MANIFEST_NAME)
    assert manifest.chunk_size == 2 * 1024 * 1024 and len(chunks(out)) < before
    assert sorted(c.name for c in chunks(out)) == sorted(c.name for c in manifest.chunks)
    assert run_cli("verify", out).returncode == 0


@pytest.mark.slow
def test_chunk_size_from_luigi_cfg_applies_to_the_command(made, tmp_path):
    mirror, out = made
    cfg = tmp_path / "cfg"
    cfg.write_text("[BundleArchive]\nchunk_size = 2MiB\n")
    result = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", tmp_path / "b3", "--offline",
                     env=cli_env(LUIGI_CONFIG_PATH=str(cfg)))
    assert result.returncode == 0, result.stderr
    assert BundleManifest.read(tmp_path / "b3" / MANIFEST_NAME).chunk_size == 2 * 1024 * 1024
    tiny = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", tmp_path / "b4", "--offline",
                   "--chunk-size", "10")
    assert tiny.returncode == 2 and "too small" in tiny.stderr
