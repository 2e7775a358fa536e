"""Where the SCM account comes from: environment, ``~/.netrc``, or a prompt. Never argv.

The password lives only in memory (and in this process's environment, so worker processes
inherit it); it is never logged, written, or put in an exception message.
"""

import getpass
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from requests.utils import get_netrc_auth


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)
    source: str = ""

    def as_auth(self):
        return (self.user, self.password)


def resolve_credentials(url: str, *, interactive: bool = False) -> Optional[Credentials]:
    """SCM_USER/SCM_PASSWORD, else ~/.netrc for the URL's host, else a prompt on a terminal."""
    user, password = os.environ.get("SCM_USER"), os.environ.get("SCM_PASSWORD")
    if user and password:
        return Credentials(user, password, "environment (SCM_USER/SCM_PASSWORD)")
    netrc = get_netrc_auth(url)
    if netrc:
        return Credentials(netrc[0], netrc[1], "~/.netrc")
    if interactive and sys.stdin.isatty():
        user = user or input("SCM user: ").strip()
        password = getpass.getpass(f"SCM password for {user}: ")
        # Worker processes started later read the account from the environment, not from argv.
        os.environ["SCM_USER"], os.environ["SCM_PASSWORD"] = user, password
        return Credentials(user, password, "prompt")
    return None
