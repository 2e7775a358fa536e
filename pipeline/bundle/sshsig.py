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
#
# Read as OpenSSH 8.2-9.x reads them (sshsig.c, misc.c, match.c, sshkey.c), byte for byte. Where a
# file could be read two ways (a NUL, a lone CR, other control bytes, bytes that are not UTF-8, very
# long lines, an empty entry or a 1023-byte entry in a pattern list), it is refused as a whole by
# key_file_lines / allowed_signers_lines, on both checkers, instead of being read one way or the other.

LINE_LIMIT = 16 * 1024  # bytes in one line: an RSA-16384 key with options and a long comment fits
PATTERN_LIMIT = 1023  # match_pattern_list copies an entry into char[1024]: a longer one never matches
_BLANKS = " \t\r\n"  # misc.c WHITESPACE, what strdelimw splits at
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # but tab; LF ends the line, CR may only come before it


@dataclass(frozen=True)
class _Line:
    principals: str
    key: PublicKey
    options: "_Options"


@dataclass(frozen=True)
class _Options:
    cert_authority: bool = False
    namespaces: str | None = None
    valid_after: int = 0
    valid_before: int = 0


def key_file_lines(data: bytes, name: str) -> list[tuple[int, str]]:
    """(number, line) of an allowed_signers or revoked keys file as OpenSSH's getline() cuts it: at LF
    only, each line keeping its LF. SshsigError for any line Python and C could read differently: a NUL
    (C ends the string there), a CR not right before the LF (other readers start a new line there),
    another control byte (base64 decoding skips some), bytes that are not UTF-8, a line over LINE_LIMIT."""
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    read = []
    for number, raw in enumerate(lines, start=1):
        where = f"{name}:{number}"
        if len(raw) > LINE_LIMIT:
            raise SshsigError(f"{where}: the line is longer than {LINE_LIMIT} bytes")
        body = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")  # CRLF line ends are read alike
        bad = _CONTROL.search(body)
        if bad is not None:  # guard: signature-lines-control
            what = {b"\0": "a NUL byte", b"\r": "a carriage return inside the line"}.get(bad.group(),
                                                                                    f"control byte {bad.group()!r}")
            raise SshsigError(f"{where}: the line holds {what}, which ssh-keygen and other readers take "
                              "differently; remove it")
        try:
            read.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise SshsigError(f"{where}: the line is not UTF-8, so the names in it cannot be compared "
                              "alike; save the file as UTF-8") from None
    return read


def allowed_signers_lines(data: bytes, name: str) -> list[tuple[int, str]]:
    """key_file_lines, and for every line that names principals: no empty entry in the list (ssh-keygen
    -Y find-principals stops printing at one) and no entry of PATTERN_LIMIT bytes or more, there or in
    namespaces= (OpenSSH never matches such a list)."""
    lines = key_file_lines(data, name)
    for number, text in lines:
        lists = []
        rest = text.lstrip(_BLANKS)
        principals = _strdelimw(rest)[0] if rest and not rest.startswith("#") else None
        if principals is not None:  # None: a comment, blank, or an open quote (a line that allows nothing)
            lists.append(("principals", principals))
            try:
                line = _parse_line(text, None)
            except SshsigError:
                line = None  # allows nothing, on both checkers
            if line is not None and line.options.namespaces is not None:
                lists.append(("namespaces", line.options.namespaces))
        for field, patterns in lists:
            entries = patterns.split(",")
            if field == "principals" and "" in entries:  # guard: signature-lines-empty-entry
                raise SshsigError(f"{name}:{number}: the principals {patterns[:60]!r} hold an empty entry "
                                  "(two commas, or one at either end); remove it")
            if any(len(entry.encode()) >= PATTERN_LIMIT for entry in entries):
                raise SshsigError(f"{name}:{number}: an entry of the {field} list is {PATTERN_LIMIT} bytes or "
                                  "longer, which OpenSSH never matches; shorten it")
    return lines


def match_pattern(text: bytes, pattern: bytes) -> bool:
    """match.c match_pattern, byte for byte: ``*`` any run of bytes, ``?`` one byte, nothing else special."""
    t = p = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] != 0x2A and (pattern[p] == 0x3F or pattern[p] == text[t]):
            t, p = t + 1, p + 1
        elif p < len(pattern) and pattern[p] == 0x2A:
            star, mark, p = p, t, p + 1
        elif star >= 0:
            mark += 1
            t, p = mark, star + 1
        else:
            return False
    while p < len(pattern) and pattern[p] == 0x2A:
        p += 1
    return p == len(pattern)


def match_pattern_list(text: str, patterns: str) -> int:
    """match.c match_pattern_list (case-sensitive): 1 when an entry of the comma list matches, -1 when a
    negated one (``!``) does, else 0; an entry of PATTERN_LIMIT bytes or more makes the whole list 0."""
    subject, data = text.encode(), patterns.encode()
    positive, i = 0, 0
    while i < len(data):
        negated = data[i] == 0x21
        i += negated
        end = data.find(b",", i)
        end = len(data) if end < 0 else end
        entry = data[i:end]
        if len(entry) >= PATTERN_LIMIT:
            return 0
        i = end + 1
        if match_pattern(subject, entry):
            if negated:
                return -1
            positive = 1
    return positive


