"""Settings: the layers of settings files, which file each effective value comes from, and what each
value the tool reads must be.

A later file wins key by key, lowest first (``layers``)::

    shipped defaults.cfg < /etc/luigi/luigi.cfg < /etc/amsrepomirror/amsrepomirror.cfg
      < $XDG_CONFIG_HOME/amsrepomirror/amsrepomirror.cfg < ./luigi.cfg < $LUIGI_CONFIG_PATH < --config FILE

Luigi reads its own files (/etc/luigi/*.cfg, ./*.cfg, $LUIGI_CONFIG_PATH) when first asked; the tool's are
added through Luigi's public ``add_config_path``, which only appends: so the shipped defaults, the tool's
files and then Luigi's upper files again are appended in order, and a file read again after another wins
over it as its place in the order says (configparser keeps the last value read).
"""

import atexit
import configparser
import contextlib
import functools
import json
import math
import os
import re
from collections.abc import Callable
from importlib import resources

import luigi
import luigi.interface
import luigi.retcodes
import luigi.scheduler
import luigi.worker
from luigi.configuration import LuigiConfigParser

from amsrepomirror.errors import UsageError, settings_file_error, settings_not_text
from amsrepomirror.util.units import parse_size

SHIPPED = "shipped defaults"
# Luigi's own files, by the name it reads them under (relative names: the current folder).
LUIGI_FILES = {"/etc/luigi/client.cfg": "/etc/luigi/client.cfg", "/etc/luigi/luigi.cfg": "/etc/luigi/luigi.cfg",
               "client.cfg": "./client.cfg", "luigi.cfg": "./luigi.cfg"}
#: The tool's site-wide settings file (for all users of a machine), read above /etc/luigi/luigi.cfg.
SITE_FILE = "/etc/amsrepomirror/amsrepomirror.cfg"
#: For tests only: another path read in place of SITE_FILE (a test must not depend on, or write, the real /etc).
SITE_FILE_FOR_TESTS = "AMSREPOMIRROR_SITE_FILE"
#: The user's settings file, under $XDG_CONFIG_HOME (default ~/.config), read above the site file.
USER_FILE = "amsrepomirror/amsrepomirror.cfg"
SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key|credential", re.IGNORECASE)
#: A URL that carries an account (scheme://user:password@host): its value is hidden as a secret key's is.
URL_WITH_ACCOUNT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s@]*:[^/\s@]*@")


def is_secret(key: str, value: str) -> bool:
    """A value never shown (config's output, an error line): a password-like key's, or a URL with an account."""
    return bool(SECRET_KEY.search(key) or URL_WITH_ACCOUNT.search(value))

_extracted = contextlib.ExitStack()  # only a zipped install extracts the file; it must outlive every reload
atexit.register(_extracted.close)
_config_option: list[str] = []  # the --config file, once added
_installed: list[str] = []  # the files install_defaults added, in order (empty: not yet)


def _package_file(name: str) -> str:
    """Path of a file shipped in the package, as a file Luigi (or luigid) can read."""
    path = str(_extracted.enter_context(resources.as_file(resources.files("amsrepomirror") / name)))
    if not os.path.isfile(path):
        raise RuntimeError(f"amsrepomirror is installed without its {name} ({path}): reinstall it")
    return path


@functools.cache
def shipped_defaults() -> str:
    """Path of the package's defaults.cfg, as a file Luigi can read."""
    return _package_file("defaults.cfg")


@functools.cache
def scheduler_settings() -> str:
    """Path of the package's scheduler.cfg: the settings for luigid (``LUIGI_CONFIG_PATH=... luigid``)."""
    return _package_file("scheduler.cfg")


def site_file() -> str:
    return os.environ.get(SITE_FILE_FOR_TESTS) or SITE_FILE


