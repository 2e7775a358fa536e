"""The check ``tool/install.sh`` runs before any wheel runs. With the site's allowed signers,
manifest.json.sig must first verify (``ssh-keygen -Y``) as a signature of manifest.json by an allowed
key; then the requirements file for this Python and every wheel it names must be files that
manifest.json's ``tool`` list names, with that sha256. The bytes it checked are copied into a private
folder (pip's wheel also as ``pip.whl``), which it prints: pip runs and installs from those copies,
never from a later read of the stick. Otherwise one line and exit 4.

install.sh feeds this file's text to the chosen interpreter (``python -I -S -``: standard library
only, no site, no environment), before amsrepomirror is installed: it imports nothing of the package.
"""

import configparser
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

LIMIT = 1 << 30  # bytes: a wheel or manifest.json is far smaller; a device or a huge file is refused
SIGNATURE_LIMIT = 64 * 1024
REQUIREMENT = re.compile(r"(wheels/[A-Za-z0-9_.+-]+\.whl) --hash=sha256:([0-9a-f]{64})")
# Where the site's trust setting is read, lowest priority first, as verify reads it (config.layers; a test
# holds the two lists equal): never the working folder (a bundle's own). A name without "/" is an environment
# variable naming a file; AMSREPOMIRROR_SITE_FILE stands in for the /etc file in tests only.
SETTINGS = ("/etc/luigi/client.cfg", "/etc/luigi/luigi.cfg", "AMSREPOMIRROR_SITE_FILE|/etc/amsrepomirror/amsrepomirror.cfg",
            "XDG_CONFIG_HOME|~/.config", "LUIGI_CONFIG_PATH", "AMSREPOMIRROR_CONFIG")
USER_FILE = "amsrepomirror/amsrepomirror.cfg"


def settings_files() -> list[str]:
    """The files of SETTINGS as paths (those that name nothing left out)."""
    files = []
    for name in SETTINGS:
        variable, _, fallback = name.rpartition("|") if "|" in name else ("", "", name)
        if variable == "XDG_CONFIG_HOME":  # the XDG spec: a relative $XDG_CONFIG_HOME is ignored
            base = os.environ.get(variable, "")
            files.append(os.path.join(base if os.path.isabs(base) else os.path.expanduser(fallback), USER_FILE))
        elif variable:
            files.append(os.environ.get(variable) or fallback)
        else:
            files.append(fallback if fallback.startswith("/") else os.environ.get(fallback, ""))
    return [f for f in files if f]


