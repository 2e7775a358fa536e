"""Signed bundles: ssh-keygen -Y sign on the online side; by hand and --allowed-signers on the offline side.

Real ssh-keygen and ssh-agent, keys generated in tmp folders; every refusal must leave $AMSHOME as it was.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from clihelp import cli_env, run_cli, served_tree, sha256, tree_hashes
from skkeys import USER_PRESENT, USER_VERIFIED, SkKey

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, SUMS_NAME
from amsrepomirror.bundle.signature import CHECKED_BY
from amsrepomirror.bundle.sums import read_sums, write_sums
from amsrepomirror.testing.repository import PLACEHOLDER_ORIGIN, change_file, make_repository, write_file, write_listing
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = "AMS2026.1"
SIG = MANIFEST_NAME + ".sig"
PRINCIPAL = "site-bundles"

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None and not os.environ.get("AMSREPOMIRROR_REQUIRE_TOOLS"),
                                reason="ssh-keygen (openssh-client) is not installed")


def keygen(*args, **kwargs):
    return subprocess.run(["ssh-keygen", *map(str, args)], capture_output=True, timeout=60, **kwargs)


def new_key(folder: Path, name: str, passphrase: str = "") -> Path:
    key = folder / name
    keygen("-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f", key).check_returncode()
    return key


def allowed_signers(folder: Path, key: Path, principal: str = PRINCIPAL) -> Path:
    path = folder / f"allowed_signers-{key.name}"
    path.write_text(f'{principal} namespaces="amsrepomirror" {(key.parent / (key.name + ".pub")).read_text()}')
    return path


def bundle(listing_url, mirror, out, *extra, env=None):
    return run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", listing_url,
                   "--out", out, "--chunk-size", "1MiB", *extra, env=env)


def resum(out: Path) -> None:
    """Recompute SHA256SUMS over what the folder now holds (as someone swapping files on a stick would)."""
    write_sums(out, [n for n in read_sums(out) if (out / n).exists()] + ([SIG] if (out / SIG).exists() else []))


def listing(folder: Path):
    """Every path under AMSHOME with its size, but unpack's own log (where it says why it refused)."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")
                  if p.name != ".amsrepomirror-unpack.log")


@pytest.fixture
def signed(scm_double, repo_tree, tmp_path, keys):
    key, _ = keys
    mirror, out = tmp_path / "mirror", tmp_path / "bundle"
    result = bundle(scm_double.listing_url(VERSION), mirror, out, "--sign-key", key)
    assert result.returncode == 0, result.stderr
    return mirror, out


def refused(out: Path, amshome: Path, *extra, config=None, env=None):
    """Unpack with the site's allowed signers; assert it is refused with exit 4, one line, AMSHOME untouched."""
    before = listing(amshome)
    result = run_cli(*(["--config", config] if config else []), "unpack", out, "--amshome", amshome, *extra, env=env)
    assert result.returncode == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("signature is bad" in errors[0] or "is not signed" in errors[0]), result.stderr
    assert "nothing was extracted" in errors[0]
    assert listing(amshome) == before
    return errors[0]


@pytest.fixture(params=["ssh-keygen", "python"])
def verifier(request, tmp_path):
    """(name, settings file forcing it): each signature test runs with either checker."""
    config = tmp_path / f"verifier-{request.param}.cfg"
    config.write_text(f"[trust]\nsignature_verifier = {request.param}\n")
    return request.param, config


def assert_refused_by(verifier, out, amshome, *extra):
    """Refused through unpack and verify, each saying which checker refused it."""
    name, config = verifier
    line = refused(out, amshome, *extra, config=config)
    if "is not signed" not in line:
        assert CHECKED_BY[name] in line, line
    result = run_cli("--config", config, "verify", out, *extra)
    assert result.returncode == 4, result.stdout + result.stderr
    if "signature: unsigned" not in result.stdout:
        assert "signature: BAD" in result.stdout and CHECKED_BY[name] in result.stdout, result.stdout
    return line


