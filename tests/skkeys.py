"""FIDO (sk-) keys without the hardware: key pairs made with ``cryptography`` and SSHSIG signatures laid
out as an authenticator and ssh-keygen would write them (PROTOCOL.u2f, PROTOCOL.sshsig), so real
``ssh-keygen -Y verify`` and our verifier can be compared on them."""

import base64
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

APPLICATION = b"ssh:"
USER_PRESENT = 0x01
USER_VERIFIED = 0x04
TYPES = {"ed25519-sk": "sk-ssh-ed25519@openssh.com", "ecdsa-sk": "sk-ecdsa-sha2-nistp256@openssh.com"}


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(value: int) -> bytes:
    return _string(value.to_bytes((value.bit_length() + 8) // 8, "big"))


@dataclass
class SkKey:
    kind: str  # ed25519-sk or ecdsa-sk
    private: object

    @classmethod
    def generate(cls, kind: str) -> "SkKey":
        return cls(kind, Ed25519PrivateKey.generate() if kind == "ed25519-sk" else ec.generate_private_key(ec.SECP256R1()))

    @property
    def type(self) -> str:
        return TYPES[self.kind]

    def blob(self) -> bytes:
        public = self.private.public_key()
        if self.kind == "ed25519-sk":
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return _string(self.type.encode()) + _string(raw) + _string(APPLICATION)
        point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return _string(self.type.encode()) + _string(b"nistp256") + _string(point) + _string(APPLICATION)

    def public_line(self, comment: str = "sk-key") -> str:
        return f"{self.type} {base64.b64encode(self.blob()).decode()} {comment}"

    def sign_file(self, message: Path, namespace: str = "amsrepomirror", flags: int = USER_PRESENT,
                  counter: int = 42) -> str:
        """The armored SSHSIG of ``message`` (hash sha512), as ``ssh-keygen -Y sign`` with this key writes it."""
        signed = (b"SSHSIG" + _string(namespace.encode()) + _string(b"") + _string(b"sha512")
                  + _string(hashlib.sha512(Path(message).read_bytes()).digest()))
        data = (hashlib.sha256(APPLICATION).digest() + bytes([flags]) + struct.pack(">I", counter)
                + hashlib.sha256(signed).digest())
        if self.kind == "ed25519-sk":
            raw = _string(self.private.sign(data))
        else:
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            raw = _string(_mpint(r) + _mpint(s))
        sig = _string(self.type.encode()) + raw + bytes([flags]) + struct.pack(">I", counter)
        blob = (b"SSHSIG" + struct.pack(">I", 1) + _string(self.blob()) + _string(namespace.encode()) + _string(b"")
                + _string(b"sha512") + _string(sig))
        text = base64.b64encode(blob).decode()
        lines = [text[i:i + 70] for i in range(0, len(text), 70)]
        return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"
