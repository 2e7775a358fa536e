"""Where the SCM account comes from: environment, ``~/.netrc``, or a prompt. Never argv.

The password lives only in memory (and in this process's environment, so worker processes
inherit it); it is never logged, written, or put in an exception message.
"""

import getpass
import logging
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from requests.utils import NETRC_FILES, get_netrc_auth

from amsrepomirror.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)
    source: str = ""

    def as_auth(self):
        return (self.user, self.password)


def resolve_credentials(url: str, *, interactive: bool = False) -> Credentials | None:
    """SCM_USER/SCM_PASSWORD, else ~/.netrc for the URL's host, else a prompt on a terminal."""
    user, password = os.environ.get("SCM_USER"), os.environ.get("SCM_PASSWORD")
    if user and password:
        return Credentials(user, password, "environment (SCM_USER/SCM_PASSWORD)")
    netrc = get_netrc_auth(url)
    if netrc:
        if netrc[1]:
            _warn_if_others_can_touch(_netrc_path())
        return Credentials(netrc[0], netrc[1], "~/.netrc")
    if interactive and sys.stdin.isatty():
        user = user or input("SCM user: ").strip()
        password = getpass.getpass(f"SCM password for {user}: ")
        # Worker processes started later read the account from the environment, not from argv.
        os.environ["SCM_USER"], os.environ["SCM_PASSWORD"] = user, password
        return Credentials(user, password, "prompt")
    return None


def require_account_or_none(url: str, *, interactive: bool = False) -> Credentials | None:
    """The account for ``url`` (:func:`resolve_credentials`), None when none is configured at all; a
    UsageError naming the missing half when only one of SCM_USER/SCM_PASSWORD is set and neither
    ~/.netrc nor a prompt filled in the account."""
    found = resolve_credentials(url, interactive=interactive)
    user, password = os.environ.get("SCM_USER"), os.environ.get("SCM_PASSWORD")
    if found is None and bool(user) != bool(password):
        given, missing = ("SCM_USER", "SCM_PASSWORD") if user else ("SCM_PASSWORD", "SCM_USER")
        raise UsageError(f"{given} is set but {missing} is not (also tried: ~/.netrc has no account for "
                         f"{urlsplit(url).hostname}, and there is no terminal to ask on): set {missing} too")
    return found


_WARNED: set[Path] = set()


def _netrc_path() -> Path | None:
    """The file requests took the account from: $NETRC, else ~/.netrc or ~/_netrc."""
    names = [os.environ["NETRC"]] if "NETRC" in os.environ else [f"~/{n}" for n in NETRC_FILES]
    for name in names:
        path = Path(os.path.expanduser(name))
        if path.exists():
            return path
    return None


def _warn_if_others_can_touch(path: Path | None) -> None:
    """Warn once per process when a netrc holding the password is not private to this user.

    ftp and Python's netrc module refuse such a file; we use it (refusing would only turn a
    cron job's run into an authentication failure) and say how to fix it.
    """
    if path is None or os.name != "posix" or path in _WARNED:
        return
    st = path.stat()
    problems, fixes = [], []
    if st.st_uid != os.getuid():
        problems.append(f"belongs to uid {st.st_uid}, not to you")
        fixes.append(f"chown {os.getuid()} {path}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(f"is readable or writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
        fixes.append(f"chmod 600 {path}")
    if problems:
        _WARNED.add(path)
        log.warning(f"{path} holds the SCM password but {' and '.join(problems)}; fix: {' && '.join(fixes)}")
