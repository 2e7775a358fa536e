"""The transfer report (issue 23): bundle writes it, listed in the signed manifest; verify --transfer-report makes
it again from the bundle alone; hostile names stay text, also in a real headless browser."""

import base64
import configparser
import hashlib
import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import test_multiversion as multi
from clihelp import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import require_tool
from test_delta import MONTHS, change_month

from amsrepomirror.bundle import transfer_report
from amsrepomirror.bundle.format import (
    MANIFEST_NAME,
    REPORT_HTML_NAME,
    REPORT_JSON_NAME,
    SCHEMA_3,
    BundleFile,
    BundleManifest,
    Chunk,
    Part,
    ReportFile,
    TreeFile,
)
from amsrepomirror.bundle.sums import read_sums, write_sums
from amsrepomirror.errors import IntegrityError
from amsrepomirror.testing.repository import write_file, write_listing

VERSION = "AMS2026.1"
NEW, OLD, version_args = multi.NEW, multi.OLD, multi.version_args
two_versions, double = multi.two_versions, multi.double  # the fixtures: two versions in one served tree
#: Repository files whose names would be markup if a page took them as such. ``/`` splits a name into folders,
#: so the first one's top-level folder is ``<script>document.title='pwned'<`` (a chart label too).
HOSTILE = ["<script>document.title='pwned'</script>.txt",
           "common/<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">.dat",
           "common/it's \"quoted\" & <b>bold</b>.dat"]


def bundle(double, mirror, out, *extra):
    return run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", double.listing_url(VERSION),
                   "--out", out, "--chunk-size", "1MiB", *extra)


def carried(out: Path) -> dict:
    return json.loads((out / REPORT_JSON_NAME).read_bytes())


def remake(out: Path, where: Path, *extra):
    return run_cli("verify", out, "--transfer-report", where / "far.json", *extra)


@pytest.fixture
def hostile_tree(repo_tree, scm_double):
    for i, name in enumerate(HOSTILE):
        write_file(repo_tree, name, 1000 + i, seed="hostile")
    write_listing(repo_tree, VERSION, scm_double.base_url)
    return repo_tree


# --- end to end ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_signed_full_bundle_carries_a_signed_report_that_the_far_side_makes_again(scm_double, hostile_tree, keys,
                                                                                    tmp_path):
    key, signers = keys
    out = tmp_path / "bundle"
    made = bundle(scm_double, tmp_path / "mirror", out, "--sign-key", key, "--stick-size", "4MB")
    assert made.returncode == 0, made.stderr
    manifest = BundleManifest.read(out / MANIFEST_NAME)
    body = json.loads((out / MANIFEST_NAME).read_bytes())
    assert body["schema"] == SCHEMA_3 and sorted(r["name"] for r in body["report"]) == sorted(
        [REPORT_JSON_NAME, REPORT_HTML_NAME])
    sums = read_sums(out)
    for r in manifest.report:  # listed in the signed manifest and in SHA256SUMS, with the file's sha256
        assert sums[r.name] == r.sha256 == hashlib.sha256((out / r.name).read_bytes()).hexdigest()
    facts = carried(out)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True).stdout.split()[1]
    assert facts["signer"] == fingerprint == manifest.signer
    assert (facts["schema"], facts["versions"], facts["kind"], facts["delta"]) == (
        transfer_report.REPORT_SCHEMA, [VERSION], "full", None)
    assert facts["created"] == manifest.created and facts["tool_version"] == manifest.tool_version
    assert facts["totals"]["carried_files"] == len(manifest.files)
    assert facts["totals"]["carried_bytes"] == manifest.total_bytes
    assert [(f["path"], f["size"], f["sha256"]) for f in facts["files"]] == sorted(
        (f.path, f.size, f.sha256) for f in manifest.files)
    assert sum(g["bytes"] for g in facts["bytes_by_platform"]) == manifest.total_bytes
    assert {g["name"] for g in facts["bytes_by_folder"]} >= {"common", "linux", "<script>document.title='pwned'<"}
    assert {e["reason"] for e in facts["lacking"]} == {"not licensed (HTTP 401)"}
    assert facts["sticks"]["sticks"][0]["chunks"] == manifest.sticks.chunks[0]
    assert set(HOSTILE) <= {f["path"] for f in facts["files"]}

    result = remake(out, tmp_path, "--allowed-signers", signers)
    assert result.returncode == 0, result.stderr
    assert "its JSON equals the bundle's transfer-report.json; the page is identical" in result.stdout
    assert (tmp_path / "far.json").read_bytes() == (out / REPORT_JSON_NAME).read_bytes()
    assert (tmp_path / "far.html").read_bytes() == (out / REPORT_HTML_NAME).read_bytes()

    page = (out / REPORT_HTML_NAME).read_text(encoding="utf-8")
    for name in HOSTILE:
        assert name.split("/")[-1] not in page  # never raw
        assert transfer_report.esc(name) in page
    assert "<script>" not in page.replace(f"<script>{transfer_report._SCRIPT}</script>", "")
    assert fingerprint in page and f'<td class="n" id="total-bytes">{manifest.total_bytes}</td>' in page

    (out / REPORT_HTML_NAME).write_bytes(page.replace("common", "cOmmon").encode())  # what the officer reads
    tampered = run_cli("verify", out, "--allowed-signers", signers)
    assert tampered.returncode == 4
    assert f"{REPORT_HTML_NAME}: corrupt (does not match manifest.json: do not rely on it)" in tampered.stderr


