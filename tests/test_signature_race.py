"""A signed bundle's manifest.json swapped after its signature was checked, while unpack runs.

The real ``amsrepomirror unpack --allowed-signers`` stops itself at a named step (placement.STOP_AT_ENV);
the test then changes the bundle folder as someone holding the stick could (another bundle's
manifest.json with the chunks and SHA256SUMS that match it, manifest.json.sig kept) and lets it go
on. Unpack must refuse with exit 4 and leave $AMSHOME exactly as it was: the signature vouches for
one manifest.json, and no other may be placed or named in the receipt.
"""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from clihelp import cli_env, popen_cli, run_cli, served_tree, tree_hashes
from test_signature import SIG, VERSION, allowed_signers, bundle, new_key, resum
from test_signature import pytestmark as needs_ssh_keygen

from amsrepomirror.bundle.format import MANIFEST_NAME
from amsrepomirror.offline.placement import RECEIPT, STOP_AT_ENV
from amsrepomirror.testing.scmdouble import change_file

CHANGED = "linux/x86_64/adf-2026.101.tar.zst"
#: Generous bound for one unpack of the small test repository (never asserted as a speed).
TIMEOUT = 120
REFUSAL = "changed after its signature was checked; nothing was placed"

pytestmark = needs_ssh_keygen


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    key = new_key(folder, "site")
    return key, allowed_signers(folder, key)


