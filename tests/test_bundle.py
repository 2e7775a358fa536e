"""The bundle folder end to end: chunks written, finished, checked with real 7-Zip and sha256sum,
unpacked by hand, and damaged in every way verify_bundle must catch."""

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import py7zr
import pytest

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, REPORT_NAMES, SUMS_NAME, BundleManifest
from amsrepomirror.bundle.sums import read_sums, write_sums
from amsrepomirror.bundle.verify import require_intact, verify_bundle
from amsrepomirror.errors import IntegrityError
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.pack.build import finish_bundle
from amsrepomirror.pack.plan import build_bundle_manifest, chunk_plan
from amsrepomirror.pack.readme import readme_text
from amsrepomirror.pack.sevenzip import write_chunk
from amsrepomirror.util.hashing import sha256_file

KiB, MiB = 1024, 1024**2
VERSION = "AMS2026.1"
CHUNK = 1 * MiB


def tool(name: str) -> str:
    """Path of a real command-line tool; skip (or fail with AMSREPOMIRROR_REQUIRE_TOOLS=1) if absent."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("AMSREPOMIRROR_REQUIRE_TOOLS") == "1":
            pytest.fail(message + " (AMSREPOMIRROR_REQUIRE_TOOLS=1)")
        pytest.skip(message)
    return path


TREE = {
    "ams/2026.1/x86_64-linux/ams-core.tar.gz": 2 * MiB + 333,     # split over 3 chunks
    "ams/2026.1/x86_64-linux/ams-gui.tar.gz": 700 * KiB,
    "ams/2026.1/windows/Setup Ams 2026 (x64).exe": 300 * KiB,
    "ams/2026.1/docs/ünïcødé-Handbuch.pdf": 40 * KiB,
    "ams/2026.1/docs/empty.txt": 0,
    "ams/index.json": b'{"packages": ["ams-core", "ams-gui"]}\n' * 200,
    f"{VERSION}.yml": b"packages: [ams-core, ams-gui]\n",  # the index amspackages reads; verify requires it
}
TREE.update({f"ams/2026.1/small/pkg-{i:03d}.zip": 1000 + 37 * i for i in range(30)})


def build_mirror(root: Path):
    rng = random.Random(99)
    for rel, content in TREE.items():
        p = root.joinpath(*rel.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(content) if isinstance(content, int) else content)
    return [
        FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p))
        for p in sorted(root.rglob("*")) if p.is_file()
    ]


def build_bundle(mirror: Path, files, bundle: Path, compression: str):
    plan = chunk_plan(files, CHUNK, VERSION, compression)
    expected = {f.path: f for f in files}
    results = []
    for spec in plan:  # in order: a split file's hash goes on where the chunk before left it
        results.append(write_chunk(spec, mirror, bundle, compression, expected,
                                   resume=results[-1].sha256_state if results else None))
    manifest = build_bundle_manifest(plan, results, files, version=VERSION, tool_version="test",
                                     created="2026-01-01T00:00:00Z", mirror_manifest_sha256="ab" * 32)
    finish_bundle(bundle, manifest)
    return plan, manifest


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    return root, build_mirror(root)


@pytest.fixture(scope="module")
def bundles(source, tmp_path_factory):
    """compression -> (compression, bundle folder, plan, manifest), built once per module."""
    mirror, files = source
    cache = {}

    def get(compression):
        if compression not in cache:
            bundle = tmp_path_factory.mktemp(f"bundle-{compression}")
            plan, manifest = build_bundle(mirror, files, bundle, compression)
            cache[compression] = (compression, bundle, plan, manifest)
        return cache[compression]

    return get


@pytest.fixture(params=["copy", "lzma2", "zstd"])
def built(request, bundles):
    return bundles(request.param)


@pytest.fixture(scope="module")
def copy_bundle(source, tmp_path_factory):
    mirror, files = source
    bundle = tmp_path_factory.mktemp("bundle-copy-damage-source")
    build_bundle(mirror, files, bundle, "copy")
    return bundle


@pytest.fixture
def damaged(copy_bundle, tmp_path):
    """A fresh copy of a good bundle to damage."""
    target = tmp_path / "bundle"
    shutil.copytree(copy_bundle, target)
    return target


def tree_digest(root: Path):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- a good bundle ------------------------------------------------------------------------------

def test_bundle_folder_layout_and_sums(built, source):
    compression, bundle, plan, manifest = built
    names = sorted(p.name for p in bundle.iterdir())
    chunk_names = [s.name for s in plan]
    assert names == sorted(chunk_names + [MANIFEST_NAME, README_NAME, SUMS_NAME, *REPORT_NAMES])
    assert len(plan) >= 3
    big = next(f for f in manifest.files if f.path.endswith("ams-core.tar.gz"))
    assert len({p.chunk for p in big.parts}) >= 3
    for spec in plan:
        assert (bundle / spec.name).stat().st_size <= CHUNK
    text = (bundle / SUMS_NAME).read_text()
    lines = text.splitlines()
    assert all(re.fullmatch(r"[0-9a-f]{64}  \S.*", line) for line in lines)
    assert [line[66:] for line in lines] == sorted(chunk_names + [MANIFEST_NAME, README_NAME, *REPORT_NAMES])
    for name, digest in read_sums(bundle).items():
        assert sha256_file(bundle / name) == digest
    assert BundleManifest.read(bundle / MANIFEST_NAME).to_json() == manifest.to_json()
    report = verify_bundle(bundle)
    assert report.ok, report.message()
    assert report.chunks_checked == len(plan)
    require_intact(report)


def test_sha256sum_c_passes(built):
    _, bundle, _, _ = built
    result = subprocess.run([tool("sha256sum"), "-c", SUMS_NAME], cwd=bundle, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": OK") == len(read_sums(bundle))


# Stock 7-Zip cannot decode the zstd method in 7z archives, so zstd bundles are unpacked with
# py7zr below instead.
@pytest.mark.parametrize("compression", ["copy", "lzma2"])
def test_7zz_tests_every_chunk_and_manual_unpack_reproduces_tree(compression, bundles, source, tmp_path):
    _, bundle, plan, manifest = bundles(compression)
    mirror, files = source
    sevenzip = tool("7zz")
    for spec in plan:
        result = subprocess.run([sevenzip, "t", str(bundle / spec.name)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Everything is Ok" in result.stdout
    out = tmp_path / "repository"
    for spec in plan:  # README: 7z x -orepository each chunk
        result = subprocess.run([sevenzip, "x", f"-o{out}", str(bundle / spec.name)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    for f in manifest.files:  # README: cat path.part-* > path && rm path.part-*
        if len(f.parts) > 1:
            subprocess.run(f"cat '{f.path}'.part-* > '{f.path}' && rm '{f.path}'.part-*", shell=True, cwd=out, check=True)
    assert tree_digest(out) == tree_digest(mirror)
    assert tree_digest(out) == {f.path: f.sha256 for f in files}


def test_zstd_bundle_unpacks_with_py7zr(bundles, source, tmp_path):
    _, bundle, plan, manifest = bundles("zstd")
    mirror, _ = source
    out = tmp_path / "repository"
    for spec in plan:
        with py7zr.SevenZipFile(bundle / spec.name) as z:
            z.extractall(out)
    for f in manifest.files:
        if len(f.parts) > 1:
            with open(out / f.path, "wb") as dst:
                for p in f.parts:
                    dst.write((out / p.member).read_bytes())
                    (out / p.member).unlink()
    assert tree_digest(out) == tree_digest(mirror)


def test_readme_explains_check_and_unpack(built):
    compression, bundle, _, manifest = built
    text = (bundle / README_NAME).read_text(encoding="utf-8")
    assert text == readme_text(manifest)
    for needle in ("sha256sum -c SHA256SUMS", "7z t", "7z x", "$AMSHOME/repository",
                   "amsrepomirror unpack BUNDLE --amshome DIR", VERSION,
                   "cat ams/2026.1/x86_64-linux/ams-core.tar.gz.part-* > ams/2026.1/x86_64-linux/ams-core.tar.gz"):
        assert needle in text, needle
    assert ("zstd" in text and "cannot unpack" in text) == (compression == "zstd")


def test_write_and_read_sums(tmp_path):
    (tmp_path / "b.7z").write_bytes(b"bbb")
    (tmp_path / "a.7z").write_bytes(b"aaa")
    sums = write_sums(tmp_path, ["b.7z", "a.7z"], known={"b.7z": "f" * 64})
    assert (tmp_path / SUMS_NAME).read_text() == (
        f"{hashlib.sha256(b'aaa').hexdigest()}  a.7z\n" + f"{'f' * 64}  b.7z\n"
    )
    assert read_sums(tmp_path) == sums
    (tmp_path / SUMS_NAME).write_text("nonsense\n")
    with pytest.raises(IntegrityError, match="malformed"):
        read_sums(tmp_path)
    (tmp_path / SUMS_NAME).write_text(f"{'0' * 64}  ../evil\n")
    with pytest.raises(IntegrityError, match="malformed"):
        read_sums(tmp_path)
    (tmp_path / SUMS_NAME).unlink()
    with pytest.raises(IntegrityError, match="incomplete"):
        read_sums(tmp_path)
    with pytest.raises(ValueError):
        write_sums(tmp_path, ["sub/x"])


def test_finish_bundle_removes_old_sums_first_and_refuses_missing_chunk(damaged):
    manifest = BundleManifest.read(damaged / MANIFEST_NAME)
    victim = manifest.chunks[1].name
    (damaged / victim).unlink()
    with pytest.raises(IntegrityError, match=f"chunk {victim} is missing"):
        finish_bundle(damaged, manifest)
    assert not (damaged / SUMS_NAME).exists()  # an unfinished bundle never looks finished


def test_finish_bundle_rehash_gives_same_sums(damaged):
    manifest = BundleManifest.read(damaged / MANIFEST_NAME)
    before = read_sums(damaged)
    assert finish_bundle(damaged, manifest, rehash=True) == before


# --- damage verify_bundle must catch --------------------------------------------------------------

def chunks_of(bundle: Path):
    return [c.name for c in BundleManifest.read(bundle / MANIFEST_NAME).chunks]


def test_flipped_byte_is_corrupt(damaged):
    name = chunks_of(damaged)[1]
    path = damaged / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_bundle(damaged)
    assert report.bad_chunks == [name]
    assert report.problem_of(name) == ["corrupt"]
    with pytest.raises(IntegrityError) as err:
        require_intact(report)
    message = str(err.value)
    assert "\n" not in message
    assert f"re-copy these chunks: {name} (corrupt)" in message
    assert err.value.exit_code == 4


def test_truncated_chunk(damaged):
    name = chunks_of(damaged)[0]
    path = damaged / name
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1000)
    report = verify_bundle(damaged)
    assert report.bad_chunks == [name]
    assert report.problem_of(name) == ["truncated"]


def test_missing_and_extra_chunks(damaged):
    names = chunks_of(damaged)
    (damaged / names[2]).unlink()
    shutil.copy(damaged / names[0], damaged / f"{VERSION}-9999.7z")
    report = verify_bundle(damaged)
    assert report.bad_chunks == [names[2]]
    assert report.problem_of(names[2]) == ["missing"]
    assert report.unexpected_chunks == [f"{VERSION}-9999.7z"]
    message = report.message()
    assert f"{names[2]} (missing)" in message and f"{VERSION}-9999.7z" in message


def test_tampered_manifest(damaged):
    body = json.loads((damaged / MANIFEST_NAME).read_text())
    body["files"][0]["size"] += 1
    (damaged / MANIFEST_NAME).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    report = verify_bundle(damaged)
    assert not report.ok
    assert "corrupt" in report.problem_of(MANIFEST_NAME)
    assert "inconsistent" in report.problem_of(MANIFEST_NAME)
    assert "manifest.json: corrupt" in report.message()


def test_tampered_chunk_hash_in_manifest_and_sums_disagree(damaged):
    body = json.loads((damaged / MANIFEST_NAME).read_text())
    name = body["chunks"][0]["name"]
    body["chunks"][0]["sha256"] = "0" * 64
    (damaged / MANIFEST_NAME).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    report = verify_bundle(damaged)
    assert "corrupt" in report.problem_of(MANIFEST_NAME)
    assert name in report.bad_chunks


def test_sums_line_of_an_intact_chunk_that_disagrees_with_the_manifest(damaged):
    """SHA256SUMS names another sha256 for an intact chunk: `sha256sum -c` fails, so verify fails too."""
    name = chunks_of(damaged)[0]
    sums = (damaged / SUMS_NAME).read_text(encoding="utf-8").splitlines()
    (damaged / SUMS_NAME).write_text("".join(f"{'0' * 64}  {name}\n" if line.endswith(f"  {name}") else line + "\n"
                                             for line in sums), encoding="utf-8")
    by_hand = subprocess.run([tool("sha256sum"), "-c", "--quiet", SUMS_NAME], cwd=damaged, capture_output=True, text=True)
    assert by_hand.returncode == 1 and by_hand.stdout == f"{name}: FAILED\n"
    report = verify_bundle(damaged)
    assert report.problem_of(name) == [f"{SUMS_NAME} disagrees with {MANIFEST_NAME}"]
    assert [p.name for p in report.problems] == [name]  # the chunk itself matches manifest.json
    with pytest.raises(IntegrityError, match=f"{name} \\({SUMS_NAME} disagrees with {MANIFEST_NAME}\\)"):
        require_intact(report)


def test_missing_sums_and_readme(damaged):
    (damaged / SUMS_NAME).unlink()
    (damaged / README_NAME).unlink()
    report = verify_bundle(damaged)
    assert report.problem_of(SUMS_NAME) == ["missing"]
    assert report.problem_of(README_NAME) == []  # documentation only: a warning
    assert [w for w in report.warnings if w.startswith(f"{README_NAME} is missing")]
    assert report.bad_chunks == []  # chunks still checked against manifest.json
    assert report.chunks_checked == len(chunks_of(damaged))


def test_unreadable_manifest_falls_back_to_sums(damaged):
    names = chunks_of(damaged)
    (damaged / MANIFEST_NAME).write_text("{ not json")
    data = bytearray((damaged / names[0]).read_bytes())
    data[100] ^= 0xFF
    (damaged / names[0]).write_bytes(bytes(data))
    report = verify_bundle(damaged)
    assert "unreadable" in report.problem_of(MANIFEST_NAME)
    assert report.bad_chunks == [names[0]]


def test_archive_test_catches_bad_archive_with_matching_hash(damaged):
    """A chunk broken before its hash was taken (e.g. a writer bug): only the 7z CRC test sees it."""
    manifest = BundleManifest.read(damaged / MANIFEST_NAME)
    name = manifest.chunks[0].name
    path = damaged / name
    data = bytearray(path.read_bytes())
    data[64] ^= 0xFF  # inside the first member's data
    path.write_bytes(bytes(data))
    chunks = [c if c.name != name else type(c)(c.name, c.size, sha256_file(path), c.members) for c in manifest.chunks]
    manifest.chunks = chunks
    finish_bundle(damaged, manifest)
    assert verify_bundle(damaged, test_archives=False).ok
    report = verify_bundle(damaged)
    assert report.bad_chunks == [name]
    assert report.problem_of(name) == ["bad archive"]


def test_verify_hashes_each_chunk_once(copy_bundle, monkeypatch):
    """Every file SHA256SUMS lists is hashed exactly once (chunks in HASH_THREADS threads); manifest.json
    is read once, and hashed and parsed from those bytes."""
    import threading

    import amsrepomirror.bundle.verify

    counts = {}
    lock = threading.Lock()

    def counting(real):
        def hash_once(path, *more):
            with lock:
                counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
            return real(path, *more)
        return hash_once

    monkeypatch.setattr(amsrepomirror.bundle.verify, "sha256_file", counting(amsrepomirror.bundle.verify.sha256_file))
    assert verify_bundle(copy_bundle).ok
    assert MANIFEST_NAME not in counts, counts  # hashed from the bytes read once, not read again to hash
    assert counts == {name: 1 for name in read_sums(copy_bundle) if name != MANIFEST_NAME}
    assert {c.name for c in BundleManifest.read(copy_bundle / MANIFEST_NAME).chunks} <= set(counts)


def test_a_manifest_the_caller_found_missing_is_missing_even_if_it_appears_later(copy_bundle):
    """None is what the caller read (no manifest.json): verify_bundle must not read the file itself."""
    report = verify_bundle(copy_bundle, test_archives=False, manifest_bytes=None)
    assert not report.ok and report.manifest is None
    assert report.problem_of(MANIFEST_NAME) == ["missing"]


#: ``amsrepomirror verify BUNDLE`` in one process, where manifest.json (moved to BUNDLE/../held)
#: comes back after the command's read of it and before the chunks are checked.
VERIFY_MANIFEST_COMES_BACK = """
import os, sys
from amsrepomirror import cli
import amsrepomirror.cli.verify  # imported when verify runs: here first, so that its check can be wrapped
bundle, held = sys.argv[1:3]
checks = cli.verify.verify_bundle
def manifest_back_then_verify(*args, **kwargs):
    os.replace(held, os.path.join(bundle, "manifest.json"))
    return checks(*args, **kwargs)
