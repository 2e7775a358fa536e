"""Luigi's central scheduler (``luigid``): is it there, and which run on a mirror it is already coordinating.

Several processes (on one host or on hosts sharing the mirror folder) share the work of one run only
when they build the same tasks, so they must agree on the run id: a process joins the run the scheduler
has going for the same work (mirror, version, listing and its content), else it starts a new one.
"""

import hashlib
import json
import os
import socket
from typing import Dict, Optional

import luigi
import requests

from amsrepomirror import __version__
from amsrepomirror.errors import MirrorError
from amsrepomirror.online.listing import redact
from amsrepomirror.util.time import utc_stamp

REACH_TIMEOUT = 5.0  # seconds: Luigi's own RPC retries would take minutes to give up


class SchedulerUnreachable(MirrorError):
    """The central scheduler given by --scheduler-url or [core] default-scheduler-url does not answer."""


def configured_url(given: Optional[str], local: bool) -> Optional[str]:
    """The central scheduler to use: --scheduler-url, else [core] default-scheduler-url when a settings
    file sets it; None (Luigi's local scheduler) with --local-scheduler or when neither is set."""
    if local:
        return None
    if given:
        return given
    settings = luigi.configuration.get_config()
    for key in ("default-scheduler-url", "default_scheduler_url"):
        if settings.has_option("core", key) and settings.get("core", key).strip():
            return settings.get("core", key).strip()
    return None


def _rpc(url: str, method: str, timeout: float = REACH_TIMEOUT, **arguments):
    """One call of luigid's JSON API (what luigi.rpc.RemoteScheduler does, without its minutes of retries)."""
    answer = requests.get(url.rstrip("/") + "/api/" + method, params={"data": json.dumps(arguments)}, timeout=timeout)
    answer.raise_for_status()
    return answer.json()["response"]


def check_reachable(url: str) -> None:
    """A quick question to the scheduler before the run; one clear line when it does not answer."""
    hint = "start it (make scheduler), fix --scheduler-url, or run with --local-scheduler"
    try:
        _rpc(url, "worker_list")
    except requests.RequestException as exc:
        reason = exc.__class__.__name__ if not isinstance(exc, requests.ConnectionError) else "connection failed"
        raise SchedulerUnreachable(f"cannot reach the Luigi scheduler at {redact(url)} ({reason}): {hint}") from None
    except (ValueError, KeyError, TypeError):
        raise SchedulerUnreachable(f"{redact(url)} does not answer like a Luigi scheduler (luigid): {hint}") from None


def work_key(params: Dict, listing_sha256: str) -> str:
    """What defines a mirror run's work, as a short digest: the same for every process that does the same work."""
    defining = {k: params[k] for k in ("mirror", "version", "listing_url", "platform", "strict_authentication")}
    defining["listing_sha256"] = listing_sha256
    defining["tool"] = __version__  # processes of different versions may name their tasks differently
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:16]


def shared_run_id(url: str, key: str) -> str:
    """The run id of the run the scheduler still has going for this work (some process's JoinRun
    pending, none of its tasks failed), so this process joins it; else a new one, which later
    processes will join. A run that failed or ended is never joined: the next run starts afresh."""
    def run_ids(status: str, search: str):
        tasks = _rpc(url, "task_list", status=status, upstream_status="", search=search, limit=False)
        return {t["params"]["run_id"] for t in tasks.values() if t.get("params", {}).get("run_id", "").endswith(key)}

    ended = run_ids("FAILED", key) | run_ids("DISABLED", key)
    live = sorted(run_ids("PENDING", f"JoinRun {key}") - ended)
    return live[-1] if live else f"{utc_stamp()}-{key}"


def batch_size(files: int, jobs: int, largest: int) -> int:
    """DownloadFile batch size for a shared run of ``files``: enough batches (16 at least) for the
    scheduler to spread them over the workers, at least ``jobs`` files so that one batch keeps every
    connection busy, and never above ``largest`` ([DownloadFile] shared_batch_size)."""
    return max(1, min(largest, max(jobs, -(-files // 16))))


def process_token() -> str:
    """Names this process among the workers of one run (host and pid)."""
    return f"{socket.gethostname()}-{os.getpid()}"
