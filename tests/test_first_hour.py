"""The mistakes of a first hour with the tool: each one answered by a message that names the
cause and the next step, with its documented exit code.

Driven through the command (run_cli) against the SCM double, real 7zz bundles and, for the
read-only cases, a read-only tmpfs (when the tests run as root).
"""

import argparse
import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import trustme
from clihelp import REPO, cli_env, popen_cli, run_cli, tree_hashes
from servers import free_port

import amsrepomirror
from amsrepomirror.bundle.format import BundleManifest
from amsrepomirror.cli.parser import build_parser
from amsrepomirror.errors import INTEGRITY_FAILURE, RUNTIME_FAILURE, USAGE_ERROR
from amsrepomirror.testing.repository import make_repository, repository_files, write_listing
from amsrepomirror.testing.scmdouble import ScmDouble
from amsrepomirror.util.progress import ByteProgress
from amsrepomirror.util.units import format_size

VERSION = "AMS2026.1"
TOOL = str(Path(sys.executable).with_name("amsrepomirror"))  # hints name the tool as typed: not on PATH here


def stderr_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


def error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def mirror(url, dest, *extra, env=None, timeout=300):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", url, *extra, env=env, timeout=timeout)


# --- 1: a listing that cannot be reached fails within seconds, saying each retry ----------------

def patient_settings(tmp_path):
    """[http] settings of a patient site: many retries with a long backoff (for file bodies)."""
    cfg = tmp_path / "patient.cfg"
    cfg.write_text("[http]\nretries = 10\nbackoff = 0.5\ntimeout = 60\n")
    return cfg


@pytest.mark.slow
def test_refused_listing_says_each_retry_and_gives_up_quickly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/Downloads/packages/listings/{VERSION}.txt"
    # 10 patient retries would back off for minutes: the listing's own few quick ones end within the timeout
    result = run_cli("--config", patient_settings(tmp_path), "mirror", "--version", VERSION, "--mirror", tmp_path / "m",
                     "--listing-url", url, timeout=120)
    assert result.returncode == RUNTIME_FAILURE, result.stderr
    lines = stderr_lines(result)
    retries = [line for line in lines if line.startswith("retrying ")]
    assert retries == [f"retrying GET {url} (attempt {n}/5, connection refused)" for n in range(2, 6)], result.stderr
    assert lines[-1] == f"error: cannot fetch the listing {url}: connection refused"
    assert "Error" not in result.stderr  # no exception class names


@pytest.mark.slow
def test_name_that_does_not_resolve_says_so(tmp_path):
    url = f"http://nonexistent.invalid/Downloads/packages/listings/{VERSION}.txt"
    result = run_cli("--config", patient_settings(tmp_path), "mirror", "--version", VERSION, "--mirror", tmp_path / "m",
                     "--listing-url", url, timeout=120)
    assert result.returncode == RUNTIME_FAILURE, result.stderr
    lines = stderr_lines(result)
    assert lines[0] == f"retrying GET http://nonexistent.invalid:80/Downloads/packages/listings/{VERSION}.txt " \
                       "(attempt 2/5, the host name does not resolve)"
    assert lines[-1] == f"error: cannot fetch the listing {url}: the host name does not resolve"


# --- 2: https against plain HTTP, and the reverse ----------------------------------------------

def test_https_url_against_a_plain_http_server_says_so(scm_double, tmp_path):
    url = scm_double.listing_url(VERSION).replace("http://", "https://")
    result = mirror(url, tmp_path / "m", "--no-ssl")
    assert result.returncode == RUNTIME_FAILURE, result.stderr
    where = url.split("/")[2]
    assert error_line(result) == (f"error: cannot fetch the listing {url}: the server at {where} speaks plain HTTP, "
                                  "not HTTPS: use an http:// URL (--no-ssl does not change this)")
    assert [r for r in scm_double.log if r.path.endswith(".txt")] == []  # nothing was asked in the clear


def test_http_url_against_an_https_server_says_so(repo_tree, tmp_path):
    pem = tmp_path / "server.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    with ScmDouble(repo_tree, tls=pem) as double:
        url = double.listing_url(VERSION).replace("https://", "http://")
        result = mirror(url, tmp_path / "m")
    assert result.returncode == RUNTIME_FAILURE, result.stderr
    where = url.split("/")[2]
    assert error_line(result) == (f"error: cannot fetch the listing {url}: the server at {where} speaks HTTPS (TLS), "
                                  "not plain HTTP: use an https:// URL")


