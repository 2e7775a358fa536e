"""``--report FILE``: written by every command that does work, on success and on each kind of failure, with the
exit code the process ended with and the error line it printed (cli.report)."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import cli_env, popen_cli, run_cli
from hypothesis import given
from hypothesis import strategies as st

from amsrepomirror import __version__
from amsrepomirror.bundle.format import MANIFEST_NAME, BundleManifest
from amsrepomirror.cli import report as cli_report
from amsrepomirror.cli.report import REPORT_SCHEMA, RunReport, run_reported
from amsrepomirror.offline import placement
from amsrepomirror.testing.repository import make_repository
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = "AMS2026.1"
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SECRET = "Sup3r-S3cret-pw"


def reported(result, path: Path, command: str) -> dict:
    """The report at ``path``, checked against the process it describes: its exit code, its one error line as
    printed on stderr, the envelope every report has; returned for the command's own facts."""
    data = json.loads(path.read_text())
    assert data["exit_code"] == result.returncode, (data, result.stderr)
    said = [line for line in result.stderr.splitlines() if line.startswith(("error:", "interrupted"))]
    assert data["error"] == (said[-1] if said else ""), (data["error"], result.stderr)
    if result.returncode:
        assert len(said) == 1 and data["error"], result.stderr
    assert (data["schema"], data["tool"], data["tool_version"], data["command"]) == (
        REPORT_SCHEMA, "amsrepomirror", __version__, command)
    assert STAMP.fullmatch(data["started"]) and STAMP.fullmatch(data["finished"])
    assert data["started"] <= data["finished"]
    assert "--report" in data["options"] and all(o.startswith("--") and "=" not in o for o in data["options"])
    return data


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A mirror and a bundle of it in several chunks, made by the command with --report."""
    work = tmp_path_factory.mktemp("made")
    make_repository(work / "scm", VERSION)
    with ScmDouble(work / "scm") as double:
        result = run_cli("bundle", "--version", VERSION, "--mirror", work / "mirror", "--listing-url",
                         double.listing_url(VERSION), "--out", work / "bundle", "--chunk-size", "1MiB",
                         "--report", work / "bundle-report.json")
    return work, result


@pytest.fixture
def bundle(made, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(made[0] / "bundle", copy)
    return copy


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def chunk_files(bundle_dir: Path) -> list[Path]:
    return [bundle_dir / c.name for c in BundleManifest.read(bundle_dir / MANIFEST_NAME).chunks]


# --- mirror ------------------------------------------------------------------------------------

def mirror(double, dest, *extra, env=None):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION),
                   *extra, env=env)


def test_mirror_success_holds_the_summary(scm_double, tmp_path):
    report = tmp_path / "r.json"
    result = mirror(scm_double, tmp_path / "m", "--report", report)
    data = reported(result, report, "mirror")
    assert data["exit_code"] == 0 and data["error"] == ""
    assert data["fetched"] > 0 and data["failed"] == [] and data["version"] == VERSION
    assert data["mirror"] == str((tmp_path / "m").absolute())
    assert data["manifest"].endswith(f"{VERSION}.manifest.json")


def test_mirror_wrong_password_is_3_and_the_password_is_nowhere(scm_double, tmp_path):
    report = tmp_path / "r.json"
    result = mirror(scm_double, tmp_path / "m", "--report", report, env=cli_env("demo", SECRET))
    data = reported(result, report, "mirror")
    assert data["exit_code"] == 3 and "listing" in data["error"]
    assert SECRET not in report.read_text()


def test_mirror_usage_error_after_parsing_is_reported(scm_double, tmp_path):
    report = tmp_path / "r.json"
    result = mirror(scm_double, tmp_path / "m", "--jobs", "0", "--report", report)
    data = reported(result, report, "mirror")
    assert data["exit_code"] == 2 and "--jobs" in data["error"]
    assert "fetched" not in data  # stopped before any work: no summary


def test_an_account_typed_on_the_command_line_never_reaches_the_report(scm_double, tmp_path):
    report = tmp_path / "r.json"
    result = run_cli("mirror", scm_double.listing_url(VERSION), tmp_path / "m", "demo", SECRET, "--report", report)
    data = reported(result, report, "mirror")
    assert data["exit_code"] == 2 and SECRET not in report.read_text()
    assert data["options"] == ["--report"]  # option names only, never a value or a word


def test_ctrl_c_is_130_with_the_interrupted_line(scm_double, tmp_path):
    report = tmp_path / "r.json"
    running = []
    scm_double.slow_headers("listings/*", seconds=5)
    scm_double.on_request("listings/*", lambda: running[0].send_signal(signal.SIGINT))
    running.append(popen_cli("mirror", "--version", VERSION, "--mirror", tmp_path / "m", "--listing-url",
                             scm_double.listing_url(VERSION), "--report", report))
    out, err = running[0].communicate(timeout=120)
    result = type("Ended", (), {"returncode": running[0].returncode, "stderr": err})
    data = reported(result, report, "mirror")
    assert data["exit_code"] == 130 and data["error"].startswith("interrupted")


# --- bundle ------------------------------------------------------------------------------------

def test_bundle_success_holds_the_folder_and_its_chunks(made):
    work, result = made
    data = reported(result, work / "bundle-report.json", "bundle")
    assert data["exit_code"] == 0
    chunks = chunk_files(work / "bundle")
    assert (data["bundle"], data["written"], data["chunks"], data["bytes"]) == (
        str(work / "bundle"), True, len(chunks), sum(c.stat().st_size for c in chunks))
    assert len(chunks) > 1 and data["bundle_versions"] == [VERSION] and data["delta"] is False
    assert data["fetched"] > 0 and data["offline"] is False  # and the mirror run before it


def test_bundle_offline_writes_its_report(made, tmp_path):
    mirror_copy = tmp_path / "mirror"
    shutil.copytree(made[0] / "mirror", mirror_copy)
    report = tmp_path / "r.json"
    result = run_cli("bundle", "--version", VERSION, "--mirror", mirror_copy, "--out", tmp_path / "b", "--offline",
                     "--chunk-size", "1MiB", "--report", report)
    data = reported(result, report, "bundle")
    assert (data["exit_code"], data["written"], data["offline"]) == (0, True, True)
    assert data["chunks"] == len(chunk_files(tmp_path / "b")) and "fetched" not in data


def test_bundle_of_a_rotted_mirror_is_4_not_0(made, tmp_path):
    """The case that once wrote exit_code 0: the mirror phase passed, the bundle's task graph failed."""
    mirror_copy = tmp_path / "mirror"
    shutil.copytree(made[0] / "mirror", mirror_copy)
    flip_byte(mirror_copy / "linux/x86_64/python3.11-2026.101.tar.zst")
    report = tmp_path / "r.json"
    result = run_cli("bundle", "--version", VERSION, "--mirror", mirror_copy, "--out", tmp_path / "b", "--offline",
                     "--chunk-size", "1MiB", "--report", report)
    data = reported(result, report, "bundle")
    assert data["exit_code"] == 4 and data["written"] is False and data["chunks"] is None