@pytest.mark.slow
def test_signed_bundle_checks_by_hand_and_unpacks(signed, keys, repo_tree, tmp_path):
    mirror, out = signed
    key, allowed = keys
    assert SIG in read_sums(out) and read_sums(out)[SIG] == sha256(out / SIG)
    assert "PRIVATE" not in (out / SIG).read_text() and key.read_text() not in "".join(
        p.read_text(errors="replace") for p in out.iterdir() if p.suffix != ".7z")
    # By hand, as README.txt says: find the principal, verify the signature, then the sums.
    principal = keygen("-Y", "find-principals", "-f", allowed, "-s", out / SIG).stdout.decode().strip()
    assert principal == PRINCIPAL
    with open(out / MANIFEST_NAME, "rb") as manifest:
        by_hand = keygen("-Y", "verify", "-f", allowed, "-I", principal, "-n", "amsrepomirror", "-s", out / SIG,
                         stdin=manifest)
    assert by_hand.returncode == 0 and b'Good "amsrepomirror" signature for site-bundles' in by_hand.stdout
    assert subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=out, capture_output=True).returncode == 0
    readme = (out / README_NAME).read_text()
    assert "ssh-keygen -Y verify" in readme and readme.index("ssh-keygen -Y verify") < readme.index("sha256sum -c")
    fingerprint = keygen("-l", "-f", str(key) + ".pub").stdout.decode().split()[1]

    result = run_cli("verify", out)
    assert result.returncode == 0 and f"signature: good, by ED25519 key {fingerprint}" in result.stdout
    result = run_cli("verify", out, "--allowed-signers", allowed)
    assert result.returncode == 0 and f"signature: good, by {PRINCIPAL} (ED25519 key {fingerprint}), allowed" \
        in result.stdout, result.stdout + result.stderr

    amshome = tmp_path / "ams"
    amshome.mkdir()
    result = run_cli("unpack", out, "--amshome", amshome, "--allowed-signers", allowed)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == served_tree(repo_tree, VERSION)


def _wrong_key(out, folder):
    other = new_key(folder, "intruder")
    with open(out / MANIFEST_NAME, "rb") as manifest:
        (out / SIG).write_bytes(keygen("-Y", "sign", "-n", "amsrepomirror", "-f", other, stdin=manifest).stdout)


def _wrong_namespace(out, folder):
    with open(out / MANIFEST_NAME, "rb") as manifest:
        (out / SIG).write_bytes(keygen("-Y", "sign", "-n", "file", "-f", folder / "site", stdin=manifest).stdout)


def _other_manifest(out, folder):
    other = folder / "other-manifest.json"
    body = json.loads((out / MANIFEST_NAME).read_text())
    body["created"] = "2020-01-01T00:00:00Z"
    other.write_text(json.dumps(body))
    with open(other, "rb") as manifest:
        (out / SIG).write_bytes(keygen("-Y", "sign", "-n", "amsrepomirror", "-f", folder / "site", stdin=manifest).stdout)


def _unsigned(out, folder):
    (out / SIG).unlink()


def _chunk_replaced(out, folder):
    """A chunk swapped for a valid 7z with other content; manifest.json and SHA256SUMS recomputed."""
    body = json.loads((out / MANIFEST_NAME).read_text())
    chunk = body["chunks"][0]
    evil = folder / "evil"
    evil.mkdir()
    for member in chunk["members"]:
        (evil / member).parent.mkdir(parents=True, exist_ok=True)
        (evil / member).write_bytes(b"#!/bin/sh\necho owned\n")
    (out / chunk["name"]).unlink()
    subprocess.run(["7zz", "a", "-bd", "-mx=0", out / chunk["name"], "."], cwd=evil, check=True, capture_output=True)
    chunk["size"], chunk["sha256"] = (out / chunk["name"]).stat().st_size, sha256(out / chunk["name"])
    for f in body["files"]:
        for part in f["parts"]:
            if part["chunk"] == chunk["name"]:
                part["size"] = part["offset"] = 0
                part["sha256"] = f["sha256"] = sha256(evil / part["member"])
                f["size"] = part["size"] = (evil / part["member"]).stat().st_size
    (out / MANIFEST_NAME).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("tamper", [_wrong_key, _wrong_namespace, _other_manifest, _unsigned, _chunk_replaced])
def test_refused_before_extraction_when_signature_does_not_hold(signed, keys, tmp_path, tamper, verifier):
    _, out = signed
    _, allowed = keys
    tamper(out, allowed.parent)
    resum(out)
    if tamper is not _unsigned and tamper is not _chunk_replaced:
        assert subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=out, capture_output=True).returncode == 0
    amshome = tmp_path / "ams"
    amshome.mkdir()
    (amshome / "VERSION.txt").write_text(f"{VERSION}\n")
    assert_refused_by(verifier, out, amshome, "--allowed-signers", allowed)