# --- bundles for the offline-side mistakes ------------------------------------------------------

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A mirror and a bundle of it in several chunks (real 7zz-readable chunks, built by the command)."""
    work = tmp_path_factory.mktemp("made")
    root = work / "scm"
    make_repository(root, VERSION)
    with ScmDouble(root) as double:
        result = run_cli("bundle", "--version", VERSION, "--mirror", work / "mirror", "--listing-url",
                         double.listing_url(VERSION), "--out", work / "bundle", "--chunk-size", "1MiB")
    assert result.returncode == 0, result.stderr
    return work


@pytest.fixture
def bundle(made, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(made / "bundle", copy)
    return copy


def chunk_names(bundle_dir):
    return [c["name"] for c in json.loads((bundle_dir / "manifest.json").read_text())["chunks"]]


# --- 5: a folder that is not a bundle ----------------------------------------------------------

@pytest.mark.slow
def test_mirror_given_as_bundle_says_it_is_a_mirror(made):
    for command in (["verify", made / "mirror"], ["unpack", made / "mirror", "--amshome", made]):
        result = run_cli(*command)
        assert result.returncode == USAGE_ERROR, result.stderr
        assert stderr_lines(result)[0] == (
            f"error: {made / 'mirror'} is a mirror, not a bundle folder: make a bundle of it with {TOOL} bundle "
            f"--offline --version VERSION --mirror {made / 'mirror'} --out BUNDLE, then pass BUNDLE")


def test_chunk_given_as_bundle_says_to_pass_its_folder(made):
    chunk = made / "bundle" / chunk_names(made / "bundle")[0]
    result = run_cli("verify", chunk)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert stderr_lines(result)[0] == (f"error: {chunk} is a chunk of a bundle, not a bundle folder: "
                                       f"pass the folder that holds it ({made / 'bundle'})")


def test_empty_folder_is_not_a_bundle(tmp_path):
    result = run_cli("verify", tmp_path)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert stderr_lines(result)[0].startswith(f"error: {tmp_path} is not a bundle folder: it holds no manifest.json")


# --- 6: a version without its AMS prefix; a listing that does not exist ----------------------------

def test_version_without_ams_prefix_is_suggested(tmp_path):
    result = run_cli("mirror", "--version", "2026.1", "--mirror", tmp_path / "m")
    assert result.returncode == USAGE_ERROR
    assert stderr_lines(result)[0] == "error: invalid version '2026.1': did you mean --version AMS2026.1?"


def test_listing_404_is_a_usage_error_naming_version_and_url(scm_double, tmp_path):
    url = scm_double.listing_url("AMS2099.1")
    result = run_cli("mirror", "--version", "AMS2099.1", "--mirror", tmp_path / "m", "--listing-url", url)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert error_line(result) == (f"error: there is no listing at {url} (HTTP 404): "
                                  "check --version (e.g. AMS2026.1) and --listing-url")


# --- 7: half an account in the environment -------------------------------------------------------

@pytest.mark.parametrize("user, password, given, missing", [("demo", None, "SCM_USER", "SCM_PASSWORD"),
                                                            (None, "demo-pass", "SCM_PASSWORD", "SCM_USER")])
def test_half_an_account_names_the_missing_variable(scm_double, tmp_path, user, password, given, missing):
    env = cli_env(user=user, password=password, home=str(tmp_path))  # no ~/.netrc there
    result = mirror(scm_double.listing_url(VERSION), tmp_path / "m", env=env)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert stderr_lines(result)[0] == (f"error: {given} is set but {missing} is not (also tried: ~/.netrc has no "
                                       "account for 127.0.0.1, and there is no terminal to ask on): "
                                       f"set {missing} too")
    assert scm_double.log == []  # nothing was asked without the account


# --- 8: a destination that cannot be written -------------------------------------------------------

@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only tmpfs (root only: mounting needs it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_mirror_is_a_usage_error_naming_the_file_system(scm_double, read_only_folder):
    result = mirror(scm_double.listing_url(VERSION), read_only_folder / "mirror")
    assert result.returncode == USAGE_ERROR, result.stderr
    assert stderr_lines(result)[0] == (f"error: cannot write to the mirror {read_only_folder / 'mirror'}: {read_only_folder} "
                                       "is on a read-only file system: mount it read-write or choose another folder")
    assert scm_double.log == []  # refused before anything started


def test_read_only_amshome_as_root_is_not_blamed_on_the_user(bundle, read_only_folder):
    result = run_cli("unpack", bundle, "--amshome", read_only_folder)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert error_line(result) == (f"error: cannot write to AMSHOME: {read_only_folder} is on a read-only file system: "
                                  "mount it read-write or choose another folder")


# --- 9: README.txt is documentation ----------------------------------------------------------------

@pytest.mark.slow
def test_missing_readme_warns_and_does_not_block(made, bundle, tmp_path):
    (bundle / "README.txt").unlink()
    result = run_cli("verify", bundle)
    assert result.returncode == 0, result.stderr
    assert stderr_lines(result)[0] == (f"warning: README.txt is missing from {bundle} (it only documents the bundle; "
                                       "the chunks are checked against manifest.json and SHA256SUMS)")
    amshome = tmp_path / "amshome"
    amshome.mkdir()
    result = run_cli("unpack", bundle, "--amshome", amshome)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == tree_hashes(made / "mirror")


# --- 11: one stick at a time -----------------------------------------------------------------------

def half_the_chunks(bundle):
    """Remove every second chunk (as if they were on the next stick); return the removed names."""
    names = chunk_names(bundle)
    assert len(names) >= 3
    gone = names[1::2]
    for name in gone:
        (bundle / name).unlink()
    return gone


def test_partial_verify_checks_the_chunks_here_and_lists_the_rest(bundle):
    gone = half_the_chunks(bundle)
    result = run_cli("verify", bundle, "--partial")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == f"not here yet ({len(gone)} of {len(chunk_names(bundle))} chunks): {', '.join(gone)}"
    assert out[1].startswith(f"bundle {bundle}: the {len(chunk_names(bundle)) - len(gone)} chunk(s) here are intact")
    assert run_cli("verify", bundle).returncode == INTEGRITY_FAILURE  # without --partial a missing chunk is an error


def test_partial_verify_still_finds_a_bad_chunk_here(bundle):
    half_the_chunks(bundle)
    here = chunk_names(bundle)[0]
    data = bytearray((bundle / here).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / here).write_bytes(bytes(data))
    result = run_cli("verify", bundle, "--partial")
    assert result.returncode == INTEGRITY_FAILURE, result.stderr
    assert error_line(result).startswith(f"error: bundle {bundle} failed verification: re-copy these chunks: {here} (corrupt)")


def test_readme_shows_the_check_by_hand_for_one_stick(bundle):
    half_the_chunks(bundle)
    readme = (bundle / "README.txt").read_text()
    assert "sha256sum -c --ignore-missing SHA256SUMS" in readme
    done = subprocess.run(["sha256sum", "-c", "--ignore-missing", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- 13: AMSHOME from the environment --------------------------------------------------------------

def test_unpack_takes_amshome_from_the_environment_and_says_so(made, bundle, tmp_path):
    amshome = tmp_path / "amshome"
    amshome.mkdir()
    result = run_cli("unpack", bundle, env=cli_env(AMSHOME=str(amshome)))
    assert result.returncode == 0, result.stderr
    assert stderr_lines(result)[0] == f"unpack: AMSHOME {amshome} (from the environment; --amshome overrides it)"
    assert tree_hashes(amshome / "repository") == tree_hashes(made / "mirror")


def test_unpack_without_amshome_anywhere_is_a_usage_error(bundle):
    env = {k: v for k, v in cli_env().items() if k != "AMSHOME"}
    result = run_cli("unpack", bundle, env=env)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert stderr_lines(result)[0] == ("error: give --amshome DIR or set AMSHOME: the AMS installation folder "
                                       "whose repository/ to fill")


# --- 12: help written for an admin ---------------------------------------------------------------

def parsers():
    """(name, parser) of the command and of each subcommand."""
    top = build_parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return [("amsrepomirror", top), *commands.choices.items()]


def test_every_option_help_says_its_default():
    without = []
    for name, parser in parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.required or \
                    isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if action.help is None or "default" not in formatter._expand_help(action):
                without.append(f"{name} {action.option_strings[0]}")
    assert without == []


@pytest.mark.slow
def test_help_gives_purpose_account_variables_and_exit_codes():
    for command in ([], ["mirror"], ["bundle"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0
        assert "SCM_USER and SCM_PASSWORD" in result.stdout and "~/.netrc" in result.stdout
        assert "130  interrupted" in result.stdout and "4    integrity" in result.stdout
    assert "usage: a bad option" in run_cli("verify", "--help").stdout
    assert run_cli("--help").stdout.splitlines()[2].startswith("Mirror SCM's AMS package repository")


@pytest.mark.slow
def test_a_bad_command_line_is_one_error_line_naming_where_to_look(tmp_path):
    cases = {("mirror", "--jobs", "x", "--version", "AMS2026.1", "--mirror", tmp_path / "m"):
             "error: argument --jobs: invalid int value (see: amsrepomirror mirror --help)",
             ("mirror", "--mirror", tmp_path / "m"):
             "error: mirror needs --version (or, as SCM's script: mirror LISTING_URL FOLDER)",
             ("config", "--no-such-option"): "error: unrecognized arguments: --no-such-option (see: amsrepomirror --help)",
             ("mirrr",): "error: argument COMMAND: invalid choice (choose from 'mirror', 'bundle', 'plan', "
                         "'verify', 'repair', 'unpack', 'receipt', 'config', 'demo') (see: amsrepomirror --help)"}
    for args, line in cases.items():
        result = run_cli(*args)
        assert (result.returncode, result.stderr.splitlines(), result.stdout) == (USAGE_ERROR, [line], ""), args


@pytest.mark.slow
def test_config_is_read_also_after_the_command(tmp_path):
    settings = tmp_path / "site.cfg"
    settings.write_text("[BundleArchive]\nchunk_size = 123MiB\n")
    before, after = run_cli("--config", settings, "config"), run_cli("config", "--config", settings)
    assert before.returncode == after.returncode == 0, after.stderr
    lines = after.stdout.splitlines()
    assert before.stdout == after.stdout and lines[lines.index("chunk_size = 123MiB") - 1] == "# from: --config"


@pytest.mark.slow
def test_a_refused_unpack_leaves_only_its_log_and_lock_in_amshome(bundle, tmp_path):
    amshome = tmp_path / "ams"
    amshome.mkdir()
    refused = run_cli("unpack", tmp_path / "no-bundle-here", "--amshome", amshome)  # the command line itself
    assert refused.returncode == USAGE_ERROR and os.listdir(amshome) == [], refused.stderr
    chunk = sorted(bundle.glob("*.7z"))[0]
    with open(chunk, "r+b") as f:  # one flipped byte: the bundle is refused before anything is extracted
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    refused = run_cli("unpack", bundle, "--amshome", amshome)
    assert refused.returncode == INTEGRITY_FAILURE, refused.stderr
    assert sorted(os.listdir(amshome)) == [".amsrepomirror-unpack.log", ".amsrepomirror.lock"]  # docs/operations.md
    assert (amshome / ".amsrepomirror.lock").stat().st_size == 0


def test_a_progress_total_grows_with_what_was_done_instead_of_going_past_100_percent():
    shown = io.StringIO()
    bar = ByteProgress(30 * 1024, "download", stream=shown, interval=0, files=1)
    bar.update(500 * 1024)  # more than planned: a file fetched again, or batches of a shared run
    bar.file_done()
    bar.file_done()
    bar.update(1)
    last = shown.getvalue().splitlines()[-1]
    assert last.startswith("download: 500.0 KiB of 500.0 KiB, 2 of 2 files, ") and last.endswith("(100%)"), last


@pytest.mark.slow
@pytest.mark.parametrize("step, state, stop", [
    ("unpack:verified", "is as it was; unpack the bundle with: ", signal.SIGINT),
    ("swap:new-in-place", "is the old tree or the new one, never a mix; finish the unpack with: ", signal.SIGINT),
    ("swap:new-in-place", "is the old tree or the new one, never a mix; finish the unpack with: ", signal.SIGTERM),
    ("swap:journal-removed", "holds this bundle and its receipt is written: the unpack is complete, nothing more to run",
     signal.SIGINT),
])
def test_ctrl_c_during_unpack_ends_with_the_state_of_amshome_and_what_to_run(made, bundle, tmp_path, step, state, stop):
    """Ctrl-C, or SIGTERM (kill, systemctl stop: the same way out, exit 143 and "terminated")."""
    from test_signature_race import stopped_or_ended  # waits on the stop itself (waitpid), not on a clock
    amshome = tmp_path / "ams"
    amshome.mkdir()
    proc = popen_cli("unpack", bundle, "--amshome", amshome, env=cli_env(AMSREPOMIRROR_STOP_AT=step))
    try:
        assert stopped_or_ended(proc), proc.communicate()
        proc.send_signal(stop)  # Ctrl-C as the admin presses it at that step, or a kill
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=300)  # a guard against a hang only
    finally:
        if proc.poll() is None:
            proc.kill()
    said, code = ("terminated", 143) if stop == signal.SIGTERM else ("interrupted", 130)
    assert proc.returncode == code, err
    last = err.splitlines()[-1]
    assert last.startswith(f"{said}: {amshome}/repository ") and state in last and "Traceback" not in err, err
    assert "amspackages finds" not in out  # no word of success
    rerun = run_cli("unpack", bundle, "--amshome", amshome)  # what the line says to run, or a no-op when complete
    assert rerun.returncode == 0, rerun.stderr
    if "nothing more to run" in state:  # the line was right that nothing was left: the rerun finds nothing to do
        assert "nothing to do" in rerun.stderr and "interrupted" not in rerun.stderr, rerun.stderr
    assert tree_hashes(amshome / "repository") == tree_hashes(made / "mirror")


def test_a_bar_joined_late_counts_what_was_done_before_but_not_in_its_rate():
    shown = io.StringIO()
    bar = ByteProgress(100 * 1024 * 1024, "download", stream=shown, interval=0, files=10, done=60 * 1024 * 1024,
                       files_done=6)
    bar.update(0)  # nothing fetched by this process yet: the 60 MiB done before are not its speed
    last = shown.getvalue().splitlines()[-1]
    assert last == "download: 60.0 MiB of 100.0 MiB, 6 of 10 files, 0 B/s, starting (60%)", last


def test_tool_version_and_ams_version():
    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"amsrepomirror {amsrepomirror.__version__}\n")
    result = run_cli("mirror", "--version", "2026.1", "--mirror", "m")  # inside a command: the AMS version
    assert stderr_lines(result)[0] == "error: invalid version '2026.1': did you mean --version AMS2026.1?"


@pytest.mark.slow
def test_a_stick_too_small_for_a_chunk_and_the_side_files_is_refused_before_packing(made, tmp_path):
    out = tmp_path / "bundle"
    args = ("--mirror", made / "mirror", "--chunk-size", "1MiB", "--stick-size", "1100KiB")
    result = run_cli("bundle", "--offline", "--version", VERSION, "--out", out, *args)
    assert result.returncode == USAGE_ERROR and not out.exists(), result.stderr
    assert stderr_lines(result)[-1].startswith("error: --stick-size 1100KiB holds no chunk of --chunk-size 1MiB with "
                                               "the bundle's small files (256.0 KiB kept for them)"), result.stderr
    planned = run_cli("plan", *args)  # plan says the same of the same sizes
    assert "does not fit on a stick of" in planned.stdout or "do not fit on a stick of" in planned.stdout, planned.stdout


@pytest.mark.slow
def test_bundle_prints_a_stick_assignment_and_each_stick_verifies_alone(made, tmp_path):
    # A signed bundle: the signature is one of the small files every stick carries.
    key = tmp_path / "site_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "site", "-f", key], check=True, timeout=60)
    out = tmp_path / "bundle"
    result = run_cli("bundle", "--offline", "--version", VERSION, "--mirror", made / "mirror", "--out", out,
                     "--chunk-size", "1MiB", "--stick-size", "2500KiB", "--sign-key", key)
    assert result.returncode == 0, result.stderr
    assert f"bundle: {out} is complete; check it with: {TOOL} verify {out}" in stderr_lines(result)  # as typed
    assert "copy every file that is not a chunk (manifest.json, SHA256SUMS, README.txt, and manifest.json.sig and " \
           "tool/ when the bundle has them) onto every stick, and check each one as it arrives with: " \
           f"{TOOL} verify --partial STICK" in result.stdout
    sticks = [line.split(": ", 2)[2].split(", ") for line in result.stdout.splitlines() if line.startswith("  stick ")]
    assert len(sticks) > 1
    assert sorted(name for stick in sticks for name in stick) == sorted(chunk_names(out))
    recorded = BundleManifest.read(out / "manifest.json").sticks  # the plan printed is the plan the bundle records
    assert (recorded.size, recorded.chunks) == (2500 * 1024, sticks)
    small = ["manifest.json", "manifest.json.sig", "SHA256SUMS", "README.txt"]
    for i, stick in enumerate(sticks, start=1):
        folder = tmp_path / f"stick{i}"
        folder.mkdir()
        for name in stick + small:
            shutil.copy(out / name, folder / name)
        assert sum((folder / name).stat().st_size for name in stick + small) <= 2500 * 1024
        checked = run_cli("verify", folder, "--partial")
        assert checked.returncode == 0, checked.stderr
        away = "; ".join(f"stick {j} of {len(sticks)} ({', '.join(names)})"
                         for j, names in enumerate(sticks, start=1) if j != i)
        assert checked.stdout.splitlines()[:2] == [
            f"not here yet: {away}",
            f"bundle {folder}: stick {i} of {len(sticks)} here ({len(stick)} chunk{'s' if len(stick) > 1 else ''}) is "
            "intact; verify again, without --partial, once all chunks are in one folder"], checked.stdout
    # A stick that arrived damaged is named with its chunks: the one to copy again.
    last = sticks[-1][0]
    with open(out / last, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    damaged = run_cli("verify", out)
    assert damaged.returncode == INTEGRITY_FAILURE
    assert stderr_lines(damaged)[-1] == (f"error: bundle {out} failed verification: re-copy stick {len(sticks)} of "
                                         f"{len(sticks)} ({last} (corrupt))"), damaged.stderr


# --- 16: size units --------------------------------------------------------------------------------

def test_single_letter_size_is_refused_as_ambiguous(made):
    result = run_cli("plan", "--mirror", made / "mirror", "--stick-size", "64G")
    assert result.returncode == USAGE_ERROR
    assert stderr_lines(result)[0] == ("error: size '64G' is ambiguous: write 64GiB (1024-based, as split and dd "
                                       "read it) or 64GB (1000-based, as USB sticks are sold)")
    result = run_cli("plan", "--mirror", made / "mirror", "--stick-size", "64GB")
    assert result.returncode == 0, result.stderr
    assert "1 stick of 59.6 GiB needed" in result.stdout  # shown 1024-based, always


# --- 10: files removed upstream ---------------------------------------------------------------------

@pytest.mark.slow
def test_unlisted_files_are_counted_with_the_command_that_lists_them(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "mirror"
    assert mirror(scm_double.listing_url(VERSION), dest).returncode == 0
    gone = sorted(p for p in repository_files(repo_tree) if p.startswith("linux/"))[:2]
    write_listing(repo_tree, VERSION, scm_double.base_url, [p for p in repository_files(repo_tree) if p not in gone])
    url = scm_double.listing_url(VERSION)
    result = mirror(url, dest)
    assert result.returncode == 0, result.stderr
    hint = [line for line in stderr_lines(result) if "no longer listed" in line]
    assert hint == [f"  2 file(s) in the mirror are no longer listed (kept); to see them: {TOOL} mirror --version "
                    f"{VERSION} --mirror {dest} --listing-url {url} --delete-unlisted --dry-run"]
    listed = subprocess.run(hint[0].split("to see them: ")[1].split(), cwd=REPO, env=cli_env(), capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == gone
    assert all((dest / p).exists() for p in gone)


# --- 3: feedback while waiting, and a clean line after Ctrl-C ----------------------------------------

def run_in_terminal(args, until, timeout=120):
    """Run the command with a pseudo-terminal as stdout and stderr; send SIGINT once ``until(output)``
    holds; return (exit code, every byte it wrote)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "amsrepomirror", *map(str, args)], cwd=REPO, env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out, sent = b"", False
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            chunk = b""
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the command ended and closed the terminal
                    break
                out += chunk
            if not sent and until(out):
                proc.send_signal(signal.SIGINT)
                sent = True
            if not chunk and proc.poll() is not None:
                break
        return proc.wait(timeout=300), out  # a guard against a hang only
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_terminal_shows_the_check_counter_and_files_in_the_bar_and_ctrl_c_clears_it(scm_double, repo_tree, tmp_path):
    scm_double.throttle(300_000)  # long enough to be interrupted mid-download
    listed = len(repository_files(repo_tree))
    code, out = run_in_terminal(["mirror", "--version", VERSION, "--mirror", tmp_path / "m", "--listing-url",
                                 scm_double.listing_url(VERSION)], until=lambda out: out.count(b"download: ") >= 3)
    assert code == 130, out
    text = out.decode("utf-8", "replace")
    assert f"checking {listed} files: " in text
    bars = [segment for segment in text.split("\r") if segment.startswith("download: ")]
    assert bars and all(re.match(r"download: \S+ \S+ of \S+ MiB, \d+ of \d+ files, ", bar) for bar in bars), bars
    before, _, after = text.partition("interrupted; rerun the same command")
    assert after, text
    assert before.endswith("\r") and before.rstrip("\r").rsplit("\r", 1)[-1].strip() == "", before[-300:]


