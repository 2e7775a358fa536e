"""Schema versions of manifest.json (docs/bundle-format.md): every older schema is read, and a
newer one is refused in one line that names the tool version the bundle needs."""

import json
from dataclasses import replace

import pytest
import test_offline_hostile as hostile
from clihelp import run_cli
from test_offline_hostile import copy_of, manifest_body, resign

from amsrepomirror import __version__
from amsrepomirror.bundle.format import SCHEMA, SCHEMA_3, SCHEMA_3_SINCE, SCHEMAS, BundleManifest
from amsrepomirror.errors import IntegrityError

source = hostile.source  # the module fixture: one bundle of the double, built once


def without_report(body: dict) -> dict:
    """A manifest body as a bundle without a transfer report has it (the report needs schema 3)."""
    del body["report"], body["requires_tool"]
    body["schema"] = SCHEMA
    return body


def test_every_schema_this_tool_writes_or_wrote_is_read(source, tmp_path):
    body = without_report(manifest_body(source[1]))
    for schema in SCHEMAS:
        body["schema"] = schema
        manifest = BundleManifest.from_bytes(json.dumps(body).encode(), "manifest.json")
        assert [f.path for f in manifest.files] == sorted(f["path"] for f in body["files"])
    assert SCHEMA in SCHEMAS and SCHEMA_3 in SCHEMAS


def test_a_newer_schema_is_refused_naming_the_tool_version_it_needs(source, tmp_path):
    out = copy_of(source, tmp_path)
    body = manifest_body(out)
    body["schema"] = "amsrepomirror/bundle-manifest/9"
    body["requires_tool"] = "7.3.1"
    body["files"][0]["new_field"] = 1  # what made the newer schema necessary: an older reader cannot skip it
    resign(out, body)
    for command in (["verify", out], ["unpack", out, "--amshome", tmp_path / "ams"]):
        (tmp_path / "ams").mkdir(exist_ok=True)
        result = run_cli(*command)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 4, result.stderr
        assert len(errors) == 1, result.stderr
        assert "newer than amsrepomirror " + __version__ in errors[0]
        assert "needs amsrepomirror 7.3.1 or newer" in errors[0]
    assert not (tmp_path / "ams" / "repository").exists()


def test_a_foreign_or_hostile_schema_is_named_escaped_not_trusted(source, tmp_path):
    out = copy_of(source, tmp_path)
    body = manifest_body(out)
    body["schema"] = "amsrepomirror/bundle-manifest/9"
    body["requires_tool"] = "1.0\n\x1b[2Jerror: all good"  # not a version: never echoed
    resign(out, body)
    result = run_cli("verify", out)
    assert result.returncode == 4
    assert "needs a newer amsrepomirror" in result.stderr and "all good" not in result.stderr
    body["schema"] = "other/manifest/1"
    resign(out, body)
    result = run_cli("verify", out)
    assert result.returncode == 4 and "(found 'other/manifest/1')" in result.stderr


def test_a_manifest_that_drops_a_version_is_schema_3_and_names_the_tool_it_needs(source):
    body = without_report(manifest_body(source[1]))
    plain = BundleManifest.from_bytes(json.dumps(body).encode(), "manifest.json")
    assert json.loads(plain.to_json())["schema"] == body["schema"] and "requires_tool" not in json.loads(plain.to_json())
    dropping = replace(plain, base="0" * 64, target=plain.tree, dropped=["AMS2025.1"])
    written = json.loads(dropping.to_json())
    assert written["schema"] == SCHEMA_3 and written["requires_tool"] == SCHEMA_3_SINCE
    assert BundleManifest.from_bytes(dropping.to_json(), "manifest.json").dropped == ["AMS2025.1"]
    written["schema"] = "amsrepomirror/bundle-manifest/2"  # an older reader would skip the drop: refused
    with pytest.raises(IntegrityError, match="field dropped is set, but the schema is"):
        BundleManifest.from_bytes(json.dumps(written).encode(), "manifest.json")