def test_revoked_key_is_refused(signed, keys, tmp_path, verifier):
    _, out = signed
    key, allowed = keys
    revoked = tmp_path / "revoked"
    shutil.copy(str(key) + ".pub", revoked)
    amshome = tmp_path / "ams"
    amshome.mkdir()
    line = assert_refused_by(verifier, out, amshome, "--allowed-signers", allowed, "--revoked-keys", revoked)
    assert "PRIVATE" not in line


@pytest.mark.parametrize("options", ['namespaces="file,git"', 'valid-before="20200101"', 'valid-after="20991231Z"'])
def test_a_key_its_allowed_signers_line_restricts_is_refused(signed, keys, tmp_path, verifier, options):
    """Listed, but only for other namespaces, or not (any more, yet) at this time."""
    _, out = signed
    key, _ = keys
    allowed = tmp_path / "restricted_signers"
    allowed.write_text(f"{PRINCIPAL} {options} {(key.parent / (key.name + '.pub')).read_text()}")
    amshome = tmp_path / "ams"
    amshome.mkdir()
    assert_refused_by(verifier, out, amshome, "--allowed-signers", allowed)


@pytest.mark.parametrize("before, says", [(b"# retired key\r", "a carriage return inside the line"),
                                          (b"old\0,", "a NUL byte")])
def test_an_allowed_signers_file_that_can_be_read_two_ways_is_refused_by_both_checkers(signed, keys, tmp_path, verifier,
                                                                                      before, says):
    """A lone CR in a comment hid the key from ssh-keygen but not from the built-in checker; a NUL
    cut the line for ssh-keygen only. Now neither checker picks a reading: exit 4, file and line named."""
    _, out = signed
    _, allowed = keys
    two_ways = tmp_path / "allowed_signers-two-ways"
    two_ways.write_bytes(before + allowed.read_bytes())
    amshome = tmp_path / "ams"
    amshome.mkdir()
    line = assert_refused_by(verifier, out, amshome, "--allowed-signers", two_ways)
    assert f"{two_ways}:1: the line holds {says}" in line, line


def test_a_binary_krl_is_used_by_ssh_keygen_and_refused_by_the_python_checker(signed, keys, tmp_path, verifier):
    _, out = signed
    key, allowed = keys
    other = new_key(allowed.parent, "retired")
    krl = tmp_path / "revoked.krl"
    keygen("-k", "-f", krl, str(other) + ".pub").check_returncode()
    amshome = tmp_path / "ams"
    amshome.mkdir()
    name, config = verifier
    if name == "ssh-keygen":
        result = run_cli("--config", config, "unpack", out, "--amshome", amshome, "--allowed-signers", allowed,
                         "--revoked-keys", krl)
        assert result.returncode == 0, result.stderr
        keygen("-k", "-u", "-f", krl, str(key) + ".pub").check_returncode()  # now the signing key too
        result = run_cli("--config", config, "verify", out, "--allowed-signers", allowed, "--revoked-keys", krl)
        assert result.returncode == 4 and "signature: BAD" in result.stdout, result.stdout
    else:
        line = assert_refused_by(verifier, out, amshome, "--allowed-signers", allowed, "--revoked-keys", krl)
        assert "is a binary KRL" in line and "OpenSSH 8.2" in line


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ed25519-sk", "ecdsa-sk"])
def test_a_bundle_signed_with_a_security_key(signed, tmp_path, verifier, kind):
    """An sk- key's signature (laid out as the authenticator makes it) installs; without a touch it is refused."""
    _, out = signed
    name, config = verifier
    key = SkKey.generate(kind)
    allowed = tmp_path / "sk_signers"
    allowed.write_text(f"{PRINCIPAL} {key.public_line()}\n")
    (out / SIG).write_text(key.sign_file(out / MANIFEST_NAME, flags=USER_VERIFIED))  # verified, but no touch
    resum(out)
    amshome = tmp_path / "ams"
    amshome.mkdir()
    line = assert_refused_by(verifier, out, amshome, "--allowed-signers", allowed)
    assert "did not confirm user presence" in line
    (out / SIG).write_text(key.sign_file(out / MANIFEST_NAME, flags=USER_PRESENT))
    resum(out)
    result = run_cli("--config", config, "verify", out, "--allowed-signers", allowed)
    assert result.returncode == 0 and f"signature: good, by {PRINCIPAL} ({kind.upper()} key SHA256:" in result.stdout
    assert CHECKED_BY[name] in result.stdout
    result = run_cli("--config", config, "unpack", out, "--amshome", amshome, "--allowed-signers", allowed)
    assert result.returncode == 0, result.stderr


