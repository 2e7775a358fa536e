"""Settings: shipped defaults under /etc/luigi/luigi.cfg < /etc/amsrepomirror/amsrepomirror.cfg < the XDG
user file < ./luigi.cfg < $LUIGI_CONFIG_PATH < --config FILE < command-line options, driven through the real
command (and plain Luigi) in a temporary folder and HOME; `config` output read back as a settings file; every
bad value one error line."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import REPO, cli_env, run_cli, served_tree, tree_hashes

from amsrepomirror.bundle.format import MANIFEST_NAME, BundleManifest
from amsrepomirror.testing.repository import make_repository
from amsrepomirror.testing.scmdouble import ScmDouble
from amsrepomirror.util.units import format_size, parse_size

VERSION = "AMS2026.1"
SHIPPED = "shipped defaults"
ETC = Path("/etc/luigi/luigi.cfg")
SITE = "/etc/amsrepomirror/amsrepomirror.cfg"
USER = "$XDG_CONFIG_HOME/amsrepomirror/amsrepomirror.cfg"
LAYERS = ["/etc/luigi/luigi.cfg", SITE, USER, "./luigi.cfg", "$LUIGI_CONFIG_PATH", "--config"]  # lowest first


def env_for(home: Path, config_path=None, **extra):
    """The CLI's environment with HOME in the test's folder, the site file (in place of the real /etc one)
    at HOME/site.cfg, $XDG_CONFIG_HOME at HOME/xdg, and no $LUIGI_CONFIG_PATH unless given."""
    extra = {"AMSREPOMIRROR_SITE_FILE": str(home / "site.cfg"), "XDG_CONFIG_HOME": str(home / "xdg"), **extra}
    env = cli_env(home=str(home), **extra)
    del env["LUIGI_CONFIG_PATH"]
    if config_path is not None:
        env["LUIGI_CONFIG_PATH"] = str(config_path)
    return env


def user_file(home: Path) -> Path:
    path = home / "xdg" / "amsrepomirror" / "amsrepomirror.cfg"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def tool(*args, cwd: Path, env, module="amsrepomirror"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def printable(stdout: str):
    """`amsrepomirror config` output as ({label: file shown}, {(section, key): (value, label)})."""
    files, settings, section, label = {}, {}, None, None
    for line in stdout.splitlines():
        listed = re.match(r"#   (\S+(?: \S+)?) +(.+)$", line)
        if listed:
            files[listed[1]] = listed[2]
        elif line.startswith("["):
            section = line.strip("[]")
        elif line.startswith("# from: "):
            label = line.removeprefix("# from: ")
        elif line.startswith("# ") and " = (hidden)" in line:
            settings[section, line[2:].split(" = ")[0]] = ("(hidden)", label)
        elif line and not line.startswith(("#", " ")):  # indented: a value's further line
            key, value = line.split(" =", 1)
            settings[section, key] = (value.strip(), label)
    return files, settings


@pytest.fixture
def place(tmp_path):
    """A working folder outside the checkout and a HOME of its own."""
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    return cwd, home


@pytest.fixture
def etc_luigi_cfg():
    """The real /etc/luigi/luigi.cfg, for one test; whatever was there (or not) is put back.
    Skipped where it cannot be written (not root)."""
    made_folder = not ETC.parent.exists()
    before = ETC.read_bytes() if ETC.exists() else None
    try:
        ETC.parent.mkdir(exist_ok=True)
        ETC.write_text("")
    except OSError as exc:
        pytest.skip(f"cannot write {ETC}: {exc.strerror}")
    try:
        yield ETC
    finally:
        if before is None:
            ETC.unlink()
            if made_folder:
                ETC.parent.rmdir()
        else:
            ETC.write_bytes(before)


@pytest.fixture(scope="module")
def verified_mirror(tmp_path_factory):
    """A verified mirror of the double's repository, for `plan` (which reads only its manifest)."""
    root = tmp_path_factory.mktemp("scm")
    make_repository(root, VERSION)
    mirror = tmp_path_factory.mktemp("mirror")
    with ScmDouble(root) as double:
        result = run_cli("mirror", "--version", VERSION, "--mirror", mirror, "--listing-url", double.listing_url(VERSION))
    assert result.returncode == 0, result.stderr
    return mirror


