"""What every task shares: failure reporting for the CLI, run ids, and the [http] settings."""

import functools
import json
import logging
import os
import traceback

import luigi
import luigi.retcodes

from amsrepomirror.errors import EXIT_PRIORITY, RUNTIME_FAILURE, MirrorError, exit_code_for
from amsrepomirror.online.http import LowSpeed
from amsrepomirror.online.listing import compile_platform_rules
from amsrepomirror.online.segments import SegmentPolicy
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.util.timestamps import utc_stamp
from amsrepomirror.util.units import parse_size


def new_run_id() -> str:
    return f"{utc_stamp()}-{os.getpid()}"


# One run id per process unless the CLI passes one: every plain `luigi` invocation re-reads the listing.
PROCESS_RUN_ID = new_run_id()


class http(luigi.Config):
    """[http]: how patient we are with the network (values: the shipped defaults.cfg and any luigi.cfg)."""

    retries = luigi.IntParameter(description="attempts per request for connection errors, 5xx and 429")
    backoff = luigi.FloatParameter(description="urllib3 backoff factor in seconds")
    timeout = luigi.FloatParameter(description="connect/read timeout in seconds")
    low_speed_limit = luigi.IntParameter(description="bytes/s below which an attempt is given up (0: off)")
    low_speed_time = luigi.FloatParameter(description="... when the rate stays below it this many seconds")

    segment_threshold = luigi.Parameter(description="files of this size or more are fetched as several byte ranges")
    max_ranges_per_file = luigi.IntParameter(description="at most this many ranges of one file at once")
    first_bytes = luigi.Parameter(description="a first run's GET of a new file's first bytes (0: HEAD)")

    def low_speed(self) -> LowSpeed:
        return LowSpeed(self.low_speed_limit, self.low_speed_time)

    def segments(self) -> SegmentPolicy:
        return SegmentPolicy(threshold=parse_size(self.segment_threshold), max_ranges=max(1, self.max_ranges_per_file))


def platform_rules():
    """[platforms]: name = regex over repository paths (shipped rules, changed or added to by any luigi.cfg)."""
    config = luigi.configuration.get_config()
    return compile_platform_rules({k: v for k, v in config.items("platforms") if k not in config.defaults()})


class ReportsFailure:
    """Mixin for every task: a failure becomes one JSON line (exit code, one-line message,
    traceback) that ``cli.runner.run_graph`` reads back from the scheduler and maps to the exit code."""

    # A failed task is not handed out again: under a central scheduler, workers that keep alive
    # for others' tasks would otherwise wait for (and retry) it forever; the next run retries it.
    retry_count = 1

    def on_failure(self, exception):
        message = str(exception) if isinstance(exception, MirrorError) else f"{exception.__class__.__name__}: {exception}"
        return json.dumps({"code": exit_code_for(exception), "message": message.splitlines()[0] if message else "",
                           "traceback": traceback.format_exc()})


@luigi.Task.event_handler(luigi.Event.FAILURE)
def exit_code_of_plain_luigi(task, exception) -> None:
    """A plain ``luigi --module amsrepomirror.tasks`` run ends with the command's exit code (3 for a refused
    account, 4, 5, ...) instead of [retcode] task_failed: Luigi computes its exit code from the ``retcode`` settings
    object, one instance per process (Luigi's instance cache), which this raises to the failure's code.
    Luigi's task processes (--workers > 1) are forked: a failure there leaves task_failed as it is."""
    code = exit_code_for(exception)
    if not isinstance(task, ReportsFailure) or code not in EXIT_PRIORITY or code == RUNTIME_FAILURE:
        return  # a runtime failure gives [retcode] task_failed, as the site set it
    codes = luigi.retcodes.retcode()
    now = codes.task_failed
    if now not in EXIT_PRIORITY or EXIT_PRIORITY.index(code) < EXIT_PRIORITY.index(now):
        codes.task_failed = code


class OneLineForExpectedErrors(logging.Filter):
    """Luigi logs a failed task with its traceback; a MirrorError is an expected failure whose message
    says all: its record becomes one line (the message appended), in a plain luigi run's output and
    in the command's log alike."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], MirrorError):
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


if not any(isinstance(f, OneLineForExpectedErrors) for f in logging.getLogger("luigi-interface").filters):
    logging.getLogger("luigi-interface").addFilter(OneLineForExpectedErrors())


@functools.lru_cache(maxsize=16)
def workspace_of(mirror: str) -> Workspace:
    """One Workspace per mirror folder: every check of every task asks for it (10,000s of times)."""
    return Workspace(mirror)


class FolderTask(ReportsFailure, luigi.Task):
    """Base of the tasks that work on a mirror folder."""

    mirror = luigi.Parameter(description="mirror folder (becomes $AMSHOME/repository)")

    @property
    def workspace(self) -> Workspace:
        return workspace_of(self.mirror)

    @classmethod
    @functools.cache
    def get_params(cls):
        # Luigi rebuilds this list with dir(cls) on every instantiation and clone; with one
        # DownloadFile per listed file that alone costs seconds, and a class's parameters never change.
        return super().get_params()

    @classmethod
    def get_param_values(cls, params, args, kwargs):
        # Luigi's, less its walk through the task's settings section (every value interpolated) on each
        # instantiation after the class's first: it only warns, once, of a setting no parameter takes,
        # and a listing's DownloadFile tasks are made (and remade by clone) by the 10,000.
        if args or cls not in _SECTION_WALKED or len(kwargs) != len(params) or any(n not in kwargs for n, _ in params):
            values = super().get_param_values(params, args, kwargs)
            _SECTION_WALKED.add(cls)  # only once Luigi's own check went through
            return values
        values = ((name, parameter.normalize(kwargs[name])) for name, parameter in params)
        return [(name, tuple(v) if isinstance(v, (list, set)) else v) for name, v in values]


_SECTION_WALKED: set[type] = set()  # FolderTask classes whose settings section Luigi has checked once


class MirrorTask(FolderTask):
    """Base of the tasks that work on one version in a mirror folder."""

    version = luigi.Parameter(description="AMS version, e.g. AMS2026.1")
