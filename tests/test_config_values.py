"""Settings that round-trip and values that are checked: `config` output saved as a file and read back gives
the same values; a value the tool cannot read is one `error:` line and exit 2 for every command, before it
does anything; the shipped luigid settings."""

import configparser
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config import env_for, printable, tool, user_file

from amsrepomirror import config
from amsrepomirror.bundle.format import COMPRESSIONS
from amsrepomirror.bundle.signature import VERIFIERS
from amsrepomirror.cli.config import settings_lines

# Values that configparser, Luigi's interpolation or an inline '#' could change on the way back.
AWKWARD = """\
[BundleArchive]
chunk_size = 12MiB
[platforms]
aix = (^|/)aix([/._-]|$)
[layers]
percent = 50%%
hash = a # not a comment
empty =
several = first line
    second line

    after an empty line
dashed-key = kept
[smtp]
password = hunter2
[DEFAULT]
shared = everywhere
"""


@pytest.fixture
def place(tmp_path):
    """A working folder outside the checkout and a HOME of its own."""
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    return cwd, home


def values(stdout: str) -> dict:
    """{(section, key): value} of `config` output, read as a settings file (hidden values are comments)."""
    parser = configparser.RawConfigParser(default_section="\0")
    parser.optionxform = str
    parser.read_string(stdout)
    return {(section, key): value for section in parser.sections() for key, value in parser.items(section)}


@pytest.mark.slow
def test_config_output_is_a_settings_file_that_reads_back_to_the_same_values(place):
    cwd, home = place
    (home / "site.cfg").write_text("[FetchListing]\njobs = 8\n")
    user_file(home).write_text("[http]\ntimeout = 90\n")
    (cwd / "luigi.cfg").write_text("[VerifyTree]\ndeep = true\n")
    (home / "env.cfg").write_text("[BundleArchive]\ncompression = lzma2\n")
    (home / "option.cfg").write_text(AWKWARD)
    env = env_for(home, home / "env.cfg")
    first = tool("--config", home / "option.cfg", "config", cwd=cwd, env=env)
    assert first.returncode == 0, first.stderr
    saved = home / "saved.cfg"
    saved.write_text(first.stdout)
    assert "hunter2" not in first.stdout
    # Alone, outside every other layer (a fresh HOME, no luigi.cfg, no $LUIGI_CONFIG_PATH)...
    elsewhere, other_home = home.parent / "elsewhere", home.parent / "other-home"
    elsewhere.mkdir()
    other_home.mkdir()
    alone = tool("--config", saved, "config", cwd=elsewhere, env=env_for(other_home))
    assert alone.returncode == 0, alone.stderr
    # ...and over the same layers: the same effective values, now all from --config.
    over = tool("--config", saved, "config", cwd=cwd, env=env)
    assert over.returncode == 0, over.stderr
    expected = values(first.stdout)
    assert values(alone.stdout) == values(over.stdout) == expected
    assert expected["FetchListing", "jobs"] == "8" and expected["http", "timeout"] == "90"
    assert expected["layers", "hash"] == "a # not a comment" and expected["layers", "percent"] == "50%%"
    assert {label for (_, label) in printable(alone.stdout)[1].values()} == {"--config"}


@given(st.dictionaries(
    st.tuples(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,8}", fullmatch=True),
              st.from_regex(r"[a-z_][a-z0-9_-]{0,8}", fullmatch=True)),
    st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12).map(str.strip),
             min_size=1, max_size=3).map("\n".join).map(str.strip), max_size=8))
def test_settings_lines_read_back_by_configparser_as_they_were(found):
    """Any values configparser read (stripped lines, several lines) come back from `config`'s lines."""
    found = {key: value for key, value in found.items()  # configparser never reads a comment line into a value
             if not any(line[:1] in ("#", ";") for line in value.split("\n")[1:]) and key[0] != "DEFAULT"}
    text = "\n".join(settings_lines({key: (value, "somewhere") for key, value in found.items()}, ["somewhere"]))
    parser = configparser.RawConfigParser(default_section="\0")
    parser.optionxform = str
    parser.read_string(text)
    read = {(section, key): value for section in parser.sections() for key, value in parser.items(section)}
    assert read == {key: "\n".join(line.strip() for line in value.split("\n")) for key, value in found.items()}


# ---- values the tool cannot read -----------------------------------------------------------------