def test_bundle_wrong_password_is_3_with_the_mirror_error(scm_double, tmp_path):
    report = tmp_path / "r.json"
    result = run_cli("bundle", "--version", VERSION, "--mirror", tmp_path / "m", "--listing-url",
                     scm_double.listing_url(VERSION), "--out", tmp_path / "b", "--report", report,
                     env=cli_env("demo", SECRET))
    data = reported(result, report, "bundle")
    assert data["exit_code"] == 3 and data["written"] is False and "listing" in data["error"]
    assert result.stderr.splitlines()[-1].startswith("bundle: not written")  # said after the error line
    assert SECRET not in report.read_text()


def test_bundle_usage_error_after_parsing_is_reported(made, tmp_path):
    report = tmp_path / "r.json"
    result = run_cli("bundle", "--version", VERSION, "--mirror", made[0] / "mirror", "--out", tmp_path / "b",
                     "--offline", "--drop-version", "AMS2025.1", "--report", report)
    data = reported(result, report, "bundle")
    assert data["exit_code"] == 2 and "--drop-version" in data["error"] and data["written"] is False
    assert not (tmp_path / "b").exists()


# --- verify ------------------------------------------------------------------------------------

def test_verify_success_and_a_flipped_byte(bundle, tmp_path):
    report = tmp_path / "r.json"
    data = reported(run_cli("verify", bundle, "--no-test", "--report", report), report, "verify")
    assert (data["exit_code"], data["ok"], data["problems"], data["not_here"]) == (0, True, [], [])
    assert data["bundle"] == str(bundle) and data["chunks_checked"] == len(chunk_files(bundle))
    victim = chunk_files(bundle)[1]
    flip_byte(victim)
    data = reported(run_cli("verify", bundle, "--no-test", "--report", report), report, "verify")
    assert (data["exit_code"], data["ok"]) == (4, False)
    assert [p.split(":")[0] for p in data["problems"]] == [victim.name]


