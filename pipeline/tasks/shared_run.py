"""Luigi's central scheduler (``luigid``): is it there, and which run on a mirror it is already coordinating.

Several processes (on one host or on hosts sharing the mirror folder) share the work of one run only
when they build the same tasks, so they must agree on the run id: a process joins the run the scheduler
has going for the same work (mirror, version, listing and its content), else it starts a new one. A run
named by --run-id is joined only when its recorded identity is this process's (check_run_identity).
"""

import hashlib
import json
from collections.abc import Sequence
from urllib.parse import urlsplit

import luigi
import requests

from amsrepomirror import __version__
from amsrepomirror.errors import MirrorError, UsageError
from amsrepomirror.online.listing import listing_url_for, redact
from amsrepomirror.online.sync import SNAPSHOT_SCHEMA
from amsrepomirror.online.workspace import THIS_PROCESS
from amsrepomirror.util.timestamps import utc_stamp

REACH_TIMEOUT = 5.0  # seconds: Luigi's own RPC retries would take minutes to give up


class SchedulerUnreachable(MirrorError):
    """The central scheduler given by --scheduler-url or [core] default-scheduler-url does not answer."""


def configured_url(given: str | None, local: bool) -> str | None:
    """The central scheduler to use: --scheduler-url, else [core] default-scheduler-url when a settings
    file sets it; None (Luigi's local scheduler) with --local-scheduler or when neither is set."""
    if local:
        return None
    if given:
        return _scheduler_url(given, "--scheduler-url")
    settings = luigi.configuration.get_config()
    for key in ("default-scheduler-url", "default_scheduler_url"):
        if settings.has_option("core", key) and settings.get("core", key).strip():
            return _scheduler_url(settings.get("core", key).strip(), f"[core] {key}")
    return None


def _scheduler_url(url: str, where: str) -> str:
    """``url`` when it is an http(s) URL with a host; UsageError naming ``where`` it was set otherwise
    (``127.0.0.1:8082`` without a scheme is a typo, not a scheduler that does not answer)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{where} {redact(url)} is not an http:// or https:// URL: give it as "
                         f"http://HOST:PORT (e.g. http://127.0.0.1:8082)")
    return url


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


def run_identity(version: str, listing_url: str, platform: Sequence[str], strict_authentication: bool,
                 listing_sha256: str) -> dict[str, str]:
    """What names a mirror run's work (not where the mirror is): processes share a run only when
    all of it is the same. Recorded in the run's snapshot and compared by ``check_run_identity``."""
    return {
        "tool": __version__,  # processes of different versions may name their tasks differently
        "snapshot": SNAPSHOT_SCHEMA,  # ... or read the run's snapshot differently (weak_date, since /2)
        "version": version,
        "listing": redact(listing_url_for(version, listing_url)),
        "listing sha256": listing_sha256,
        "platforms": ",".join(sorted({p.lower() for p in platform})) or "all",
        "strict authentication": "yes" if strict_authentication else "no",
    }


def work_key(mirror: str, identity: dict[str, str]) -> str:
    """A run's work on one mirror as a short digest: the same for every process that does the same work."""
    return hashlib.sha256(json.dumps({"mirror": mirror, **identity}, sort_keys=True).encode()).hexdigest()[:16]


def check_run_identity(run_id: str, ours: dict[str, str], theirs: dict[str, str] | None) -> None:
    """The one comparison of a run's identity: a process (or a FetchListing) joins run ``run_id``
    only when the work the run records (``theirs``, from its snapshot) is this process's work
    (``ours``). Anything else would download another listing's files under this one's name."""
    theirs = theirs if isinstance(theirs, dict) else {}
    differing = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if differing:  # guard: shared-run-identity
        what = "; ".join(f"{k}: {theirs.get(k, 'not recorded')} in the run, {ours.get(k, 'not given')} here"
                         for k in differing)
        raise UsageError(f"run {run_id} is a run of other work ({what}): give this work a run id of its own "
                         "(another --run-id, or none to join the scheduler's run of the same work)")


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
    """Names this process among the workers of one run (host and pid; the name its file records carry)."""
    return THIS_PROCESS
