"""The declared dependency range holds what the code relies on.

amsrepomirror uses a few private parts of Luigi and py7zr; pyproject.toml bounds both ranges to the
versions tested. These tests fail with one message naming what is gone, so that raising a bound
(or a floor, in .ci/run's floors step) is caught at once instead of as odd failures elsewhere.
"""

import io
import re
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata

import luigi
import luigi.retcodes
import py7zr
import tomllib
from clihelp import REPO

from amsrepomirror import config
from amsrepomirror.pack.sevenzip import MEMBER_TIME, _FixedTimeSevenZipFile
from amsrepomirror.pack.tool import SUPPORTED_PYTHONS

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _missing(owner, names: list[str]) -> list[str]:
    return [name for name in names if not hasattr(owner, name)]


class _Done(luigi.Task):
    """A task with nothing to do: enough for luigi.build to hand back its worker."""

    def complete(self) -> bool:
        return True


def test_luigi_still_has_the_private_parts_amsrepomirror_uses():
    """cli/runner.py reads the failures of its own tasks from the worker's scheduler; tasks/base.py sets a plain
    luigi run's exit code on the one retcode() instance that luigi.retcodes reads (Luigi's instance cache). A luigi
    release without them must fail here, with one message."""
    with config.for_this_command({("core", "no_configure_logging"): "true"}):  # this test process keeps its logging
        result = luigi.build([_Done()], local_scheduler=True, detailed_summary=True)
    worker = result.worker
    gone = [f"worker.{n}" for n in _missing(worker, ["_scheduler", "_scheduled_tasks"])]
    if not gone:
        gone += [f"scheduler.{n}" for n in _missing(worker._scheduler, ["task_list", "fetch_error"])]
    if luigi.retcodes.retcode() is not luigi.retcodes.retcode():
        gone.append("one cached luigi.retcodes.retcode() instance")
    assert not gone, (f"luigi {metadata.version('luigi')} lacks {', '.join(gone)}, which amsrepomirror uses "
                      "(pipeline/cli/runner.py, pipeline/tasks/base.py): keep the luigi bound in pyproject.toml below this "
                      "version, or change that code")
    assert _Done().task_id in worker._scheduled_tasks


def test_py7zr_still_stamps_members_through_the_method_sevenzip_overrides():
    """pack/sevenzip.py fixes member times by overriding py7zr's private _make_file_info_from_name: if py7zr
    stops calling it, chunks silently carry the clock again (and are no longer byte-identical)."""
    assert hasattr(py7zr.SevenZipFile, "_make_file_info_from_name"), (
        f"py7zr {py7zr.__version__} lacks SevenZipFile._make_file_info_from_name, which pack/sevenzip.py overrides: "
        "keep the py7zr bound in pyproject.toml below this version, or change that code")
    written = []
    for _ in range(2):
        buf = io.BytesIO()
        with _FixedTimeSevenZipFile(buf, "w", filters=[{"id": py7zr.FILTER_COPY}]) as archive:
            archive.writef(io.BytesIO(b"payload"), "a/member.bin")
        written.append(buf.getvalue())
    assert written[0] == written[1], f"py7zr {py7zr.__version__}: the same member written twice is other bytes"
    with py7zr.SevenZipFile(io.BytesIO(written[0]), "r") as archive:
        [member] = archive.list()
    assert member.creationtime == datetime(1980, 1, 1, tzinfo=timezone.utc)
    assert MEMBER_TIME.totimestamp() == 315532800


def test_every_dependency_declares_a_floor_and_the_luigi_and_py7zr_ranges_are_bounded():
    """.ci/run installs each floor (.ci/floors.py); the two libraries whose private parts are used have an
    upper bound too."""
    floors = subprocess.run([sys.executable, str(REPO / ".ci" / "floors.py"), str(REPO / "pyproject.toml")],
                            capture_output=True, text=True, check=True).stdout.split()
    declared = PYPROJECT["project"]["dependencies"]
    assert [pin.split("==")[0] for pin in floors] == [re.match(r"[A-Za-z0-9._-]+", d).group(0) for d in declared]
    for name in ("luigi", "py7zr"):
        [spec] = [d for d in declared if d.startswith(name + ">=")]
        assert ",<" in spec, f"{name}: its private parts are used, so its range needs an upper bound ({spec})"


def test_floors_script_refuses_a_dependency_without_a_minimum(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["luigi>=3.5,<3.9", "requests"]\n')
    done = subprocess.run([sys.executable, str(REPO / ".ci" / "floors.py"), str(tmp_path / "pyproject.toml")],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {tmp_path / 'pyproject.toml'}: dependency 'requests' declares no minimum (name>=X.Y)"


def test_supported_pythons_are_what_requires_python_allows():
    """The tool/ wheels are built for these Pythons, and install.sh looks for them: the same range as pip's."""
    assert PYPROJECT["project"]["requires-python"] == f">={SUPPORTED_PYTHONS[0]},<3.{int(SUPPORTED_PYTHONS[-1][2:]) + 1}"
    assert list(SUPPORTED_PYTHONS) == [f"3.{m}" for m in range(10, int(SUPPORTED_PYTHONS[-1][2:]) + 1)]
