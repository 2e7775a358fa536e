"""The floors under the tool's time per file: ``python -m bench.floor LISTING-URL {head,get}`` and
``python -m bench.floor luigi COUNT``.

HTTP: sends the requests a mirror run sends for each listed file, and nothing else: ``head`` a HEAD per
file (what a no-op rerun asks), ``get`` a GET of its first 64 KiB (what a first run's probe asks,
``[http] first_bytes``), read and dropped. One after another on one keep-alive connection of
urllib3, the library requests and the tool's probes use, as ``wget`` sends them; no checking, no
writing, no Luigi. Its time is what any Python tool on this HTTP stack needs for the requests
alone, so ``floor ÷ wget`` bounds from below what ``ours ÷ wget`` can reach in this design.

Luigi (``luigi COUNT``): the graph of a first run with nothing in it: a task that is done (the
listing), a task that requires it and yields COUNT tasks as dynamic dependencies (VerifyTree), each
requiring the done one and named by two parameters, batched as DownloadFile is (16 batches) and
doing nothing; the local scheduler, as a run on one machine. Its time is Luigi's own share of the
plan and download phases of a first run of COUNT files, with the one-task-per-file shape kept.

Prints what it did and its seconds (the interpreter's start-up not included).
"""

from __future__ import annotations

import functools
import sys
import time

import luigi
import urllib3

from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER

FIRST_BYTES = 64 * 1024


class Cached(luigi.Task):
    """Parameters listed once per class, as the tool's tasks do (tasks/base.py FolderTask.get_params)."""

    @classmethod
    @functools.cache
    def get_params(cls):
        return super().get_params()


class Listing(Cached):
    """Done before the run starts, as FetchListing is when the files are planned."""

    def complete(self):
        return True


class File(Cached):
    """One file, as DownloadFile: named by the run and its path, batched, requiring the listing."""

    run_id = luigi.Parameter()
    path = luigi.Parameter(batch_method="\n".join)
    done: set = set()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_batch_size = -(-Plan.count // 16)

    def requires(self):
        return Listing()

    def complete(self):
        return all(p in File.done for p in self.path.split("\n"))

    def run(self):
        File.done.update(self.path.split("\n"))


class Plan(Cached):
    """VerifyTree's shape: requires the listing, yields a task per file, then is done."""

    count = 0
    finished = False

    def requires(self):
        return Listing()

    def complete(self):
        return Plan.finished

    def run(self):
        yield [File(run_id="run", path=f"common/tiny/{n:06d}.dat") for n in range(Plan.count)]
        Plan.finished = True


def luigi_floor(count: int) -> int:
    Plan.count = count
    luigi.configuration.get_config().set("worker", "check_complete_on_run", "true")  # as the tool's defaults
    started = time.monotonic()
    ok = luigi.build([Plan()], local_scheduler=True, log_level="WARNING")
    if not ok or len(File.done) != count:
        print(f"floor: Luigi ran {len(File.done)} of {count} tasks", file=sys.stderr)
        return 1
    print(f"{count} tasks in {time.monotonic() - started:.3f} s", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "luigi":
        return luigi_floor(int(argv[1]))
    listing_url, mode = argv
    pool = urllib3.PoolManager(maxsize=1)
    headers = urllib3.make_headers(basic_auth=f"{DEMO_USER}:{DEMO_PASSWORD}", accept_encoding="identity")
    listing = pool.request("GET", listing_url, headers=headers)
    if listing.status != 200:
        print(f"floor: HTTP {listing.status} for the listing", file=sys.stderr)
        return 1
    urls = [line.strip() for line in listing.data.decode().splitlines() if line.strip()]
    ask = dict(headers, Range=f"bytes=0-{FIRST_BYTES - 1}") if mode == "get" else headers
    method = "GET" if mode == "get" else "HEAD"
    started, failed = time.monotonic(), 0
    for url in urls:
        resp = pool.request(method, url, headers=ask)
        failed += resp.status not in (200, 206, 401)  # the listing names one file the account may not have
    print(f"{len(urls)} requests in {time.monotonic() - started:.3f} s", flush=True)
    if failed:
        print(f"floor: {failed} request(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
