"""The offline side against hostile or damaged input: links planted in AMSHOME, bundle manifests
with bad fields, unpacks refused half-way, and an installed tree changed after it was unpacked.

One bundle of the SCM double's repository is built for the whole module; tests that damage it
work on a copy.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import REPO, cli_env, run_cli, tree_hashes
from test_airgap import VERSION, _rewrite_chunk, _with_symlink, bundle, unpack

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, SUMS_NAME, BundleManifest
from amsrepomirror.bundle.sums import read_sums, write_sums
from amsrepomirror.errors import IntegrityError
from amsrepomirror.offline.placement import JOURNAL, LOCK, RECEIPT, STAGING
from amsrepomirror.pack.readme import FOLDER_CHECK
from amsrepomirror.testing.repository import make_repository
from amsrepomirror.testing.scmdouble import ScmDouble

LOG = ".amsrepomirror-unpack.log"
#: Generous: an unpack of this bundle takes a second or two; a run blocked on a planted fifo never ends.
BLOCKED = 120


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(mirror, bundle folder) of the double's repository, built once: do not change them."""
    root = tmp_path_factory.mktemp("source")
    make_repository(root / "scm", VERSION)
    with ScmDouble(root / "scm") as double:
        result = bundle(double.listing_url(VERSION), root / "mirror", root / "bundle")
    assert result.returncode == 0, result.stderr
    return root / "mirror", root / "bundle"


@pytest.fixture
def amshome(tmp_path):
    home = tmp_path / "ams"
    home.mkdir()
    return home


def copy_of(source, tmp_path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(source[1], out)
    return out


def manifest_body(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))


def resign(out: Path, body: dict) -> None:
    """Write ``body`` as manifest.json and SHA256SUMS to match, as a forger would."""
    (out / MANIFEST_NAME).write_text(json.dumps(body, indent=1), encoding="utf-8")
    write_sums(out, [p.name for p in out.glob("*.7z")] + [MANIFEST_NAME, README_NAME])


def error_lines(result) -> list:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


# --- A: nothing in AMSHOME is followed through a symlink -------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("target_exists", [True, False], ids=["existing-target", "dangling"])
def test_unpack_never_writes_through_a_symlinked_log(source, amshome, tmp_path, target_exists):
    mirror, out = source
    victim = tmp_path / "victim.txt"
    if target_exists:
        victim.write_text("not the log\n")
    (amshome / LOG).symlink_to(victim)
    result = unpack(out, amshome)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == tree_hashes(mirror)
    if target_exists:
        assert victim.read_text() == "not the log\n"
    else:
        assert not os.path.lexists(victim)
    assert (amshome / LOG).is_symlink()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and LOG in warnings[0] and "symlink" in warnings[0]


def test_receipt_and_journal_links_are_never_followed(source, amshome, tmp_path):
    mirror, out = source
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading through a link to it would block for ever
    victim = tmp_path / "victim.json"
    victim.write_text("{}\n")
    (amshome / RECEIPT).symlink_to(fifo)
    (amshome / JOURNAL).symlink_to(victim)
    result = run_cli("unpack", out, "--amshome", amshome, timeout=BLOCKED)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == tree_hashes(mirror)
    assert victim.read_text() == "{}\n" and fifo.is_fifo()
    assert not (amshome / RECEIPT).is_symlink() and json.loads((amshome / RECEIPT).read_text())["version"] == VERSION
    assert not os.path.lexists(amshome / JOURNAL)


def test_a_symlinked_lock_is_refused_in_one_line(source, amshome, tmp_path):
    mirror, out = source
    (amshome / LOCK).symlink_to(tmp_path / "elsewhere")
    result = unpack(out, amshome)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and LOCK in error_lines(result)[0] and "symlink" in error_lines(result)[0]
    assert not os.path.lexists(tmp_path / "elsewhere")
    assert not (amshome / "repository").exists()


# --- B: every string field of a bundle manifest is checked when it is read -------------------------

INJECTED = "AMS2026.1\nINJECTED: every chunk verified"