@pytest.mark.slow
def test_a_report_that_differs_from_the_bundle_is_exit_4_and_a_missing_one_a_warning(scm_double, tmp_path):
    out = tmp_path / "bundle"
    assert bundle(scm_double, tmp_path / "mirror", out).returncode == 0
    facts = carried(out)
    facts["totals"]["carried_bytes"] += 1  # a report that does not say what the bundle holds, listed as a forger would
    data = transfer_report.canonical_json(facts)
    (out / REPORT_JSON_NAME).write_bytes(data)
    body = json.loads((out / MANIFEST_NAME).read_bytes())
    for r in body["report"]:
        if r["name"] == REPORT_JSON_NAME:
            r.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (out / MANIFEST_NAME).write_text(json.dumps(body), encoding="utf-8")
    write_sums(out, list(read_sums(out)))
    result = remake(out, tmp_path)
    assert result.returncode == 4, result.stderr
    assert "its JSON DIFFERS from the bundle's transfer-report.json" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "differs from the one it carries" in errors[0]
    assert json.loads((tmp_path / "far.json").read_bytes())["totals"]["carried_bytes"] == facts["totals"]["carried_bytes"] - 1

    (out / REPORT_JSON_NAME).unlink()
    (out / REPORT_HTML_NAME).unlink()
    missing = run_cli("verify", out)
    assert missing.returncode == 0 and f"warning: {REPORT_JSON_NAME} is missing" in missing.stderr

    inside = run_cli("verify", out, "--transfer-report", out / "mine.json")
    assert inside.returncode == 2 and "is in the bundle folder" in inside.stderr
    assert not (out / "mine.json").exists()


@pytest.mark.slow
def test_a_delta_report_lists_what_was_added_changed_and_removed_with_sizes(scm_double, repo_tree, tmp_path):
    mirror = tmp_path / "mirror"
    assert bundle(scm_double, mirror, tmp_path / "full").returncode == 0
    base = {t.path: t for t in BundleManifest.read(tmp_path / "full" / MANIFEST_NAME).tree}
    month = MONTHS[0]
    change_month(repo_tree, scm_double, month)
    made = bundle(scm_double, mirror, tmp_path / "delta", "--since", "last")
    assert made.returncode == 0, made.stderr
    manifest = BundleManifest.read(tmp_path / "delta" / MANIFEST_NAME)
    target = {t.path: t for t in manifest.target}
    delta = carried(tmp_path / "delta")["delta"]
    old, new = month["renamed"]
    assert {r["path"] for r in delta["added"]} == {month["added"], new}
    assert [(r["path"], r["size"], r["old_size"], r["old_sha256"]) for r in delta["changed"]] == sorted(
        (p, target[p].size, base[p].size, base[p].sha256) for p in month["changed"])
    assert [(r["path"], r["size"], r["sha256"]) for r in delta["removed"]] == sorted(
        (p, base[p].size, base[p].sha256) for p in (month["removed"], old))
    assert delta["removed_bytes"] == base[month["removed"]].size + base[old].size
    assert delta["base"] == manifest.base and delta["added_or_changed"] == []
    assert [r["path"] for r in delta["reused_from_base"]] == [new]
    result = remake(tmp_path / "delta", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "far.json").read_bytes() == (tmp_path / "delta" / REPORT_JSON_NAME).read_bytes()
    page = (tmp_path / "delta" / REPORT_HTML_NAME).read_text(encoding="utf-8")
    assert f"<h3>Removed: 2 ({transfer_report.size_text(delta['removed_bytes'])})</h3>" in page


