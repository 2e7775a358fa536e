"""docs/scheduling.md's systemd units and cron entries are what they claim: systemd-analyze accepts the units
without a word, and the units and cron run the job script the page installs, with the settings it reads. (The
script itself runs against the SCM double in tests/test_docs.py.)"""

import re
import subprocess

from clihelp import REPO
from servers import require_tool
from test_docs import fenced_blocks, runnable_blocks

PAGE = REPO / "docs" / "scheduling.md"
SCRIPT = "/usr/local/sbin/amsrepomirror-monthly"


def installed_files(prefix: str) -> dict[str, str]:
    """{path: content} of the page's blocks whose first line is ``# PATH`` under ``prefix``."""
    found = {}
    for _, _, body in fenced_blocks(PAGE.read_text(encoding="utf-8")):
        first = body.split("\n", 1)[0]
        if first.startswith(f"# {prefix}"):
            found[first[2:]] = body
    return found


def test_systemd_accepts_the_service_and_its_timer(tmp_path):
    analyze = require_tool("systemd-analyze")
    units = installed_files("/etc/systemd/system/")
    assert sorted(units) == ["/etc/systemd/system/amsrepomirror-monthly.service",
                             "/etc/systemd/system/amsrepomirror-monthly.timer"]
    script = tmp_path / "amsrepomirror-monthly"  # systemd-analyze checks that ExecStart's program can be run
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    for path, body in units.items():
        (tmp_path / path.rsplit("/", 1)[1]).write_text(body.replace(SCRIPT, str(script)))
    service = units["/etc/systemd/system/amsrepomirror-monthly.service"]
    assert f"ExecStart={SCRIPT}\n" in service and "Type=oneshot\n" in service
    assert not re.search(r"PASSWORD|SuccessExitStatus|Restart=", service)  # the account: EnvironmentFile only
    checked = subprocess.run([analyze, "verify", "--man=no", *sorted(p.name for p in tmp_path.glob("*.*"))],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (checked.returncode, checked.stderr, checked.stdout) == (0, "", "")


def test_cron_and_systemd_run_the_script_with_the_settings_it_reads():
    script = next(body for _, body in runnable_blocks(PAGE) if "cat > amsrepomirror-monthly" in body)
    reads = set(re.findall(r"^(\w+)=\$\{\1:-", script, re.MULTILINE))
    assert {"MIRROR", "BUNDLES", "REPORTS", "SINCE", "VERSION"} <= reads
    service = installed_files("/etc/systemd/system/")["/etc/systemd/system/amsrepomirror-monthly.service"]
    given = set(re.findall(r"\b([A-Z_]+)=", " ".join(re.findall(r"^Environment=(.*)$", service, re.MULTILINE))))
    assert given - {"PATH"} <= reads
    cron = installed_files("/etc/cron.d/")
    entries = [line.split() for body in cron.values() for line in body.splitlines()
               if line and not line.startswith("#") and not re.match(r"[A-Z]+=", line)]
    assert [e[6] for e in entries] == ["amsrepomirror-monthly", "/opt/amsrepomirror/bin/amsrepomirror"]
    assert all(len(e) >= 7 and e[5] not in ("root",) for e in entries)  # minute hour day month weekday user command
    assert "--quiet" in entries[1]
    assert "/usr/local/sbin" in cron["/etc/cron.d/amsrepomirror"]  # where the script is installed is on cron's PATH