def user_file() -> tuple[str, str]:
    """(label, path) of the user's settings file, as the XDG base directory spec places it."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if os.path.isabs(base):  # the spec: a relative $XDG_CONFIG_HOME is ignored
        return f"$XDG_CONFIG_HOME/{USER_FILE}", os.path.join(base, USER_FILE)
    return f"~/.config/{USER_FILE}", os.path.join(os.path.expanduser("~"), ".config", USER_FILE)


def layers() -> list[tuple[str, str | None]]:
    """(label, path) of every settings layer, lowest priority first; path None: a layer not in use
    ($LUIGI_CONFIG_PATH unset, no --config). Luigi's deprecated client.cfg names only where they exist."""
    found: list[tuple[str, str | None]] = [(SHIPPED, shipped_defaults())]
    for path in ("/etc/luigi/client.cfg", "/etc/luigi/luigi.cfg"):
        if path.endswith("luigi.cfg") or os.path.exists(path):
            found.append((LUIGI_FILES[path], path))
    found += [(SITE_FILE, site_file()), user_file()]
    for path in ("client.cfg", "luigi.cfg"):
        if path.endswith("luigi.cfg") or os.path.exists(path):
            found.append((LUIGI_FILES[path], path))
    found.append(("$LUIGI_CONFIG_PATH", os.environ.get("LUIGI_CONFIG_PATH") or None))
    found.append(("--config", _config_option[-1] if _config_option else None))
    return found


def install_defaults() -> None:
    """Put the shipped defaults under, and the tool's own files between, the files Luigi reads: appended
    in the order of ``layers`` (Luigi's upper files again after the tool's, so that they still win)."""
    if _installed:
        return
    ordered = [path for label, path in layers() if path and label != "--config"]
    for path in ordered:
        _installed.append(path)
        LuigiConfigParser.add_config_path(path)  # reads every file again: the last read wins

@contextlib.contextmanager
def for_this_command(values: dict[tuple[str, str], str]):
    """Luigi settings (``{(section, name): value}``) that hold while one command runs and are put back
    afterwards: Luigi's configuration is the whole process's, and tests and Python callers run
    several commands in one process."""
    settings = LuigiConfigParser.instance()
    before = {key: settings.get(*key) if settings.has_option(*key) else None for key in values}
    for (section, name), value in values.items():
        if not settings.has_section(section):
            settings.add_section(section)
        settings.set(section, name, value)
    try:
        yield
    finally:
        for (section, name), value in before.items():
            if value is None:
                settings.remove_option(section, name)
            else:
                settings.set(section, name, value)


def load(config_file: str | None) -> None:
    """Every layer in its order, ``--config FILE`` last; then every value checked (``check_settings``),
    so that a command stops on a bad one in one line before it does anything."""
    try:
        install_defaults()
        if config_file and os.path.abspath(config_file) not in _config_option:
            with open(config_file, encoding="utf-8"):  # Luigi skips a file it cannot open without a word
                pass
            _config_option.append(os.path.abspath(config_file))
            LuigiConfigParser.add_config_path(_config_option[-1])
    except OSError as exc:
        raise UsageError(f"--config {config_file}: {exc.strerror}") from exc
    except configparser.Error as exc:
        raise settings_file_error(exc) from exc
    except UnicodeDecodeError as exc:
        raise settings_not_text(exc, [path for _, path in layers() if path] + [config_file or ""]) from None
    check_settings()


def sources() -> list[tuple[str, str | None]]:
    """(label, path) of every settings file read, lowest priority first (``layers``)."""
    return layers()


def origins() -> dict[tuple[str, str], tuple[str, str, str]]:
    """{(section, key): (raw value, label, path of the file it came from)}, merged as Luigi merges the files."""
    found = {}
    for label, path in sources():
        if path is None:
            continue
        parser = configparser.RawConfigParser(default_section="\0")  # [DEFAULT] shows as a section of its own
        parser.optionxform = str  # as Luigi: keys keep their case
        for section in parser.sections() if parser.read(path, encoding="utf-8") else ():
            for key, value in parser.items(section):
                found[section, key] = (value, label, path)
    return found


