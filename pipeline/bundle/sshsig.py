"""OpenSSH signatures (SSHSIG, PROTOCOL.sshsig) checked in Python, for machines whose ssh-keygen is
older than OpenSSH 8.2 (RHEL/Rocky 8 ship 8.0, which has neither ``-Y find-principals`` nor ``-Y verify``).

It does what ``ssh-keygen -Y find-principals`` / ``-Y verify`` / ``-Y check-novalidate`` do (OpenSSH's
sshsig.c), with the crypto from ``cryptography``: keys ssh-ed25519, ecdsa-sha2-nistp256/384/521,
RSA (signatures rsa-sha2-256/512 only, as ssh-keygen) and the FIDO keys sk-ssh-ed25519@openssh.com and
sk-ecdsa-sha2-nistp256@openssh.com (the authenticator must have seen the user: flag "user present",
which sshd asks by default and plain ``ssh-keygen -Y verify`` does not; see require_user_presence);
allowed_signers files as ssh-keygen reads them; revoked keys as a file of public keys. What it cannot
check it refuses with a reason (certificates as signing keys, binary KRLs): never a silent pass.
"""

import base64
import calendar
import hashlib
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MAGIC = b"SSHSIG"
BEGIN = "-----BEGIN SSH SIGNATURE-----\n"
END = "\n-----END SSH SIGNATURE-----"
KRL_MAGIC = b"SSHKRL\n\0"
HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
RSA_SIGNATURES = {"rsa-sha2-256": hashes.SHA256, "rsa-sha2-512": hashes.SHA512}
RSA_MIN_BITS = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
SK_USER_PRESENT = 0x01
CURVES = {"nistp256": (ec.SECP256R1, hashes.SHA256), "nistp384": (ec.SECP384R1, hashes.SHA384),
          "nistp521": (ec.SECP521R1, hashes.SHA512)}
SK_ED25519, SK_ECDSA = "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"
#: Key type names OpenSSH reads in key files (what it cannot verify may still be listed there).
_PLAIN_TYPES = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521", SK_ED25519, SK_ECDSA, "ssh-xmss@openssh.com")
KEY_TYPES = frozenset(_PLAIN_TYPES + tuple(t.split("@")[0] + "-cert-v01@openssh.com" for t in _PLAIN_TYPES))
#: ssh-keygen's names for key types, as it prints them ("with ED25519 key SHA256:...").
LABELS = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", SK_ED25519: "ED25519-SK", SK_ECDSA: "ECDSA-SK",
          **{f"ecdsa-sha2-{curve}": "ECDSA" for curve in CURVES}}


class SshsigError(ValueError):
    """The signature, or a key or line it is checked against, does not hold; the message says why."""