def _strdelimw(text: str) -> tuple[str | None, str | None]:
    """misc.c strdelimw: the first field and the rest after the blanks that follow it. A double quote
    anywhere in the field opens a quoted part running to the next one (both quotes dropped). (None, None):
    unterminated quote; (field, None): no blank or quote at all, so no rest."""
    found = re.search(r'[ \t\r\n"]', text)
    if found is None:
        return text, None
    at = found.start()
    if text[at] == '"':
        text = text[:at] + text[at + 1:]
        close = text.find('"', at)
        if close < 0:
            return None, None
        return text[:close], text[close + 1:].lstrip(_BLANKS)
    return text[:at], text[at + 1:].lstrip(_BLANKS)


_KEY_TYPE_NAMES = {**{t: t for t in KEY_TYPES}, "rsa-sha2-256": "ssh-rsa", "rsa-sha2-512": "ssh-rsa",
                   "rsa-sha2-256-cert-v01@openssh.com": "ssh-rsa-cert-v01@openssh.com",
                   "rsa-sha2-512-cert-v01@openssh.com": "ssh-rsa-cert-v01@openssh.com"}


def _b64_pton(text: str) -> bytes | None:
    """b64_pton as sshbuf_b64tod uses it: whitespace skipped, padding and the unused bits exact."""
    squeezed = re.sub(r"[ \t\r\n\v\f]", "", text)
    try:
        data = base64.b64decode(squeezed, validate=True)
    except ValueError:
        return None
    return data if base64.b64encode(data).decode("ascii") == squeezed else None


def _read_key(text: str) -> tuple[PublicKey | None, str]:
    """sshkey_read: (key, what follows) for "TYPE BASE64[ ...]" at the start of ``text``, fields split
    at spaces and tabs only; (None, text) when it is no key OpenSSH would read."""
    space = re.search(r"[ \t]", text)
    if space is None or text[:space.start()] not in _KEY_TYPE_NAMES:
        return None, text
    rest = text[space.start():].lstrip(" \t")
    end = re.search(r"[ \t]", rest)
    end = len(rest) if end is None else end.start()
    blob = _b64_pton(rest[:end]) if rest else None
    try:
        key = None if blob is None else parse_key(blob)
    except SshsigError:
        key = None
    if key is None or key.type != _KEY_TYPE_NAMES[text[:space.start()]]:
        return None, text
    return key, rest[end:].lstrip(" \t")


def _options_end(text: str) -> int:
    """sshkey_advance_past_options: options run to the first blank outside double quotes (\\" is no quote)."""
    quoted, i = False, 0
    while i < len(text) and (quoted or text[i] not in " \t"):
        if text[i] == "\\" and text[i + 1:i + 2] == '"':
            i += 1
        elif text[i] == '"':
            quoted = not quoted
        i += 1
    if quoted:
        raise SshsigError("invalid options")
    return i


def _parse_line(line: str, principal: str | None) -> _Line | None:
    """sshsig.c parse_principals_key_and_options: one allowed_signers line; None for comments, blank
    lines and (looking for ``principal``) lines whose principals do not match it."""
    text = line.lstrip(_BLANKS)
    if not text or text.startswith("#"):
        return None
    principals, rest = _strdelimw(text)
    if principals is None or rest is None:
        raise SshsigError("invalid line")
    if principal is not None and match_pattern_list(principal, principals) != 1:
        return None
    key, _ = _read_key(rest)
    options = ""
    if key is None:
        end = _options_end(rest)
        if end == len(rest):
            raise SshsigError("missing key")
        options = rest[:end]
        key, _ = _read_key(rest[end + 1:].lstrip(" \t"))
        if key is None:
            raise SshsigError("invalid key")
    return _Line(principals, key, _parse_options(options))


def _ascii_lower(text: str) -> str:
    return "".join(c.lower() if c.isascii() else c for c in text)


def _dequote(text: str) -> tuple[str, str]:
    """misc.c opt_dequote: a double-quoted option value (\\" inside), and what follows it."""
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


#: parse_absolute_time: each field's width, and what glibc's strptime takes in it (%Y %m %d %H %M %S).
_TIME_FIELDS = ((4, 0, 9999), (2, 1, 12), (2, 1, 31), (2, 0, 23), (2, 0, 59), (2, 0, 61))


