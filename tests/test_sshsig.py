"""The two signature checkers agree: ssh-keygen -Y (OpenSSH 8.2 or later) and the built-in SSHSIG verifier
used where ssh-keygen is older (bundle.sshsig). Keys and signatures come from real ssh-keygen; FIDO (sk-)
signatures, which need hardware to make, are laid out by tests/skkeys.py and judged by real ssh-keygen too.
"""

import collections
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skkeys import USER_PRESENT, USER_VERIFIED, SkKey

from amsrepomirror.bundle.format import MANIFEST_NAME
from amsrepomirror.bundle.signature import CHECKED_BY, SIGNATURE_NAME, check_signature, choose_verifier

VERIFIERS = ("ssh-keygen", "python")
PRINCIPAL = "site-bundles"
KEY_TYPES = {"ed25519": ("ed25519", None, "ED25519"), "ecdsa-256": ("ecdsa", "256", "ECDSA"),
             "ecdsa-384": ("ecdsa", "384", "ECDSA"), "ecdsa-521": ("ecdsa", "521", "ECDSA"), "rsa": ("rsa", "2048", "RSA")}

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed")


def keygen(*args, stdin=None):
    return subprocess.run(["ssh-keygen", *map(str, args)], capture_output=True, timeout=60, stdin=stdin)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A real key of each type (and an intruder's), made once for the module."""
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for name, (kind, bits, _) in {**KEY_TYPES, "intruder": ("ed25519", None, "")}.items():
        made[name] = folder / name
        keygen("-q", "-t", kind, *(["-b", bits] if bits else []), "-N", "", "-C", name, "-f", made[name]).check_returncode()
    return made


def public(key: Path) -> str:
    return Path(str(key) + ".pub").read_text().strip()


def sign(folder: Path, key: Path, namespace="amsrepomirror", message: bytes = None, *options) -> None:
    """manifest.json.sig of folder/manifest.json (or of ``message``), signed by real ssh-keygen."""
    source = folder / MANIFEST_NAME
    if message is not None:
        source = folder / "other.json"
        source.write_bytes(message)
    with open(source, "rb") as data:
        done = keygen("-Y", "sign", "-n", namespace, "-f", key, *options, stdin=data)
    done.check_returncode()
    (folder / SIGNATURE_NAME).write_bytes(done.stdout)


def bundle_folder(tmp_path: Path, name="bundle") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps({"version": "AMS2026.1", "files": [{"path": "a", "sha256": "0" * 64}]}))
    return folder


def verdict(check):
    return None if check is None else (bool(check.problem), check.key_type, check.fingerprint, check.principal, check.allowed)


def both(folder: Path, allowed=None, revoked=None):
    """Check with each verifier; they must reach the same verdict. Returns the python path's check."""
    checks = {v: check_signature(folder, allowed, revoked, v, manifest=(folder / MANIFEST_NAME).read_bytes()) for v in VERIFIERS}
    assert [c.verifier for c in checks.values()] == list(VERIFIERS)
    assert verdict(checks["ssh-keygen"]) == verdict(checks["python"]), checks
    return checks["python"]


def fingerprint(key: Path) -> str:
    return keygen("-l", "-f", str(key) + ".pub").stdout.decode().split()[1]


@pytest.mark.parametrize("hashalg", ["sha512", "sha256"])
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_good_signatures_agree(keys, tmp_path, key_type, hashalg):
    folder = bundle_folder(tmp_path)
    sign(folder, keys[key_type], "amsrepomirror", None, "-O", f"hashalg={hashalg}")
    check = both(folder)
    assert (check.problem, check.key_type, check.fingerprint) == ("", KEY_TYPES[key_type][2], fingerprint(keys[key_type]))
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{PRINCIPAL},backup namespaces=\"amsrepomirror\" {public(keys[key_type])}\n")
    check = both(folder, allowed)
    assert (check.problem, check.principal, check.allowed) == ("", PRINCIPAL, True)
    assert CHECKED_BY["python"] in check.describe()


def _tampered(folder, keys, key, allowed):
    (folder / MANIFEST_NAME).write_text((folder / MANIFEST_NAME).read_text().replace("0" * 64, "1" * 64))