def old_ssh_keygen(folder: Path) -> Path:
    """A bin folder whose ssh-keygen is OpenSSH 8.0's as far as -Y goes: it has none (RHEL/Rocky 8)."""
    bin_dir = folder / "old-openssh"
    bin_dir.mkdir()
    fake = bin_dir / "ssh-keygen"
    fake.write_text("#!/bin/sh\necho \"ssh-keygen: illegal option -- ${1#-}\" >&2\n"
                    "echo 'usage: ssh-keygen [-q] [-b bits] [-C comment] [-f output_keyfile] [-m format]' >&2\nexit 1\n")
    fake.chmod(0o755)
    return bin_dir


@pytest.mark.slow
def test_where_ssh_keygen_is_older_than_8_2_the_python_checker_steps_in(signed, keys, tmp_path):
    _, out = signed
    _, allowed = keys
    env = cli_env(PATH=f"{old_ssh_keygen(tmp_path)}:{os.environ['PATH']}")
    result = run_cli("verify", out, "--allowed-signers", allowed, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"signature: good, by {PRINCIPAL} (ED25519 key" in result.stdout and CHECKED_BY["python"] in result.stdout
    amshome = tmp_path / "ams"
    amshome.mkdir()
    _other_manifest(out, allowed.parent)
    resum(out)
    line = refused(out, amshome, "--allowed-signers", allowed, env=env)
    assert CHECKED_BY["python"] in line
    config = tmp_path / "force.cfg"
    config.write_text("[trust]\nsignature_verifier = ssh-keygen\n")
    result = run_cli("--config", config, "verify", out, "--allowed-signers", allowed, env=env)
    assert result.returncode == 2 and "has no -Y find-principals" in result.stderr, result.stderr


@pytest.mark.slow
def test_a_bundle_of_several_versions_is_signed_and_checked(tmp_path, keys, verifier):
    key, allowed = keys
    name, config = verifier
    root = tmp_path / "scm"
    new = make_repository(root, VERSION)
    old_only = ["AMS2025.1.yml", "linux/x86_64/adf-2025.101.tar.zst"]
    for i, rel in enumerate(old_only):
        write_file(root, rel, 50_000 + i, seed="old")
    write_listing(root, "AMS2025.1", PLACEHOLDER_ORIGIN, old_only + new[1::2])
    out = tmp_path / "bundle"
    with ScmDouble(root) as double:
        result = run_cli("bundle", "--mirror", tmp_path / "mirror", "--out", out, "--chunk-size", "1MiB", "--sign-key", key,
                         *[a for v in (VERSION, "AMS2025.1") for a in ("--version", v, "--listing-url", double.listing_url(v))])
    assert result.returncode == 0, result.stderr
    assert json.loads((out / MANIFEST_NAME).read_text())["versions"] == [VERSION, "AMS2025.1"]
    with open(out / MANIFEST_NAME, "rb") as manifest:
        assert keygen("-Y", "verify", "-f", allowed, "-I", PRINCIPAL, "-n", "amsrepomirror", "-s", out / SIG,
                      stdin=manifest).returncode == 0
    result = run_cli("--config", config, "verify", out, "--allowed-signers", allowed)
    assert result.returncode == 0 and f"signature: good, by {PRINCIPAL}" in result.stdout and CHECKED_BY[name] in result.stdout
    amshome = tmp_path / "ams"
    amshome.mkdir()
    _chunk_replaced(out, allowed.parent)
    resum(out)
    assert_refused_by(verifier, out, amshome, "--allowed-signers", allowed)


def test_allowed_signers_from_the_configuration(signed, keys, tmp_path):
    _, out = signed
    _, allowed = keys
    (out / SIG).unlink()
    resum(out)
    config = tmp_path / "site.cfg"
    config.write_text(f"[unpack]\nallowed_signers = {allowed}\n")
    amshome = tmp_path / "ams"
    amshome.mkdir()
    refused(out, amshome, config=config)
    result = run_cli("verify", out)
    assert result.returncode == 0 and "signature: unsigned" in result.stdout


def error_lines(result) -> list:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["[trust] allowed_signers", "[unpack] allowed_signers", "no signers"],
                         ids=["trust", "unpack-section", "no-signers"])