class _Reader:
    """SSH wire format (RFC 4251): uint32-length strings, big-endian integers, nothing left over."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise SshsigError(f"{self.what} is truncated")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def string(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise SshsigError(f"{self.what} holds a name that is not UTF-8") from None

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise SshsigError(f"{self.what} holds a negative number")
        return int.from_bytes(raw, "big")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SshsigError(f"{self.what} has trailing data")


@dataclass(frozen=True)
class PublicKey:
    """An OpenSSH public key: its wire blob (what identifies it) and type name."""
    blob: bytes
    type: str

    @property
    def fingerprint(self) -> str:
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode("ascii").rstrip("=")

    @property
    def label(self) -> str:
        return LABELS.get(self.type, self.type)

    def fields(self) -> _Reader:
        reader = _Reader(self.blob, f"{self.type} key")
        reader.string()
        return reader


def parse_key(blob: bytes) -> PublicKey:
    """A public key blob, checked as far as this module verifies its type (others: type name only)."""
    key = PublicKey(blob, _Reader(blob, "public key").text())
    if key.type in LABELS:
        _crypto_key(key)  # raises when malformed
    elif key.type not in KEY_TYPES:
        raise SshsigError(f"unknown key type {key.type[:60]!r}")
    return key


def _crypto_key(key: PublicKey):
    """(cryptography public key, FIDO application or None, ECDSA hash) of a key this module can verify with."""
    f = key.fields()
    if key.type in ("ssh-ed25519", SK_ED25519):
        raw = f.string()
        if len(raw) != 32:
            raise SshsigError("ed25519 key of the wrong length")
        public, application = Ed25519PublicKey.from_public_bytes(raw), f.string() if key.type == SK_ED25519 else None
        digest = None
    elif key.type == "ssh-rsa":
        e, n = f.mpint(), f.mpint()
        if n.bit_length() < RSA_MIN_BITS:
            raise SshsigError(f"RSA key of {n.bit_length()} bits: OpenSSH refuses fewer than {RSA_MIN_BITS}")
        public, application, digest = rsa.RSAPublicNumbers(e, n).public_key(), None, None
    elif key.type.startswith("ecdsa-sha2-") or key.type == SK_ECDSA:
        curve = f.text()
        if curve not in CURVES or (key.type != SK_ECDSA and key.type != f"ecdsa-sha2-{curve}") or \
                (key.type == SK_ECDSA and curve != "nistp256"):
            raise SshsigError(f"{key.type} key names curve {curve[:20]!r}")
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(CURVES[curve][0](), f.string())
        except ValueError:
            raise SshsigError(f"{key.type} key: its point is not on the curve") from None
        application = f.string() if key.type == SK_ECDSA else None
        digest = hashes.SHA256 if key.type == SK_ECDSA else CURVES[curve][1]  # the sk data is hashed with SHA-256
    else:
        raise SshsigError(f"it is made with a {key.type} key, which only ssh-keygen of OpenSSH 8.2 or later can check")
    f.end()
    return public, application, digest


def require_checkable(key: PublicKey) -> None:
    """SshsigError naming the key type when this module cannot verify it (certificates, DSA, ...)."""
    _crypto_key(key)


@dataclass(frozen=True)
class Signature:
    """A parsed manifest.json.sig: who signed (key), for what (namespace), how (hash) and the signature."""
    key: PublicKey
    namespace: str
    hash_name: str
    blob: bytes


def parse_signature(armored: bytes) -> Signature:
    """Parse an armored SSHSIG (a manifest.json.sig's bytes, read once), as sshsig_dearmor and
    sshsig_wrap_verify do."""
    text = armored.decode("ascii", errors="replace")
    if not text.startswith(BEGIN) or END not in text:
        raise SshsigError("not an SSH signature (its BEGIN/END lines are missing)")
    try:
        raw = base64.b64decode("".join(text[len(BEGIN):text.index(END)].split()), validate=True)
    except ValueError:
        raise SshsigError("the signature's base64 is damaged") from None
    r = _Reader(raw, "signature")
    if r.take(len(MAGIC)) != MAGIC:
        raise SshsigError("not an SSHSIG signature")
    if r.u32() > 1:
        raise SshsigError("signature version is newer than 1")
    key_blob = r.string()
    namespace, _reserved, hash_name, blob = r.text(), r.string(), r.text(), r.string()
    r.end()
    key = parse_key(key_blob)
    return Signature(key, namespace, hash_name, blob)


def verify(signature: Signature, message: bytes, namespace: str) -> None:
    """SshsigError unless ``signature`` signs ``message`` (bytes the caller holds and goes on to use) in ``namespace``."""
    if signature.namespace != namespace:
        raise SshsigError(f"namespace does not match (it is {signature.namespace[:60]!r}, not {namespace!r})")
    if signature.hash_name not in HASHES:
        raise SshsigError(f"unsupported hash algorithm {signature.hash_name[:20]!r}")
    digest = HASHES[signature.hash_name](message).digest()  # sha256 or sha512
    signed = (MAGIC + _string(namespace.encode()) + _string(b"") + _string(signature.hash_name.encode())
              + _string(digest))
    _verify_raw(signature.key, signature.blob, signed)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _verify_raw(key: PublicKey, blob: bytes, data: bytes) -> None:
    """sshkey_verify: the signature blob over ``data`` by ``key`` (SshsigError when it does not hold)."""
    public, application, digest = _crypto_key(key)
    r = _Reader(blob, "signature blob")
    sig_type, sig = r.text(), r.string()
    if key.type == "ssh-rsa":
        if sig_type not in RSA_SIGNATURES:
            raise SshsigError(f"unsupported RSA signature algorithm {sig_type[:30]}")
    elif sig_type != key.type:
        raise SshsigError(f"a {sig_type[:40]} signature made with a {key.type} key")
    if application is not None:
        flags, counter = r.u8(), r.u32()
        _require_presence(flags)
        data = (hashlib.sha256(application).digest() + bytes([flags]) + struct.pack(">I", counter)
                + hashlib.sha256(data).digest())
    r.end()
    try:
        if isinstance(public, Ed25519PublicKey):
            public.verify(sig, data)
        elif isinstance(public, rsa.RSAPublicKey):
            size = (public.key_size + 7) // 8
            if len(sig) > size:
                raise SshsigError("RSA signature is longer than its key")
            public.verify(sig.rjust(size, b"\0"), data, padding.PKCS1v15(), RSA_SIGNATURES[sig_type]())
        else:
            inner = _Reader(sig, "ECDSA signature")
            rs = encode_dss_signature(inner.mpint(), inner.mpint())
            inner.end()
            public.verify(rs, data, ec.ECDSA(digest()))
    except InvalidSignature:
        raise SshsigError("the signature does not match (the data or the key differs)") from None


def _require_presence(flags: int) -> None:
    if not flags & SK_USER_PRESENT:
        raise SshsigError("the security key did not confirm user presence (no touch) for this signature")


def require_user_presence(signature: Signature) -> None:
    """A FIDO (sk-) key's signature must carry the flag "user present": a key made with
    no-touch-required signs without anyone there. verify() asks it; this is for ssh-keygen's verdicts."""
    if signature.key.type.startswith("sk-"):  # certificates of sk- keys too
        r = _Reader(signature.blob, "signature blob")
        r.string(), r.string()
        _require_presence(r.u8())


# ---- allowed_signers and revoked keys ---------------------------------------------------------

@dataclass(frozen=True)
class _Line:
    principals: str
    key: Optional[PublicKey]
    options: str


@dataclass(frozen=True)
class _Options:
    cert_authority: bool = False
    namespaces: Optional[str] = None
    valid_after: int = 0
    valid_before: int = 0


def match_pattern(text: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` wildcards, nothing else special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def match_pattern_list(text: str, patterns: str) -> int:
    """OpenSSH's match_pattern_list: 1 when a pattern of the comma list matches, -1 when a negated one does, else 0."""
    positive = 0
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if match_pattern(text, pattern[1:] if negated else pattern):
            if negated:
                return -1
            positive = 1
    return positive


def _token(text: str) -> Tuple[str, str]:
    """First field and the rest (strdelimw): a field in double quotes may hold spaces."""
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise SshsigError("unterminated quote")
        return text[1:end], text[end + 1:].lstrip(" \t\r\n")
    found = re.search(r"[ \t\r\n]", text)
    return (text, "") if found is None else (text[:found.start()], text[found.end():].lstrip(" \t\r\n"))


def _read_key_text(text: str) -> Tuple[Optional[PublicKey], str]:
    """A key "TYPE BASE64 [comment]" at the start of ``text`` (None when TYPE names no key type)."""
    key_type, rest = _token(text)
    if key_type not in KEY_TYPES:
        return None, text
    encoded, rest = _token(rest)
    try:
        key = parse_key(base64.b64decode(encoded, validate=True))
    except (ValueError, SshsigError):
        raise SshsigError("invalid key") from None
    if key.type != key_type:
        raise SshsigError("invalid key (its type differs from its name)")
    return key, rest


def _options_end(text: str) -> int:
    """sshkey_advance_past_options: options run to the first blank outside double quotes."""
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            return i
    raise SshsigError("invalid options" if quoted else "missing key")


def _parse_line(line: str, principal: Optional[str]) -> Optional[_Line]:
    """One allowed_signers line (parse_principals_key_and_options); None for comments, blank lines
    and (looking for ``principal``) lines that do not name it."""
    text = line.lstrip(" \t\r\n")
    if not text or text.startswith("#"):
        return None
    principals, rest = _token(text)
    if not rest:
        raise SshsigError("invalid line")
    if principal is not None and match_pattern_list(principal, principals) != 1:
        return None
    key, _ = _read_key_text(rest)
    options = ""
    if key is None:
        end = _options_end(rest)
        options, key_text = rest[:end], rest[end:].lstrip(" \t")
        key, _ = _read_key_text(key_text) if key_text.strip() else (None, "")
        if key is None:
            raise SshsigError("invalid key" if key_text.strip() else "missing key")
    return _Line(principals, key, options)


def _dequote(text: str) -> Tuple[str, str]:
    """opt_dequote: a double-quoted option value (\\" inside), and what follows it."""
    if not text.startswith('"'):
        raise SshsigError("bad options: missing start quote")
    out, i = [], 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and text[i + 1:i + 2] == '"':
            i += 1
        out.append(text[i])
        i += 1
    if i >= len(text):
        raise SshsigError("bad options: missing end quote")
    return "".join(out), text[i + 1:]


def parse_time(text: str) -> int:
    """OpenSSH's parse_absolute_time: YYYYMMDD[HHMM[SS]], local time unless it ends in Z or UTC."""
    utc = False
    for suffix in ("Z", "UTC"):
        if len(text) > len(suffix) and text.upper().endswith(suffix):
            text, utc = text[:-len(suffix)], True
            break
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if len(text) not in formats or not text.isdigit():
        raise SshsigError("invalid time")
    try:
        parsed = time.strptime(text, formats[len(text)])
    except ValueError:
        raise SshsigError("invalid time") from None
    stamp = calendar.timegm(parsed) if utc else int(time.mktime(parsed[:8] + (0,)))
    if stamp <= 0:
        raise SshsigError("invalid time")
    return stamp


def _parse_options(text: str) -> _Options:
    """sshsigopt_parse: cert-authority, namespaces="...", valid-after="...", valid-before="..."; nothing else."""
    found = {}
    while text:
        lower = text.lower()
        if lower.startswith("cert-authority"):
            found["cert_authority"], text = True, text[len("cert-authority"):]
        else:
            for name in ("namespaces", "valid-after", "valid-before"):
                if lower.startswith(name + "="):
                    if name in found:
                        raise SshsigError(f'bad options: multiple "{name}" clauses')
                    value, text = _dequote(text[len(name) + 1:])
                    found[name] = value if name == "namespaces" else parse_time(value)
                    break
        if not text:
            break
        if not text.startswith(","):
            raise SshsigError("bad options: unknown key option")
        text = text[1:]
        if not text:
            raise SshsigError("bad options: unexpected end-of-options")
    options = _Options(found.get("cert_authority", False), found.get("namespaces"), found.get("valid-after", 0),
                       found.get("valid-before", 0))
    if options.valid_after and options.valid_before and options.valid_before <= options.valid_after:
        raise SshsigError('bad options: "valid-before" time is before "valid-after"')
    return options


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from enumerate(f, start=1)


def _usable(line: _Line, key: PublicKey, namespace: Optional[str], now: float) -> Tuple[bool, str]:
    """check_allowed_keys_line: does this line allow ``key`` (for ``namespace``, at ``now``)? With why not."""
    options = _parse_options(line.options)
    if options.cert_authority or line.key != key:
        return False, "key not listed"  # a cert-authority line vouches only for certificates, refused before
    if options.namespaces is not None and namespace is not None and match_pattern_list(namespace, options.namespaces) != 1:
        return False, f'key is not permitted for use in signature namespace "{namespace}"'
    if options.valid_after and now < options.valid_after:
        return False, "key is not yet valid (valid-after)"
    if options.valid_before and now > options.valid_before:
        return False, "key has expired (valid-before)"
    return True, ""


def _scan(path: Path, key: PublicKey, principal: Optional[str], namespace: Optional[str], now: float):
    """The first line of allowed_signers ``path`` that allows ``key``, else (None, why). A malformed
    line allows nothing and is passed over, as check_allowed_keys_line does (why names it)."""
    why = "key not listed"
    for number, text in _lines(path):
        try:
            line = _parse_line(text, principal)
            if line is None:
                continue
            ok, reason = _usable(line, key, namespace, now)
        except SshsigError as e:
            ok, reason = False, str(e)
        if ok:
            return line, ""
        if reason != "key not listed":
            why = f"{path}:{number}: {reason}"
    return None, why


def find_principals(allowed_signers: Path, key: PublicKey, now: Optional[float] = None) -> Optional[str]:
    """``ssh-keygen -Y find-principals``: the principals field of the first line listing ``key``, or None."""
    line, _ = _scan(allowed_signers, key, None, None, time.time() if now is None else now)
    return None if line is None else line.principals


def check_allowed(allowed_signers: Path, key: PublicKey, principal: str, namespace: str, now: Optional[float] = None) -> None:
    """The allowed_signers step of ``ssh-keygen -Y verify -I principal``: SshsigError unless a line allows it."""
    line, why = _scan(allowed_signers, key, principal, namespace, time.time() if now is None else now)
    if line is None:
        raise SshsigError(why)


def check_not_revoked(revoked_keys: Path, key: PublicKey) -> None:
    """SshsigError when ``key`` is in the file of public keys ``revoked_keys``; a binary KRL or a line
    that is no key is refused too, because then we cannot tell (ssh-keygen fails on such lines too)."""
    with open(revoked_keys, "rb") as f:
        if f.read(len(KRL_MAGIC)) == KRL_MAGIC:
            raise SshsigError(f"{revoked_keys} is a binary KRL, which only ssh-keygen (OpenSSH 8.2 or later) can "
                              "check: install it, or give the revoked keys as a file of public keys")
    for number, text in _lines(revoked_keys):
        text = text.lstrip(" \t")
        if not text.strip() or text.startswith("#"):
            continue
        try:
            listed, _ = _read_key_text(text)
        except SshsigError:
            listed = None
        if listed is None:
            raise SshsigError(f"{revoked_keys}:{number}: not a public key, so revocation cannot be checked")
        if listed == key:
            raise SshsigError(f"its key {key.fingerprint} is revoked ({revoked_keys}:{number})")