def _wrong_key(folder, keys, key, allowed):
    sign(folder, keys["intruder"])


def _wrong_namespace(folder, keys, key, allowed):
    sign(folder, key, "file")


def _other_manifest(folder, keys, key, allowed):
    sign(folder, key, "amsrepomirror", b'{"version": "AMS2020.1"}')


def _namespace_option(folder, keys, key, allowed):
    allowed.write_text(f'{PRINCIPAL} namespaces="file,git" {public(key)}\n')


def _expired(folder, keys, key, allowed):
    allowed.write_text(f'{PRINCIPAL} valid-before="20200101" {public(key)}\n')


def _not_yet_valid(folder, keys, key, allowed):
    allowed.write_text(f'{PRINCIPAL} valid-after="20991231Z" {public(key)}\n')


def _cert_authority(folder, keys, key, allowed):
    allowed.write_text(f'{PRINCIPAL} cert-authority {public(key)}\n')  # vouches for certificates it signed only


@pytest.mark.parametrize("tamper", [_tampered, _wrong_key, _wrong_namespace, _other_manifest, _namespace_option,
                                    _expired, _not_yet_valid, _cert_authority])
@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-256", "rsa"])
def test_refusals_agree(keys, tmp_path, key_type, tamper):
    folder = bundle_folder(tmp_path)
    key = keys[key_type]
    sign(folder, key)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{PRINCIPAL} {public(key)}\n")
    assert not both(folder, allowed).problem
    tamper(folder, keys, key, allowed)
    check = both(folder, allowed)
    assert check.problem and check.allowed is False


def test_revoked_key_refused_by_both(keys, tmp_path):
    folder = bundle_folder(tmp_path)
    sign(folder, keys["ed25519"])
    allowed, revoked = tmp_path / "allowed_signers", tmp_path / "revoked"
    allowed.write_text(f"{PRINCIPAL} {public(keys['ed25519'])}\n")
    revoked.write_text(f"# retired keys\n\n{public(keys['rsa'])}\n")
    assert not both(folder, allowed, revoked).problem
    revoked.write_text(f"{public(keys['rsa'])}\n  {public(keys['ed25519'])}\n")
    assert "revoked" in both(folder, allowed, revoked).problem


def test_a_binary_krl_is_refused_by_the_python_path_with_one_clear_reason(keys, tmp_path):
    folder = bundle_folder(tmp_path)
    sign(folder, keys["ed25519"])
    allowed, krl = tmp_path / "allowed_signers", tmp_path / "revoked.krl"
    allowed.write_text(f"{PRINCIPAL} {public(keys['ed25519'])}\n")
    keygen("-k", "-f", krl, str(keys["rsa"]) + ".pub").check_returncode()  # revokes another key only
    assert not check_signature(folder, allowed, krl, "ssh-keygen", manifest=(folder / MANIFEST_NAME).read_bytes()).problem
    check = check_signature(folder, allowed, krl, "python", manifest=(folder / MANIFEST_NAME).read_bytes())
    assert check.allowed is False and "is a binary KRL" in check.problem and "OpenSSH 8.2" in check.problem


@pytest.mark.parametrize("lines, principal", [
    (['# site keys', '', 'other {intruder}', '{principal},backup {key} comment words'], PRINCIPAL),
    (['"site bundles" {key}'], "site bundles"),
    (['*@example.org,{principal} NAMESPACES="amsrepo*,git",valid-after="20200101",valid-before="20991231235959Z" {key}'],
     "*@example.org"),
    (['{principal} namespaces="file" {key}', 'backup namespaces="amsrepomirror" {key}'], None),
    (['{principal} {key}', 'backup namespaces="amsrepomirror" {key}'], PRINCIPAL),
    (['{principal} cert-authority {key}', 'backup {key}'], "backup"),
    (['broken', '{principal} {key}'], PRINCIPAL),  # a malformed line is passed over
    (['{principal} trusted {key}'], None),  # an unknown option
    (['{principal} valid-after="20991231",valid-before="20200101" {key}'], None),
    (['{principal} namespaces=amsrepomirror {key}'], None),  # option values must be quoted
    (['{principal} {intruder}'], None),
])
def test_allowed_signers_files_are_read_alike(keys, tmp_path, lines, principal):
    folder = bundle_folder(tmp_path)
    sign(folder, keys["ed25519"])
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("\n".join(lines).format(principal=PRINCIPAL, key=public(keys["ed25519"]),
                                               intruder=public(keys["intruder"])) + "\n")
    check = both(folder, allowed)
    assert (check.principal if not check.problem else None) == principal, check