def test_verify_and_unpack_give_one_verdict_under_one_site_setting(signed, keys, tmp_path, setting):
    _, out = signed
    key, allowed = keys
    config = tmp_path / "site.cfg"
    section = setting.split("]")[0][1:] if setting != "no signers" else "trust"
    config.write_text(f"[{section}]\n" + (f"allowed_signers = {allowed}\n" if setting != "no signers" else ""))
    unsigned, tampered = tmp_path / "unsigned", tmp_path / "tampered"
    shutil.copytree(out, unsigned)
    _unsigned(unsigned, key.parent)
    resum(unsigned)
    shutil.copytree(out, tampered)
    body = json.loads((tampered / MANIFEST_NAME).read_text())
    body["created"] = "2020-01-01T00:00:00Z"  # the old signature no longer fits the manifest
    (tampered / MANIFEST_NAME).write_text(json.dumps(body))
    resum(tampered)
    signers = setting != "no signers"
    expected = {out: (0, ""), unsigned: (4, "is not signed") if signers else (0, ""),
                tampered: (4, "its signature is bad")}
    for folder, (code, reason) in expected.items():
        amshome = tmp_path / f"ams-{folder.name}"
        amshome.mkdir()
        verified = run_cli("--config", config, "verify", folder)
        unpacked = run_cli("--config", config, "unpack", folder, "--amshome", amshome)
        assert (verified.returncode, unpacked.returncode) == (code, code), (folder.name, verified.stdout + verified.stderr,
                                                                            unpacked.stderr)
        if code:
            [verify_error], [unpack_error] = error_lines(verified), error_lines(unpacked)
            assert reason in verify_error and reason in unpack_error, (verify_error, unpack_error)
            assert unpack_error == verify_error + "; nothing was extracted"
            assert not (amshome / "repository").exists()
        note = "note: [unpack] allowed_signers is read for now: move it to [trust]"
        assert (note in verified.stderr, note in unpacked.stderr) == ((setting == "[unpack] allowed_signers"),) * 2
        without = "verified without allowed signers: the signature was not checked"
        assert (without in verified.stdout) == (not signers and code == 0), verified.stdout


@pytest.mark.slow
def test_trust_settings_that_cannot_be_checked_are_refused(signed, keys, tmp_path):
    _, out = signed
    _, allowed = keys
    config = tmp_path / "site.cfg"
    config.write_text(f"[trust]\nrevoked_keys = {allowed}\n")
    for command in (("verify", out), ("unpack", out, "--amshome", tmp_path)):
        result = run_cli("--config", config, *command)
        assert result.returncode == 2, result.stderr
        assert error_lines(result) == ["error: [trust] revoked_keys needs allowed signers (--allowed-signers or "
                                       "[trust] allowed_signers)"]
    config.write_text(f"[trust]\nallowed_signers = {allowed}\nrequire_signature = maybe\n")
    result = run_cli("--config", config, "verify", out)
    assert result.returncode == 2 and error_lines(result) == [
        f"error: [trust] require_signature = 'maybe' in {config} (--config): give true or false"], result.stderr
    # require_signature = false: an unsigned bundle passes both, a signed one must still be good.
    config.write_text(f"[trust]\nallowed_signers = {allowed}\nrequire_signature = false\n")
    (out / SIG).unlink()
    resum(out)
    amshome = tmp_path / "ams"
    amshome.mkdir()
    assert run_cli("--config", config, "verify", out).returncode == 0
    assert run_cli("--config", config, "unpack", out, "--amshome", amshome).returncode == 0