def plan_line(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0]


def shipped_file() -> Path:
    from importlib import resources
    return Path(str(resources.files("amsrepomirror") / "defaults.cfg"))


# ---- where the defaults live -------------------------------------------------------------------

def test_outside_the_checkout_config_shows_only_shipped_defaults(place):
    if ETC.exists() or Path("/etc/luigi/client.cfg").exists():
        pytest.skip("this machine has a site-wide Luigi config")
    cwd, home = place
    result = tool("config", cwd=cwd, env=env_for(home))
    assert result.returncode == 0, result.stderr
    files, settings = printable(result.stdout)
    assert files[SHIPPED] == str(shipped_file())
    assert files["./luigi.cfg"] == "(no luigi.cfg)" and files["$LUIGI_CONFIG_PATH"] == "(not set)"
    assert files["--config"] == "(not given)"
    assert {label for _, label in settings.values()} == {SHIPPED}
    assert settings["BundleArchive", "chunk_size"] == ("3900MiB", SHIPPED)
    assert settings["BundleArchive", "compression"] == ("copy", SHIPPED)
    assert settings["FetchListing", "jobs"] == ("4", SHIPPED)
    assert settings["http", "retries"] == ("6", SHIPPED) and settings["http", "low_speed_limit"] == ("1000", SHIPPED)
    assert settings["VerifyTree", "deep"] == ("false", SHIPPED)
    assert settings["DownloadFile", "max_batch_size"] == ("2000", SHIPPED)
    assert settings["retcode", "task_failed"] == ("1", SHIPPED)
    assert settings["worker", "check_complete_on_run"] == ("true", SHIPPED)
    assert {"linux", "macos", "windows"} <= {key for section, key in settings if section == "platforms"}
    assert json.loads(settings["unpack", "installed_version_files"][0])[0] == "VERSION.txt"
    # One trust setting for verify, unpack and install.sh; the older [unpack] keys are no defaults any more.
    assert {key: value for (section, key), (value, _) in settings.items() if section == "trust"} == {
        "allowed_signers": "", "revoked_keys": "", "require_signature": "true", "signature_verifier": ""}
    assert ("unpack", "allowed_signers") not in settings and ("unpack", "signature_verifier") not in settings
    assert settings["unpack", "trust_installed"] == ("false", SHIPPED)  # where unpack reads it, as `config` shows it