@pytest.mark.slow
def test_newline_in_the_manifest_version_is_refused_and_shown_escaped(source, amshome, tmp_path):
    out = copy_of(source, tmp_path)
    body = manifest_body(out)
    body["version"] = INJECTED
    resign(out, body)
    for result in (run_cli("verify", out), unpack(out, amshome)):
        assert result.returncode == 4, result.stdout + result.stderr
        errors = error_lines(result)
        assert len(errors) == 1 and "field version" in errors[0] and repr(INJECTED) in errors[0]
        assert not any(line.startswith("INJECTED") for line in (result.stdout + result.stderr).splitlines())
    assert not (amshome / "repository").exists() and not (amshome / STAGING).exists()
    assert not any(line.startswith("INJECTED") for line in (amshome / LOG).read_text().splitlines())


def _set(*where, value):
    """A change to a manifest body: the item at the path ``where`` becomes ``value``."""
    def change(body):
        item = body
        for key in where[:-1]:
            item = item[key]
        item[where[-1]] = value
    return change


BAD_FIELDS = {  # id: (change, words naming the field, the bad value)
    "version-newline": (_set("version", value=INJECTED), "field version", INJECTED),
    "version-not-ams": (_set("version", value="2026.1"), "field version", "2026.1"),
    "version-path": (_set("version", value="AMS2026.1/../x"), "field version", "AMS2026.1/../x"),
    "chunk-name-dotdot": (_set("chunks", 0, "name", value="../AMS2026.1-0001.7z"), "field chunks[0].name",
                          "../AMS2026.1-0001.7z"),
    "chunk-name-other-version": (_set("chunks", 0, "name", value="AMS2025.1-0001.7z"), "field chunks[0].name",
                                 "AMS2025.1-0001.7z"),
    "part-chunk-newline": (_set("files", 0, "parts", 0, "chunk", value="AMS2026.1-0001.7z\n"), "parts[0].chunk of file",
                           "AMS2026.1-0001.7z\n"),
    "path-escape-sequence": (_set("files", 0, "path", value="linux/\x1b[2Jclear"), "field files[0].path",
                             "linux/\x1b[2Jclear"),
    "path-dotdot": (_set("files", 0, "path", value="linux/../../etc/passwd"), "field files[0].path",
                    "linux/../../etc/passwd"),
    "path-absolute": (_set("files", 0, "path", value="/etc/passwd"), "field files[0].path", "/etc/passwd"),
    "path-backslash": (_set("files", 0, "path", value="linux\\x.zip"), "field files[0].path", "linux\\x.zip"),
    "path-empty-segment": (_set("files", 0, "path", value="linux//x.zip"), "field files[0].path", "linux//x.zip"),
    "path-dot-segment": (_set("files", 0, "path", value="./x.zip"), "field files[0].path", "./x.zip"),
    "path-line-separator": (_set("files", 0, "path", value="a\u2028b"), "field files[0].path", "a\u2028b"),
    "path-bidi-override": (_set("files", 0, "path", value="a\u202eb"), "field files[0].path", "a\u202eb"),
    "path-empty": (_set("files", 0, "path", value=""), "field files[0].path", ""),
    "part-member-carriage-return": (_set("files", 0, "parts", 0, "member", value="a\rb"), "parts[0].member of file",
                                    "a\rb"),
    "chunk-member-newline": (_set("chunks", 0, "members", 0, value="x\ny"), "members[0] of chunk", "x\ny"),
    "sha256-not-hex": (_set("files", 0, "sha256", value="Z" * 64), "sha256 of file", "Z" * 64),
    "size-negative": (_set("files", 0, "size", value=-1), "size of file", -1),
    "size-text": (_set("files", 0, "size", value="12"), "size of file", "12"),
    "tool-version-newline": (_set("tool_version", value="0.1\nX"), "field tool_version", "0.1\nX"),
    "created-newline": (_set("created", value="2026\nX"), "field created", "2026\nX"),
    "compression-unknown": (_set("compression", value="gzip\n"), "field compression", "gzip\n"),
    "base-not-sha256": (_set("base", value="../x"), "field base", "../x"),
    "unknown-key": (_set("files", 0, "path\nX", value=1), "field files[0] has keys", "path\nX"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_bad_manifest_field_is_named_with_its_value_escaped(source, tmp_path, case):
    change, field, value = BAD_FIELDS[case]
    body = manifest_body(source[1])
    change(body)
    path = tmp_path / MANIFEST_NAME
    path.write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(IntegrityError) as info:
        BundleManifest.read(path)
    message = str(info.value)
    assert field in message and repr(value) in message
    assert message.isprintable()  # no newline, escape or other control character reaches a message


def test_utf8_names_pass_but_a_c1_control_character_does_not(source, tmp_path):
    body = manifest_body(source[1])
    path = tmp_path / MANIFEST_NAME
    body["files"][0]["path"] = "common/données/fiché ü.txt"
    path.write_text(json.dumps(body), encoding="utf-8")
    assert BundleManifest.read(path).files[0].path == "common/données/fiché ü.txt"
    body["files"][0]["path"] = "common/données/fiché\x85ü.txt"  # NEL: a line break to str.splitlines()
    path.write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(IntegrityError, match=r"field files\[0\]\.path .*\\x85"):
        BundleManifest.read(path)


# --- C: a refused unpack leaves no staging folder ------------------------------------------------

def _wrong_member_sha256(out: Path) -> str:
    """The manifest expects other content for a whole file after the first chunk (sums re-signed)."""
    body = manifest_body(out)
    first = min(c["name"] for c in body["chunks"])
    victim = next(f for f in body["files"] if len(f["parts"]) == 1 and f["parts"][0]["chunk"] != first)
    victim["sha256"] = victim["parts"][0]["sha256"] = "0" * 64
    resign(out, body)
    return victim["path"]


def _symlink_in_second_chunk(out: Path) -> str:
    """The second chunk also holds a symlink, which the manifest lists as a file (sums re-signed)."""
    chunk = _rewrite_chunk(out, 1, _with_symlink)
    body = manifest_body(out)
    part = {"chunk": chunk, "member": "common/passwd-link", "offset": 0, "size": 11, "sha256": "0" * 64}
    body["files"].append({"path": part["member"], "size": part["size"], "sha256": part["sha256"], "parts": [part]})
    resign(out, body)
    return chunk


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_wrong_member_sha256, _symlink_in_second_chunk], ids=["bad-hash", "hostile-chunk"])
def test_refused_unpack_removes_its_staging_and_keeps_the_live_tree(source, amshome, tmp_path, damage):
    mirror, good = source
    assert unpack(good, amshome).returncode == 0
    live = tree_hashes(amshome / "repository")
    out = copy_of(source, tmp_path)
    named = damage(out)
    result = unpack(out, amshome)
    assert result.returncode == 4, result.stderr
    errors = error_lines(result)
    assert len(errors) == 1 and named in errors[0]
    assert "extracting" in result.stderr  # refused after the staging folder was made
    assert not [p.name for p in amshome.iterdir() if p.name.startswith(".repository")]
    assert tree_hashes(amshome / "repository") == live == tree_hashes(mirror)