def test_passphrase_key_signs_through_ssh_agent(scm_double, repo_tree, tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    key = new_key(folder, "site", passphrase="correct horse battery")
    allowed = allowed_signers(folder, key)
    askpass = folder / "askpass"
    askpass.write_text("#!/bin/sh\necho 'correct horse battery'\n")
    askpass.chmod(0o700)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"])
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock), SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                   DISPLAY=":0")
        subprocess.run(["ssh-add", str(key)], env=env, check=True, capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        out = tmp_path / "bundle"
        result = bundle(scm_double.listing_url(VERSION), tmp_path / "mirror", out, "--sign-key", key,
                        env=cli_env(SSH_AUTH_SOCK=str(sock)))
        assert result.returncode == 0, result.stderr
        assert "correct horse" not in result.stdout + result.stderr
    finally:
        agent.kill()
        agent.wait(timeout=30)
    result = run_cli("verify", out, "--allowed-signers", allowed)
    assert result.returncode == 0 and f"signature: good, by {PRINCIPAL}" in result.stdout, result.stderr


@pytest.mark.slow
def test_older_bundle_is_refused_unless_downgrade_allowed(scm_double, repo_tree, tmp_path):
    mirror, old, new = tmp_path / "mirror", tmp_path / "old", tmp_path / "new"
    url = scm_double.listing_url(VERSION)
    assert bundle(url, mirror, old).returncode == 0
    change_file(repo_tree, "linux/x86_64/adf-2026.101.tar.zst", seed="newer")
    assert bundle(url, mirror, new).returncode == 0
    assert [json.loads((b / MANIFEST_NAME).read_text())["sequence"] for b in (old, new)] == [1, 2]
    amshome = tmp_path / "ams"
    amshome.mkdir()
    assert run_cli("unpack", new, "--amshome", amshome).returncode == 0
    installed = tree_hashes(amshome / "repository")
    receipt = json.loads((amshome / ".amsrepomirror-receipt.json").read_text())
    assert receipt["bundle_sequence"] == 2
    result = run_cli("unpack", old, "--amshome", amshome)
    assert result.returncode == 2, result.stderr
    assert "older than the installed one" in result.stderr and "--allow-downgrade" in result.stderr
    assert tree_hashes(amshome / "repository") == installed
    result = run_cli("unpack", old, "--amshome", amshome, "--allow-downgrade")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") != installed


@pytest.mark.slow
@pytest.mark.parametrize("sequence", [None, 0])
def test_a_bundle_without_a_sequence_is_a_downgrade_when_the_receipt_has_one(scm_double, repo_tree, tmp_path,
                                                                              sequence):
    mirror, old, new = tmp_path / "mirror", tmp_path / "old", tmp_path / "new"
    url = scm_double.listing_url(VERSION)
    assert bundle(url, mirror, old).returncode == 0
    change_file(repo_tree, "linux/x86_64/adf-2026.101.tar.zst", seed="newer")
    assert bundle(url, mirror, new).returncode == 0
    body = json.loads((old / MANIFEST_NAME).read_text())
    body.pop("sequence")
    if sequence is not None:
        body["sequence"] = sequence
    (old / MANIFEST_NAME).write_text(json.dumps(body))  # as an older tool wrote it, or a field removed
    resum(old)
    amshome = tmp_path / "ams"
    amshome.mkdir()
    assert run_cli("unpack", new, "--amshome", amshome).returncode == 0
    installed = tree_hashes(amshome / "repository")
    result = run_cli("unpack", old, "--amshome", amshome)
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: bundle {old} (no number of its mirror, made {body['created']}) is older than the installed one "
        f"(number 2, made {json.loads((new / MANIFEST_NAME).read_text())['created']}); to go back to it add "
        "--allow-downgrade"]
    assert tree_hashes(amshome / "repository") == installed
    result = run_cli("unpack", old, "--amshome", amshome, "--allow-downgrade")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") != installed


@pytest.mark.slow
def test_a_delta_bundle_is_signed_the_same_way(signed, keys, scm_double, repo_tree, tmp_path):
    mirror, out = signed
    key, allowed = keys
    amshome = tmp_path / "ams"
    amshome.mkdir()
    assert run_cli("unpack", out, "--amshome", amshome, "--allowed-signers", allowed).returncode == 0
    change_file(repo_tree, "linux/x86_64/adf-2026.101.tar.zst", seed="next")
    delta = tmp_path / "delta"
    result = bundle(scm_double.listing_url(VERSION), mirror, delta, "--since", "last", "--sign-key", key)
    assert result.returncode == 0, result.stderr
    assert json.loads((delta / MANIFEST_NAME).read_text())["base"] and SIG in read_sums(delta)
    assert "ssh-keygen -Y verify" in (delta / README_NAME).read_text()
    result = run_cli("unpack", delta, "--amshome", amshome, "--allowed-signers", allowed)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == served_tree(repo_tree, VERSION)