def test_verify_partial_lists_what_is_not_here(bundle, tmp_path):
    report = tmp_path / "r.json"
    away = chunk_files(bundle)[0]
    away.unlink()
    data = reported(run_cli("verify", bundle, "--partial", "--no-test", "--report", report), report, "verify")
    assert (data["exit_code"], data["ok"], data["partial"], data["not_here"]) == (0, True, True, [away.name])


def test_verify_usage_error_is_reported(tmp_path):
    report = tmp_path / "r.json"
    (tmp_path / "empty").mkdir()
    data = reported(run_cli("verify", tmp_path / "empty", "--report", report), report, "verify")
    assert data["exit_code"] == 2 and "ok" not in data


# --- unpack, verify --installed, receipt -------------------------------------------------------------

@pytest.mark.slow
def test_unpack_then_verify_installed_then_receipt(bundle, tmp_path):
    home, report = tmp_path / "ams", tmp_path / "r.json"
    home.mkdir()
    data = reported(run_cli("unpack", bundle, "--amshome", home, "--report", report), report, "unpack")
    receipt = placement.read_receipt(home)
    assert (data["exit_code"], data["placed"], data["amshome"]) == (0, True, str(home))
    assert data["installed"]["tree_sha256"] == receipt["tree_sha256"] and data["installed"]["versions"] == [VERSION]

    data = reported(run_cli("verify", "--installed", "--amshome", home, "--report", report), report, "verify")
    assert (data["exit_code"], data["ok"], data["problems"]) == (0, True, [])
    assert data["installed"]["tree_sha256"] == receipt["tree_sha256"]
    changed = next(p for p in (home / "repository").rglob("*") if p.is_file() and p.stat().st_size > 100)
    flip_byte(changed)
    data = reported(run_cli("verify", "--installed", "--amshome", home, "--report", report), report, "verify")
    assert (data["exit_code"], data["ok"]) == (4, False) and data["problems"][0].startswith("changed: ")

    out = tmp_path / "receipt.json"
    data = reported(run_cli("receipt", "--amshome", home, "--out", out, "--report", report), report, "receipt")
    assert (data["exit_code"], data["receipt_file"]) == (0, str(out))
    assert data["installed"]["tree_sha256"] == receipt["tree_sha256"]


def test_unpack_of_a_flipped_chunk_is_4_and_says_amshome_holds_nothing(bundle, tmp_path):
    home, report = tmp_path / "ams", tmp_path / "r.json"
    home.mkdir()
    flip_byte(chunk_files(bundle)[1])
    data = reported(run_cli("unpack", bundle, "--amshome", home, "--report", report), report, "unpack")
    assert (data["exit_code"], data["placed"], data["installed"]) == (4, False, None)