# --- D: "nothing to do" looks at the installed tree; --reinstall installs again ----------------------

@pytest.mark.slow
def test_changed_install_is_named_and_reinstall_restores_it(source, amshome):
    mirror, out = source
    assert unpack(out, amshome).returncode == 0
    untouched = unpack(out, amshome)
    assert untouched.returncode == 0 and "nothing to do" in untouched.stderr
    assert "extracting" not in untouched.stderr

    repo = amshome / "repository"
    files = sorted(f.path for f in BundleManifest.read(out / MANIFEST_NAME).files if not f.path.endswith(".yml"))
    gone, grown, flipped = files[0], files[1], files[2]
    (repo / gone).unlink()
    with open(repo / grown, "ab") as f:
        f.write(b"x")
    data = bytearray((repo / flipped).read_bytes())
    data[0] ^= 0xFF  # same size: only a re-hash (--reinstall) sees this one
    (repo / flipped).write_bytes(bytes(data))
    (repo / "stray.txt").write_text("not from the bundle\n")
    damaged = tree_hashes(repo)

    refused = unpack(out, amshome)
    assert refused.returncode == 4, refused.stderr
    lines = refused.stderr.splitlines()
    assert f"unpack: missing {gone}" in lines
    assert any(line.startswith(f"unpack: wrong size {grown} ") for line in lines)
    assert "unpack: extra file stray.txt" in lines
    errors = error_lines(refused)
    assert len(errors) == 1 and "--reinstall" in errors[0] and "3 difference(s)" in errors[0]
    assert tree_hashes(repo) == damaged  # a refusal touches nothing

    again = unpack(out, amshome, "--reinstall")
    assert again.returncode == 0, again.stderr
    assert tree_hashes(repo) == tree_hashes(mirror)
    assert not [p.name for p in amshome.iterdir() if p.name.startswith(".repository")]

    intact = unpack(out, amshome, "--reinstall")  # intact and installed: unpacked again all the same
    assert intact.returncode == 0 and "extracting" in intact.stderr and "nothing to do" not in intact.stderr
    assert tree_hashes(repo) == tree_hashes(mirror)
    assert "nothing to do" in unpack(out, amshome).stderr