def parse_time(text: str) -> int:
    """misc.c parse_absolute_time: YYYYMMDD[HHMM[SS]], local time unless it ends in Z or UTC (any case);
    each field read as glibc's strptime does (blanks before a number, no check of the day against the
    month: 20200231 is March 2), and a time before 1970 or at its first second refused."""
    utc = False
    if len(text) > 1 and text[-1] in "zZ":
        text, utc = text[:-1], True
    elif len(text) > 3 and _ascii_lower(text[-3:]) == "utc":
        text, utc = text[:-3], True
    fields = {8: 3, 12: 5, 14: 6}.get(len(text)) if text.isascii() else None
    if fields is None:
        raise SshsigError("invalid time")
    values, pos = [], 0
    for width, low, high in _TIME_FIELDS[:fields]:
        field, pos = text[pos:pos + width], pos + width
        i = len(field) - len(field.lstrip(" \t"))
        if i == len(field) or not field[i].isdigit():
            raise SshsigError("invalid time")
        value, left = 0, width
        while True:  # get_number: at most ``width`` digits, and no more once another would pass ``high``
            value, i, left = value * 10 + int(field[i]), i + 1, left - 1
            if not (left > 0 and value * 10 <= high and i < len(field) and field[i].isdigit()):
                break
        if i != len(field) or not low <= value <= high:
            raise SshsigError("invalid time")
        values.append(value)
    stamp_of = calendar.timegm if utc else time.mktime
    try:
        stamp = int(stamp_of(tuple(values + [0] * (6 - len(values))) + (0, 0, 0)))
    except (ValueError, OverflowError):
        raise SshsigError("invalid time") from None
    if stamp <= 0:
        raise SshsigError("invalid time")
    return stamp


def _parse_options(text: str) -> _Options:
    """sshsigopt_parse: cert-authority, namespaces="...", valid-after="...", valid-before="..." (names in
    any case); nothing else."""
    found = {}
    while text and text[0] not in " \t":
        if _ascii_lower(text[:len("cert-authority")]) == "cert-authority":
            found["cert_authority"], text = True, text[len("cert-authority"):]
        else:
            for name in ("namespaces", "valid-after", "valid-before"):
                if _ascii_lower(text[:len(name) + 1]) == name + "=":
                    if name in found:
                        raise SshsigError(f'bad options: multiple "{name}" clauses')
                    value, text = _dequote(text[len(name) + 1:])
                    found[name] = value if name == "namespaces" else parse_time(value)
                    break
        if not text or text[0] in " \t":
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


def _usable(line: _Line, key: PublicKey, namespace: str | None, now: int) -> tuple[bool, str]:
    """check_allowed_keys_line: does this line allow ``key`` (for ``namespace``, at ``now``)? With why not."""
    options = line.options
    if options.cert_authority or line.key != key:  # guard: signature-verdict-python
        return False, "key not listed"  # a cert-authority line vouches only for certificates, refused before
    if options.namespaces is not None and namespace is not None and match_pattern_list(namespace, options.namespaces) != 1:
        return False, f'key is not permitted for use in signature namespace "{namespace}"'
    if options.valid_after and now < options.valid_after:
        return False, "key is not yet valid (valid-after)"
    if options.valid_before and now > options.valid_before:
        return False, "key has expired (valid-before)"
    return True, ""


def _scan(lines: list[tuple[int, str]], name: str, key: PublicKey, principal: str | None,
          namespace: str | None, now: float | None):
    """The first line of allowed_signers ``lines`` that allows ``key``, else (None, why). A malformed
    line allows nothing and is passed over, as check_allowed_keys_line does (why names it)."""
    now = int(time.time() if now is None else now)
    why = "key not listed"
    for number, text in lines:
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
            why = f"{name}:{number}: {reason}"
    return None, why


def find_principals(lines: list[tuple[int, str]], key: PublicKey, now: float | None = None,
                    name: str = "allowed_signers") -> str | None:
    """``ssh-keygen -Y find-principals``: the principals field of the first line listing ``key`` (namespaces
    not asked, validity times asked), or None. ``lines``: from allowed_signers_lines."""
    line, _ = _scan(lines, name, key, None, None, now)
    return None if line is None else line.principals


def check_allowed(lines: list[tuple[int, str]], key: PublicKey, principal: str, namespace: str,
                  now: float | None = None, name: str = "allowed_signers") -> None:
    """The allowed_signers step of ``ssh-keygen -Y verify -I principal``: SshsigError unless a line allows it."""
    line, why = _scan(lines, name, key, principal, namespace, now)
    if line is None:
        raise SshsigError(why)


def check_not_revoked(data: bytes, name: str, key: PublicKey) -> None:
    """SshsigError when ``key`` is in ``data``, a revoked keys file of public keys (sshkey_in_file: comments
    and empty lines skipped, any other line must be a key). A binary KRL is refused too, because then we
    cannot tell."""
    if data.startswith(KRL_MAGIC):
        raise SshsigError(f"{name} is a binary KRL, which only ssh-keygen (OpenSSH 8.2 or later) can "
                          "check: install it, or give the revoked keys as a file of public keys")
    for number, text in key_file_lines(data, name):
        text = text.lstrip(" \t")
        if not text or text[0] in "#\n":
            continue
        listed, _ = _read_key(text)
        if listed is None:
            raise SshsigError(f"{name}:{number}: not a public key, so revocation cannot be checked")
        if listed == key:
            raise SshsigError(f"its key {key.fingerprint} is revoked ({name}:{number})")
