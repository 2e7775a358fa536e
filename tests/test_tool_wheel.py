"""bundle --with-tool from any normal install: amsrepomirror's own wheel from the source folder, the
installed files, or --tool-wheel FILE; and every usage error of these options before anything is written."""

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from clihelp import REPO, cli_env, run_cli
from servers import require_package_index
from test_tool import clean_env, offline

from amsrepomirror import __version__
from amsrepomirror.bundle.format import MANIFEST_NAME
from amsrepomirror.errors import UsageError
from amsrepomirror.pack.own_wheel import check_given_wheel, repack_installed
from amsrepomirror.testing.repository import DEFAULT_VERSION

RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"


def fake_wheel(folder: Path, name: str, metadata: str | None) -> Path:
    """A zip named like a wheel, with ``metadata`` as amsrepomirror's METADATA (None: no METADATA at all)."""
    wheel = folder / name
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("amsrepomirror/__init__.py", "")
        if metadata is not None:
            archive.writestr(f"amsrepomirror-{__version__}.dist-info/METADATA", metadata)
    return wheel


def built_wheel(tmp_path: Path) -> Path:
    """amsrepomirror's wheel, built from a copy of the source (no network, as tests/test_layout.py does)."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("amsrepomirror-*.whl")
    return wheel


@pytest.mark.parametrize("name, metadata, said", [
    (f"amsrepomirror-{__version__}-py3-none-any.whl", f"Name: amsrepomirror\nVersion: {__version__}\n", None),
    ("amsrepomirror-9.9.9-py3-none-any.whl", "Name: amsrepomirror\nVersion: 9.9.9\n",
     f"is amsrepomirror 9.9.9, but this is amsrepomirror {__version__}"),
    (f"luigi-{__version__}-py3-none-any.whl", "Name: luigi\n", "not a wheel of amsrepomirror"),
    (f"amsrepomirror-{__version__}.tar.gz", "", "not a wheel of amsrepomirror"),
    (f"amsrepomirror-{__version__}-py3-none-any.whl", "Name: amsrepomirror\nVersion: 0.0.1\n",
     f"its METADATA names amsrepomirror 0.0.1, not amsrepomirror {__version__}"),
    (f"amsrepomirror-{__version__}-py3-none-any.whl", None, "not a readable wheel of amsrepomirror"),
])
def test_a_given_wheel_must_be_this_amsrepomirror_by_name_and_metadata(tmp_path, name, metadata, said):
    wheel = fake_wheel(tmp_path, name, metadata)
    if said is None:
        check_given_wheel(wheel)
        return
    with pytest.raises(UsageError) as refused:
        check_given_wheel(wheel)
    assert said in str(refused.value)


def fake_install(site: Path) -> metadata.Distribution:
    """amsrepomirror as pip installs it from a wheel: its files, a dist-info with METADATA, WHEEL and a RECORD
    with each file's sha256 (and the installer's own files, the script and bytecode, which a wheel does not hold)."""
    files = {"amsrepomirror/__init__.py": f'__version__ = "{__version__}"\n', "amsrepomirror/defaults.cfg": "[core]\n",
             f"amsrepomirror-{__version__}.dist-info/METADATA": f"Name: amsrepomirror\nVersion: {__version__}\n",
             f"amsrepomirror-{__version__}.dist-info/WHEEL": "Wheel-Version: 1.0\nTag: py3-none-any\n",
             f"amsrepomirror-{__version__}.dist-info/INSTALLER": "pip\n",
             "amsrepomirror/__pycache__/__init__.cpython-311.pyc": "bytecode", "../../../bin/amsrepomirror": "#!script\n"}
    record = []
    for name, text in files.items():
        where = site / name
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text)}\n")
    record.append(f"amsrepomirror-{__version__}.dist-info/RECORD,,\n")
    (site / f"amsrepomirror-{__version__}.dist-info" / "RECORD").write_text("".join(record))
    return metadata.PathDistribution(site / f"amsrepomirror-{__version__}.dist-info")


def test_installed_files_are_packed_again_as_a_wheel_with_a_new_record(tmp_path):
    dist = fake_install(tmp_path / "root" / "lib" / "site-packages")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    wheel = repack_installed(tmp_path / "one", dist)
    assert wheel.name == f"amsrepomirror-{__version__}-py3-none-any.whl"
    info = f"amsrepomirror-{__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        record = archive.read(f"{info}/RECORD").decode().splitlines()
        digests = {n: base64.urlsafe_b64encode(hashlib.sha256(archive.read(n)).digest()).rstrip(b"=").decode()
                   for n in names}
    assert names == ["amsrepomirror/__init__.py", "amsrepomirror/defaults.cfg", f"{info}/METADATA", f"{info}/WHEEL",
                     f"{info}/RECORD"]  # no bytecode, script or installer's file; the dist-info last
    assert record[-1] == f"{info}/RECORD,,"
    assert {line.split(",")[0]: line.split(",")[1] for line in record[:-1]} == {
        n: f"sha256={d}" for n, d in digests.items() if n != f"{info}/RECORD"}
    assert repack_installed(tmp_path / "two", dist).read_bytes() == wheel.read_bytes()  # the same files, the same bytes


def test_an_installed_file_changed_since_the_install_is_not_packed(tmp_path):
    site = tmp_path / "site-packages"
    dist = fake_install(site)
    (site / "amsrepomirror" / "defaults.cfg").write_text("[core]\nchanged = yes\n")
    with pytest.raises(UsageError) as refused:
        repack_installed(tmp_path, dist)
    assert str(refused.value) == (f"bundle --with-tool: the installed file {site / 'amsrepomirror' / 'defaults.cfg'} is "
                                  "not as installed (RECORD): reinstall amsrepomirror, or give its wheel with "
                                  "--tool-wheel FILE")
    assert list(tmp_path.glob("*.whl")) == []


def _usage_cases(tmp_path: Path) -> dict[str, tuple[list, str]]:
    wrong = fake_wheel(tmp_path, "amsrepomirror-9.9.9-py3-none-any.whl", "Name: amsrepomirror\nVersion: 9.9.9\n")
    return {
        "missing": (["--with-tool", "--tool-wheel", tmp_path / "no.whl"], f"error: --tool-wheel {tmp_path / 'no.whl'} "
                    "does not exist"),
        "other-version": (["--with-tool", "--tool-wheel", wrong], f"error: --tool-wheel {wrong} is amsrepomirror 9.9.9, "
                          f"but this is amsrepomirror {__version__}: give the wheel of {__version__}, or bundle with 9.9.9"),
        "without-with-tool": (["--tool-wheel", wrong], "error: --tool-python, --tool-platform and --tool-wheel go with "
                              "--with-tool"),
    }


@pytest.mark.parametrize("case", ["missing", "other-version", "without-with-tool"])
def test_a_usage_error_of_with_tool_leaves_the_bundle_folder_and_the_mirror_untouched(scm_double, tmp_path, case):
    """Exit 2 promises nothing was changed: no request to the server, no mirror, no chunk, no tool/."""
    args, said = _usage_cases(tmp_path)[case]
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "kept.txt").write_text("an earlier file\n")
    result = run_cli("bundle", "--version", DEFAULT_VERSION, "--mirror", tmp_path / "mirror", "--listing-url",
                     scm_double.listing_url(DEFAULT_VERSION), "--out", out, "--chunk-size", "1MiB", *args)
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [said]
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]
    assert not (tmp_path / "mirror").exists()
    assert scm_double.log == []


@pytest.mark.slow
def test_with_tool_from_a_wheel_install_outside_the_checkout_installs_offline_and_verifies(scm_double, tmp_path):
    """The route of an admin's `pip install amsrepomirror-X.whl` (or pipx): no source folder anywhere; the tool's
    wheel is the installed files packed again, and the bundle's install.sh installs it with no network."""
    require_package_index()
    wheel = built_wheel(tmp_path / "build")
    venv = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                               capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    shutil.rmtree(tmp_path / "build")  # neither the wheel nor its source is there any more
    out, work = tmp_path / "bundle", tmp_path / "work"
    work.mkdir()
    demo = subprocess.run([str(venv / "bin" / "amsrepomirror"), "demo", "--workdir", str(tmp_path / "demo"), "--clean"],
                          capture_output=True, text=True, timeout=300, cwd=work, env=cli_env(), stdin=subprocess.DEVNULL)
    assert demo.returncode == 0, demo.stderr
    result = subprocess.run([str(venv / "bin" / "amsrepomirror"), "bundle", "--version", DEFAULT_VERSION, "--mirror",
                             str(tmp_path / "mirror"), "--listing-url", scm_double.listing_url(DEFAULT_VERSION), "--out",
                             str(out), "--chunk-size", "1MiB", "--with-tool"],
                            capture_output=True, text=True, timeout=900, cwd=work, env=cli_env(), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    listed = [t["path"] for t in json.loads((out / MANIFEST_NAME).read_text())["tool"]]
    [own] = [p for p in listed if Path(p).name.startswith("amsrepomirror-")]
    assert Path(own).name == f"amsrepomirror-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(out / own) as archive:
        names = archive.namelist()
        record = archive.read(f"amsrepomirror-{__version__}.dist-info/RECORD").decode()
    assert "amsrepomirror/__init__.py" in names and "amsrepomirror/defaults.cfg" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(("INSTALLER", "direct_url.json", "REQUESTED"))]
    assert sorted(line.split(",")[0] for line in record.splitlines()) == sorted(names)

    target = tmp_path / "offline-venv"
    env = clean_env(tmp_path, "/usr/bin:/bin", PYTHON=sys.executable)
    done = offline(["sh", str(out / "tool" / "install.sh"), str(target)], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is intact" in done.stdout.splitlines()[-1], done.stdout
    where = subprocess.run([str(target / "bin" / "python"), "-c", "from importlib import metadata; import amsrepomirror; "
                            "print(metadata.version('amsrepomirror'), amsrepomirror.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    version, module = where.stdout.split()
    assert version == __version__ and Path(module).is_relative_to(target), where.stderr

    # An install whose files changed since (RECORD disagrees) is not packed: exit 2 before anything is written.
    [changed] = venv.glob("lib/python*/site-packages/amsrepomirror/pack/readme.py")
    changed.write_text(changed.read_text() + "# changed\n")
    again = subprocess.run([str(venv / "bin" / "amsrepomirror"), "bundle", "--offline", "--version", DEFAULT_VERSION,
                            "--mirror", str(tmp_path / "mirror"), "--out", str(tmp_path / "again"), "--with-tool"],
                           capture_output=True, text=True, timeout=300, cwd=work, env=cli_env(), stdin=subprocess.DEVNULL)
    assert again.returncode == 2, again.stderr
    assert [line for line in again.stderr.splitlines() if line.startswith("error:")] == [
        f"error: bundle --with-tool: the installed file {changed} is not as installed (RECORD): reinstall amsrepomirror, "
        "or give its wheel with --tool-wheel FILE"]
    assert not (tmp_path / "again").exists()


@pytest.mark.slow
def test_with_tool_wheel_ships_exactly_the_wheel_given(scm_double, tmp_path):
    require_package_index()
    wheel = built_wheel(tmp_path / "build")
    out = tmp_path / "bundle"
    result = run_cli("bundle", "--version", DEFAULT_VERSION, "--mirror", tmp_path / "mirror", "--listing-url",
                     scm_double.listing_url(DEFAULT_VERSION), "--out", out, "--chunk-size", "1MiB", "--with-tool",
                     "--tool-wheel", wheel, timeout=900)
    assert result.returncode == 0, result.stderr
    assert (out / "tool" / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    assert f"wheels/{wheel.name} --hash=" in (out / "tool" / f"requirements-{RUNNING}.txt").read_text()