# --- E: what a manifest may name is what a listing may name (tree_path_problems) -----------------------

def _with_copies(out: Path, *paths: str) -> None:
    """A forged manifest that has unpack place the first carried file again under each of ``paths``."""
    body = manifest_body(out)
    first = body["files"][0]
    body["schema"] = "amsrepomirror/bundle-manifest/2"
    body["copies"] = body.get("copies", []) + [
        {"path": p, "size": first["size"], "sha256": first["sha256"], "source": first["path"]} for p in paths]
    resign(out, body)


HOSTILE_NAMES = {  # id: (paths placed as copies, words of the refusal)
    "state-folder-upper-case": ([".AMSREPOMIRROR/records/x.json"], "state folder"),
    "reserved-prefix-mixed-case": (["common/x.AmsRepoMirror-partial"], "reserved name"),
    "normalisation-pair": (["common/caf\u00e9.tgz", "common/cafe\u0301.tgz"], "normalisation"),
    "normalisation-pair-of-folders": (["donn\u00e9es/a.tgz", "donne\u0301es/b.tgz"], "normalisation"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HOSTILE_NAMES))
def test_names_a_filesystem_would_merge_are_refused_by_verify_and_unpack(source, amshome, tmp_path, case):
    paths, words = HOSTILE_NAMES[case]
    out = copy_of(source, tmp_path)
    _with_copies(out, *paths)
    for result in (run_cli("verify", out), unpack(out, amshome)):
        assert result.returncode == 4, result.stdout + result.stderr
        errors = error_lines(result)
        assert len(errors) == 1 and words in errors[0], errors
        assert repr(paths[-1].split("/")[0] if "folders" in case else paths[-1]) in errors[0], errors
    assert not (amshome / "repository").exists()


@pytest.mark.slow
def test_names_that_differ_only_in_case_unpack_on_linux_with_a_warning(source, amshome, tmp_path):
    out = copy_of(source, tmp_path)
    _with_copies(out, "common/Twin.bin", "common/twin.bin")
    for result in (run_cli("verify", out), unpack(out, amshome)):
        assert result.returncode == 0, result.stdout + result.stderr
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert any("'common/Twin.bin' and 'common/twin.bin' differ only in case" in w for w in warnings), result.stderr
    placed = tree_hashes(amshome / "repository")
    assert placed["common/Twin.bin"] == placed["common/twin.bin"] == tree_hashes(source[0])[
        manifest_body(out)["files"][0]["path"]]


def test_names_that_differ_only_in_case_are_refused_where_case_folds(source, tmp_path, monkeypatch):
    import amsrepomirror.util.paths as paths
    body = manifest_body(source[1])
    first = body["files"][0]
    body["copies"] = [{"path": p, "size": first["size"], "sha256": first["sha256"], "source": first["path"]}
                      for p in ("common/Twin.bin", "common/twin.bin")]
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_text(json.dumps(body), encoding="utf-8")
    assert BundleManifest.read(manifest).path_warnings
    monkeypatch.setattr(paths, "CASE_INSENSITIVE", True)
    with pytest.raises(IntegrityError, match=r"'common/Twin\.bin' and 'common/twin\.bin' differ only in case"):
        BundleManifest.read(manifest)