BAD = [
    ("[worker]\nwait_interval = abc\n", "[worker] wait_interval = 'abc'"),
    ("[http]\ntimeout = abc\n", "[http] timeout = 'abc'"),
    ("[FetchListing]\njobs = x\n", "[FetchListing] jobs = 'x'"),
    ("[BundleArchive]\nchunk_size = 12Q\n", "[BundleArchive] chunk_size = '12Q'"),
    ("[trust]\nrequire_signature = maybe\n", "[trust] require_signature = 'maybe'"),
    ("[unpack]\ninstalled_version_files = not-json\n", "[unpack] installed_version_files = 'not-json'"),
    ("[scheduler]\nworker_disconnect_delay = soon\n", "[scheduler] worker_disconnect_delay = 'soon'"),
    ("[core]\nworker-wait-interval = -1\n", "[core] worker-wait-interval = '-1'"),
    ("[retcode]\ntask_failed = 300\n", "[retcode] task_failed = '300'"),
    ("[platforms]\naix = (unclosed\n", "[platforms] aix = '(unclosed'"),
    ("[BundleArchive]\ncompression = rar\n", "[BundleArchive] compression = 'rar'"),
    ("[smtp]\npassword = 100%sure\n", "[smtp] password in"),
    ("[DEFAULT]\ntimeout = abc\n", "[DEFAULT] timeout = 'abc'"),
    ("[http]\nsecret = s3cr3t\nfirst_bytes = %(secret)s\n", "[http] first_bytes = '%(secret)s' (interpolated)"),
]
COMMANDS = {
    "mirror": ["mirror", "--version", "AMS2026.1", "--mirror", "{out}"],
    "bundle": ["bundle", "--version", "AMS2026.1", "--mirror", "{out}", "--out", "{out}/bundle"],
    "verify": ["verify", "{out}"],
    "unpack": ["unpack", "{out}", "--amshome", "{out}/amshome"],
    "plan": ["plan", "--mirror", "{out}"],
    "config": ["config"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("layer", ["--config", pytest.param("user", marks=pytest.mark.slow)])  # fast tier: one each
def test_a_bad_value_is_one_error_line_naming_its_file_for_every_command(place, command, layer):
    """Each command stops before it does anything (no folder made), on exit 2 and one line that names the
    section, key, value and the file; two bad values per command (each of BAD once), from --config and from
    the user file."""
    cwd, home = place
    position = list(COMMANDS).index(command) * 2 + (layer == "user")
    text, said = BAD[position]
    path = home / "bad.cfg" if layer == "--config" else user_file(home)
    path.write_text(text)
    out = home / "out"
    args = [arg.format(out=out) for arg in COMMANDS[command]]
    result = tool(*(["--config", path] if layer == "--config" else []), *args, cwd=cwd, env=env_for(home))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {said}"), line
    what_to_do = line.split(f" in {path}", 1)[1]  # then what the value must be
    assert len(what_to_do) > 20 and "Error" not in what_to_do, line
    assert result.stdout == "" and not out.exists()
    assert "100%sure" not in line


@pytest.mark.parametrize("text, said", BAD[2 * len(COMMANDS):])
def test_a_default_key_is_checked_as_each_section_reads_it_and_an_interpolated_value_is_not_shown(place, text, said):
    """[DEFAULT] keys reach every section (configparser); a value made by interpolation may carry a secret."""
    cwd, home = place
    (home / "bad.cfg").write_text(text)
    result = tool("--config", home / "bad.cfg", "config", cwd=cwd, env=env_for(home))
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {said}") and "s3cr3t" not in line, line


@pytest.mark.slow
def test_values_given_through_environment_variables_are_checked_after_interpolation(place):
    cwd, home = place
    (home / "env.cfg").write_text("[http]\ntimeout = ${TEST_TIMEOUT}\n")
    good = tool("config", cwd=cwd, env=env_for(home, home / "env.cfg", TEST_TIMEOUT="45"))
    assert good.returncode == 0, good.stderr
    bad = tool("config", cwd=cwd, env=env_for(home, home / "env.cfg", TEST_TIMEOUT="soon"))
    assert bad.returncode == 2
    # what was written, not what interpolation brought in (an environment variable may hold a secret)
    assert bad.stderr.splitlines() == [f"error: [http] timeout = '${{TEST_TIMEOUT}}' (interpolated) in {home / 'env.cfg'} "
                                       "($LUIGI_CONFIG_PATH): give a number of seconds of at least 0.001"]
    unset = tool("config", cwd=cwd, env=env_for(home, home / "env.cfg"))
    assert unset.returncode == 2 and unset.stderr.startswith("error: [http] timeout in ")


# ---- the table -----------------------------------------------------------------------------------

def every_checked_key() -> list[tuple[str, str]]:
    return sorted({*config.SETTINGS, *config.setting_parsers()})


def test_the_table_names_the_choices_the_tool_reads():
    assert config.COMPRESSIONS == COMPRESSIONS
    assert set(config.VERIFIERS) == {"", *VERIFIERS}


def test_every_shipped_default_passes_its_own_check():
    shipped = configparser.RawConfigParser()
    shipped.read(config.shipped_defaults())
    checked = [(s, k) for s in shipped.sections() for k, v in shipped.items(s) if config._parser_for(s, k)]
    assert len(checked) > 20
    assert [(s, k) for s, k in checked if config.value_problem(s, k, shipped.get(s, k))] == []
    # every shipped key is checked, but paths (any text names a file) and a key Luigi reads as free text
    unchecked = {(s, k) for s in shipped.sections() for k, _ in shipped.items(s)} - set(checked)
    assert unchecked == {("core", "no_configure_logging"), ("trust", "allowed_signers"), ("trust", "revoked_keys")}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(every_checked_key()), value=st.text(max_size=30).map(str.strip))
def test_any_text_for_any_setting_is_accepted_or_one_line(key, value):
    """What configparser can hand over (stripped text) is either read or refused in one line; a value
    accepted for a setting Luigi reads is one Luigi's own parser takes as well."""
    section, name = key
    problem = config.value_problem(section, name, value)
    if problem is not None:
        assert problem and "\n" not in problem
        return
    reader = config.LUIGI_SECTIONS.get(section)
    parameter = dict(reader.get_params()).get(name) if reader else None
    if parameter is not None:
        parameter.normalize(parameter.parse(value))


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(every_checked_key()),
       value=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(str.strip))