@pytest.mark.parametrize("kind", ["ed25519-sk", "ecdsa-sk"])
def test_security_key_signatures_agree_with_real_ssh_keygen(tmp_path, kind):
    folder = bundle_folder(tmp_path)
    key = SkKey.generate(kind)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{PRINCIPAL} {key.public_line()}\n")
    (tmp_path / "sk.pub").write_text(key.public_line() + "\n")

    def by_hand():
        with open(folder / MANIFEST_NAME, "rb") as data:
            return keygen("-Y", "verify", "-f", allowed, "-I", PRINCIPAL, "-n", "amsrepomirror",
                          "-s", folder / SIGNATURE_NAME, stdin=data).returncode

    for flags in (USER_PRESENT, USER_PRESENT | USER_VERIFIED):
        (folder / SIGNATURE_NAME).write_text(key.sign_file(folder / MANIFEST_NAME, flags=flags))
        assert by_hand() == 0
        check = both(folder, allowed)
        assert (check.problem, check.key_type, check.principal) == ("", kind.upper(), PRINCIPAL)
        assert check.fingerprint == fingerprint(tmp_path / "sk")
    (folder / SIGNATURE_NAME).write_text(key.sign_file(folder / MANIFEST_NAME, namespace="file"))
    assert by_hand() != 0 and both(folder, allowed).problem
    (folder / SIGNATURE_NAME).write_text(key.sign_file(folder / MANIFEST_NAME))
    _tampered(folder, None, None, None)
    assert by_hand() != 0 and both(folder, allowed).problem


@pytest.mark.parametrize("kind", ["ed25519-sk", "ecdsa-sk"])
def test_a_security_key_signature_made_without_a_touch_is_refused_by_both(tmp_path, kind):
    """ssh-keygen -Y verify alone accepts it (sshd would not); both our paths ask for the touch."""
    folder = bundle_folder(tmp_path)
    key = SkKey.generate(kind)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{PRINCIPAL} {key.public_line()}\n")
    (folder / SIGNATURE_NAME).write_text(key.sign_file(folder / MANIFEST_NAME, flags=USER_VERIFIED))
    with open(folder / MANIFEST_NAME, "rb") as data:
        assert keygen("-Y", "verify", "-f", allowed, "-I", PRINCIPAL, "-n", "amsrepomirror",
                      "-s", folder / SIGNATURE_NAME, stdin=data).returncode == 0
    both(folder, allowed)
    for verifier in VERIFIERS:
        check = check_signature(folder, allowed, None, verifier, manifest=(folder / MANIFEST_NAME).read_bytes())
        assert "did not confirm user presence" in check.problem and check.allowed is False, check


def test_auto_picks_ssh_keygen_where_it_can_find_principals():
    assert choose_verifier("auto") == "ssh-keygen"  # OpenSSH 9 here
    assert choose_verifier("python") == "python"


def test_a_key_type_the_python_path_cannot_check_is_refused_with_its_name(tmp_path):
    """DSA (still signed by this OpenSSH): ssh-keygen checks it, the built-in verifier says it cannot."""
    key = tmp_path / "dsa"
    if keygen("-q", "-t", "dsa", "-N", "", "-f", key).returncode != 0:
        pytest.skip("this OpenSSH makes no DSA keys")
    folder = bundle_folder(tmp_path)
    sign(folder, key)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{PRINCIPAL} {public(key)}\n")
    assert not check_signature(folder, allowed, None, "ssh-keygen", manifest=(folder / MANIFEST_NAME).read_bytes()).problem
    check = check_signature(folder, allowed, None, "python", manifest=(folder / MANIFEST_NAME).read_bytes())
    assert "made with a ssh-dss key, which only ssh-keygen of OpenSSH 8.2 or later can check" in check.problem