@pytest.mark.slow
def test_a_two_version_bundle_report_names_both_versions_and_is_made_again_alike(double, tmp_path):
    out = tmp_path / "bundle"
    made = run_cli("bundle", "--mirror", tmp_path / "mirror", *version_args(double, NEW, OLD), "--out", out,
                   "--chunk-size", "1MiB")
    assert made.returncode == 0, made.stderr
    facts = carried(out)
    assert facts["versions"] == [NEW, OLD] and facts["kind"] == "full"
    manifest = BundleManifest.read(out / MANIFEST_NAME)
    assert facts["totals"]["tree_files"] == len(manifest.tree) and len(manifest.tree) > len(manifest.files) - 1
    assert f"{NEW} + {OLD}" in (out / REPORT_HTML_NAME).read_text(encoding="utf-8")
    result = remake(out, tmp_path)
    assert result.returncode == 0 and "the page is identical" in result.stdout, result.stderr
    assert (tmp_path / "far.json").read_bytes() == (out / REPORT_JSON_NAME).read_bytes()


@pytest.mark.slow
def test_the_page_in_a_real_browser_shows_the_totals_and_runs_no_script_of_a_hostile_name(scm_double, hostile_tree,
                                                                                         tmp_path):
    browser = require_tool("chromium")
    out = tmp_path / "bundle"
    assert bundle(scm_double, tmp_path / "mirror", out).returncode == 0
    facts = carried(out)
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (out / REPORT_HTML_NAME).as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert f'id="total-bytes">{facts["totals"]["carried_bytes"]}</td>' in dom
    assert f'id="total-files">{facts["totals"]["carried_files"]}</td>' in dom
    assert re.search(r"<title>Transfer report: AMS2026\.1 full bundle [0-9T:Z-]+</title>", dom)
    assert "pwned" not in dom.split("</title>")[0]  # no hostile script set the title
    assert not re.search(r"<body[^>]*data-pwned", dom)  # no hostile handler touched the page
    assert "<img" not in dom and "<b>" not in dom
    assert "&lt;script&gt;document.title=" in dom  # shown as text
    assert '<p id="filter">' in dom  # the page's own script ran: the content-security-policy hash is right


# --- the format, on manifests made here -------------------------------------------------------------

CHUNK = "chunk-" + "0" * 16 + ".7z"


def manifest_with(path: str) -> BundleManifest:
    """A small manifest carrying one file at ``path`` (not checked: the renderer must cope with anything)."""
    sha = "a" * 64
    return BundleManifest(version=VERSION, files=[BundleFile(path, 10, sha, [Part(CHUNK, path, 0, 10, sha)])],
                          chunks=[Chunk(CHUNK, 100, "b" * 64, [path])], created="2026-01-31T12:00:00Z",
                          tool_version="0.2.0")


def test_control_characters_are_shown_escaped_never_raw():
    page = transfer_report.render_html(transfer_report.report_facts(manifest_with("linux/evil\x1b[2J\u2028.txt")))
    text = page.decode("utf-8")
    assert "evil\\x1b[2J\\u2028.txt" in text and "\x1b" not in text and "\u2028" not in text
    assert json.loads(transfer_report.canonical_json(transfer_report.report_facts(manifest_with("a\x1b"))))[
        "files"][0]["path"] == "a\x1b"


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_any_file_name_renders_with_no_markup_of_its_own(name):
    plain = transfer_report.render_html(transfer_report.report_facts(manifest_with("x"))).decode("utf-8")
    page = transfer_report.render_html(transfer_report.report_facts(manifest_with(name))).decode("utf-8")
    assert page.count("<") == plain.count("<") and page.count(">") == plain.count(">")
    assert all(ch.isprintable() or ch == "\n" for ch in page)


