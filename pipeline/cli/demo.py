"""``amsrepomirror demo``: the whole chain (bundle, verify, unpack) against a local SCM double serving a
synthetic repository, in a temporary folder. The only command that uses the double (test material)."""

import os
import shlex
import shutil
import tempfile
from pathlib import Path

from amsrepomirror.cli.options import add_command
from amsrepomirror.cli.output import print_stderr
from amsrepomirror.errors import UsageError


def add_parser(sub) -> None:
    p = add_command(sub, "demo", "the whole chain against a local SCM double, in a temporary folder")
    p.add_argument("--workdir", type=Path, help="where to put the demo (default: a new temporary folder)")
    p.add_argument("--port", type=int, default=0, help="port of the local SCM double (default: 0, any free port)")
    kept = p.add_mutually_exclusive_group()
    kept.add_argument("--keep", dest="clean", action="store_false", help="keep what the demo made (default)")
    kept.add_argument("--clean", dest="clean", action="store_true", help="remove what the demo made when it succeeds "
                      "(default: off)")
    p.set_defaults(func=run, clean=False)


def run(args) -> int:
    """Mirror, bundle, verify and unpack the SCM double's synthetic repository, end to end."""

    # Imported here: the bundle format loads the settings, and building the parser must not.
    from amsrepomirror.bundle.format import REPORT_HTML_NAME  # likewise

    # Imported here: main() builds the parser, which imports this module to add the demo command.
    from amsrepomirror.cli import main

    # Imported here: the SCM double is test and demo material, not part of a production run.
    from amsrepomirror.testing.repository import DEFAULT_VERSION, make_repository
    from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER, ScmDouble  # likewise

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="amsrepomirror-demo-"))).absolute()
    server_root, mirror_dir, bundle_dir, amshome = work / "scm", work / "mirror", work / "bundle", work / "amshome"
    if not server_root.exists():
        make_repository(server_root, DEFAULT_VERSION)
    amshome.mkdir(parents=True, exist_ok=True)
    os.environ["SCM_USER"], os.environ["SCM_PASSWORD"] = DEMO_USER, DEMO_PASSWORD  # the double's public demo account
    double = ScmDouble(server_root, port=args.port)
    try:
        double.start()
    except OSError as exc:
        raise UsageError(f"demo: cannot serve on port {args.port} ({exc.strerror}): choose another --port, "
                         "or --port 0 for any free one") from None
    try:
        print_stderr(f"demo: SCM double serving {server_root} at {double.base_url} (user {DEMO_USER})")
        steps = [
            ["bundle", "--version", DEFAULT_VERSION, "--mirror", mirror_dir, "--listing-url", double.listing_url(DEFAULT_VERSION),
             "--out", bundle_dir, "--chunk-size", "1MiB"],
            ["verify", bundle_dir, "--transfer-report", work / "transfer-report-remade.json"],  # as the far side does
            ["unpack", bundle_dir, "--amshome", amshome],
        ]
        for step in steps:
            print_stderr(f"\n$ amsrepomirror {' '.join(map(str, step))}")
            code = main([str(s) for s in step] + (["--quiet"] if args.quiet else []))  # each step parses anew
            if code:
                print_stderr(f"demo: step failed with exit code {code}; what it left is in {work} (remove it with: "
                             f"rm -rf {shlex.quote(str(work))})")
                return code
    finally:
        double.stop()
    if args.clean:
        shutil.rmtree(work)
        print_stderr(f"\ndemo: done; removed {work} (--clean)")
        return 0
    print_stderr(f"\ndemo: everything is in {work}:\n  mirror  {mirror_dir}\n  bundle  {bundle_dir}\n"
                 f"  report  {bundle_dir / REPORT_HTML_NAME} (the transfer report; verify made it again in "
                 f"{work / 'transfer-report-remade.html'})\n"
                 f"  AMSHOME {amshome} (repository/ placed there)\nremove it with: rm -rf {shlex.quote(str(work))}")
    return 0

