"""``manifest.json.sig``: an OpenSSH signature (``ssh-keygen -Y``, namespace ``amsrepomirror``) of a
bundle's manifest.json. The manifest holds every chunk's and file's sha256, so one signature covers
the whole bundle, and any admin can check it by hand with ``ssh-keygen -Y verify``.

The signing key never leaves ssh-keygen: we pass its path, never its bytes or a passphrase; a
passphrase-protected key prompts on the terminal, or is used through ssh-agent (SSH_AUTH_SOCK).

Checking uses ssh-keygen where it has ``-Y find-principals`` (OpenSSH 8.2 or later), else the same
checks in Python (bundle.sshsig); ``[unpack] signature_verifier`` can force either.
"""

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from amsrepomirror.bundle import sshsig
from amsrepomirror.bundle.format import FINGERPRINT_PATTERN as FINGERPRINT
from amsrepomirror.bundle.format import MANIFEST_NAME
from amsrepomirror.errors import MirrorError, UsageError
from amsrepomirror.util.fsutil import atomic_write_bytes, read_bounded

NAMESPACE = "amsrepomirror"
SIGNATURE_NAME = MANIFEST_NAME + ".sig"
SIGNATURE_LIMIT = 64 * 1024  # bytes: an armored SSH signature is a few hundred, an RSA-16384 one 4 KB
KEY_FILE_LIMIT = 4 * 1024 * 1024  # bytes of an allowed_signers or revoked keys file (a KRL of many keys too)
#: Signing may wait for a passphrase typed at the terminal; checking never waits for anyone.
SIGN_TIMEOUT = 3600
CHECK_TIMEOUT = 120
_FINGERPRINT = re.compile(r"with (\S+) key (SHA256:[A-Za-z0-9+/=]+)")
VERIFIERS = ("auto", "ssh-keygen", "python")
CHECKED_BY = {"ssh-keygen": "checked with ssh-keygen",
              "python": "checked with the built-in SSHSIG verifier"}


@dataclass(frozen=True)
class SignatureCheck:
    """What a bundle's signature says: the key, and (with allowed signers) who it is and whether allowed."""
    key_type: str = ""
    fingerprint: str = ""
    principal: str = ""  # from allowed_signers; empty when none was given or the key is not in it
    allowed: bool | None = None  # None: not checked against allowed signers
    problem: str = ""  # why the signature does not hold, when it does not
    verifier: str = ""  # which checked it: ssh-keygen or python

    def describe(self) -> str:
        checked = f"; {CHECKED_BY[self.verifier]}" if self.verifier else ""
        if self.problem:
            return f"signature: BAD ({self.problem}){checked}"
        key = f"{self.key_type} key {self.fingerprint}"
        if self.allowed is None:
            return f"signature: good, by {key} (not checked against allowed signers){checked}"
        return f"signature: good, by {self.principal} ({key}), allowed{checked}"


