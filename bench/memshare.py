"""Whose memory a mirror run holds at its peak: Luigi's, ours, or the rest (``python -m bench.memshare URL DEST``).

Runs ``amsrepomirror mirror`` in this process under ``tracemalloc`` and takes a snapshot as VerifyTree
starts writing the manifest: every DownloadFile task exists then (in Luigi's scheduler and worker) and
so does every file's snapshot entry and record. Each allocation still alive is charged to the innermost
frame that is Luigi's or ours (an allocation made by ``json`` for our snapshot is ours; a task instance
made by Luigi's ``Register`` on our ``clone`` is Luigi's). Prints one JSON object: bytes per class.
"""

from __future__ import annotations

import json
import sys
import tracemalloc

FRAMES = 12  # deep enough to reach a Luigi or amsrepomirror frame from inside json, pathlib, email
LUIGI, OURS = ("/luigi/",), ("/pipeline/", "/amsrepomirror/")


def owner(traceback: tracemalloc.Traceback) -> str:
    for frame in reversed(traceback):  # innermost first
        if any(part in frame.filename for part in LUIGI):
            return "luigi"
        if any(part in frame.filename for part in OURS):
            return "ours"
    return "other"


def shares(argv) -> dict[str, int]:
    """Run the CLI with ``argv``; bytes alive at the manifest step, by owner."""
    from amsrepomirror import cli
    from amsrepomirror.online import sync

    taken = {}
    build_manifest = sync.build_manifest

    def snapshot_then_build(*args, **kwargs):
        taken["snapshot"] = tracemalloc.take_snapshot()
        return build_manifest(*args, **kwargs)

    tracemalloc.start(FRAMES)
    sync.build_manifest = snapshot_then_build
    try:
        code = cli.main(argv)
    finally:
        sync.build_manifest = build_manifest
        tracemalloc.stop()
    if code != 0 or "snapshot" not in taken:
        raise SystemExit(f"the mirror run failed (exit {code})")
    totals = {"luigi": 0, "ours": 0, "other": 0}
    for stat in taken["snapshot"].statistics("traceback"):
        totals[owner(stat.traceback)] += stat.size
    return totals


def main() -> int:
    url, dest = sys.argv[1:3]
    totals = shares(["mirror", "--version", sys.argv[3] if len(sys.argv) > 3 else "AMS2026.1", "--mirror", dest,
                     "--listing-url", url])
    print(json.dumps(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
