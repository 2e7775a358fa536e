"""pytest plugin the mutation runner (.ci/mutants.py) loads with ``-p mutants_probe``.

It writes, to the file named by $MUTANTS_PROBE_OUT, which tests were collected, which passed,
failed or were skipped, and which file ``amsrepomirror`` was imported from: so the runner knows
that the tests ran against its copy of the tree, never against the checkout, and which tests of
a subset fail before anything is mutated.
"""

import json
import os
import sys

_collected = []
_passed = set()
_failed = set()
_skipped = set()


def pytest_collection_finish(session):
    _collected.extend(item.nodeid for item in session.items)


def pytest_runtest_logreport(report):
    if report.failed:
        _failed.add(report.nodeid)
    elif report.skipped:
        _skipped.add(report.nodeid)
    elif report.when == "call":
        _passed.add(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("MUTANTS_PROBE_OUT")
    if not out:
        return
    module = sys.modules.get("amsrepomirror")
    imported = getattr(module, "__file__", None)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"amsrepomirror": os.path.realpath(imported) if imported else None,
                   "collected": _collected, "passed": sorted(_passed - _failed), "failed": sorted(_failed),
                   "skipped": sorted(_skipped - _failed - _passed)}, f)
