"""amsrepomirror's own wheel for ``bundle --with-tool``, from any normal install.

Three routes, in this order: the wheel file ``--tool-wheel`` names (its name and version must be this
amsrepomirror's); the source folder it was installed from (``pip install -e .`` or ``pip install DIR``:
built with ``pip wheel``); else the installed files themselves (a wheel or pipx install), checked against
the distribution's RECORD and packed again as a wheel. ``own_wheel_route`` settles the route up front
(UsageError before anything is written); ``make_own_wheel`` makes the file when the tool is built.
"""

import base64
import hashlib
import json
import re
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import amsrepomirror
from amsrepomirror import __version__
from amsrepomirror.errors import UsageError

DIST_NAME = "amsrepomirror"
#: Files of an install that are not part of the wheel: written by the installer, or compiled by Python.
INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
#: A wheel file name (PEP 427): name-version(-build)?-python-abi-platform.whl
WHEEL_NAME = re.compile(r"(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every member: the same wheel bytes from the same files


@dataclass(frozen=True)
class OwnWheelRoute:
    """Where the wheel comes from: ``kind`` "file" (path: the wheel), "source" (path: the source folder) or
    "installed" (path: the folder RECORD's paths are relative to)."""
    kind: str
    path: Path


def own_wheel_route(tool_wheel: str = "") -> OwnWheelRoute:
    """The route for this install and --tool-wheel, checked now (UsageError naming what to do)."""
    if tool_wheel:
        check_given_wheel(Path(tool_wheel))
        return OwnWheelRoute("file", Path(tool_wheel).absolute())
    source = _source_folder()
    if source is not None:
        return OwnWheelRoute("source", source)
    dist = _running_distribution()
    _installed_files(dist)  # checked now: a changed install is refused before anything is written
    return OwnWheelRoute("installed", Path(dist.locate_file("")))


def check_given_wheel(wheel: Path) -> None:
    """--tool-wheel must be a wheel of this amsrepomirror, by its name and by its METADATA."""
    if not wheel.is_file():
        raise UsageError(f"--tool-wheel {wheel} does not exist")
    named = WHEEL_NAME.fullmatch(wheel.name)
    if not named or named["name"].lower().replace(".", "_") != DIST_NAME:
        raise UsageError(f"--tool-wheel {wheel}: not a wheel of {DIST_NAME} (expected a file named "
                         f"{DIST_NAME}-{__version__}-py3-none-any.whl)")
    if named["version"] != __version__:
        raise UsageError(f"--tool-wheel {wheel} is {DIST_NAME} {named['version']}, but this is {DIST_NAME} "
                         f"{__version__}: give the wheel of {__version__}, or bundle with {named['version']}")
    try:
        with zipfile.ZipFile(wheel) as archive:
            text = archive.read(f"{DIST_NAME}-{__version__}.dist-info/METADATA").decode("utf-8")
    except (OSError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise UsageError(f"--tool-wheel {wheel}: not a readable wheel of {DIST_NAME} {__version__} "
                         f"({type(exc).__name__}: {exc})") from None
    headers = HeaderParser().parsestr(text)
    if (headers.get("Name"), headers.get("Version")) != (DIST_NAME, __version__):
        raise UsageError(f"--tool-wheel {wheel}: its METADATA names {headers.get('Name')} {headers.get('Version')}, "
                         f"not {DIST_NAME} {__version__}")


def _source_folder() -> Path | None:
    """The source folder amsrepomirror was installed from (pip's direct_url.json of a local folder that
    still holds pyproject.toml); None for an install from a wheel or an index."""
    for dist in metadata.distributions(name=DIST_NAME):
        try:
            url = urlparse(json.loads(dist.read_text("direct_url.json") or "{}").get("url", ""))
        except ValueError:
            continue
        if url.scheme == "file" and (Path(unquote(url.path)) / "pyproject.toml").is_file():
            return Path(unquote(url.path))
    return None


def _running_distribution() -> metadata.Distribution:
    """The installed distribution the running amsrepomirror was imported from (an egg-info of a source
    folder on sys.path, or another install, is not it)."""
    running = Path(amsrepomirror.__file__).resolve()
    for dist in metadata.distributions(name=DIST_NAME):
        for path in dist.files or []:
            if path.as_posix() == f"{DIST_NAME}/__init__.py" and Path(dist.locate_file(path)).resolve() == running:
                return dist
    raise UsageError(f"bundle --with-tool: cannot find the installed files of this {DIST_NAME} ({running.parent}) in "
                     f"any RECORD: give its wheel with --tool-wheel FILE ({DIST_NAME}-{__version__}-py3-none-any.whl)")


def _installed_files(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """(name in the wheel, file) for every installed file that belongs in the wheel, each checked against
    its sha256 in RECORD: a changed install is not packed."""
    if dist.version != __version__:
        raise UsageError(f"bundle --with-tool: the installed {DIST_NAME} is {dist.version}, the running one "
                         f"{__version__}: reinstall it, or give --tool-wheel FILE")
    files = []
    for path in dist.files or []:
        name = path.as_posix()
        if (name.startswith("../") or "/__pycache__/" in f"/{name}" or name.endswith(".pyc")
                or (name.split("/")[0].endswith(".dist-info") and path.name in INSTALLER_FILES)):
            continue  # scripts (entry_points.txt makes them again), bytecode, the installer's own files
        where = Path(dist.locate_file(path))
        recorded = path.hash.value if path.hash is not None and path.hash.mode == "sha256" else None
        if not where.is_file() or _digest(where.read_bytes()) != recorded:  # guard: own-wheel-record
            raise UsageError(f"bundle --with-tool: the installed file {where} is not as installed (RECORD): "
                             f"reinstall {DIST_NAME}, or give its wheel with --tool-wheel FILE")
        files.append((name, where))
    return files


def _digest(data: bytes) -> str:
    """The sha256 of ``data`` as RECORD writes it: urlsafe base64 without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack_installed(dest: Path, dist: metadata.Distribution | None = None) -> Path:
    """The installed files of ``dist`` (default: the running amsrepomirror's) as a wheel in ``dest``, RECORD
    written anew; the same files give the same bytes."""
    dist = dist or _running_distribution()
    files = sorted(_installed_files(dist), key=lambda f: (f[0].split("/")[0].endswith(".dist-info"), f[0]))
    dist_info = f"{DIST_NAME}-{dist.version}.dist-info"
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    if not tags:
        raise UsageError(f"bundle --with-tool: the installed {DIST_NAME} has no WHEEL tags: give --tool-wheel FILE")
    parts = [sorted(dict.fromkeys(tag.split("-")[i] for tag in tags)) for i in range(3)]
    wheel = dest / f"{DIST_NAME}-{dist.version}-{'-'.join('.'.join(p) for p in parts)}.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, where in files:
            data = where.read_bytes()
            _add(archive, name, data)
            record.append(f"{name},sha256={_digest(data)},{len(data)}\n")
        record.append(f"{dist_info}/RECORD,,\n")
        _add(archive, f"{dist_info}/RECORD", "".join(record).encode())
    return wheel


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)