@pytest.mark.parametrize("content, principal, refusal", [
    # A lone CR inside a comment: OpenSSH reads one (comment) line, Python's universal newlines two.
    (b"# retired\r{principal} {key}\n", None, "carriage return"),
    # A NUL ends the line for OpenSSH: "other" alone is a malformed line.
    (b"other\0,{principal} {key}\n", None, "NUL"),
    # OpenSSH never matches a pattern list with an entry of 1023 bytes or more.
    (b"{principal}," + b"x" * 1100 + b" {key}\n", None, "1023"),
    (b"x" * 1100 + b",{principal} {key}\n", None, "1023"),
    # Negations: verified as the plain entry, never as "!bad".
    (b"!bad,{principal} {key}\n", PRINCIPAL, None),
    (b"!{principal} {key}\n", None, "no principal"),
    # Non-UTF-8 principals and empty entries: ssh-keygen prints them cut or changed.
    (b"caf\xe9,{principal} {key}\n", None, "UTF-8"),
    (b",{principal} {key}\n", None, "empty entry"),
    (b"{principal},,backup {key}\n", None, "empty entry"),
    (b'"open quote {key}\n{principal} {key}\n', PRINCIPAL, None),  # a malformed line allows nothing, refuses nothing
], ids=["cr-in-comment", "nul", "long-entry-last", "long-entry-first", "negation", "negation-only", "not-utf8",
        "empty-first", "empty-inside", "open-quote"])
def test_unusual_allowed_signers_files_get_one_verdict(keys, tmp_path, content, principal, refusal):
    folder = bundle_folder(tmp_path)
    sign(folder, keys["ed25519"])
    allowed = tmp_path / "allowed_signers"
    allowed.write_bytes(content.replace(b"{principal}", PRINCIPAL.encode()).replace(
        b"{key}", public(keys["ed25519"]).encode()))
    check = both(folder, allowed)
    if refusal is None:
        assert (check.problem, check.principal, check.allowed) == ("", principal, True)
    else:
        assert check.allowed is False and refusal in check.problem, check


# ---- differential: generated allowed_signers files, one verdict from both checkers ----------------

_ENTRIES = [PRINCIPAL.encode(), b"backup", b"*", b"site-*", b"?ite-bundles", b"!" + PRINCIPAL.encode(), b"!backup",
            b"!*x", b"site bundles", b"s\xc3\xa9te"]
_BAD_ENTRIES = [b"", b"x" * 1100, b"caf\xe9"]  # refused as read, on both paths
_OPTIONS = [b"cert-authority", b'namespaces="amsrepomirror"', b'NAMESPACES="amsrepo*,git"', b'namespaces="file"',
            b'namespaces="!amsrepomirror,*"', b'namespaces=""', b'namespaces="' + b"a" * 1100 + b',*"',
            b'valid-after="20200101"', b'valid-after="20991231Z"', b'valid-before="20200101"',
            b'valid-before="20991231235959Z"', b'valid-after=" 2020 1 1"', b'valid-before="20990231"',
            b'Valid-Before="209912310000utc"', b'valid-after="19700101Z"', b'valid-after="20200132"', b"trusted",
            b"namespaces=amsrepomirror", b'namespaces="a\\" b,*"', b"", b'namespaces="amsrepomirror']
_NASTY = [b"\r", b"\0", b"\x0b", b"\x0c", b"\xff", b'"', b"\t"]