def test_unpack_and_receipt_usage_errors_are_reported(bundle, tmp_path):
    report = tmp_path / "r.json"
    env = {k: v for k, v in cli_env().items() if k != "AMSHOME"}
    data = reported(run_cli("unpack", bundle, "--report", report, env=env), report, "unpack")
    assert data["exit_code"] == 2 and "AMSHOME" in data["error"] and "installed" not in data
    (tmp_path / "ams").mkdir()
    data = reported(run_cli("receipt", "--amshome", tmp_path / "ams", "--report", report), report, "receipt")
    assert data["exit_code"] == 2 and "no receipt" in data["error"] and data["installed"] is None


@pytest.fixture
def small_disk(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=2m tmpfs {small} 2>/dev/null") != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield small
    finally:
        os.system(f"umount {small}")


def test_unpack_onto_a_full_disk_is_5(bundle, small_disk, tmp_path):
    report = tmp_path / "r.json"
    data = reported(run_cli("unpack", bundle, "--amshome", small_disk, "--report", report), report, "unpack")
    assert data["exit_code"] == 5 and data["installed"] is None


# --- the report itself -------------------------------------------------------------------------

def test_a_report_that_cannot_be_written_is_refused_before_any_work(bundle, tmp_path):
    result = run_cli("verify", bundle, "--report", tmp_path)  # a folder
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: cannot write the report --report {tmp_path}: it is a directory"]


def test_a_report_the_full_disk_refuses_at_the_end_fails_a_successful_run(bundle, small_disk):
    os.system(f"dd if=/dev/zero of={small_disk}/filler bs=64k 2>/dev/null")
    report = small_disk / "r.json"
    result = run_cli("verify", bundle, "--no-test", "--report", report)
    assert result.returncode == 5, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: report not written: {report}: ")
    assert "is intact" in result.stdout and not report.exists()


def test_a_parse_error_writes_no_report(tmp_path):
    report = tmp_path / "r.json"
    result = run_cli("verify", "--no-such-option", "--report", report)
    assert result.returncode == 2 and not report.exists()


def test_plan_and_config_take_no_report(tmp_path):
    for command in (["plan", "--mirror", tmp_path], ["config"]):
        result = run_cli(*command, "--report", tmp_path / "r.json")
        assert result.returncode == 2 and "unrecognized arguments: --report" in result.stderr


# --- whatever code main() ends with is the one recorded --------------------------------------------------

def args_for(path: Path, command="verify"):
    return type("Args", (), {"report": path, "command": command, "argv": [command, "--report", str(path)]})()


@pytest.mark.parametrize("code", [0, 75, 143])
def test_the_code_returned_is_recorded(tmp_path, code):
    path = tmp_path / "r.json"
    assert run_reported(args_for(path), lambda args: code) == code
    assert json.loads(path.read_text())["exit_code"] == code


def test_a_system_exit_and_a_bug_are_recorded_and_go_on(tmp_path, monkeypatch):
    path = tmp_path / "r.json"

    def stopped(args):
        print("error: the lock is held", file=sys.stderr)
        raise SystemExit(75)

    with pytest.raises(SystemExit):
        run_reported(args_for(path), stopped)
    assert json.loads(path.read_text())[("exit_code")] == 75
    assert json.loads(path.read_text())["error"] == "error: the lock is held"

    def bug(args):
        args.report_facts["partly"] = True
        raise ZeroDivisionError("division by zero")

    with pytest.raises(ZeroDivisionError):
        run_reported(args_for(path), bug)
    data = json.loads(path.read_text())
    assert (data["exit_code"], data["error"], data["partly"]) == (1, "ZeroDivisionError: division by zero", True)


def test_error_lines_are_taken_whole_from_pieces():
    stream = io.StringIO()
    seen = cli_report._ErrorLines(stream)
    for piece in ("warn", "ing: x\nerror: first", " half\n", "verify  40%|###", "\r          \r", "error: last", "\n",
                  "  detail\n"):
        seen.write(piece)
    assert seen.last == "error: last" and stream.getvalue().endswith("  detail\n")  # the bar cleared before it


@given(st.lists(st.sampled_from(["error: a", "error: b c", "interrupted; rerun", "warning: w", "  x", "", "note"]),
                max_size=8),
       st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_the_last_error_line_whatever_the_writes(lines, cuts):
    """However the text reaches stderr (print's two writes, tqdm's, pieces), the last whole error line is kept."""
    text = "".join(f"{line}\n" for line in lines)
    stream = io.StringIO()
    seen = cli_report._ErrorLines(stream)
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    for start, end in zip(bounds, bounds[1:], strict=False):
        seen.write(text[start:end])
    assert stream.getvalue() == text
    assert seen.last == next((line for line in reversed(lines) if line.startswith(("error:", "interrupted"))), "")


def test_a_fact_may_not_hide_a_field_of_the_envelope(tmp_path):
    report = RunReport(tmp_path / "r.json", args_for(tmp_path / "r.json"))
    report.facts["exit_code"] = 0
    with pytest.raises(ValueError, match="exit_code"):
        report.content(4, "error: x")


# --- where a report may not go, and a stop while it is written ------------------------------------------

@pytest.mark.parametrize("case", ["signed manifest", "bundle subfolder", "receipt in AMSHOME", "AMSHOME from the environment",
                                  "settings file", "mirror state", "mirror folder given SCM's way"])
def test_a_report_inside_what_the_command_reads_or_writes_is_refused_before_any_work(bundle, tmp_path, case):
    """A report written over the signed manifest, a receipt, the mirror's state or the settings would break what the
    command just checked: exit 2, one line, and the file as it was."""
    home, mirror_dir = tmp_path / "ams", tmp_path / "mirror"
    home.mkdir()
    (mirror_dir / ".amsrepomirror").mkdir(parents=True)
    settings = tmp_path / "site.cfg"
    settings.write_text("[FetchListing]\njobs = 2\n")
    env = None
    args, target = {
        "signed manifest": (["verify", bundle], bundle / MANIFEST_NAME),
        "bundle subfolder": (["verify", bundle], bundle / "reports" / "r.json"),
        "receipt in AMSHOME": (["unpack", bundle, "--amshome", home], home / placement.RECEIPT),
        "AMSHOME from the environment": (["unpack", bundle], home / "r.json"),
        "settings file": (["--config", settings, "verify", bundle], settings),
        "mirror state": (["mirror", "--version", VERSION, "--mirror", mirror_dir, "--listing-url", "http://127.0.0.1:9/x"],
                         mirror_dir / ".amsrepomirror" / f"{VERSION}.manifest.json"),
        "mirror folder given SCM's way": (["mirror", "http://127.0.0.1:9/x", mirror_dir], mirror_dir / "r.json"),
    }[case]
    if case == "AMSHOME from the environment":
        env = cli_env(AMSHOME=str(home))
    if case == "bundle subfolder":
        target.parent.mkdir()
    before = target.read_bytes() if target.exists() else None
    result = run_cli(*args, "--report", target, env=env)
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: --report {target} is in ") and line.endswith("write it outside"), line
    assert (target.read_bytes() if target.exists() else None) == before
    assert not (home / "repository").exists()


def test_a_stop_while_the_report_of_an_ended_command_is_written_changes_neither(tmp_path):
    """SIGTERM landing while the report is written (here: sent from inside the write) is dropped: the run had ended,
    and its report and its exit code agree on how."""
    report, empty = tmp_path / "r.json", tmp_path / "empty"
    empty.mkdir()
    script = ("import os, signal, sys\n"
              "import amsrepomirror.cli.report as r\n"
              "write = r.atomic_write_json\n"
              "r.atomic_write_json = lambda p, c: (os.kill(os.getpid(), signal.SIGTERM), write(p, c))[1]\n"
              "from amsrepomirror.__main__ import run\n"
              f"sys.argv = ['amsrepomirror', 'verify', {str(empty)!r}, '--report', {str(report)!r}]\n"
              "sys.exit(run())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=cli_env())
    data = reported(result, report, "verify")
    assert result.returncode == data["exit_code"] == 2
    assert "terminated" not in result.stderr
