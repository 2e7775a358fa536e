"""Running the Luigi task graph for a command: with a local scheduler or luigid's, its workers, and the
failures of this graph's tasks read back from the scheduler."""

import json
import multiprocessing
from pathlib import Path

import luigi
import luigi.worker

from amsrepomirror import config, errors
from amsrepomirror.cli.output import luigi_logging, print_stderr
from amsrepomirror.errors import UsageError
from amsrepomirror.tasks import shared_run


def run_graph(tasks: list[luigi.Task], *, workers: int = 1, log_file: Path | None = None, verbose: bool = False,
              scheduler_url: str | None = None, summary: bool = False) -> list[dict]:
    """Run tasks with the local scheduler, or the central one at ``scheduler_url``; return the
    failures (code, message) of this graph's failed tasks (not those of other runs the scheduler knows).
    Luigi's execution summary goes to the log, and with ``summary`` (--luigi-summary) to stderr too."""
    luigi_logging(log_file, verbose)
    # Shipped defaults for plain luigi runs; forced here so that no settings file can turn them off:
    # this command owns logging, and a task whose output is missing after a successful run() must
    # fail instead of being run again (no task may loop).
    settings = luigi.configuration.get_config()
    settings.set("core", "no_configure_logging", "true")
    settings.set("worker", "check_complete_on_run", "true")
    try:
        if scheduler_url:
            # Idle workers wait for the tasks other processes still run (JoinRun keeps one pending).
            with config.for_this_command({("worker", "keep_alive"): "true"}):
                result = luigi.build(tasks, scheduler_url=scheduler_url, workers=workers, detailed_summary=True)
        else:
            result = luigi.build(tasks, local_scheduler=True, workers=workers, detailed_summary=True)
    except BaseException:  # Ctrl-C, SIGTERM: no task process may outlive the command (nor keep its lock)
        _end_task_processes()
        raise
    if summary:
        print_stderr(result.summary_text.strip())
    failures = _failures_of(result.worker)
    if not failures and not result.scheduling_succeeded:
        failures.append({"code": errors.RUNTIME_FAILURE,
                         "message": f"the task graph did not complete ({result.status.name}); see {log_file or 'the log'}"})
    return failures


def _end_task_processes(wait: float = 10.0) -> None:
    """End the task processes Luigi forked (``workers`` > 1) and wait for them: Luigi's worker sends them
    SIGTERM as it stops but does not wait, and each holds a copy of the command's descriptors."""
    running = [p for p in multiprocessing.active_children() if isinstance(p, luigi.worker.TaskProcess)]
    for process in running:
        if process.is_alive():
            process.terminate()
    for process in running:
        process.join(wait)
        if process.is_alive():
            process.kill()
            process.join(wait)


def _failures_of(worker) -> list[dict]:
    """The failures (code, message) of the tasks ``worker`` scheduled that failed or were given up."""
    scheduler, ours = worker._scheduler, set(worker._scheduled_tasks)
    failures = []
    failed = {**scheduler.task_list("FAILED", "", limit=False), **scheduler.task_list("DISABLED", "", limit=False)}
    # In the order they failed, so that most_severe_failure() breaks ties as the run went.
    for task_id in sorted(set(failed) & ours, key=lambda t: (failed[t].get("last_updated") or 0, t)):
        expl = scheduler.fetch_error(task_id).get("error") or ""
        try:
            failure = json.loads(expl)
            failures.append(json.loads(failure) if isinstance(failure, str) else failure)  # luigi may encode it twice
        except ValueError:
            last_line = expl.strip().splitlines()[-1] if expl.strip() else (
                f"{failed[task_id].get('name', task_id)} was given up: the process running it stopped or lost the "
                "scheduler (killed, host down); run the command again")
            failures.append({"code": errors.RUNTIME_FAILURE, "message": last_line})
    return failures


def use_scheduler(args) -> None:
    """Settle args.scheduler_url (None: a local scheduler) and check that a central one answers."""
    args.scheduler_url = shared_run.configured_url(args.scheduler_url, args.local_scheduler)
    if args.scheduler_url:
        shared_run.check_reachable(args.scheduler_url)
    elif args.run_id is not None:
        raise UsageError("--run-id goes with a central scheduler (--scheduler-url or [core] default-scheduler-url)")