cli.verify.verify_bundle = manifest_back_then_verify
sys.exit(cli.main(["verify", bundle, "--no-test"]))
"""


def test_verify_uses_one_read_of_the_manifest_even_when_it_appears_after_it(copy_bundle, tmp_path):
    import sys

    from clihelp import REPO, cli_env

    bundle, held = tmp_path / "bundle", tmp_path / "held"
    shutil.copytree(copy_bundle, bundle)
    os.replace(bundle / MANIFEST_NAME, held)
    result = subprocess.run([sys.executable, "-c", VERIFY_MANIFEST_COMES_BACK, str(bundle), str(held)], cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert (bundle / MANIFEST_NAME).is_file() and "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 4 and "is intact" not in result.stdout, result.stdout + result.stderr
    assert f"  {MANIFEST_NAME}: missing" in result.stderr.splitlines()


def test_file_hash_across_block_boundaries(tmp_path):
    import hashlib

    from amsrepomirror.util.hashing import FILE_BLOCK

    for size in (0, 1, FILE_BLOCK - 1, FILE_BLOCK, 2 * FILE_BLOCK + 7):
        p = tmp_path / f"f{size}"
        data = os.urandom(size)
        p.write_bytes(data)
        assert sha256_file(p) == hashlib.sha256(data).hexdigest()


# --- where the bundle folder may be -------------------------------------------------------------

@pytest.mark.parametrize("layout", ["out-inside-mirror", "out-is-mirror", "out-through-symlink", "mirror-inside-out"])
@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_bundle_folder_and_mirror_must_not_hold_each_other(tmp_path, layout, offline):
    """A bundle inside the mirror would be deleted by mirror --delete-unlisted; refused before any work."""
    from clihelp import run_cli

    mirror = tmp_path / ("bundle/mirror" if layout == "mirror-inside-out" else "mirror")
    mirror.mkdir(parents=True)
    (mirror / "keep.txt").write_text("a mirror file")
    out = {"out-inside-mirror": mirror / "bundles" / "b1", "out-is-mirror": mirror,
           "out-through-symlink": tmp_path / "link" / "b1", "mirror-inside-out": tmp_path / "bundle"}[layout]
    (tmp_path / "link").symlink_to(mirror)
    before = sorted(tmp_path.rglob("*"))
    # online: a listing URL nobody answers; the refusal must come before any connection
    online = [] if offline else ["--listing-url", "http://127.0.0.1:9/Downloads/packages/listings/AMS2026.1.txt"]
    result = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", out, "--chunk-size", "1MiB",
                     *(["--offline"] if offline else online), timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert ("is inside the mirror" if layout != "mirror-inside-out" else "is inside the bundle folder") in result.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written: no bundle folder, no mirror state