@pytest.fixture
def installed(scm_double, repo_tree, tmp_path, keys):
    """A mirror, its signed full bundle, and an AMSHOME holding it (unpacked with the signature checked)."""
    key, allowed = keys
    mirror, full, amshome = tmp_path / "mirror", tmp_path / "full", tmp_path / "ams"
    amshome.mkdir()
    assert bundle(scm_double.listing_url(VERSION), mirror, full, "--sign-key", key).returncode == 0
    result = run_cli("unpack", full, "--amshome", amshome, "--allowed-signers", allowed, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return mirror, full, amshome


def amshome_state(amshome: Path):
    """Everything an unpack could change in AMSHOME (its own log left out): names, the tree's bytes, the receipt."""
    names = sorted(n for n in os.listdir(amshome) if n != ".amsrepomirror-unpack.log")
    receipt = (amshome / RECEIPT).read_bytes() if (amshome / RECEIPT).exists() else None
    return names, tree_hashes(amshome / "repository"), receipt


def process_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat ('T': stopped); the name before it may hold spaces or ')'."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def unpack_with_swap(bundle_dir: Path, amshome: Path, allowed: Path, step: str, swap) -> tuple:
    """Run the signature-checked unpack, stopped at ``step``; call ``swap()`` while it is stopped, then
    let it go on. Returns (exit code, stderr)."""
    proc = popen_cli("unpack", bundle_dir, "--amshome", amshome, "--allowed-signers", allowed,
                     env=cli_env(**{STOP_AT_ENV: step}))
    try:
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and process_state(proc.pid) != "T":
            assert time.monotonic() < deadline, f"unpack did not reach {step}"
            time.sleep(0.01)
        assert proc.poll() is None, f"unpack ended before {step}: {proc.communicate()[1]}"
        swap()
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in stderr, stderr
    return proc.returncode, stderr


def files_of(bundle_dir: Path):
    """Every file of a bundle folder, the signature left out: what another bundle brings along."""
    return sorted(p.name for p in bundle_dir.iterdir() if p.name != SIG)


def swap_in(bundle_dir: Path, other: Path):
    """A swap() that puts another (unsigned) bundle's files in ``bundle_dir``, its manifest.json.sig kept,
    and SHA256SUMS made to match: a consistent bundle, only not the one that was signed."""
    def swap():
        for name in files_of(bundle_dir):
            (bundle_dir / name).unlink()
        for name in files_of(other):
            shutil.copy2(other / name, bundle_dir / name)
        resum(bundle_dir)
    return swap


def assert_refused(code: int, stderr: str, bundle_dir: Path, amshome: Path, before, *, extracted: bool):
    """Exit 4, one error line saying the manifest changed after its check, AMSHOME as it was (no
    staging left). ``extracted``: whether the refusal came after extraction (the receipt's check)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 4, stderr
    assert errors == [f"error: {MANIFEST_NAME} of {bundle_dir} {REFUSAL}"], stderr
    assert ("unpack: extracting" in stderr) == extracted, stderr
    assert amshome_state(amshome) == before


@pytest.fixture
def full_bundles(installed, scm_double, repo_tree, tmp_path, keys):
    """(the next signed full bundle, a copy of it to tamper with, its tree, an unsigned full bundle of
    other content): the forged one is a later one, so that no downgrade refusal gets in its way."""
    key, _ = keys
    mirror, _, _ = installed
    url = scm_double.listing_url(VERSION)
    change_file(repo_tree, CHANGED, seed="signed")
    assert bundle(url, mirror, tmp_path / "signed", "--sign-key", key).returncode == 0
    signed_tree = served_tree(repo_tree, VERSION)
    change_file(repo_tree, CHANGED, seed="forged")
    assert bundle(url, mirror, tmp_path / "forged").returncode == 0
    stick = shutil.copytree(tmp_path / "signed", tmp_path / "stick")
    return tmp_path / "signed", stick, signed_tree, tmp_path / "forged"


def test_a_full_bundle_swapped_after_its_signature_check_is_refused_before_extraction(installed, full_bundles, keys):
    """Another bundle, whole and consistent, in place of the signed one: its chunks check out against
    its own manifest, so only the signed manifest's hash stands between it and AMSHOME."""
    _, _, amshome = installed
    signed, stick, signed_tree, forged = full_bundles
    before = amshome_state(amshome)
    code, stderr = unpack_with_swap(stick, amshome, keys[1], "unpack:signature-checked", swap_in(stick, forged))
    assert_refused(code, stderr, stick, amshome, before, extracted=False)

    # The signed bundle, stopped at the same step and left alone, unpacks: the refusal was the swap.
    code, stderr = unpack_with_swap(signed, amshome, keys[1], "unpack:signature-checked", lambda: None)
    assert code == 0, stderr
    assert tree_hashes(amshome / "repository") == signed_tree


def test_a_manifest_swapped_after_the_tree_is_verified_never_reaches_the_receipt(installed, full_bundles, keys):
    """Without the check the signed tree would be placed with a receipt naming the forged manifest."""
    _, _, amshome = installed
    _, stick, _, forged = full_bundles
    before = amshome_state(amshome)
    # The signed chunks are extracted and verified; then the manifest the receipt would name is swapped.
    code, stderr = unpack_with_swap(stick, amshome, keys[1], "unpack:verified", swap_in(stick, forged))
    assert_refused(code, stderr, stick, amshome, before, extracted=True)


def test_a_raised_sequence_claim_after_the_signature_check_is_refused(installed, full_bundles, keys):
    """The signed manifest itself with one claim changed (a sequence far ahead, which would make every
    later real bundle look older), SHA256SUMS made to match: every chunk still checks out."""
    _, _, amshome = installed
    _, stick, _, _ = full_bundles
    before = amshome_state(amshome)

    def raise_sequence():
        body = json.loads((stick / MANIFEST_NAME).read_text())
        body["sequence"] = 999
        (stick / MANIFEST_NAME).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
        resum(stick)

    code, stderr = unpack_with_swap(stick, amshome, keys[1], "unpack:signature-checked", raise_sequence)
    assert_refused(code, stderr, stick, amshome, before, extracted=False)


def test_a_delta_bundle_swapped_after_its_signature_check_is_refused(installed, scm_double, repo_tree, tmp_path, keys):
    """A forged delta on the same installed tree in place of the signed delta."""
    key, allowed = keys
    mirror, full, amshome = installed
    url = scm_double.listing_url(VERSION)
    change_file(repo_tree, CHANGED, seed="signed")
    assert bundle(url, mirror, tmp_path / "signed", "--since", "last", "--sign-key", key).returncode == 0
    signed_tree = served_tree(repo_tree, VERSION)
    change_file(repo_tree, CHANGED, seed="forged")
    assert bundle(url, mirror, tmp_path / "forged", "--since", full).returncode == 0  # on the same installed tree
    signed, forged = tmp_path / "signed", tmp_path / "forged"
    for delta in (signed, forged):
        assert json.loads((delta / MANIFEST_NAME).read_text())["base"] == json.loads(
            (amshome / RECEIPT).read_text())["tree_sha256"]
    stick = shutil.copytree(signed, tmp_path / "stick")
    before = amshome_state(amshome)
    code, stderr = unpack_with_swap(stick, amshome, allowed, "unpack:signature-checked", swap_in(stick, forged))
    assert_refused(code, stderr, stick, amshome, before, extracted=False)

    # The signed delta, stopped at the same step and left alone, unpacks: the refusal was the swap.
    code, stderr = unpack_with_swap(signed, amshome, allowed, "unpack:signature-checked", lambda: None)
    assert code == 0, stderr
    assert tree_hashes(amshome / "repository") == signed_tree
