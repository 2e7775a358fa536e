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


_selected = {}


def pytest_collection_finish(session):
    _collected.extend(item.nodeid for item in session.items)
    spec = os.environ.get("MUTANTS_PROBE_SELECT")
    if spec:  # several entries' subsets out of one collection: {entry: [test paths, -k expression]}
        try:
            _selected.update(_select(session.items, spec))
        except Exception as exc:  # pytest's matchers moved: the runner collects each entry on its own
            _selected["\0error"] = repr(exc)


def _select(items, spec):
    from _pytest.mark import KeywordMatcher  # what -k itself uses: the same verdicts
    from _pytest.mark.expression import Expression

    with open(spec, encoding="utf-8") as f:
        wanted = json.load(f)
    chosen = {}
    for entry, (paths, keyword) in wanted.items():
        expression = Expression.compile(keyword) if keyword else None
        chosen[entry] = [item.nodeid for item in items if any(_under(item.nodeid, p) for p in paths)
                         and (expression is None or expression.evaluate(KeywordMatcher.from_item(item)))]
    return chosen


def _under(nodeid, path):
    """Whether the test ``nodeid`` is one that the argument ``path`` (a folder, file or node id) collects."""
    return (path == "." or nodeid == path or nodeid.startswith(path + "::") or nodeid.startswith(path + "[")
            or nodeid.startswith(path.rstrip("/") + "/"))


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
                   "collected": _collected, "selected": _selected, "passed": sorted(_passed - _failed), "failed": sorted(_failed),
                   "skipped": sorted(_skipped - _failed - _passed)}, f)