def test_editable_install_finds_the_defaults_through_importlib_resources(place):
    cwd, home = place
    found = subprocess.run([sys.executable, "-c", "import importlib.resources as r; "
                            "print(r.files('amsrepomirror') / 'defaults.cfg')"],
                           cwd=cwd, env=env_for(home), capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    path = Path(found.stdout.strip())
    assert path == REPO / "pipeline" / "defaults.cfg"  # the checkout's file, no wheel built
    assert "[BundleArchive]" in path.read_text()


# ---- the order, one level at a time -----------------------------------------------------------

def test_config_names_the_file_each_value_came_from(place, etc_luigi_cfg):
    """Each layer sets [layers] upto_<layer> for its own layer and every one above it: the winner of
    upto_X is layer X. /etc also sets a real key to a value that changes nothing for other runs."""
    cwd, home = place
    names = ["etc", "site", "user", "cwd", "env", "config"]
    files = [etc_luigi_cfg, home / "site.cfg", user_file(home), cwd / "luigi.cfg", home / "env.cfg", home / "option.cfg"]
    for level, path in enumerate(files):
        keys = "".join(f"upto_{above} = {names[level]}\n" for above in names[level:])
        path.write_text(("[VerifyTree]\ndeep = False\n" if level == 0 else "") + "[layers]\n" + keys)
    result = tool("--config", files[-1], "config", cwd=cwd, env=env_for(home, files[-2]))
    assert result.returncode == 0, result.stderr
    listed, settings = printable(result.stdout)
    assert [label for label in listed] == [SHIPPED] + LAYERS
    assert [listed[label] for label in LAYERS] == [str(p) for p in files]
    for name, label in zip(names, LAYERS, strict=True):
        assert settings["layers", f"upto_{name}"] == (name, label)
    assert settings["VerifyTree", "deep"] == ("False", "/etc/luigi/luigi.cfg")
    assert settings["BundleArchive", "chunk_size"] == ("3900MiB", SHIPPED)


CHUNK_SIZES = {SITE: "5MiB", USER: "4MiB", "./luigi.cfg": "3MiB", "$LUIGI_CONFIG_PATH": "2MiB", "--config": "1MiB"}


@pytest.mark.parametrize("top", [SHIPPED, *CHUNK_SIZES])
def test_each_level_beats_the_one_below(place, verified_mirror, top):
    """[BundleArchive] chunk_size set in every level up to ``top``: plan uses top's, config names top."""
    cwd, home = place
    levels = list(CHUNK_SIZES)[:list(CHUNK_SIZES).index(top) + 1] if top != SHIPPED else []
    paths = {SITE: home / "site.cfg", USER: user_file(home), "./luigi.cfg": cwd / "luigi.cfg",
             "$LUIGI_CONFIG_PATH": home / "env.cfg", "--config": home / "option.cfg"}
    for level in levels:
        paths[level].write_text(f"[BundleArchive]\nchunk_size = {CHUNK_SIZES[level]}\n")
    option = ["--config", paths["--config"]] if "--config" in levels else []
    env = env_for(home, paths["$LUIGI_CONFIG_PATH"] if "$LUIGI_CONFIG_PATH" in levels else None)
    expected = CHUNK_SIZES.get(top, "3900MiB")
    plan = tool(*option, "plan", "--mirror", verified_mirror, cwd=cwd, env=env)
    assert f"of at most {format_size(parse_size(expected))}, compression copy" in plan_line(plan)
    _, settings = printable(tool(*option, "config", cwd=cwd, env=env).stdout)
    assert settings["BundleArchive", "chunk_size"] == (expected, top)


def test_the_user_file_is_under_home_config_without_xdg_config_home(place):
    """$XDG_CONFIG_HOME unset, or relative (the XDG spec: ignored), means ~/.config."""
    cwd, home = place
    path = home / ".config" / "amsrepomirror" / "amsrepomirror.cfg"
    path.parent.mkdir(parents=True)
    path.write_text("[FetchListing]\njobs = 7\n")
    for xdg in (None, "relative/xdg"):
        env = env_for(home)
        del env["XDG_CONFIG_HOME"]
        if xdg:
            env["XDG_CONFIG_HOME"] = xdg
        listed, settings = printable(tool("config", cwd=cwd, env=env).stdout)
        assert listed["~/.config/amsrepomirror/amsrepomirror.cfg"] == str(path)
        assert settings["FetchListing", "jobs"] == ("7", "~/.config/amsrepomirror/amsrepomirror.cfg")


def test_command_line_options_beat_every_file(place, verified_mirror):
    cwd, home = place
    for path in (cwd / "luigi.cfg", home / "env.cfg", home / "option.cfg"):
        path.write_text("[BundleArchive]\nchunk_size = 2MiB\ncompression = lzma2\n")
    env = env_for(home, home / "env.cfg")
    from_files = tool("--config", home / "option.cfg", "plan", "--mirror", verified_mirror, cwd=cwd, env=env)
    assert "of at most 2.0 MiB, compression lzma2" in plan_line(from_files)
    given = tool("--config", home / "option.cfg", "plan", "--mirror", verified_mirror, "--chunk-size", "512KiB",
                 "--compression", "copy", cwd=cwd, env=env)
    assert "of at most 512.0 KiB, compression copy" in plan_line(given)
    dry = tool("--config", home / "option.cfg", "bundle", "--version", VERSION, "--mirror", verified_mirror,
               "--out", cwd / "b", "--dry-run", "--chunk-size", "1MiB", cwd=cwd, env=env)
    assert "of at most 1.0 MiB, compression lzma2" in plan_line(dry)
    assert not (cwd / "b").exists()


# ---- bad files, secrets -------------------------------------------------------------------------

def test_a_missing_or_broken_settings_file_is_one_usage_error(place):
    cwd, home = place
    missing = tool("--config", home / "nope.cfg", "config", cwd=cwd, env=env_for(home))
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [f"error: --config {home / 'nope.cfg'}: No such file or directory"]
    (cwd / "luigi.cfg").write_text("password = hunter2\n[http]\nretries = 2\n")
    broken = tool("config", cwd=cwd, env=env_for(home))
    assert broken.returncode == 2 and broken.stdout == ""
    assert broken.stderr.splitlines() == ["error: bad settings file: luigi.cfg, line 1: a setting before the first [section]"]
    (cwd / "luigi.cfg").write_text("[http]\nretries = 2\nsecret stuff\n")
    garbled = tool("plan", "--mirror", cwd, cwd=cwd, env=env_for(home))
    assert garbled.returncode == 2
    assert garbled.stderr.splitlines() == [
        "error: bad settings file: luigi.cfg, line 3: not a [section], a key = value or a comment"]


def test_config_never_prints_a_secret(place):
    cwd, home = place
    (home / "site.cfg").write_text("[smtp]\npassword = hunter2\nhost = mail.example\n[sendgrid]\napikey = SG.xyz\n"
                                   "[aws]\naws_secret_access_key = abc123\n")
    result = tool("--config", home / "site.cfg", "config", cwd=cwd, env=env_for(home))
    assert result.returncode == 0, result.stderr
    _, settings = printable(result.stdout)
    assert settings["smtp", "password"] == ("(hidden)", "--config")
    assert settings["sendgrid", "apikey"] == ("(hidden)", "--config")
    assert settings["aws", "aws_secret_access_key"] == ("(hidden)", "--config")
    assert settings["smtp", "host"] == ("mail.example", "--config")
    assert not any(s in result.stdout + result.stderr for s in ("hunter2", "SG.xyz", "abc123"))


# ---- plain Luigi --------------------------------------------------------------------------------

@pytest.mark.slow
def test_plain_luigi_runs_on_the_shipped_defaults(place, tmp_path):
    """`luigi --module amsrepomirror.tasks ...` outside the checkout: [http], [FetchListing] jobs,
    [VerifyTree] deep, [BundleArchive] and [retcode] all come from the shipped file."""
    cwd, home = place
    root, mirror, out = tmp_path / "scm", tmp_path / "mirror", tmp_path / "bundle"
    make_repository(root, VERSION)
    with ScmDouble(root) as double:
        common = ["--module", "amsrepomirror.tasks", "--local-scheduler", "--version", VERSION, "--mirror", mirror]
        refused = tool("VerifyTree", *common, "--listing-url", double.listing_url(VERSION), cwd=cwd,
                       env=env_for(home, password="wrong"), module="luigi")
        assert refused.returncode == 3, refused.stderr  # the command's code for a refused account (#20); Luigi's is 0
        mirrored = tool("VerifyTree", *common, "--listing-url", double.listing_url(VERSION), cwd=cwd,
                        env=env_for(home), module="luigi")
        assert mirrored.returncode == 0, mirrored.stderr
    assert tree_hashes(mirror) == served_tree(root, VERSION)
    bundled = tool("BundleArchive", *common, "--out", out, "--offline", cwd=cwd, env=env_for(home), module="luigi")
    assert bundled.returncode == 0, bundled.stderr
    manifest = BundleManifest.read(out / MANIFEST_NAME)
    assert (manifest.chunk_size, manifest.compression) == (3900 * 1024**2, "copy")
    assert sorted(p.name for p in cwd.iterdir()) == []
