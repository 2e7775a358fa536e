"""repair moves the recovery files par2 read into DIR: DIR filled beforehand with links into the bundle, under the
bundle's own names, must never make repair write to the bundle, and what DIR ends with is the bundle as made."""

import os

import pytest
from clihelp import run_cli
from test_parity import SCRATCH, big_chunks, copy, flip_byte, made, snapshot  # noqa: F401 (fixtures)

from amsrepomirror.bundle.format import MANIFEST_NAME, BundleManifest


def names(bundle):
    m = BundleManifest.read(bundle / MANIFEST_NAME)
    return [c.name for c in m.chunks] + [f.path for f in m.parity.files]


@pytest.mark.slow
def test_symlinks_named_as_the_bundle_files_into_the_bundle_are_replaced_not_written_through(copy, made, tmp_path):  # noqa: F811
    flip_byte(copy / big_chunks(copy)[0])
    before = snapshot(copy)
    into = tmp_path / "fixed"
    into.mkdir()
    for name in names(copy):
        os.symlink(copy / name, into / name)
    repair = run_cli("repair", copy, "--into", into)
    assert snapshot(copy) == before, "repair wrote to the bundle through a link in DIR"
    assert repair.returncode in (0, 2), repair.stderr
    if repair.returncode == 0:
        for name in names(copy):
            assert not (into / name).is_symlink() and (into / name).read_bytes() == (made[1] / name).read_bytes()


@pytest.mark.slow
def test_a_scratch_folder_that_is_a_link_into_the_bundle(copy, made, tmp_path):  # noqa: F811
    """DIR/.amsrepomirror-repair, where par2 rewrites copies in place, a symlink to the bundle folder."""
    flip_byte(copy / big_chunks(copy)[0])
    before = snapshot(copy)
    into = tmp_path / "fixed"
    into.mkdir()
    os.symlink(copy, into / SCRATCH)
    repair = run_cli("repair", copy, "--into", into)
    assert snapshot(copy) == before, "repair wrote to the bundle through its scratch folder"
    assert repair.returncode == 0, repair.stderr  # the link is removed, not followed: DIR is repaired
    assert not (into / SCRATCH).exists() and os.path.isdir(copy)
    for name in names(copy):
        assert (into / name).read_bytes() == (made[1] / name).read_bytes()


@pytest.mark.slow
def test_a_tool_folder_in_dir_that_is_a_link_into_the_bundle_is_refused(copy, tmp_path):  # noqa: F811
    """tool/ files are written under DIR/tool: a link there would lead the writes into the bundle (or anywhere)."""
    flip_byte(copy / big_chunks(copy)[0])
    (copy / "elsewhere").mkdir()
    before = snapshot(copy)
    into = tmp_path / "fixed"
    into.mkdir()
    os.symlink(copy / "elsewhere", into / "tool")
    repair = run_cli("repair", copy, "--into", into)
    assert repair.returncode == 2 and "holds tool, which is not a folder of its own" in repair.stderr
    assert snapshot(copy) == before
