"""The SCM double's command line: serve a synthetic repository on loopback until told to stop.

Started as ``python -m amsrepomirror.testing.scmdouble`` (that module hands over to :func:`main`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from amsrepomirror.testing.repository import DEFAULT_BIG_SIZE, DEFAULT_VERSION, listing_path, make_repository
from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER, ScmDouble, fault_table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m amsrepomirror.testing.scmdouble",
        description="Serve a (synthetic) SCM package repository on loopback. The first line on "
        "stdout is the listing URL; runs until SIGINT/SIGTERM.",
        epilog="faults a test can switch on (ScmDouble methods; glob matches the path under /Downloads/packages/;\n"
        "RequestRecord.fault names the one that fired):\n" + fault_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", required=True, type=Path, help="folder holding Downloads/packages/")
    p.add_argument("--make", action="store_true", help="(re)generate the synthetic repository first")
    p.add_argument("--version", default=DEFAULT_VERSION)
    p.add_argument("--tiny", type=int, default=0, help="add N tiny files (with --make)")
    p.add_argument("--big-size", type=int, default=DEFAULT_BIG_SIZE, help="size of the big file (with --make)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--user", default=DEMO_USER)
    p.add_argument("--password-env", metavar="VAR",
                   help=f"read the password from environment variable VAR (default: {DEMO_PASSWORD!r})")
    p.add_argument("--unauthorized-prefix", action="append", default=None,
                   help="path prefix (relative to /Downloads/packages/) answering 401; repeatable "
                   "(default: licensed/)")
    p.add_argument("--verbose", action="store_true", help="log each request on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            print(f"scmdouble: environment variable {args.password_env} is not set", file=sys.stderr)
            return 2
    else:
        password = DEMO_PASSWORD
    if args.make:
        make_repository(args.root, args.version, tiny=args.tiny, big_size=args.big_size, seed=args.seed)
    elif not listing_path(args.root, args.version).is_file():
        print(f"scmdouble: no listing at {listing_path(args.root, args.version)} (use --make)", file=sys.stderr)
        return 2
    prefixes = tuple(args.unauthorized_prefix) if args.unauthorized_prefix is not None else ("licensed/",)
    double = ScmDouble(args.root, {args.user: password}, prefixes, args.host, args.port, verbose=args.verbose)
    serve_until_signalled(double, args.version, args.user)
    return 0


def serve_until_signalled(double: ScmDouble, version: str, user: str) -> None:
    """Print the listing URL (the first line on stdout, for whoever started us), serve until SIGINT/SIGTERM."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with double:
        print(double.listing_url(version), flush=True)
        print(f"scmdouble: serving {double.root} at {double.base_url} as user {user!r}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass

