"""Slips an admin in a hurry makes with the offline commands: the wrong folder as AMSHOME, a
--drop-version that cannot be carried out. Each is one ``error:`` line with exit 2 and a way
forward, and AMSHOME is left exactly as it was."""

import os
import shutil

import pytest
from clihelp import cli_env, run_cli, tree_hashes
from test_multiversion import (  # noqa: F401 (fixtures)
    NEW,
    OLD,
    amshome_state,
    both_installed,
    bundle_of,
    double,
    errors,
    two_versions,
)

VERSION = "AMS2026.1"


def installed(scm_double, tmp_path):
    """A mirror, a full bundle of it and an AMSHOME it was unpacked into: (bundle, AMSHOME)."""
    mirror, out, amshome = tmp_path / "mirror", tmp_path / "bundle", tmp_path / "ams"
    made = run_cli("mirror", "--version", VERSION, "--mirror", mirror, "--listing-url", scm_double.listing_url(VERSION))
    assert made.returncode == 0, made.stderr
    made = run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--out", out, "--chunk-size", "1MiB", "--offline")
    assert made.returncode == 0, made.stderr
    amshome.mkdir()
    unpacked = run_cli("unpack", out, "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    return out, amshome


def names_under(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder) for n in dirs + files)


@pytest.mark.slow
def test_the_repository_folder_given_as_amshome_is_refused_and_nothing_is_written_into_it(scm_double, tmp_path):
    out, amshome = installed(scm_double, tmp_path)
    repo = amshome / "repository"
    before = (names_under(amshome), tree_hashes(repo))

    for args, env_home in [(("unpack", out, "--amshome", repo), None), (("unpack", out), repo),
                           (("verify", "--installed", "--amshome", repo), None), (("receipt", "--amshome", repo), None)]:
        refused = run_cli(*args, env=None if env_home is None else cli_env(AMSHOME=str(env_home)))
        assert refused.returncode == 2 and len(errors(refused)) == 1, (args, refused.stderr)
        line = errors(refused)[0]
        assert f"is the repository folder of the AMSHOME {amshome}" in line and f"give --amshome {amshome}" in line
        assert (names_under(amshome), tree_hashes(repo)) == before, args  # no second tree, lock, log or receipt in it

    below = repo / "linux"
    refused = run_cli("unpack", out, "--amshome", below)
    assert refused.returncode == 2 and errors(refused) == [
        f"error: AMSHOME {below} is inside the repository folder of the AMSHOME {amshome} (it holds "
        f".amsrepomirror-receipt.json); nothing was changed: give --amshome {amshome}"], refused.stderr
    assert (names_under(amshome), tree_hashes(repo)) == before

    scrub = run_cli("verify", "--installed", "--amshome", amshome)
    assert scrub.returncode == 0 and "is intact" in scrub.stdout, scrub.stderr + scrub.stdout


def test_the_scrub_of_a_folder_without_receipt_leaves_no_lock_there(tmp_path):
    folder = tmp_path / "not-an-amshome"
    folder.mkdir()
    refused = run_cli("verify", "--installed", "--amshome", folder)
    assert refused.returncode == 2 and "has no receipt" in errors(refused)[0], refused.stderr
    assert os.listdir(folder) == []


@pytest.mark.slow
def test_a_drop_version_that_cannot_be_carried_out_is_refused_never_ignored(double, both_installed, tmp_path):  # noqa: F811
    mirror, amshome, new_tree, old_tree, gone = both_installed
    state = amshome_state(amshome)

    # The installed bundle holds the version named: "nothing to do" would hide that nothing was dropped.
    held = run_cli("unpack", tmp_path / "full", "--amshome", amshome, "--drop-version", OLD)
    assert held.returncode == 2 and len(errors(held)) == 1, held.stderr
    assert f"holds {OLD} and installs it" in errors(held)[0] and f"leave out --drop-version {OLD}" in errors(held)[0]
    assert amshome_state(amshome) == state

    # A typo names a version that is not installed: refused, naming what is.
    made = bundle_of(double, mirror, tmp_path / "both-again", OLD, NEW)
    assert made.returncode == 0, made.stderr
    typo = run_cli("unpack", tmp_path / "both-again", "--amshome", amshome, "--drop-version", "AMS2O25.1")
    assert typo.returncode == 2 and len(errors(typo)) == 1, typo.stderr
    assert "AMS2O25.1 is not installed" in errors(typo)[0] and f"{OLD}, {NEW}" in errors(typo)[0]
    assert amshome_state(amshome) == state

    # The version a delta updates cannot be dropped by it; the advice must not send the admin to a
    # bundle command that refuses it too.
    delta = bundle_of(double, mirror, tmp_path / "d1", OLD, since="last")
    assert delta.returncode == 0, delta.stderr
    target = run_cli("unpack", tmp_path / "d1", "--amshome", amshome, "--drop-version", OLD)
    assert target.returncode == 2 and len(errors(target)) == 1, target.stderr
    assert f"holds {OLD} and installs it" in errors(target)[0]
    assert f"bundle --since ... --drop-version {OLD}" not in errors(target)[0]
    assert amshome_state(amshome) == state

    # verify names every version a bundle holds, not only the first.
    checked = run_cli("verify", tmp_path / "both-again")
    assert checked.returncode == 0 and f"of {OLD} and {NEW}" in checked.stdout, checked.stdout + checked.stderr

    scrub = run_cli("verify", "--installed", "--amshome", amshome)  # the scrub too names every installed version
    assert scrub.returncode == 0 and f", {OLD} and {NEW})" in scrub.stdout, scrub.stdout + scrub.stderr

    # What is right still works.
    ok = run_cli("unpack", tmp_path / "both-again", "--amshome", amshome)
    assert ok.returncode == 0, ok.stderr
    assert tree_hashes(amshome / "repository") == {**new_tree, **old_tree}


@pytest.mark.slow
@pytest.mark.parametrize("settings, said", [
    ("[Trust]\nallowed_signers = {signers}\n", "[Trust] in --config is not read (section names are case-sensitive): "
                                               "rename it [trust]"),
    ("[trust]\nallowed_signer = {signers}\n", "[trust] allowed_signer in --config is not a setting: "
                                              "did you mean allowed_signers?"),
    ("[trust]\nallowed-signers = {signers}\n", "[trust] allowed-signers in --config is not a setting: "
                                               "did you mean allowed_signers?"),
    ("[trust]\ntrust_installed = true\n", "[trust] trust_installed in --config is not a setting: it belongs in [unpack]"),
    ("[unpack]\ntrust_instaled = true\n", "[unpack] trust_instaled in --config is not a setting: "
                                          "did you mean trust_installed?"),
], ids=["section-case", "key-typo", "key-dash", "key-in-other-section", "unpack-key-typo"])
def test_a_trust_setting_nothing_reads_is_refused_by_verify_and_unpack(scm_double, tmp_path, settings, said):
    out, amshome = installed(scm_double, tmp_path)
    signers = tmp_path / "allowed_signers"
    signers.write_text("")
    site = tmp_path / "site.cfg"
    site.write_text(settings.format(signers=signers))
    before = (names_under(amshome), tree_hashes(amshome / "repository"))
    for args in (("verify", out), ("unpack", out, "--amshome", amshome, "--reinstall")):
        refused = run_cli("--config", site, *args)
        assert refused.returncode == 2 and errors(refused) == [f"error: {said}"], (args, refused.stderr)
    assert (names_under(amshome), tree_hashes(amshome / "repository")) == before


@pytest.mark.slow
def test_settings_that_are_read_still_pass(scm_double, tmp_path):
    out, amshome = installed(scm_double, tmp_path)
    site = tmp_path / "site.cfg"
    site.write_text("[trust]\nrequire_signature = false\n[unpack]\ntrust_installed = true\n[Unpack]\nkeep_previous = true\n")
    assert run_cli("--config", site, "verify", out).returncode == 0
    again = run_cli("--config", site, "unpack", out, "--amshome", amshome)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("settings, said", [
    ("[trust]\nallowed_signers = {missing}\n",
     "[trust] allowed_signers = {missing}: does not exist (an OpenSSH allowed_signers or revoked keys file); "
     "nothing was checked"),
    ("[trust]\nallowed_signers = {folder}\n",
     "[trust] allowed_signers = {folder}: is not a regular file (an OpenSSH allowed_signers or revoked keys file); "
     "nothing was checked"),
], ids=["signers-missing", "signers-a-folder"])
def test_a_trust_setting_that_cannot_be_used_is_named_as_such_for_an_unsigned_bundle_too(scm_double, tmp_path,
                                                                                          settings, said):
    out, amshome = installed(scm_double, tmp_path)
    names = {"missing": tmp_path / "no-such-file", "folder": tmp_path}
    site = tmp_path / "site.cfg"
    site.write_text(settings.format(**names))
    before = (names_under(amshome), tree_hashes(amshome / "repository"))
    for args in (("verify", out), ("unpack", out, "--amshome", amshome, "--reinstall")):
        refused = run_cli("--config", site, *args)
        assert refused.returncode == 2 and errors(refused) == [f"error: {said.format(**names)}"], (args, refused.stderr)
    assert (names_under(amshome), tree_hashes(amshome / "repository")) == before


