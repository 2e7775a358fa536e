"""A signed bundle's manifest.json swapped after its signature was checked, while unpack runs.

The real ``amsrepomirror unpack --allowed-signers`` stops itself at named steps (placement.STOP_AT_ENV);
the test then changes the bundle folder as someone holding the stick could (another bundle's
manifest.json with the chunks and SHA256SUMS that match it, manifest.json.sig kept), or as a hostile
filesystem could that serves other bytes on each read, and lets it go on. Unpack reads manifest.json
once and checks the signature on those bytes: a later swap changes nothing that is used. Either the
signed bundle's tree is placed, with a receipt naming the signed manifest.json, or the run is refused
(exit 4, $AMSHOME exactly as it was) because the chunks no longer match the signed manifest; never is
another tree placed or another manifest named in the receipt.
"""

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from clihelp import cli_env, popen_cli, run_cli, served_tree, tree_hashes
from test_signature import SIG, VERSION, bundle, resum
from test_signature import pytestmark as needs_ssh_keygen

from amsrepomirror.bundle.format import MANIFEST_NAME
from amsrepomirror.offline.placement import RECEIPT, STOP_AT_ENV
from amsrepomirror.testing.repository import change_file

CHANGED = "linux/x86_64/adf-2026.101.tar.zst"
#: Generous bound for one unpack of the small test repository (never asserted as a speed).
TIMEOUT = 120

pytestmark = [pytest.mark.slow, needs_ssh_keygen]


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


def stopped_or_ended(proc) -> bool:
    """Wait until ``proc`` stops itself at a step (True) or ends (False, its exit code kept): waitpid
    with WUNTRACED reports either, so no polling and no clock. Its few lines of output fit the pipes."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    proc.returncode = os.waitstatus_to_exitcode(status)
    return False


def unpack_with_swaps(bundle_dir: Path, amshome: Path, allowed: Path, *swaps) -> tuple:
    """Run the signature-checked unpack, stopped at each (step, swap) of ``swaps`` in turn; call
    ``swap()`` while it is stopped there, then let it go on. Returns (exit code, stdout, stderr, the
    steps reached): a run that ends before a step is not stopped there."""
    proc = popen_cli("unpack", bundle_dir, "--amshome", amshome, "--allowed-signers", allowed,
                     env=cli_env(**{STOP_AT_ENV: ",".join(step for step, _ in swaps)}))
    reached = []
    try:
        for step, swap in swaps:
            if not stopped_or_ended(proc):
                break
            reached.append(step)
            swap()
            proc.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in stderr, stderr
    return proc.returncode, stdout, stderr, reached


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


def put_back(bundle_dir: Path, signed: Path, *names: str):
    """A swap() that puts the signed bundle's ``names`` (manifest.json, ...) back in ``bundle_dir``."""
    def swap():
        for name in names:
            shutil.copy2(signed / name, bundle_dir / name)
    return swap


def assert_refused(code: int, stderr: str, bundle_dir: Path, amshome: Path, before, why: str):
    """Exit 4, one error line saying the bundle failed its chunk check (``why``: in that line), before
    anything was extracted; AMSHOME as it was (no staging left)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 4, stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: bundle {bundle_dir} failed verification: "), stderr
    assert why in errors[0], stderr
    assert "unpack: extracting" not in stderr, stderr
    assert amshome_state(amshome) == before


def assert_signed_placed(code: int, stderr: str, amshome: Path, signed: Path, signed_tree):
    """Exit 0, the signed bundle's tree in AMSHOME, and a receipt naming its signed manifest.json."""
    assert code == 0, stderr
    assert tree_hashes(amshome / "repository") == signed_tree
    receipt = json.loads((amshome / RECEIPT).read_text())
    assert receipt["manifest_sha256"] == hashlib.sha256((signed / MANIFEST_NAME).read_bytes()).hexdigest()


@pytest.fixture
def full_bundles(installed, scm_double, repo_tree, tmp_path, keys):
    """(the next signed full bundle, a copy of it to tamper with, its tree, an unsigned full bundle of
    other content, that one's tree): the forged one is a later one, so that no downgrade refusal
    gets in its way."""
    key, _ = keys
    mirror, _, _ = installed
    url = scm_double.listing_url(VERSION)
    change_file(repo_tree, CHANGED, seed="signed")
    assert bundle(url, mirror, tmp_path / "signed", "--sign-key", key).returncode == 0
    signed_tree = served_tree(repo_tree, VERSION)
    change_file(repo_tree, CHANGED, seed="forged")
    assert bundle(url, mirror, tmp_path / "forged").returncode == 0
    forged_tree = served_tree(repo_tree, VERSION)
    assert forged_tree != signed_tree
    stick = shutil.copytree(tmp_path / "signed", tmp_path / "stick")
    return tmp_path / "signed", stick, signed_tree, tmp_path / "forged", forged_tree