# --- F: nothing the manifest does not name is used: unlisted tool files and chunk-like names -------

UNLISTED_REFUSED = [
    "tool/wheels/amsrepomirror-99.0-py3-none-any.whl",  # no tool list at all: every file under tool/ is unlisted
    "tool/install.sh",
    "TOOL/install.sh",  # what a case-insensitive filesystem finds as tool/install.sh
    "CHUNK-0123456789ABCDEF.7Z",
    ".chunk-0123456789abcdef.7z",
    ".7Z",
    "chunk-0123456789abcdef.7z.001",
    "chunk-0123456789abcdef.7z. ",  # Windows drops the trailing dot and space
    "luigi.cfg",  # settings, for a command run in the bundle folder
    "Client.cfg",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", UNLISTED_REFUSED)
def test_an_unlisted_tool_file_or_chunk_like_name_is_refused(source, amshome, tmp_path, name):
    out = copy_of(source, tmp_path)
    added = out / name
    added.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(next(out.glob("*.7z")), added)
    for result in (run_cli("verify", out), run_cli("verify", "--partial", out), unpack(out, amshome)):
        assert result.returncode == 4, result.stdout + result.stderr
        errors = error_lines(result)
        assert len(errors) == 1 and name in errors[0] and "not in manifest.json" in errors[0]
    assert not (amshome / "repository").exists()


def test_other_unlisted_files_are_named_in_one_warning_and_never_read(source, amshome, tmp_path):
    mirror, _ = source
    out = copy_of(source, tmp_path)
    chunk = next(out.glob("*.7z")).name
    for name in (".DS_Store", f"._{chunk}", "notes.txt"):
        os.mkfifo(out / name)  # read, it would block for ever
    (out / ".Trashes" / "501").mkdir(parents=True)
    (out / ".Trashes" / "501" / chunk).write_bytes(b"not looked at")
    for result in (run_cli("verify", out, timeout=BLOCKED), run_cli("unpack", out, "--amshome", amshome, timeout=BLOCKED)):
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if "does not list" in line]
        assert len(warnings) == 1, result.stderr
        assert warnings[0].endswith(f"ignored 4 file(s) that manifest.json does not list (never read): "
                                    f".DS_Store, .Trashes/, ._{chunk}, notes.txt")
    assert tree_hashes(amshome / "repository") == tree_hashes(mirror)


def _folder_check(out: Path) -> str:
    """The by-hand check README.txt gives (that the folder holds exactly the listed files), run with sh."""
    lines = [line.strip() for line in (out / README_NAME).read_text(encoding="utf-8").splitlines()]
    command = next(line for line in lines if line.startswith("{ echo SHA256SUMS;"))
    done = subprocess.run(["sh", "-c", command], cwd=out, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_lists_the_files_and_its_by_hand_check_catches_an_added_one(source, tmp_path):
    out = copy_of(source, tmp_path)
    text = (out / README_NAME).read_text(encoding="utf-8")
    listed = text.split("nothing else belongs in this folder):\n", 1)[1].split()
    assert listed == sorted(p.name for p in out.iterdir())
    assert _folder_check(out) == ""
    (out / "chunk-0123456789abcdef.7z").write_bytes(b"7z")
    (out / ".hidden.7z").write_bytes(b"7z")
    assert _folder_check(out) == ".hidden.7z\nchunk-0123456789abcdef.7z\n"
    assert FOLDER_CHECK in (REPO / "docs" / "bundle-format.md").read_text(encoding="utf-8")  # the same check in the docs


@pytest.mark.parametrize("name", ["chunk-0123456789abcdef.7z\nchunk-0123456789abcdef.7z", "README.txt\nx.7z\nx.7z"],
                         ids=["twice-in-one-name", "listed-names"])
def test_a_name_with_a_newline_cannot_hide_from_the_by_hand_folder_check(source, tmp_path, name):
    """A name holding a newline is several lines to find | sort | uniq -u: one whose lines are a listed name or
    repeat each other vanished from the check, while the `for c in *.7z` loop (README.txt, docs/bundle-format.md)
    would unpack it."""
    out = copy_of(source, tmp_path)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "planted.txt").write_text("not from the bundle\n")
    subprocess.run(["7zz", "a", "-bd", "-mx=0", str(out / name), "planted.txt"], cwd=planted, check=True,
                   capture_output=True)
    found = subprocess.run(["sh", "-c", "for c in *.7z; do printf '%s|' \"$c\"; done"], cwd=out, capture_output=True,
                           text=True).stdout
    assert name + "|" in found  # the by-hand loop would take it for a chunk
    assert _folder_check(out) != ""
    result = run_cli("verify", out)
    assert result.returncode == 4 and "unexpected" in result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("line", ["0  {name}", "{short}  {name}"], ids=["zero", "a-listed-sha256-cut-short"])