def test_ssh_keygen_and_the_touch_check_judge_the_same_bytes_of_the_signature(tmp_path, monkeypatch):
    """manifest.json.sig read once: a valid security-key signature made without a touch, swapped
    for a touched one (of another manifest) after ssh-keygen -Y verify read it, is still refused,
    and every ssh-keygen run was handed the bytes that were there at the start."""
    import amsrepomirror.bundle.signature as signature

    folder, key = tmp_path / "bundle", SkKey.generate("ed25519-sk")
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text('{"version": "AMS2026.1"}')
    (tmp_path / "other.json").write_text('{"version": "AMS2099.1"}')
    untouched = key.sign_file(folder / MANIFEST_NAME, flags=USER_VERIFIED).encode()
    touched_other = key.sign_file(tmp_path / "other.json", flags=USER_PRESENT).encode()
    (folder / SIG).write_bytes(untouched)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{PRINCIPAL} {key.public_line()}\n")

    seen = []
    real_ssh_keygen = signature._ssh_keygen

    def then_swap(args, **kwargs):
        seen.append(Path(args[args.index("-s") + 1]).read_bytes())
        done = real_ssh_keygen(args, **kwargs)
        if args[0] == "verify":
            (folder / SIG).write_bytes(touched_other)  # what the next read of the folder's file gets
        return done

    monkeypatch.setattr(signature, "_ssh_keygen", then_swap)
    check = signature.check_signature(folder, allowed, manifest=(folder / MANIFEST_NAME).read_bytes(), verifier="ssh-keygen")
    assert seen == [untouched, untouched]  # find-principals, verify
    assert "did not confirm user presence" in check.problem and check.allowed is False, check


def test_ssh_keygen_judges_the_allowed_signers_bytes_the_gate_read(tmp_path, monkeypatch, keys):
    """allowed_signers is read once: a file rewritten to list an intruder after that read changes
    nothing, because ssh-keygen is handed a private copy of the bytes that were checked."""
    import amsrepomirror.bundle.signature as signature

    _, allowed = keys
    intruder = new_key(tmp_path, "intruder")
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text('{"version": "AMS2026.1"}')
    with open(folder / MANIFEST_NAME, "rb") as manifest:
        (folder / SIG).write_bytes(keygen("-Y", "sign", "-n", "amsrepomirror", "-f", intruder, stdin=manifest).stdout)
    listed = allowed.read_bytes()
    seen = []
    real_ssh_keygen = signature._ssh_keygen

    def swap_first(args, **kwargs):
        allowed.write_text(f"{PRINCIPAL} {(tmp_path / 'intruder.pub').read_text()}")
        seen.append(Path(args[args.index("-f") + 1]).read_bytes())
        return real_ssh_keygen(args, **kwargs)

    monkeypatch.setattr(signature, "_ssh_keygen", swap_first)
    check = signature.check_signature(folder, allowed, manifest=(folder / MANIFEST_NAME).read_bytes(),
                                      verifier="ssh-keygen")
    assert seen == [listed] and check.allowed is False and "its key is not in" in check.problem, check


def test_the_manifest_bytes_are_given_by_keyword_only(tmp_path):
    """A path given where manifest.json's bytes belong is refused at the call, not checked as something else."""
    from amsrepomirror.bundle.signature import check_signature

    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text("{}")
    (folder / SIG).write_text("not a signature")
    with pytest.raises(TypeError, match="keyword-only argument: 'manifest'"):
        check_signature(folder, folder / MANIFEST_NAME, tmp_path / "allowed_signers")