def test_any_text_in_a_settings_file_gives_exit_0_or_2_and_never_a_traceback(tmp_path, key, value):
    """Through the real command: exit 0, or exit 2 with exactly one `error:` line."""
    section, name = key
    if value.startswith(("#", ";", "[")):
        value = "x" + value
    path = tmp_path / "random.cfg"
    path.write_text(f"[{section}]\n{name} = {value}\n", encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "amsrepomirror", "--config", str(path), "config"], cwd=tmp_path,
                            env=env_for(home), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr
    if result.returncode:
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ")
    else:
        assert result.stderr == ""


# ---- luigid's settings ---------------------------------------------------------------------------

def test_config_scheduler_prints_the_shipped_luigid_settings(place):
    cwd, home = place
    result = tool("config", "--scheduler", cwd=cwd, env=env_for(home))
    assert result.returncode == 0, result.stderr
    shipped = configparser.RawConfigParser()
    assert shipped.read(result.stdout.strip())
    assert dict(shipped.items("scheduler")) == {"worker_disconnect_delay": "30", "prune_on_get_work": "true",
                                                "record_task_history": "false"}
    assert [config.value_problem("scheduler", k, v) for k, v in shipped.items("scheduler")] == [None] * 3



@pytest.mark.parametrize("layer", ["--config", "user", "working folder"])
def test_a_settings_file_that_is_not_utf8_is_one_line_naming_it(place, layer):
    """Luigi reads its files while it is imported, the tool's layers when the command-line package is: a byte that
    is not UTF-8 in any of them is exit 2 and one line naming the file, never a traceback."""
    cwd, home = place
    path = {"--config": home / "latin1.cfg", "user": user_file(home), "working folder": cwd / "luigi.cfg"}[layer]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"[http]\ntimeout = 5\n# caf\xe9\n")
    result = tool(*(["--config", path] if layer == "--config" else []), "config", cwd=cwd, env=env_for(home))
    assert result.returncode == 2 and result.stdout == ""
    shown = "luigi.cfg" if layer == "working folder" else str(path)
    assert result.stderr.splitlines() == [f"error: bad settings file: {shown}: not UTF-8 text (byte 0xe9 at offset 24); "
                                          "save it as UTF-8"]


def test_config_hides_a_url_that_carries_an_account(place):
    """`config`'s output is meant to be saved and pasted elsewhere: a user:password@ in a URL value stays out."""
    cwd, home = place
    (home / "s.cfg").write_text("[core]\ndefault-scheduler-url = http://admin:s3cr3t@127.0.0.1:9/\n")
    result = tool("--config", home / "s.cfg", "config", cwd=cwd, env=env_for(home))
    assert result.returncode == 0, result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr
    assert "# default-scheduler-url = (hidden)" in result.stdout.splitlines()