@pytest.mark.parametrize("how", ["option", "setting"])
def test_a_scheduler_url_without_scheme_is_a_usage_error_naming_the_form(tmp_path, how):
    """``127.0.0.1:8082`` (no http://) is a typo to fix, not a scheduler that does not answer (exit 1)."""
    mirror = tmp_path / "mirror"
    site = tmp_path / "site.cfg"
    site.write_text("[core]\ndefault-scheduler-url = 127.0.0.1:8082\n")
    where = ("--scheduler-url", ("--scheduler-url", "127.0.0.1:8082")) if how == "option" else \
        ("[core] default-scheduler-url", ("--config", site))
    args = ("mirror", "--version", VERSION, "--mirror", mirror, "--listing-url", "http://127.0.0.1:9/AMS2026.1.txt")
    result = run_cli(*(where[1] if how == "setting" else ()), *args, *(where[1] if how == "option" else ()))
    assert result.returncode == 2, result.stderr
    assert errors(result) == [f"error: {where[0]} 127.0.0.1:8082 is not an http:// or https:// URL: give it as "
                              "http://HOST:PORT (e.g. http://127.0.0.1:8082)"]
    assert not mirror.exists()


@pytest.mark.slow
@pytest.mark.parametrize("settings, said", [
    ("[unpack]\ntrust_installed = ture\n", "[unpack] trust_installed = 'ture' in {site} (--config): give true or false"),
    ("[unpack]\ninstalled_version_files = VERSION.txt\n",
     "[unpack] installed_version_files = 'VERSION.txt' in {site} (--config): give a JSON list of strings, "
     'e.g. ["VERSION.txt", "Utils/amsversion.txt"]'),
], ids=["bool", "list"])
def test_an_unpack_setting_with_a_bad_value_is_a_usage_error(scm_double, tmp_path, settings, said):
    out, amshome = installed(scm_double, tmp_path)
    site = tmp_path / "site.cfg"
    site.write_text(settings)
    before = (names_under(amshome), tree_hashes(amshome / "repository"))
    refused = run_cli("--config", site, "unpack", out, "--amshome", amshome, "--reinstall")
    assert refused.returncode == 2 and errors(refused) == [f"error: {said.format(site=site)}"], refused.stderr
    assert (names_under(amshome), tree_hashes(amshome / "repository")) == before


@pytest.mark.slow
def test_a_bundle_inside_the_repository_it_replaces_is_refused_not_removed_with_it(scm_double, tmp_path):
    out, amshome = installed(scm_double, tmp_path)
    inside = amshome / "repository" / "incoming"
    shutil.copytree(out, inside)
    before = (names_under(amshome), tree_hashes(amshome / "repository"))
    refused = run_cli("unpack", inside, "--amshome", amshome, "--reinstall")
    assert refused.returncode == 2 and len(errors(refused)) == 1, refused.stderr
    assert f"is inside {amshome / 'repository'}, which unpack replaces" in errors(refused)[0]
    assert (names_under(amshome), tree_hashes(amshome / "repository")) == before  # the bundle is still there
    moved = amshome / "bundles" / "b"
    shutil.move(inside, moved)
    done = run_cli("unpack", moved, "--amshome", amshome, "--reinstall")
    assert done.returncode == 0, done.stderr
    assert (moved / "manifest.json").is_file()


def test_the_unpack_task_is_named_as_the_trust_check_knows_it():
    from amsrepomirror.bundle.trust import UNPACK_TASK
    from amsrepomirror.tasks.unpack import Unpack
    assert Unpack.get_task_family() == UNPACK_TASK