def test_a_full_bundle_swapped_after_its_signature_check_is_refused_before_extraction(installed, full_bundles, keys):
    """Another bundle, whole and consistent, in place of the signed one: the chunks are checked
    against the signed manifest.json as it was read, so the signed chunk that is gone is missed."""
    _, _, amshome = installed
    signed, stick, signed_tree, forged, _ = full_bundles
    before = amshome_state(amshome)
    code, _, stderr, _ = unpack_with_swaps(stick, amshome, keys[1], ("unpack:signature-checked", swap_in(stick, forged)))
    assert_refused(code, stderr, stick, amshome, before, f"{MANIFEST_NAME}: corrupt (does not match SHA256SUMS)")

    # The signed bundle, stopped at the same step and left alone, unpacks: the refusal was the swap.
    code, _, stderr, _ = unpack_with_swaps(signed, amshome, keys[1], ("unpack:signature-checked", lambda: None))
    assert_signed_placed(code, stderr, amshome, signed, signed_tree)


def test_a_forged_manifest_swapped_in_and_the_signed_one_back_never_places_the_forged_tree(installed, full_bundles,
                                                                                           keys):
    """The double swap: the forged bundle right after the signature check, for the chunk check to
    read; the signed manifest.json back before anything could hash the file again (what a hostile
    filesystem does without any timing, by serving other bytes on each read)."""
    _, _, amshome = installed
    signed, stick, _, forged, forged_tree = full_bundles
    before = amshome_state(amshome)
    code, _, stderr, reached = unpack_with_swaps(stick, amshome, keys[1],
                                              ("unpack:signature-checked", swap_in(stick, forged)),
                                              ("unpack:chunks-checked", put_back(stick, signed, MANIFEST_NAME)))
    assert tree_hashes(amshome / "repository") != forged_tree
    # The chunk check used the signed manifest.json as first read: the forged chunks do not pass it.
    assert reached == ["unpack:signature-checked"], stderr
    assert_refused(code, stderr, stick, amshome, before, "chunks not in manifest.json (remove them)")


def garble(bundle_dir: Path):
    """A swap() that writes a manifest.json that is no manifest at all, SHA256SUMS made to match."""
    def swap():
        (bundle_dir / MANIFEST_NAME).write_bytes(b"{ not a manifest")
        resum(bundle_dir)
    return swap


@pytest.mark.parametrize("swap", ["forged bundle", "garbled manifest"])
def test_a_manifest_swapped_after_the_tree_is_verified_changes_nothing(installed, full_bundles, keys, swap):
    """Everything placed was checked against the signed manifest.json as first read: the signed tree
    is placed, the receipt names the signed manifest, and what is reported comes from it too, not
    from the one now in the folder (a garbled one is not even read)."""
    _, _, amshome = installed
    signed, stick, signed_tree, forged, _ = full_bundles
    change = swap_in(stick, forged) if swap == "forged bundle" else garble(stick)
    code, stdout, stderr, _ = unpack_with_swaps(stick, amshome, keys[1], ("unpack:verified", change))
    assert_signed_placed(code, stderr, amshome, signed, signed_tree)
    assert f"The {VERSION} package repository is at {amshome.absolute() / 'repository'}." in stdout, stdout


def test_a_raised_sequence_claim_after_the_signature_check_is_refused(installed, full_bundles, keys):
    """The signed manifest itself with one claim changed (a sequence far ahead, which would make every
    later real bundle look older), SHA256SUMS made to match: SHA256SUMS no longer matches the signed
    manifest.json as it was read."""
    _, _, amshome = installed
    _, stick, _, _, _ = full_bundles
    before = amshome_state(amshome)

    def raise_sequence():
        body = json.loads((stick / MANIFEST_NAME).read_text())
        body["sequence"] = 999
        (stick / MANIFEST_NAME).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
        resum(stick)

    code, _, stderr, _ = unpack_with_swaps(stick, amshome, keys[1], ("unpack:signature-checked", raise_sequence))
    assert_refused(code, stderr, stick, amshome, before, f"{MANIFEST_NAME}: corrupt (does not match SHA256SUMS)")


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
    code, _, stderr, _ = unpack_with_swaps(stick, amshome, allowed, ("unpack:signature-checked", swap_in(stick, forged)))
    assert_refused(code, stderr, stick, amshome, before, f"{MANIFEST_NAME}: corrupt (does not match SHA256SUMS)")

    # The signed delta, stopped at the same step and left alone, unpacks: the refusal was the swap.
    code, _, stderr, _ = unpack_with_swaps(signed, amshome, allowed, ("unpack:signature-checked", lambda: None))
    assert_signed_placed(code, stderr, amshome, signed, signed_tree)