def test_the_report_ignores_its_own_listing_and_the_json_is_canonical():
    manifest = manifest_with("linux/x86_64/adf.tar.zst")
    facts = transfer_report.report_facts(manifest)
    listed = replace(manifest, report=[ReportFile(REPORT_JSON_NAME, 5, "c" * 64)])
    assert transfer_report.report_facts(listed) == facts
    data = transfer_report.canonical_json(facts)
    assert data == (json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                    + "\n").encode()
    assert transfer_report.canonical_form(json.dumps(facts, indent=2).encode()) == data
    assert transfer_report.canonical_form(b"[1]") is None and transfer_report.canonical_form(b"{") is None
    assert facts["bytes_by_platform"] == [{"name": "linux", "files": 1, "bytes": 10}]


def test_the_script_hash_allows_exactly_the_page_script():
    page = transfer_report.render_html(transfer_report.report_facts(manifest_with("x"))).decode("utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    allowed = re.search(r"script-src '(sha256-[A-Za-z0-9+/=]+)'", page).group(1)
    assert len(scripts) == 1
    assert allowed == "sha256-" + base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert "default-src 'none'" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_the_platform_rules_are_the_shipped_ones():
    shipped = configparser.ConfigParser(interpolation=None)
    shipped.read(Path(transfer_report.__file__).parents[1] / "defaults.cfg")
    assert dict(shipped["platforms"]) == transfer_report.PLATFORM_RULES


def test_manifest_report_fields_are_checked():
    body = json.loads(manifest_with("x").to_json())
    body["report"] = [{"name": REPORT_JSON_NAME, "size": 1, "sha256": "c" * 64}]
    assert json.loads(BundleManifest.from_bytes(json.dumps(body).encode(), "manifest.json").to_json())["schema"] == SCHEMA_3
    assert BundleManifest.from_bytes(json.dumps(body).encode(), "manifest.json").report[0].name == REPORT_JSON_NAME
    body["report"][0]["name"] = "../evil.7z"
    with pytest.raises(IntegrityError, match=r"field report\[0\]\.name"):
        BundleManifest.from_bytes(json.dumps(body).encode(), "manifest.json")
    body["report"] = []
    body["signer"] = "SHA256:<b>"
    with pytest.raises(IntegrityError, match="field signer"):
        BundleManifest.from_bytes(json.dumps(body).encode(), "manifest.json")


def test_a_delta_manifest_keeps_its_removed_files_and_refuses_a_mismatch():
    m = manifest_with("a.dat")
    delta = replace(m, base="d" * 64, target=[TreeFile("a.dat", 10, "a" * 64), TreeFile(f"{VERSION}.yml", 1, "e" * 64)],
                    removed=["gone.dat"], removed_files=[TreeFile("gone.dat", 7, "f" * 64)],
                    replaced_files=[TreeFile("a.dat", 9, "9" * 64)])
    again = BundleManifest.from_bytes(delta.to_json(), "manifest.json")
    assert again.removed_files == delta.removed_files and again.replaced_files == delta.replaced_files
    facts = transfer_report.report_facts(again)["delta"]
    assert facts["removed"] == [{"path": "gone.dat", "size": 7, "sha256": "f" * 64}]
    assert facts["changed"][0]["old_size"] == 9 and facts["added"] == []
    body = json.loads(delta.to_json())
    del body["removed_files"], body["replaced_files"]  # a delta of an older tool: read, sizes unknown
    older = transfer_report.report_facts(BundleManifest.from_bytes(json.dumps(body).encode(), "manifest.json"))["delta"]
    assert older["removed"] == [{"path": "gone.dat", "size": None, "sha256": None}]
    assert [r["path"] for r in older["added_or_changed"]] == ["a.dat"]
    body["removed_files"] = []
    with pytest.raises(IntegrityError, match="removed_files does not name exactly"):
        BundleManifest.from_bytes(json.dumps(body).encode(), "manifest.json")


def test_chromium_is_in_the_ci_install_list():
    assert "command -v chromium >/dev/null 2>&1 || need+=(chromium)" in (Path(__file__).parents[1] / ".ci" / "run").read_text()
