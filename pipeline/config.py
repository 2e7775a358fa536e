"""Settings: the shipped defaults under every luigi.cfg, and which file each effective value comes from.

Luigi reads the files in ``LuigiConfigParser._config_paths`` in order, a later file winning key by key:
shipped ``defaults.cfg`` < /etc/luigi/luigi.cfg < ./luigi.cfg < $LUIGI_CONFIG_PATH < ``--config FILE``.
"""

import atexit
import configparser
import contextlib
import functools
import os
import re
from importlib import resources

from luigi.configuration import LuigiConfigParser

from amsrepomirror.errors import UsageError, settings_file_error

SHIPPED = "shipped defaults"
# Luigi's own files, by the name it reads them under (relative names: the current folder).
LUIGI_FILES = {"/etc/luigi/client.cfg": "/etc/luigi/client.cfg", "/etc/luigi/luigi.cfg": "/etc/luigi/luigi.cfg",
               "client.cfg": "./client.cfg", "luigi.cfg": "./luigi.cfg"}
SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key|credential", re.IGNORECASE)

_extracted = contextlib.ExitStack()  # only a zipped install extracts the file; it must outlive every reload
atexit.register(_extracted.close)
_config_option: list[str] = []  # the --config file, once added


@functools.cache
def shipped_defaults() -> str:
    """Path of the package's defaults.cfg, as a file Luigi can read."""
    path = str(_extracted.enter_context(resources.as_file(resources.files("amsrepomirror") / "defaults.cfg")))
    if not os.path.isfile(path):
        raise RuntimeError(f"amsrepomirror is installed without its defaults.cfg ({path}): reinstall it")
    return path


def install_defaults() -> None:
    """Put the shipped defaults first in Luigi's file list, so every other settings file overrides them."""
    path = shipped_defaults()
    if path in LuigiConfigParser._config_paths:
        return
    LuigiConfigParser._config_paths.insert(0, path)
    if LuigiConfigParser._instance is not None:  # already read: read again, defaults first
        LuigiConfigParser.reload()


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
    """Shipped defaults first, ``--config FILE`` last (Luigi read the files in between when it was imported)."""
    install_defaults()
    try:
        if config_file and os.path.abspath(config_file) not in _config_option:
            with open(config_file, encoding="utf-8"):  # Luigi skips a file it cannot open without a word
                pass
            _config_option.append(os.path.abspath(config_file))
            LuigiConfigParser.add_config_path(_config_option[-1])
    except OSError as exc:
        raise UsageError(f"--config {config_file}: {exc.strerror}") from exc
    except configparser.Error as exc:
        raise settings_file_error(exc) from exc


def sources() -> list[tuple[str, str | None]]:
    """(label, path) of every settings file Luigi reads, lowest priority first; path None: that layer
    is not in use ($LUIGI_CONFIG_PATH unset, no --config, a deprecated client.cfg name absent)."""
    env = os.environ.get("LUIGI_CONFIG_PATH")
    labelled = []
    for position, path in enumerate(LuigiConfigParser._config_paths):
        if path == shipped_defaults():
            labelled.append((SHIPPED, path))
        elif path in _config_option:
            labelled.append(("--config", path))
        elif path in LUIGI_FILES and position <= len(LUIGI_FILES):  # Luigi's own list, before anything added
            if path.endswith("luigi.cfg") or os.path.exists(path):
                labelled.append((LUIGI_FILES[path], path))
        else:
            labelled.append(("$LUIGI_CONFIG_PATH" if path == env else path, path))
    labels = [label for label, _ in labelled]
    if "$LUIGI_CONFIG_PATH" not in labels:
        labelled.insert(labels.index("--config") if "--config" in labels else len(labelled), ("$LUIGI_CONFIG_PATH", env))
    if "--config" not in labels:
        labelled.append(("--config", None))
    return labelled


def effective() -> dict[tuple[str, str], tuple[str, str]]:
    """{(section, key): (raw value, label of the file it came from)}, merged as Luigi merges the files."""
    found = {}
    for label, path in sources():
        if path is None:
            continue
        parser = configparser.RawConfigParser(default_section="\0")  # [DEFAULT] shows as a section of its own
        parser.optionxform = str  # as Luigi: keys keep their case
        for section in parser.sections() if parser.read(path) else ():
            for key, value in parser.items(section):
                found[section, key] = ("(hidden)" if SECRET_KEY.search(key) else value, label)
    return found