class Check:
    """One run of the check: the bundle folder, and the private folder the checked bytes go to."""

    def __init__(self, bundle: str):
        self.bundle = bundle
        self.private = tempfile.mkdtemp(prefix="amsrepomirror-wheels-")  # mode 0700: only this user
        os.mkdir(os.path.join(self.private, "wheels"))

    def refuse(self, why: str) -> None:
        shutil.rmtree(self.private, ignore_errors=True)
        sys.stderr.write("error: install.sh: " + why + "; nothing was installed\n")
        sys.exit(4)

    def read(self, rel: str, limit: int = LIMIT) -> bytes:
        """The bytes of regular file ``rel`` of the bundle, read once (no link followed, no FIFO waited on)."""
        path = os.path.join(self.bundle, *rel.split("/"))
        try:
            with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK | os.O_NOFOLLOW)) as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    self.refuse(rel + " is not a regular file")
                data = f.read(limit + 1)
        except OSError as exc:
            self.refuse("cannot read " + rel + ": " + str(exc))
        if len(data) > limit:
            self.refuse(rel + " is larger than " + str(limit) + " bytes")
        return data

    def keep(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.private, *name.split("/")), "xb") as f:
            f.write(data)

    def site_signers(self):
        """[trust] allowed_signers, revoked_keys, require_signature (else [unpack] allowed_signers), as
        the site sets them for verify (SETTINGS)."""
        parser = configparser.RawConfigParser()
        try:
            parser.read(settings_files(), encoding="utf-8")
        except (configparser.Error, ValueError) as exc:
            self.refuse("cannot read the site's settings: " + str(exc).splitlines()[0])

        def get(section, key):
            return parser.get(section, key, fallback="").strip()
        return (get("trust", "allowed_signers") or get("unpack", "allowed_signers"), get("trust", "revoked_keys"),
                get("trust", "require_signature").lower() != "false")

    def keygen(self, manifest: bytes, *args: str):
        try:
            return subprocess.run(["ssh-keygen", *args], input=manifest, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            self.refuse("cannot run ssh-keygen to check manifest.json.sig: " + str(exc))

    def require_signature(self, manifest: bytes) -> None:
        """With the site's allowed signers: manifest.json.sig must be a good signature of these manifest
        bytes by an allowed key (ssh-keygen -Y, OpenSSH 8.2 or later) before anything it lists is used."""
        signers, revoked, required = self.site_signers()
        if not signers:
            return
        if not os.path.lexists(os.path.join(self.bundle, "manifest.json.sig")):
            if required:  # guard: install-sh-unsigned
                self.refuse("manifest.json.sig is missing, but the site's allowed signers (" + signers +
                            ") require a signature")
            return
        signature = self.read("manifest.json.sig", SIGNATURE_LIMIT)
        if b"find-principals" not in self.keygen(manifest, "-?").stderr:
            self.refuse("this ssh-keygen cannot check manifest.json.sig before the wheels run (OpenSSH 8.2 or later "
                        "needed): check it by hand on a machine that can (README.txt, step 0)")
        with tempfile.TemporaryDirectory() as folder:
            sig = os.path.join(folder, "manifest.json.sig")
            with open(sig, "wb") as f:
                f.write(signature)
            found = self.keygen(manifest, "-Y", "find-principals", "-s", sig, "-f", signers)
            for line in found.stdout.decode("utf-8", "replace").splitlines() if found.returncode == 0 else []:
                for principal in [p for p in line.split(",") if p and not p.startswith("!")]:
                    done = self.keygen(manifest, "-Y", "verify", "-f", signers, "-I", principal, "-n", "amsrepomirror",
                                       "-s", sig, *(["-r", revoked] if revoked else []))
                    if done.returncode == 0:  # guard: install-sh-signature
                        print("install.sh: manifest.json.sig is good, by " + principal + " (" + signers + ")",
                              file=sys.stderr)
                        return
        self.refuse("manifest.json.sig does not verify as a signature of manifest.json by a key of " + signers)

    def checked(self, listed: dict, rel: str) -> bytes:
        """The bytes of ``rel`` when manifest.json lists it with their sha256; else refuse."""
        if rel not in listed:
            self.refuse(rel + " is not listed in manifest.json")
        data = self.read(rel)
        if hashlib.sha256(data).hexdigest() != listed[rel]:  # guard: tool-wheel-pinning
            self.refuse(rel + " does not match its sha256 in manifest.json")
        return data

    def run(self, requirements: str) -> str:
        """Check the signature, ``requirements`` and every wheel it names; return the private folder."""
        manifest = self.read("manifest.json")
        self.require_signature(manifest)
        try:
            listed = {t["path"]: t["sha256"] for t in json.loads(manifest)["tool"]}
        except Exception as exc:
            self.refuse("manifest.json lists no tool files: " + type(exc).__name__)
        pips = []
        names = self.checked(listed, requirements)
        self.keep("requirements.txt", names)
        for line in names.decode("utf-8", "replace").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            found = REQUIREMENT.fullmatch(line)
            if not found or listed.get("tool/" + found.group(1)) != found.group(2):  # guard: tool-requirement-listed
                self.refuse(requirements + " names a wheel that manifest.json does not list: " + ascii(line[:120]))
            self.keep(found.group(1), self.checked(listed, "tool/" + found.group(1)))
            if found.group(1).startswith("wheels/pip-"):
                pips.append(found.group(1))
        if len(pips) != 1:
            self.refuse(requirements + " names " + str(len(pips)) + " pip wheels, not one")
        pip = os.path.join(self.private, *pips[0].split("/"))  # guard: install-sh-checked-copy
        os.symlink(pip, os.path.join(self.private, "pip.whl"))
        return self.private


if __name__ == "__main__":
    print(Check(sys.argv[1]).run("tool/" + sys.argv[2]))