@pytest.mark.parametrize("name, make, says", [
    (SIG, lambda path: os.mkfifo(path), "is not a regular file"),
    (MANIFEST_NAME, lambda path: os.mkfifo(path), "is not a regular file"),
    (MANIFEST_NAME, lambda path: path.symlink_to("/dev/zero"), "is not a regular file"),
    (SIG, lambda path: path.write_bytes(b"-----BEGIN SSH SIGNATURE-----\n" + b"A" * 70_000), "larger than 65536 bytes"),
])
def test_a_manifest_or_signature_that_is_no_small_file_is_refused_in_one_line(signed, keys, tmp_path, name, make, says):
    """manifest.json or its .sig as a FIFO, a link to an endless device, or far too large: read with a
    bound and refused with one line (exit 4), never waited on or read into memory without end."""
    _, out = signed
    _, allowed = keys
    (out / name).unlink()
    make(out / name)
    amshome = tmp_path / "ams"
    amshome.mkdir()
    before = listing(amshome)
    result = run_cli("unpack", out, "--amshome", amshome, "--allowed-signers", allowed, timeout=60)
    assert result.returncode == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert listing(amshome) == before
    verified = run_cli("verify", out, "--allowed-signers", allowed, timeout=60)  # (its SHA256SUMS check may tell first)
    assert verified.returncode == 4 and len([line for line in verified.stderr.splitlines() if line.startswith("error:")]) == 1


def test_a_fifo_in_place_of_the_readme_is_named_not_waited_on(signed, tmp_path):
    """verify hashes README.txt against SHA256SUMS: a FIFO there is named in one line (exit 4)."""
    _, out = signed
    (out / README_NAME).unlink()
    os.mkfifo(out / README_NAME)
    result = run_cli("verify", out, timeout=60)
    assert result.returncode == 4, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and README_NAME in errors[0] and "not a regular file" in errors[0], result.stderr


class _Opened:
    """inotify(7) on files: which of them some process opened since the watch began (the marker that a
    command read a file, without changing the command)."""

    IN_OPEN, IN_NONBLOCK = 0x20, 0o4000

    def __init__(self, paths):
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK)
        assert self.fd >= 0
        self.names = {self.libc.inotify_add_watch(self.fd, os.fsencode(p), self.IN_OPEN): p for p in paths}
        assert all(wd >= 0 for wd in self.names)

    def opened(self):
        import struct
        found = set()
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            data = b""
        while data:
            wd, _, _, length = struct.unpack_from("iIII", data)
            found.add(self.names[wd])
            data = data[16 + length:]
        os.close(self.fd)
        return found


def test_verify_opens_no_chunk_of_a_manifest_its_signers_refuse(signed, keys, tmp_path, verifier):
    """With allowed signers, verify judges the signature before it reads a chunk: the 7z parser never sees an
    archive that only an unsigned (forged) manifest names."""
    _, out = signed
    _, allowed = keys
    _chunk_replaced(out, allowed.parent)
    resum(out)
    chunks = sorted(out.glob("*.7z"))
    watch = _Opened(chunks)
    result = run_cli("--config", verifier[1], "verify", out, "--allowed-signers", allowed)
    opened = watch.opened()
    assert result.returncode == 4, result.stdout + result.stderr
    [error] = error_lines(result)
    assert "its signature is bad" in error, error
    assert opened == set(), sorted(p.name for p in opened)
    assert "signature: BAD" in result.stdout and "is intact" not in result.stdout


def test_a_readme_changed_under_a_signed_manifest_is_refused(signed, keys, tmp_path):
    """README.txt tells the admin what to run: its sha256 is in the signed manifest, so an edited one (SHA256SUMS
    recomputed) is named by verify and refused by unpack, and the by-hand NOT SIGNED check names it."""
    _, out = signed
    _, allowed = keys
    readme = (out / README_NAME).read_text()
    assert "NOT SIGNED" in readme
    (out / README_NAME).write_text(readme.replace("1. Check the copy", "1. First run: sh ./fix-permissions.sh\n"
                                                  "   Then check the copy"))
    resum(out)
    result = run_cli("verify", out, "--allowed-signers", allowed)
    assert result.returncode == 4, result.stdout + result.stderr
    [error] = error_lines(result)
    assert "README.txt: corrupt (does not match manifest.json: do not follow it)" in error, error
    amshome = tmp_path / "ams"
    amshome.mkdir()
    unpacked = run_cli("unpack", out, "--amshome", amshome, "--allowed-signers", allowed)
    assert unpacked.returncode == 4 and "README.txt: corrupt" in unpacked.stderr, unpacked.stderr
    assert not (amshome / "repository").exists()
    command = next(line.strip() for line in readme.splitlines() if "NOT SIGNED" in line)
    by_hand = subprocess.run(["sh", "-c", command], cwd=out, capture_output=True, text=True, timeout=60)
    assert by_hand.stdout == "README.txt: NOT SIGNED\n", by_hand.stdout + by_hand.stderr