@functools.cache
def keygen_can_verify() -> bool:
    """Whether this ssh-keygen has ``-Y find-principals`` (OpenSSH 8.2 or later): its usage text says so."""
    tool = shutil.which("ssh-keygen")
    if tool is None:
        return False
    try:
        usage = subprocess.run([tool, "-?"], capture_output=True, timeout=CHECK_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"find-principals" in usage.stdout + usage.stderr


def choose_verifier(setting: str = "auto") -> str:
    """ssh-keygen or python, from the ``signature_verifier`` setting (auto: ssh-keygen when new enough)."""
    if setting not in VERIFIERS:
        raise UsageError(f"signature_verifier = {setting!r}: use one of {', '.join(VERIFIERS)}")
    if setting == "auto":
        return "ssh-keygen" if keygen_can_verify() else "python"
    if setting == "ssh-keygen" and not keygen_can_verify():
        raise UsageError("[unpack] signature_verifier = ssh-keygen, but this ssh-keygen has no -Y find-principals "
                         "(it needs OpenSSH 8.2 or later): set auto or python")
    return setting


def _ssh_keygen(args: list[str], *, message: bytes, timeout: int) -> subprocess.CompletedProcess:
    """ssh-keygen -Y ``args``, the message to sign or check (manifest.json's bytes) on its stdin."""
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise MirrorError("ssh-keygen was not found: install OpenSSH (Debian: openssh-client) to sign or check "
                          "bundle signatures")
    try:
        return subprocess.run([tool, "-Y", *args], input=message, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MirrorError(f"ssh-keygen -Y {args[0]} did not finish within {timeout} s") from None


def _last_line(output: bytes) -> str:
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else "no message"


def sign_manifest(bundle_dir: Path, key: Path) -> None:
    """Write ``manifest.json.sig`` beside manifest.json, signed with the OpenSSH key ``key``."""
    bundle_dir = Path(bundle_dir)
    if not Path(key).is_file():
        raise UsageError(f"signing key {key} does not exist")
    done = _ssh_keygen(["sign", "-n", NAMESPACE, "-f", str(key)], message=(bundle_dir / MANIFEST_NAME).read_bytes(),
                       timeout=SIGN_TIMEOUT)
    if done.returncode != 0 or b"BEGIN SSH SIGNATURE" not in done.stdout:
        raise MirrorError(f"signing {MANIFEST_NAME} with {key} failed: {_last_line(done.stderr)}")
    atomic_write_bytes(bundle_dir / SIGNATURE_NAME, done.stdout)


def key_fingerprint(key: Path) -> str:
    """The SHA256 fingerprint of the signing key ``key`` (``ssh-keygen -l``: from ``key.pub`` when it is there, else
    the public half a private key file holds; no passphrase is asked), for the manifest's ``signer``."""
    if not Path(key).is_file():
        raise UsageError(f"signing key {key} does not exist")
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise MirrorError("ssh-keygen was not found: install OpenSSH (Debian: openssh-client) to sign bundles")
    try:
        done = subprocess.run([tool, "-l", "-E", "sha256", "-f", str(key)], capture_output=True, timeout=CHECK_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MirrorError(f"ssh-keygen -l did not finish within {CHECK_TIMEOUT} s") from None
    found = FINGERPRINT.search(done.stdout.decode("utf-8", "replace"))
    if done.returncode != 0 or found is None:
        raise MirrorError(f"cannot read the fingerprint of signing key {key}: {_last_line(done.stderr)}")
    return found.group(0)


def drop_signature(bundle_dir: Path) -> None:
    """Remove a signature left from an earlier bundle in this folder (it signs another manifest)."""
    (Path(bundle_dir) / SIGNATURE_NAME).unlink(missing_ok=True)


def is_signed(bundle_dir: Path) -> bool:
    return (Path(bundle_dir) / SIGNATURE_NAME).is_file()


def check_signature(bundle_dir: Path, allowed_signers: Path | None = None, revoked_keys: Path | None = None,
                    verifier: str = "auto", *, manifest: bytes | None) -> SignatureCheck | None:
    """The one gate of what a signature check accepts. Check ``manifest.json.sig`` against ``manifest``,
    the bundle's manifest.json as the caller read it (None: there was none); None when the bundle is
    unsigned. A caller that goes on to use the manifest uses these bytes: the file may hold others by
    its next read. manifest.json.sig, allowed_signers and the revoked keys are read once too: every
    check (ssh-keygen's, the built-in one, the touch check) is of those bytes.

    Without ``allowed_signers`` only the signature itself (and its namespace) is checked, which
    names the key but proves nothing about who made it; with it, the key must be listed there
    (and not in ``revoked_keys``). An allowed_signers or revoked keys file that the two checkers
    could read differently is refused on both (sshsig.allowed_signers_lines). ``verifier``: the
    [unpack] signature_verifier setting.
    """
    bundle_dir = Path(bundle_dir)
    signature = bundle_dir / SIGNATURE_NAME
    if not os.path.lexists(signature):  # anything else by that name is read below, and refused if no file
        return None
    for given in (allowed_signers, revoked_keys):
        if given is not None and not Path(given).is_file():
            raise UsageError(f"{given} {'is not a regular file' if os.path.lexists(given) else 'does not exist'} "
                             "(an OpenSSH allowed_signers or revoked keys file)")
    if manifest is None:
        return SignatureCheck(problem=f"{MANIFEST_NAME} is missing")
    used = choose_verifier(verifier)
    refused = SignatureCheck(allowed=None if allowed_signers is None else False, verifier=used)
    try:
        armored = read_bounded(signature, SIGNATURE_LIMIT)
    except OSError as e:
        return dataclasses.replace(refused, problem=f"{SIGNATURE_NAME} cannot be read: {e.strerror or e}")
    try:
        trust = _read_trust_files(allowed_signers, revoked_keys)
    except (OSError, sshsig.SshsigError) as e:
        return dataclasses.replace(refused, problem=f"allowed signers or revoked keys refused (every checker must "
                                                    f"read them alike): {e}")
    check = (_check_with_keygen if used == "ssh-keygen" else _check_in_python)(armored, manifest, trust)
    return dataclasses.replace(check, verifier=used)


@dataclass(frozen=True)
class _KeyFile:
    """An allowed_signers or revoked keys file as read once: its name (for messages), bytes and lines."""
    path: Path
    data: bytes
    lines: list


@dataclass(frozen=True)
class _Trust:
    allowed: _KeyFile | None = None
    revoked: _KeyFile | None = None


def _read_trust_files(allowed_signers: Path | None, revoked_keys: Path | None) -> _Trust:
    """Both files, read once and bounded; sshsig.SshsigError for a line OpenSSH and Python could read
    differently (a binary KRL is passed on whole: ssh-keygen reads it, the built-in checker refuses it)."""
    allowed = revoked = None
    if allowed_signers is not None:
        data = read_bounded(Path(allowed_signers), KEY_FILE_LIMIT)
        allowed = _KeyFile(Path(allowed_signers), data, sshsig.allowed_signers_lines(data, str(allowed_signers)))
    if revoked_keys is not None:
        data = read_bounded(Path(revoked_keys), KEY_FILE_LIMIT)
        lines = [] if data.startswith(sshsig.KRL_MAGIC) else sshsig.key_file_lines(data, str(revoked_keys))
        revoked = _KeyFile(Path(revoked_keys), data, lines)
    return _Trust(allowed, revoked)


@contextlib.contextmanager
def _private_copies(files: dict):
    """Each of ``files`` (name: bytes) in a temporary folder only this user can enter, removed after:
    what ssh-keygen reads is exactly these bytes, whatever the bundle folder or /etc holds by then."""
    with tempfile.TemporaryDirectory(prefix="amsrepomirror-sig-") as folder:  # mode 0700
        paths = {}
        for name, data in files.items():
            paths[name] = Path(folder) / name
            with open(paths[name], "xb") as f:
                f.write(data)
        yield paths


def _check_with_keygen(armored: bytes, manifest: bytes, trust: _Trust) -> SignatureCheck:
    """ssh-keygen's verdict; a good one must also pass the one check ssh-keygen -Y leaves out (touch),
    on the same bytes."""
    files = {SIGNATURE_NAME: armored, **({"allowed_signers": trust.allowed.data} if trust.allowed else {}),
             **({"revoked_keys": trust.revoked.data} if trust.revoked else {})}
    with _private_copies(files) as copies:
        check = _keygen_verdict(copies, manifest, trust)
    if not check.problem:
        try:
            sshsig.require_user_presence(sshsig.parse_signature(armored))
        except sshsig.SshsigError as e:
            return SignatureCheck(principal=check.principal, allowed=None if check.allowed is None else False,
                                  problem=str(e))
    return check


def _keygen_verdict(copies: dict, manifest: bytes, trust: _Trust) -> SignatureCheck:
    signature = copies[SIGNATURE_NAME]
    if trust.allowed is None:
        done = _ssh_keygen(["check-novalidate", "-n", NAMESPACE, "-s", str(signature)], message=manifest,
                           timeout=CHECK_TIMEOUT)
        found = _FINGERPRINT.search(done.stdout.decode("utf-8", "replace"))
        if done.returncode != 0 or not found:
            return SignatureCheck(problem=f"it does not sign this {MANIFEST_NAME} in namespace {NAMESPACE}: "
                                          f"{_last_line(done.stderr)}")
        return SignatureCheck(key_type=found.group(1), fingerprint=found.group(2))
    allowed_signers = copies["allowed_signers"]
    found_principals = _ssh_keygen(["find-principals", "-s", str(signature), "-f", str(allowed_signers)],
                                   message=manifest, timeout=CHECK_TIMEOUT)
    # One principal a line: the list of the first line that holds the key, which has no empty entry
    # (allowed_signers_lines refuses those), so the lines joined are that list.
    printed = found_principals.stdout.decode("utf-8", "replace").split("\n")[:-1]
    if found_principals.returncode != 0 or not printed:
        return SignatureCheck(allowed=False, problem=f"its key is not in {trust.allowed.path}")
    principals = ",".join(printed)
    principal = first_principal(principals)
    if principal is None:
        return SignatureCheck(allowed=False, problem=_no_principal(principals, trust.allowed.path))
    args = ["verify", "-f", str(allowed_signers), "-I", principal, "-n", NAMESPACE, "-s", str(signature)]
    if trust.revoked is not None:
        args += ["-r", str(copies["revoked_keys"])]
    done = _ssh_keygen(args, message=manifest, timeout=CHECK_TIMEOUT)
    found = _FINGERPRINT.search(done.stdout.decode("utf-8", "replace"))
    if done.returncode != 0 or found is None:  # guard: signature-verdict-keygen
        said = _last_line(done.stderr or done.stdout).replace(str(allowed_signers), str(trust.allowed.path))
        if trust.revoked is not None:
            said = said.replace(str(copies["revoked_keys"]), str(trust.revoked.path))
        return SignatureCheck(principal=principal, allowed=False,
                              problem=f"it does not verify as {principal}'s signature of this {MANIFEST_NAME} in "
                                      f"namespace {NAMESPACE}: {said}")
    key_type, fingerprint = found.groups() if found else ("", "")
    return SignatureCheck(key_type=key_type, fingerprint=fingerprint, principal=principal, allowed=True)


def first_principal(principals: str) -> str | None:
    """The principal to verify as (``-I``), from the pattern list of the line that lists the key: its first
    entry that is not negated and that the whole list matches (``!bad,site`` is verified as site, never as
    ``!bad``); None when there is none (``!site`` alone allows nobody). Both checkers ask it."""
    return next((entry for entry in principals.split(",")
                 if entry and not entry.startswith("!") and sshsig.match_pattern_list(entry, principals) == 1), None)


def _no_principal(principals: str, allowed_signers: Path) -> str:
    return (f"the line of {allowed_signers} that lists its key names no principal to verify as "
            f"({principals[:60]!r}: only negated or unmatched patterns)")


def _check_in_python(armored: bytes, manifest: bytes, trust: _Trust) -> SignatureCheck:
    """What _check_with_keygen finds, in the same steps, with bundle.sshsig (no OpenSSH needed)."""
    try:
        parsed = sshsig.parse_signature(armored)
        sshsig.require_checkable(parsed.key)
    except sshsig.SshsigError as e:
        return SignatureCheck(allowed=None if trust.allowed is None else False,
                              problem=f"it does not sign this {MANIFEST_NAME} in namespace {NAMESPACE}: {e}")
    key = dict(key_type=parsed.key.label, fingerprint=parsed.key.fingerprint)
    if trust.allowed is None:
        try:
            sshsig.verify(parsed, manifest, NAMESPACE)
        except sshsig.SshsigError as e:
            return SignatureCheck(problem=f"it does not sign this {MANIFEST_NAME} in namespace {NAMESPACE}: {e}")
        return SignatureCheck(**key)
    name = str(trust.allowed.path)
    principals = sshsig.find_principals(trust.allowed.lines, parsed.key, name=name)
    if not principals:
        return SignatureCheck(allowed=False, problem=f"its key is not in {trust.allowed.path}")
    principal = first_principal(principals)
    if principal is None:
        return SignatureCheck(allowed=False, problem=_no_principal(principals, trust.allowed.path))
    try:
        sshsig.verify(parsed, manifest, NAMESPACE)
        if trust.revoked is not None:
            sshsig.check_not_revoked(trust.revoked.data, str(trust.revoked.path), parsed.key)
        sshsig.check_allowed(trust.allowed.lines, parsed.key, principal, NAMESPACE, name=name)
    except sshsig.SshsigError as e:
        return SignatureCheck(principal=principal, allowed=False,
                              problem=f"it does not verify as {principal}'s signature of this {MANIFEST_NAME} in "
                                      f"namespace {NAMESPACE}: {e}")
    return SignatureCheck(**key, principal=principal, allowed=True)
