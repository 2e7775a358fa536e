"""--quiet, for cron: every command prints nothing on success (what config, plan and receipt are asked to print
excepted), and on failure exactly its one ``error:`` line with the same exit code as without --quiet.

Driven through the real command (run_cli) against the SCM double; a mirror, bundle and AMSHOME are made once
without --quiet, and each command runs again with it into folders of its own."""

import argparse
import shutil
import socket

import pytest
from clihelp import cli_env, run_cli

from amsrepomirror import cli
from amsrepomirror.cli.parser import build_parser
from amsrepomirror.errors import AUTH_FAILURE, INTEGRITY_FAILURE, USAGE_ERROR
from amsrepomirror.testing.repository import DEFAULT_VERSION, make_repository
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = DEFAULT_VERSION


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A served repository, and its mirror, bundle and AMSHOME made without --quiet (each said something)."""
    work = tmp_path_factory.mktemp("quiet")
    make_repository(work / "scm", VERSION)
    double = ScmDouble(work / "scm")
    double.start()
    try:
        url = double.listing_url(VERSION)
        mirror, bundle, home = work / "mirror", work / "bundle", work / "home"
        home.mkdir()
        said = [run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", url, "--out", bundle,
                        "--chunk-size", "1MiB"),
                run_cli("unpack", bundle, "--amshome", home)]
        for result in said:
            assert result.returncode == 0, result.stderr
            assert result.stderr  # without --quiet, both say what they did
        yield {"work": work, "url": url, "mirror": mirror, "bundle": bundle, "home": home}
    finally:
        double.stop()


def assert_silent(result):
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def one_error_line(args, code: int, env=None):
    """The command fails with ``code`` with and without --quiet; with it, its output is the one error line."""
    loud = run_cli(*args, env=env)
    quiet = run_cli("--quiet", *args, env=env)
    assert (loud.returncode, quiet.returncode) == (code, code), (loud.stderr, quiet.stderr)
    assert quiet.stdout == ""
    lines = quiet.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), quiet.stderr
    assert lines[0] in loud.stderr.splitlines()


@pytest.mark.slow
def test_mirror_and_bundle_say_nothing(made):
    fresh = made["work"] / "fresh"
    assert_silent(run_cli("mirror", "--quiet", "--version", VERSION, "--mirror", fresh, "--listing-url", made["url"]))
    assert_silent(run_cli("-q", "bundle", "--version", VERSION, "--mirror", made["work"] / "fresh2", "--listing-url",
                          made["url"], "--out", made["work"] / "bundle2", "--chunk-size", "1MiB", "--stick-size", "2MB"))
    assert (made["work"] / "bundle2" / "manifest.json").is_file()


@pytest.mark.slow
def test_verify_unpack_and_receipt_say_nothing(made):
    home = made["work"] / "home2"
    home.mkdir()
    assert_silent(run_cli("verify", made["bundle"], "--quiet"))
    assert_silent(run_cli("-q", "unpack", made["bundle"], "--amshome", home))
    assert (home / "repository").is_dir()
    assert_silent(run_cli("verify", "--installed", "--amshome", home, "-q"))
    assert_silent(run_cli("receipt", "--amshome", home, "--out", made["work"] / "receipt.json", "--quiet"))
    assert (made["work"] / "receipt.json").is_file()
    assert_silent(run_cli("unpack", made["bundle"], "--amshome", home, "--quiet"))  # already there: nothing to say


@pytest.mark.slow
def test_what_a_command_is_asked_to_print_is_printed(made):
    """config, plan and receipt to stdout print their answer; only what they say beside it goes."""
    for args in (["config"], ["plan", "--mirror", made["mirror"], "--chunk-size", "5GiB", "--stick-size", "64GB"],
                 ["receipt", "--amshome", made["home"], "--out", "-"]):
        loud, quiet = run_cli(*args), run_cli(*args, "--quiet")
        assert (quiet.returncode, quiet.stderr) == (0, "")
        assert quiet.stdout == loud.stdout and quiet.stdout
    assert "FAT32" in run_cli("plan", "--mirror", made["mirror"], "--chunk-size", "5GiB").stderr  # the note --quiet left out


def test_demo_says_nothing(tmp_path):
    assert_silent(run_cli("demo", "--quiet", "--workdir", tmp_path / "demo", "--clean"))
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_failures_keep_their_one_error_line_and_exit_code(made, tmp_path):
    one_error_line(["mirror", "--version", VERSION, "--mirror", tmp_path / "m", "--listing-url", made["url"]], AUTH_FAILURE,
                   env=cli_env(password="wrong"))
    one_error_line(["bundle", "--version", VERSION, "--mirror", tmp_path / "m", "--listing-url", made["url"], "--out",
                    tmp_path / "b"], AUTH_FAILURE, env=cli_env(password="wrong"))
    one_error_line(["plan", "--mirror", tmp_path / "none"], USAGE_ERROR)
    one_error_line(["receipt", "--amshome", tmp_path, "--out", tmp_path / "r.json"], USAGE_ERROR)
    one_error_line(["config", "--config", tmp_path / "none.cfg"], USAGE_ERROR)
    broken = tmp_path / "broken"
    shutil.copytree(made["bundle"], broken)
    chunk = sorted(broken.glob("*.7z*"))[0]
    chunk.write_bytes(chunk.read_bytes()[:-1] + bytes([chunk.read_bytes()[-1] ^ 1]))
    one_error_line(["verify", broken], INTEGRITY_FAILURE)
    (tmp_path / "home").mkdir()
    one_error_line(["unpack", broken, "--amshome", tmp_path / "home"], INTEGRITY_FAILURE)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        one_error_line(["demo", "--port", taken.getsockname()[1], "--workdir", tmp_path / "demo"], USAGE_ERROR)


@pytest.mark.parametrize("args, louder", [
    (["--quiet", "unpack", "B", "--verbose"], "--verbose"),
    (["mirror", "-q", "--verbose", "--version", VERSION, "--mirror", "M"], "--verbose"),
    (["bundle", "--luigi-summary", "--version", VERSION, "--mirror", "M", "--out", "B", "--quiet"], "--luigi-summary"),
])
def test_quiet_and_a_louder_option_together_are_refused(args, louder, capsys):
    if louder not in options_of(args[1] if args[0].startswith("-") else args[0]):
        pytest.skip(f"no {louder} option here")
    assert cli.main(args) == USAGE_ERROR
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: give --quiet or {louder}, not both") and err.count("\n") == 1


def options_of(command: str) -> set[str]:
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {option for action in sub.choices[command]._actions for option in action.option_strings}


def test_quiet_holds_for_one_command_line_only(tmp_path, capsys):
    """Tests and the demo run several command lines in one process: --quiet of one does not silence the next."""
    assert cli.main(["receipt", "--quiet", "--amshome", str(tmp_path), "--out", str(tmp_path / "r")]) == USAGE_ERROR
    assert cli.main(["plan", "--mirror", str(tmp_path / "none"), "--quiet"]) == USAGE_ERROR
    assert capsys.readouterr().err.count("error: ") == 2
    assert cli.main(["config"]) == 0
    assert "\n[trust]\n" in capsys.readouterr().out
