"""The site's one trust setting for bundle signatures, and the one verdict on a bundle's signature:
``verify``, ``unpack`` (and tool/install.sh, which runs verify) read the same settings the same way,
so a bundle that verifies is one that unpack accepts.

Settings, highest first: the command's ``--allowed-signers`` / ``--revoked-keys``, then ``[trust]``
(allowed_signers, revoked_keys, require_signature, signature_verifier), then the older ``[unpack]
allowed_signers`` and ``signature_verifier`` (still read, with a note to move them to ``[trust]``).
"""

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import luigi

from amsrepomirror import config
from amsrepomirror.bundle.signature import CHECKED_BY, SIGNATURE_NAME, SignatureCheck, check_signature
from amsrepomirror.errors import UsageError

NO_SIGNERS = "verified without allowed signers: the signature was not checked"


@dataclass(frozen=True)
class Trust:
    """Whose signature a bundle must carry, as this site set it."""
    allowed_signers: Path | None  # None: no signers configured; a signature then proves nothing
    revoked_keys: Path | None
    require_signature: bool  # an unsigned bundle is refused (only meaningful with allowed_signers)
    verifier: str  # auto, ssh-keygen or python
    source: str  # where allowed_signers came from, to name it in messages
    notes: tuple[str, ...] = ()  # lines for the admin (a setting to move)


def _setting(section: str, key: str) -> str:
    return luigi.configuration.get_config().get(section, key, fallback="").strip()


#: The Luigi task whose settings section is [Unpack] (tasks/unpack.py; a test holds the name).
UNPACK_TASK = "Unpack"

#: The keys the offline side reads in the sections that decide what it trusts.
OFFLINE_SETTINGS: dict[str, tuple[str, ...]] = {
    "trust": ("allowed_signers", "revoked_keys", "require_signature", "signature_verifier"),
    "unpack": ("installed_version_files", "trust_installed", "allowed_signers", "signature_verifier"),
}


def refuse_unread_settings() -> None:
    """UsageError naming a ``[trust]`` or ``[unpack]`` key that nothing reads, or such a section
    spelled in another case (``[Trust]``): a typo there would leave bundles unchecked, or installed
    files unhashed, while the admin believes the setting is in force."""
    # [Unpack] sets the Unpack task's parameters: named here too, as a command imports only the tasks it runs
    tasks = set(luigi.task_register.Register.task_names()) | {UNPACK_TASK}
    for (section, key), (_, source) in sorted(config.effective().items()):
        if section.lower() in OFFLINE_SETTINGS and section not in OFFLINE_SETTINGS and section not in tasks:
            raise UsageError(f"[{section}] in {source} is not read (section names are case-sensitive): "
                             f"rename it [{section.lower()}]")
        known = OFFLINE_SETTINGS.get(section)
        # exactly: [trust] is read key by key, allowed-signers never
        if known is None or key in known:  # guard: trust-unread-setting
            continue
        home = [other for other, keys in OFFLINE_SETTINGS.items() if key in keys]
        close = difflib.get_close_matches(key, known, n=1)
        hint = (f"it belongs in [{home[0]}]" if home else f"did you mean {close[0]}?" if close else
                f"the keys of [{section}] are {', '.join(known)}")
        raise UsageError(f"[{section}] {key} in {source} is not a setting: {hint}")


def resolve_trust(allowed_signers: str | None = None, revoked_keys: str | None = None) -> Trust:
    """The site's trust setting: command-line options over ``[trust]`` over the older ``[unpack]``
    keys. UsageError for a combination that cannot be checked, or a key nothing reads."""
    refuse_unread_settings()
    notes: list[str] = []

    def pick(given: str | None, key: str, old_section: str = "") -> tuple[str, str]:
        if given:
            return str(given), f"--{key.replace('_', '-')}"
        if _setting("trust", key):
            return _setting("trust", key), f"[trust] {key}"
        if old_section and _setting(old_section, key):
            notes.append(f"note: [{old_section}] {key} is read for now: move it to [trust], which verify, unpack "
                         "and tool/install.sh all read")
            return _setting(old_section, key), f"[{old_section}] {key}"
        return "", ""

    signers, source = pick(allowed_signers, "allowed_signers", "unpack")
    revoked, revoked_source = pick(revoked_keys, "revoked_keys")
    verifier = pick(None, "signature_verifier", "unpack")[0]  # checked when a signature is (choose_verifier)
    for path, where in ((signers, source), (revoked, revoked_source)):
        if path and not Path(path).is_file():  # else an unsigned bundle is refused for the wrong reason
            raise UsageError(f"{where}{' ' if where.startswith('--') else ' = '}{path}: "
                             f"{'is not a regular file' if os.path.lexists(path) else 'does not exist'} "
                             "(an OpenSSH allowed_signers or revoked keys file); nothing was checked")
    required = _setting("trust", "require_signature").lower() or "true"
    if required not in ("true", "false"):
        raise UsageError(f"[trust] require_signature = {required!r}: use true or false")
    if revoked and not signers:
        raise UsageError(f"{revoked_source} needs allowed signers (--allowed-signers or [trust] allowed_signers)")
    return Trust(allowed_signers=Path(signers).absolute() if signers else None,
                 revoked_keys=Path(revoked).absolute() if revoked else None,
                 require_signature=bool(signers) and required == "true", verifier=verifier or "auto", source=source,
                 notes=tuple(notes))


def signature_verdict(bundle_dir: Path, trust: Trust,
                      manifest: bytes | None) -> tuple[SignatureCheck | None, str | None]:
    """What the bundle's signature of ``manifest`` (manifest.json as the caller read it) says under
    ``trust``: (the check, None when unsigned; the reason to refuse the bundle, None when it may
    pass). The one verdict for verify and unpack alike."""
    check = check_signature(bundle_dir, trust.allowed_signers, trust.revoked_keys, trust.verifier, manifest=manifest)
    if check is None:
        if trust.require_signature:  # guard: trust-unsigned-refused
            return None, (f"bundle {bundle_dir} is not signed ({SIGNATURE_NAME} is missing), but {trust.source} "
                          f"({trust.allowed_signers}) requires a signature by an allowed key")
        return None, None
    if check.problem:  # guard: trust-bad-signature-refused
        return check, f"bundle {bundle_dir} is refused: its signature is bad ({check.problem}; {CHECKED_BY[check.verifier]})"
    return check, None