@st.composite
def _allowed_line(draw, keys: dict) -> bytes:
    """One allowed_signers line: principals (plain, quoted, a quote inside), options, a key (the signer's,
    another, a damaged one or none), blanks, a comment; sometimes a byte dropped in anywhere."""
    blank = draw(st.sampled_from([b" ", b"\t", b"  ", b" \t"]))
    entry = st.sampled_from(_BAD_ENTRIES) if draw(st.integers(0, 9)) == 0 else st.sampled_from(_ENTRIES)
    field = b",".join(draw(st.lists(entry, min_size=1, max_size=3)))
    quoting = draw(st.sampled_from(["plain", "plain", "quoted", "inside"]))
    if quoting == "quoted":
        field = b'"' + field + b'"'
    elif quoting == "inside" and len(field) > 1:
        at = draw(st.integers(1, len(field) - 1))
        field = field[:at] + b'"' + field[at:] + b'"'
    options = b",".join(draw(st.lists(st.sampled_from(_OPTIONS), max_size=2)))
    key = keys["signer"] if draw(st.booleans()) else draw(st.sampled_from(list(keys.values())))
    parts = [field, *([options] if options else []), key]
    line = draw(st.sampled_from([b"", b" ", b"\t", b"#", b"# ", b"\n"])) + blank.join(parts)
    line += draw(st.sampled_from([b"", b"", b" comment words", b"\t"]))
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from(_NASTY)) + line[at:]
    return line + draw(st.sampled_from([b"\n", b"\n", b"\r\n", b""]))


@pytest.fixture(scope="module")
def signed_once(keys, tmp_path_factory):
    """A bundle folder signed once with the ed25519 key by real ssh-keygen -Y sign, and the key lines to list."""
    folder = bundle_folder(tmp_path_factory.mktemp("differential"))
    sign(folder, keys["ed25519"])
    signer = public(keys["ed25519"]).encode()
    key_type, encoded = signer.split()[:2]
    damaged = encoded[:-2] + (b"B" if encoded[-2:-1] == b"A" else b"A") + encoded[-1:]
    lines = {"signer": signer, "signer-bare": key_type + b" " + encoded, "intruder": public(keys["intruder"]).encode(),
             "damaged": key_type + b" " + damaged, "no-type": encoded, "wrong-type": b"ssh-rsa " + encoded,
             "rsa-alias": b"rsa-sha2-256 " + public(keys["rsa"]).encode().split()[1]}
    return folder, lines


def test_generated_allowed_signers_files_get_the_same_verdict_from_both_checkers(signed_once):
    """Property: for any allowed_signers file, ssh-keygen -Y and the built-in checker accept (as the same
    principal) or refuse alike. Bounded: 150 files, about three ssh-keygen runs each."""
    folder, key_lines = signed_once
    allowed = folder.parent / "allowed_signers"
    seen = collections.Counter()

    @settings(derandomize=True, max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(_allowed_line(key_lines), min_size=1, max_size=4))
    def same_verdict(lines):
        allowed.write_bytes(b"".join(lines))
        check = both(folder, allowed)  # asserts the two verdicts are equal
        seen["accepted" if not check.problem else "refused as read" if "read them alike" in check.problem
             else "refused"] += 1

    same_verdict()
    assert seen["accepted"] >= 15 and seen["refused"] >= 15 and seen["refused as read"] >= 5, seen


@pytest.mark.parametrize("revoked, says", [
    (b"# retired\n\n  \t\n{intruder}\r\n", None),
    (b"{intruder}\n  {signer}", "is revoked"),
    (b"\r\n{intruder}\n", "not a public key"),  # sshkey_in_file skips only blanks before "#", LF or the end
    (b"{intruder}\njunk\n", "not a public key"),
    (b"\r{signer}\n", "carriage return"),
    (b"\xff\n", "not UTF-8"),
], ids=["comments-and-others", "listed", "crlf-blank-line", "junk", "cr", "not-utf8"])
def test_revoked_keys_files_get_one_verdict(signed_once, revoked, says):
    folder, key_lines = signed_once
    allowed, revoked_keys = folder.parent / "allowed_signers", folder.parent / "revoked_keys"
    allowed.write_bytes(PRINCIPAL.encode() + b" " + key_lines["signer"] + b"\n")
    revoked_keys.write_bytes(revoked.replace(b"{signer}", key_lines["signer"]).replace(b"{intruder}", key_lines["intruder"]))
    check = both(folder, allowed, revoked_keys)
    if says is None:
        assert (check.problem, check.principal, check.allowed) == ("", PRINCIPAL, True)
    else:
        assert check.allowed is False and says in check.problem, check
