"""What the commands' options share: the help's layout and texts, the defaults the settings give, and
the options several commands take (the signers, AMSHOME) with how they are resolved.

Every command imports this module, ``mirror`` too: what only the offline commands need (signatures, 7z,
placement) is imported in the functions that use it, so that a mirror run does not load it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

import luigi

from amsrepomirror import config
from amsrepomirror.cli.output import print_stderr
from amsrepomirror.errors import MirrorError, UsageError

if TYPE_CHECKING:
    from amsrepomirror.bundle.trust import Trust

EXIT_CODES = """exit codes:
  0    done
  1    runtime failure (network, server, a file that could not be fetched)
  2    usage: a bad option, setting, folder or listing URL; nothing was changed
  3    authentication: the server refused the SCM account, or its TLS certificate failed
  4    integrity: a checksum, size or archive does not match
  5    not enough disk space
  75   another run holds the lock of this mirror or AMSHOME: nothing was done; retry later
  130  interrupted (Ctrl-C): run the same command again to continue
  143  terminated (SIGTERM): run the same command again to continue"""

ACCOUNT = """SCM account (never on the command line), the first found:
  SCM_USER and SCM_PASSWORD   both in the environment
  ~/.netrc                    machine downloads.scm.com login USER password PASS  (chmod 600)
  a prompt                    when run on a terminal

A private CA: name its certificate in REQUESTS_CA_BUNDLE or SSL_CERT_FILE.
Settings (defaults of the options below): amsrepomirror config shows each and the file it came from."""


#: Why words a command could not place are not repeated: one may be the account, given where SCM's script takes it.
ACCOUNT_NOT_HERE = ("the SCM account is never given on the command line, where the process list shows it: set "
                    "SCM_USER and SCM_PASSWORD in the environment, put it in ~/.netrc (machine downloads.scm.com login "
                    "USER password PASS), or answer the prompt")

class AdminHelp(argparse.RawDescriptionHelpFormatter):
    """Help for admins: every option says its default (a flag: off), epilogs printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.required or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default not in (None, []):
            return f"{text} (default: %(default)s)"
        return text


def add_command(sub, name: str, purpose: str, epilog: str = EXIT_CODES) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=purpose, description=purpose[0].upper() + purpose[1:] + ".", epilog=epilog,
                          formatter_class=AdminHelp)


def setting_default(section: str, key: str) -> str:
    """'default: VALUE, the [SECTION] key setting' for an option's help (the value in effect now)."""
    config.install_defaults()
    value = luigi.configuration.get_config().get(section, key, "", raw=True)  # a bad % is refused later, in one line
    return f"default: {value or 'none'}, the [{section}] {key} setting"


def option_or_setting(given, section: str, key: str) -> str:
    """A command-line value, else the effective setting (shipped defaults under every settings file)."""
    if given is not None:
        return str(given)
    return luigi.configuration.get_config().get(section, key)


def add_luigi_summary_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--luigi-summary", action="store_true",
                   help="print Luigi's execution summary (tasks run, done, failed) on stderr after the run; "
                   "it is in the run's log in any case")


def add_signer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allowed-signers", type=Path, metavar="FILE",
                   help="OpenSSH allowed_signers file: require a signature of manifest.json by a key in it "
                        f"({setting_default('trust', 'allowed_signers')})")
    p.add_argument("--revoked-keys", type=Path, metavar="FILE",
                   help="OpenSSH revoked keys file (ssh-keygen -Y verify -r): refuse signatures by these keys "
                   f"({setting_default('trust', 'revoked_keys')})")


def site_trust(args) -> Trust:
    """The site's trust setting for this command (trust.resolve_trust), its notes said once."""
    from amsrepomirror.bundle.trust import resolve_trust  # here: see the module's docstring
    found = resolve_trust(args.allowed_signers, args.revoked_keys)
    for note in found.notes:
        print_stderr(note)
    return found


def refuse_settings_in_the_bundle(args) -> None:
    """verify's and unpack's check before the settings are loaded and checked: a settings file Luigi read
    from the bundle folder the command runs in is refused as planted (exit 4), before any of its values
    is used or reported (``format.refuse_settings_read_from``; run() says why a folder is no bundle)."""
    from amsrepomirror.bundle.format import refuse_settings_read_from  # here: see the module's docstring
    from amsrepomirror.bundle.verify import not_a_bundle  # here: see the module's docstring
    if not getattr(args, "installed", False) and args.bundle is not None and not not_a_bundle(args.bundle):
        refuse_settings_read_from(args.bundle)


def amshome_of(args) -> Path:
    """--amshome, else $AMSHOME from the environment (said on stderr, so the admin sees which)."""
    from amsrepomirror.offline import placement  # here: see the module's docstring
    if args.amshome is not None:
        placement.refuse_repository_folder(args.amshome)  # before a log or lock is written there
        return args.amshome
    from_environment = os.environ.get("AMSHOME", "")
    if not from_environment:
        raise UsageError("give --amshome DIR or set AMSHOME: the AMS installation folder whose repository/ to fill")
    print_stderr(f"{args.command}: AMSHOME {from_environment} (from the environment; --amshome overrides it)")
    placement.refuse_repository_folder(from_environment)
    return Path(from_environment)


def installed_facts(home: Path) -> dict | None:
    """What AMSHOME's repository holds now, as its receipt says, for --report (None: no receipt; a receipt
    that cannot be read is said as its problem, never raised: the command's own outcome is what counts)."""
    from amsrepomirror.bundle.receipt import receipt_tree, receipt_version_paths  # here: see the module's docstring
    from amsrepomirror.offline import placement  # here: see the module's docstring
    try:
        receipt = placement.read_receipt(home)
        if receipt is None:
            return None
        where = home / placement.RECEIPT
        held = receipt_version_paths(receipt, where, receipt_tree(receipt, where)) if "tree_sha256" in receipt else None
    except (MirrorError, OSError) as exc:
        return {"problem": str(exc)}
    facts = {key: receipt.get(key) for key in ("version", "tree_sha256", "files", "bytes", "bundle_path",
                                               "bundle_created", "bundle_sequence")}
    return {**facts, "unpacked": receipt.get("installed"), "versions": sorted(held) if held else [receipt.get("version")]}


def folder_path(text: str) -> Path:
    """A folder option's value: never empty (an unset shell variable would make it the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("empty (an unset variable?): name the folder")
    return Path(text)
