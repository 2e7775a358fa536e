"""What every task shares: failure reporting for the CLI, run ids, and the [http] settings."""

import functools
import json
import os
import traceback

import luigi

from amsrepomirror.errors import MirrorError, exit_code_for
from amsrepomirror.online.http import LowSpeed
from amsrepomirror.online.listing import compile_platform_rules
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.util.time import utc_stamp

DEFAULT_PLATFORM_RULES = {
    "linux": r"(^|/)linux([/._-]|$)|[._-]linux([/._-]|$)|manylinux",
    "macos": r"(^|/)(macos|darwin|osx)([/._-]|$)|[._-](macos|darwin|osx)([/._-]|$)|macosx",
    "windows": r"(^|/)(windows|win32|win64)([/._-]|$)|[._-](windows|win32|win_amd64|win64)([/._-]|$)",
}


def new_run_id() -> str:
    return f"{utc_stamp()}-{os.getpid()}"


# One run id per process unless the CLI passes one: every plain `luigi` invocation re-reads the listing.
PROCESS_RUN_ID = new_run_id()


class http(luigi.Config):
    """[http] in luigi.cfg: how patient we are with the network."""

    retries = luigi.IntParameter(default=6, description="attempts per request for connection errors, 5xx and 429")
    backoff = luigi.FloatParameter(default=0.5, description="urllib3 backoff factor in seconds")
    timeout = luigi.FloatParameter(default=60.0, description="connect/read timeout in seconds")
    low_speed_limit = luigi.IntParameter(default=1000, description="bytes/s below which an attempt is given up (0: off)")
    low_speed_time = luigi.FloatParameter(default=60.0, description="... when the rate stays below it this many seconds")

    def low_speed(self) -> LowSpeed:
        return LowSpeed(self.low_speed_limit, self.low_speed_time)


def platform_rules():
    """[platforms] in luigi.cfg: name = regex over repository paths; defaults when absent."""
    config = luigi.configuration.get_config()
    rules = dict(DEFAULT_PLATFORM_RULES)
    if config.has_section("platforms"):
        rules = {k: v for k, v in config.items("platforms") if k not in config.defaults()} or rules
    return compile_platform_rules(rules)


class ReportsFailure:
    """Mixin for every task: a failure becomes one JSON line (exit code, one-line message,
    traceback) that ``cli.run_graph`` reads back from the scheduler and maps to the exit code."""

    def on_failure(self, exception):
        message = str(exception) if isinstance(exception, MirrorError) else f"{exception.__class__.__name__}: {exception}"
        return json.dumps({"code": exit_code_for(exception), "message": message.splitlines()[0] if message else "",
                           "traceback": traceback.format_exc()})


class MirrorTask(ReportsFailure, luigi.Task):
    """Base of the tasks that work on a mirror folder."""

    version = luigi.Parameter(description="AMS version, e.g. AMS2026.1")
    mirror = luigi.Parameter(description="mirror folder (becomes $AMSHOME/repository)")

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.mirror)

    @classmethod
    @functools.lru_cache(maxsize=None)
    def get_params(cls):
        # Luigi rebuilds this list with dir(cls) on every instantiation and clone; with one
        # DownloadFile per listed file that alone costs seconds, and a class's parameters never change.
        return super().get_params()