def test_a_malformed_sums_line_cannot_hide_an_added_chunk_from_the_by_hand_checks(source, tmp_path, line):
    """sha256sum -c only warns of (and skips) a line that is no checksum line; the folder check took its name for
    listed, and the NOT SIGNED loop found its "sum" somewhere in manifest.json: the added chunk passed all three."""
    out = copy_of(source, tmp_path)
    (out / "chunk-0123456789abcdef.7z").write_bytes(b"7z\xbc\xaf\x27\x1c")
    short = read_sums(out)[MANIFEST_NAME][:12]
    with open(out / SUMS_NAME, "a", encoding="utf-8") as sums:
        sums.write(line.format(name="chunk-0123456789abcdef.7z", short=short) + "\n")
    by_hand = subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=out, capture_output=True, text=True)
    assert by_hand.returncode == 0 and "improperly formatted" in by_hand.stderr  # what the admin sees: a warning
    assert "chunk-0123456789abcdef.7z" in _folder_check(out)
    result = run_cli("verify", out)
    assert result.returncode == 4 and "SHA256SUMS" in result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("where", [".", "tool"], ids=["bundle-folder", "subfolder"])
def test_planted_worker_settings_take_no_effect_before_the_folder_is_refused(source, amshome, tmp_path, where):
    """Luigi reads ./luigi.cfg when the command starts: a [worker] task_process_context planted there makes the
    unpack task import a module of its choice (here `this`, which prints the Zen of Python) before the bundle
    folder's check could refuse the file. It is refused at once, before any task runs."""
    out = copy_of(source, tmp_path)
    cwd = out / where
    cwd.mkdir(exist_ok=True)
    (cwd / "luigi.cfg").write_text("[worker]\ntask_process_context = this.s\n")
    result = subprocess.run([sys.executable, "-m", "amsrepomirror", "unpack", str(out), "--amshome", str(amshome)],
                            cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert "Beautiful is better than ugly" not in result.stdout + result.stderr
    assert result.returncode == 4, result.stdout + result.stderr
    [error] = error_lines(result)
    assert "luigi.cfg" in error and "remove it" in error, error
    assert sorted(p.name for p in amshome.iterdir()) == []


def test_settings_planted_in_the_bundle_folder_are_refused_before_they_are_used(source, tmp_path):
    """An admin runs verify in the bundle folder (README.txt says so): Luigi reads ./luigi.cfg there, so one
    added to the folder would be settings nobody listed."""
    out = copy_of(source, tmp_path)
    (out / "luigi.cfg").write_text("[unpack]\nsignature_verifier = planted\n")
    result = subprocess.run([sys.executable, "-m", "amsrepomirror", "verify", "."], cwd=out, env=cli_env(),
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 4, result.stdout + result.stderr
    errors = error_lines(result)
    assert len(errors) == 1 and "luigi.cfg was read as this command's settings" in errors[0] and "remove it" in errors[0]
    assert "'planted'" not in result.stdout + result.stderr  # the planted value was never acted on
    elsewhere = run_cli("verify", out)  # from another folder the file is not read: the folder check names it
    assert elsewhere.returncode == 4 and "luigi.cfg: unexpected (not in manifest.json: remove it)" in elsewhere.stderr
