"""``make bench`` / ``python -m bench.run [--only a,b] [--quick] [--out FILE] [--work DIR]``.

Runs the benchmarks, prints each figure as it is measured, and writes this run's section of
``docs/benchmarks.md`` (other sections of that file are kept). ``--quick`` and ``--only`` are
for smoke tests: they print but write the file only when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import mirror
from .common import ROOT, BenchError, cache_bytecode, load_average, machine_info, md_table, replace_section

DOC = ROOT / "docs" / "benchmarks.md"


def render(ctx: mirror.Context, info, scenarios: list[str], elapsed: float) -> str:
    lines = [mirror.DESCRIPTION.rstrip("\n"), ""]
    if ctx.quick:
        lines += ["**Quick run (`--quick`): reduced sizes, not the reference figures.**", ""]
    lines += [md_table(ctx.rows), ""]
    lines += ["Ratios are wget's time ÷ ours (above 1: ours is faster). PASS/FAIL compares with the "
              "targets of the issue; rows without a target are for reference.", ""]
    targets = [r for r in ctx.rows if r.result]
    if targets:
        lines += ["Targets:", ""]
        lines += [f"- {r.scenario}, {r.measure}: {r.target} → **{r.result}** (ours {r.ours}"
                  + (f", wget {r.peer}" if r.peer else "") + ")" for r in targets]
        lines.append("")
    for note in ctx.notes:
        lines.append(f"- {note}")
    if ctx.notes:
        lines.append("")
    lines += ["Machine and tools:", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- Load average at end (1/5/15 min): {load_average()}",
              f"- Scenarios run: {', '.join(scenarios)} ({elapsed / 60:.0f} min in all)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(mirror.SCENARIOS))
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    p.add_argument("--out", type=Path, help=f"results file (default {DOC.relative_to(ROOT)} for a full run)")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new folder under /tmp, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (trees are reused by --work)")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(mirror.SCENARIOS)
    unknown = [n for n in names if n not in mirror.SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(mirror.SCENARIOS)}")
    out = args.out or (None if (args.quick or args.only) else DOC)
    cache_bytecode()

    work = args.work or Path(tempfile.mkdtemp(prefix="amsrepomirror-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = mirror.Context(work=work, quick=args.quick)
    info = machine_info()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    started = time.monotonic()
    try:
        for name in names:
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            mirror.SCENARIOS[name](ctx)
            print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    body = render(ctx, info, names, time.monotonic() - started)
    print()
    print(md_table(ctx.rows))
    if out:
        replace_section(out, mirror.SECTION, body)
        print(f"\nwrote {out}")
    else:
        print("\n(not written: --quick/--only runs print only; pass --out FILE to write)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