def test_ctrl_c_while_the_command_starts_is_one_line_and_130():
    # -X importtime says on stderr when each import is done: the signal comes while the command line is
    # loading (the first of Luigi's modules is in, the rest still to come), whatever the machine's load.
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "amsrepomirror", "config"], cwd=REPO,
                            env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:
            if re.search(r"\|\s+luigi\.\w+$", line.rstrip()):
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        code = proc.wait(timeout=300)  # a guard against a hang only
    finally:
        if proc.poll() is None:
            proc.kill()
    said = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert (code, said) == (130, ["interrupted; rerun the same command to continue where it stopped"]), rest[-2000:]


def test_a_reader_that_closes_stdout_early_gets_no_error_line():
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `amsrepomirror config | head -1` once head has gone: nobody reads what is written
    try:
        result = subprocess.run([sys.executable, "-m", "amsrepomirror", "config"], cwd=REPO, env=cli_env(),
                                stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


# --- 17: the demo ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_on_a_given_port_says_how_to_remove_what_it_left_or_cleans_up(tmp_path):
    port = free_port()
    kept = run_cli("demo", "--workdir", tmp_path / "kept", "--port", port)
    assert kept.returncode == 0, kept.stderr
    assert f" at http://127.0.0.1:{port} " in kept.stderr
    assert stderr_lines(kept)[-1] == f"remove it with: rm -rf {tmp_path / 'kept'}"
    assert (tmp_path / "kept" / "amshome" / "repository").is_dir()
    assert f"report  {tmp_path / 'kept' / 'bundle' / 'TRANSFER-REPORT.html'}" in kept.stderr  # the sample report
    assert "its JSON equals the bundle's transfer-report.json; the page is identical" in kept.stdout + kept.stderr
    cleaned = run_cli("demo", "--workdir", tmp_path / "cleaned", "--clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert stderr_lines(cleaned)[-1] == f"demo: done; removed {tmp_path / 'cleaned'} (--clean)"
    assert not (tmp_path / "cleaned").exists()


def test_demo_on_a_busy_port_is_a_usage_error(scm_double, tmp_path):
    result = run_cli("demo", "--workdir", tmp_path / "demo", "--port", scm_double.port)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert stderr_lines(result)[0].startswith(f"error: demo: cannot serve on port {scm_double.port} (Address already in use)")


def test_verify_shows_one_byte_bar_over_the_whole_job_on_a_terminal(bundle):
    code, out = run_in_terminal(["verify", bundle], until=lambda out: False)
    text = out.decode("utf-8", "replace")
    assert code == 0, text
    total = sum((bundle / name).stat().st_size for name in chunk_names(bundle))
    total += sum(f["size"] for f in json.loads((bundle / "manifest.json").read_text())["files"])
    bars = [segment for segment in text.split("\r") if segment.startswith("verify: ")]
    assert bars and all(f" of {format_size(total)}, " in bar for bar in bars), bars
    assert f"bundle {bundle} is intact" in text


def test_bundle_shows_one_byte_bar_over_the_whole_job_on_a_terminal(made, tmp_path):
    # The chunks are written by forked Luigi workers; the bar is drawn by the command's own process.
    out = tmp_path / "again"
    code, seen = run_in_terminal(["bundle", "--offline", "--version", VERSION, "--mirror", made / "mirror",
                                  "--out", out, "--chunk-size", "1MiB"], until=lambda out: False)
    text = seen.decode("utf-8", "replace")
    assert code == 0, text
    total = sum(p["size"] for f in json.loads((out / "manifest.json").read_text())["files"] for p in f["parts"])
    bars = [segment for segment in text.split("\r") if segment.startswith("bundle: ") and "%|" in segment]
    assert bars and all(f" of {format_size(total)}, " in bar for bar in bars), bars
    assert bars[-1].startswith(f"bundle: {format_size(total)} of {format_size(total)}"), bars[-1]
    assert sorted(chunk_names(out)) == sorted(chunk_names(made / "bundle"))


def test_read_only_bundle_folder_is_refused_before_any_work(made, read_only_folder):
    out = read_only_folder / "bundle"
    result = run_cli("bundle", "--offline", "--version", VERSION, "--mirror", made / "mirror", "--out", out)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert stderr_lines(result)[0] == (f"error: cannot write the bundle folder --out {out}: {read_only_folder} is on a "
                                       "read-only file system: mount it read-write or choose another folder")


def test_unpack_shows_one_byte_bar_over_the_whole_job_on_a_terminal(made, bundle, tmp_path):
    amshome = tmp_path / "amshome"
    amshome.mkdir()
    code, out = run_in_terminal(["unpack", bundle, "--amshome", amshome], until=lambda out: False)
    text = out.decode("utf-8", "replace")
    assert code == 0, text
    total = sum((bundle / name).stat().st_size for name in chunk_names(bundle))
    total += sum(p["size"] for f in json.loads((bundle / "manifest.json").read_text())["files"] for p in f["parts"])
    bars = [segment for segment in text.split("\r") if segment.startswith("unpack: ") and "%|" in segment]
    assert bars and all(f" of {format_size(total)}, " in bar for bar in bars), bars
    assert tree_hashes(amshome / "repository") == tree_hashes(made / "mirror")


def test_make_help_lists_every_variable_with_its_value():
    makefile = (REPO / "Makefile").read_text()
    settable = set(re.findall(r"^([A-Z_]+)\s*\?=", makefile, re.M)) | {"ARGS"}
    assert {"VERSION", "MIRROR", "BUNDLE", "CHUNK_SIZE", "WHEELS", "SINCE", "STICK_SIZE"} <= settable
    shown = subprocess.run(["make", "-s", "help", "VERSION=AMS2025.1"], cwd=REPO, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "AMSHOME": "/opt/ams"})
    assert shown.returncode == 0, shown.stderr
    listed = set(re.findall(r"^  ([A-Z_]+)=", shown.stdout, re.M))
    assert settable | {"AMSHOME"} <= listed, sorted(settable | {"AMSHOME"} - listed)
    assert "  VERSION=AMS2025.1 " in shown.stdout and "  AMSHOME=/opt/ams " in shown.stdout


def test_package_metadata_uses_the_spdx_license_form_its_build_backend_accepts():
    # The table form (license = {text = ...}) makes setuptools >= 77 warn on every install.
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^license = "[A-Za-z0-9.-]+"$', pyproject, re.M), "project.license must be an SPDX string"
    requires = re.search(r"^requires = \[(.*)\]$", pyproject, re.M).group(1)
    assert re.search(r'"setuptools>=(\d+)', requires) and int(re.search(r'"setuptools>=(\d+)', requires).group(1)) >= 77