def effective() -> dict[tuple[str, str], tuple[str, str]]:
    """{(section, key): (raw value, label of the file it came from)}; secret-like keys' values hidden."""
    return {key: ("(hidden)" if is_secret(key[1], value) else value, label)
            for key, (value, label, _) in origins().items()}


# ---- what each value must be ----------------------------------------------------------------------
# A parser takes the raw text and returns the value, or raises ValueError saying what it must be.

def whole(least: int | None = 0, most: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (least is not None and value < least) or (most is not None and value > most):
            bounds = f" from {least} to {most}" if most is not None else f" of at least {least}" if least is not None else ""
            raise ValueError(f"give a whole number{bounds}")
        return value
    return parse


def number(least: float = 0.0) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < least:
            raise ValueError(f"give a number of seconds of at least {least:g}")
        return value
    return parse


def boolean(text: str) -> bool:
    if text.strip().lower() not in ("true", "false"):
        raise ValueError("give true or false")
    return text.strip().lower() == "true"


def size(text: str) -> int:
    try:
        return parse_size(text.strip())
    except UsageError as exc:
        raise ValueError(str(exc)) from None


def size_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else size(text)


def one_of(*names: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in names:
            raise ValueError(f"give one of {', '.join(repr(n) if not n else n for n in names)}")
        return text.strip()
    return parse


def string_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError('give a JSON list of strings, e.g. ["VERSION.txt", "Utils/amsversion.txt"]')
    return value


def regex(text: str) -> re.Pattern:
    try:
        return re.compile(text, re.IGNORECASE)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"not a regular expression ({str(exc).splitlines()[0] if str(exc) else 'too deep'})") from None


def luigi_parameter(parameter: luigi.Parameter) -> Callable[[str], object] | None:
    """A parser for a setting of one of Luigi's own sections, as Luigi reads it (None: any text)."""
    if isinstance(parameter, luigi.BoolParameter):
        return boolean
    if isinstance(parameter, luigi.FloatParameter):
        return number(0.0)  # intervals and delays: time.sleep refuses a negative or NaN one
    if isinstance(parameter, luigi.IntParameter):
        return whole(None)
    if type(parameter) is luigi.Parameter or isinstance(parameter, luigi.OptionalParameter):
        return None

    def parse(text: str) -> object:
        try:
            return parameter.normalize(parameter.parse(text))
        except Exception:  # noqa: BLE001 - whatever Luigi's parser says, the value is not one it reads
            raise ValueError(f"not a value Luigi reads as {type(parameter).__name__}") from None
    return parse


#: Sections of Luigi's own settings the tool relies on, by the class that reads each.
LUIGI_SECTIONS: dict[str, type[luigi.Config]] = {"core": luigi.interface.core, "worker": luigi.worker.worker,
                                                 "scheduler": luigi.scheduler.scheduler,
                                                 "retcode": luigi.retcodes.retcode}
VERIFIERS = ("", "auto", "ssh-keygen", "python")  # bundle.signature.VERIFIERS, or empty for auto
COMPRESSIONS = ("copy", "zstd", "lzma2")  # bundle.format.COMPRESSIONS

#: What each setting the tool reads must be: (section, key) -> parser ("*": every key of the section).
#: Luigi's own sections are added from the classes that read them (``setting_parsers``).
SETTINGS: dict[tuple[str, str], Callable[[str], object]] = {
    ("http", "retries"): whole(0), ("http", "backoff"): number(0.0), ("http", "timeout"): number(0.001),
    ("http", "low_speed_limit"): whole(0), ("http", "low_speed_time"): number(0.0),
    ("http", "segment_threshold"): size, ("http", "max_ranges_per_file"): whole(1), ("http", "first_bytes"): size_or_zero,
    ("FetchListing", "jobs"): whole(1), ("FetchListing", "no_ssl"): boolean,
    ("DownloadFile", "jobs"): whole(1), ("VerifyTree", "jobs"): whole(1), ("BundleArchive", "jobs"): whole(1),
    ("DownloadFile", "max_batch_size"): whole(1), ("DownloadFile", "shared_batch_size"): whole(1),
    ("VerifyTree", "deep"): boolean, ("BundleArchive", "deep"): boolean,
    ("BundleArchive", "chunk_size"): size, ("BundleArchive", "compression"): one_of(*COMPRESSIONS),
    ("BundleArchive", "stick_size"): whole(0),
    ("platforms", "*"): regex,
    ("unpack", "installed_version_files"): string_list, ("unpack", "trust_installed"): boolean,
    ("unpack", "signature_verifier"): one_of(*VERIFIERS),
    ("trust", "require_signature"): boolean, ("trust", "signature_verifier"): one_of(*VERIFIERS),
    ("retcode", "*"): whole(0, 255),
}


@functools.cache
def setting_parsers() -> dict[tuple[str, str], Callable[[str], object]]:
    """The rest of the table: every typed parameter of Luigi's [core], [worker], [scheduler] and [retcode],
    under the names Luigi reads (a parameter's own name, and a [core] alias such as worker-wait-interval)."""
    table: dict[tuple[str, str], Callable[[str], object]] = {}
    for section, reader in LUIGI_SECTIONS.items():
        for key, parameter in reader.get_params():
            parse = luigi_parameter(parameter)
            if parse is not None:
                table[section, key] = parse
                alias = getattr(parameter, "_config_path", None)  # [core] worker-keep-alive for [worker] keep_alive
                if alias:
                    table[alias["section"], alias["name"].replace("-", "_")] = parse
    return table


def _parser_for(section: str, key: str) -> Callable[[str], object] | None:
    name = key.replace("-", "_")  # Luigi reads a dashed name where the underscored one is not set
    return SETTINGS.get((section, name)) or SETTINGS.get((section, "*")) or setting_parsers().get((section, name))


def _where(label: str, path: str) -> str:
    path = os.path.abspath(path)
    return path if label in (path, LUIGI_FILES.get(path)) or label.startswith("/") else f"{path} ({label})"


def value_problem(section: str, key: str, value: str) -> str | None:
    """What is wrong with ``value`` for ``[section] key`` (one line), or None when the tool can read it."""
    parse = _parser_for(section, key)
    try:
        if parse is not None:
            parse(value)
    except ValueError as exc:
        return " ".join(str(exc).split())
    return None


def check_settings() -> None:
    """UsageError, in one line naming the file, the section, the key and the value, for the first
    effective setting that the tool (or Luigi under it) could not read: checked once, before a command
    does anything, so that no bad value surfaces later as a traceback. Values are checked as Luigi hands
    them out: after its interpolation (%(name)s, ${VAR}), which must work for every value."""
    settings = LuigiConfigParser.instance()
    found = origins()
    for (section, key), (raw, label, path) in found.items():
        value = raw
        try:
            if section == settings.default_section or settings.has_section(section):
                value = settings.get(section, key)
        except configparser.InterpolationError:
            raise UsageError(f"[{section}] {key} in {_where(label, path)}: write a % as %% (Luigi reads %(name)s "
                             f"and ${{VAR}} in values)") from None
        for reader, problem in _problems(section, key, value, found):
            if value != raw and value:  # what interpolation brought in (${VAR}) may be a secret: say what was written
                problem = problem.replace(value, raw)
            shown = "(hidden)" if is_secret(key, raw) else repr(raw) + (" (interpolated)" if value != raw else "")
            raise UsageError(f"[{section}] {key} = {shown} in {_where(label, path)}{reader}: {problem}")


def _problems(section: str, key: str, value: str, found: dict) -> list[tuple[str, str]]:
    """(where it is read, problem) of one value: a [DEFAULT] key is read by every section that does not set it
    (configparser hands it down), so it is checked as each of those sections reads it."""
    if section != "DEFAULT":
        problem = value_problem(section, key, value)
        return [("", problem)] if problem else []
    name = key.replace("-", "_")
    readers = sorted({s for s, k in (*SETTINGS, *setting_parsers()) if k == name and (s, key) not in found})
    return [(f" (read as [{s}] {key})", p) for s in readers if (p := value_problem(s, key, value))]
