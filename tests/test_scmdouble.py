"""The SCM double and the nginx helper, exercised over real HTTP with requests."""

import email.utils
import hashlib
import http.client
import inspect
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from servers import REQUIRE_TOOLS_ENV, parse_access_log, require_tool

from amsrepomirror.testing import cli
from amsrepomirror.testing.repository import (
    PLACEHOLDER_ORIGIN,
    change_file,
    listing_path,
    make_repository,
    remove_file,
    repository_files,
    write_file,
    write_listing,
)
from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER, FAULTS, ScmDouble, fault_table

AUTH = (DEMO_USER, DEMO_PASSWORD)
REPO_ROOT = Path(__file__).resolve().parent.parent
BIG = "linux/x86_64/python3.11-2026.101.tar.zst"
ADF = "linux/x86_64/adf-2026.101.tar.zst"
LICENSED = "licensed/adfcrs-db-2026.101.tar.zst"
SPACED = "common/docs/AMS 2026.1 release notes.pdf"
PLUS = "uv/channels/2026.1/packages/torch-2.3.1+cpu-cp311-cp311-linux_x86_64.whl"


def disk(root, rel):
    return (Path(root) / "Downloads" / "packages" / rel).read_bytes()


def sha(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- repository generator


def test_repository_layout_and_listing(repo_tree, scm_double):
    rels = repository_files(repo_tree)
    assert "AMS2026.1.yml" in rels and LICENSED in rels and BIG in rels and SPACED in rels
    assert not any(r.startswith("listings/") for r in rels)
    for prefix in ("linux/x86_64/", "macos/arm64/", "windows/x86_64/", "common/", "licensed/",
                   "uv/channels/2026.1/simple/", "uv/channels/2026.1/packages/"):
        assert any(r.startswith(prefix) for r in rels), prefix
    assert all(r.endswith(".zip") for r in rels if r.startswith("windows/"))
    assert os.path.getsize(repo_tree / "Downloads/packages" / BIG) == 3 * 1024 * 1024
    total = sum(os.path.getsize(repo_tree / "Downloads/packages" / r) for r in rels)
    assert 3 * 2**20 < total < 10 * 2**20

    # listing: sorted, LF, absolute URLs pointing at the running double, quoted, not listing itself
    text = listing_path(repo_tree).read_bytes().decode()
    assert text.endswith("\n") and "\r" not in text
    urls = text.splitlines()
    assert urls == sorted(urls) and len(urls) == len(rels)
    assert all(u.startswith(scm_double.base_url + "/Downloads/packages/") for u in urls)
    assert scm_double.url(SPACED) in urls and "%20" in scm_double.url(SPACED)
    assert scm_double.url(PLUS).endswith("torch-2.3.1%2Bcpu-cp311-cp311-linux_x86_64.whl")

    # every listed file is served byte-exactly (licensed ones are 401), over one keep-alive connection
    served = requests.get(scm_double.listing_url(), auth=AUTH)
    assert served.status_code == 200 and served.text == text
    scm_double.clear_log()
    with requests.Session() as s:
        s.auth = AUTH
        for url, rel in zip(urls, rels, strict=True):
            r = s.get(url)
            if rel.startswith("licensed/"):
                assert r.status_code == 401
            else:
                assert r.status_code == 200, rel
                assert sha(r.content) == sha(disk(repo_tree, rel)), rel
    log = scm_double.log
    assert len(log) == len(rels) and len({r.client_port for r in log}) == 1
    assert [r.relpath for r in log] == rels


def test_generator_is_deterministic_and_seeded(tmp_path):
    a = make_repository(tmp_path / "a", big_size=100_000)
    b = make_repository(tmp_path / "b", big_size=100_000)
    c = make_repository(tmp_path / "c", big_size=100_000, seed=1)
    assert a == b == c
    for rel in (ADF, BIG, "AMS2026.1.yml"):
        assert disk(tmp_path / "a", rel) == disk(tmp_path / "b", rel)
    assert disk(tmp_path / "a", ADF) != disk(tmp_path / "c", ADF)
    # incompressible, like real packages
    import zlib
    data = disk(tmp_path / "a", ADF)
    assert len(zlib.compress(data)) > 0.99 * len(data)
    # the uv index links to the wheels relative to itself, with hashes
    index = disk(tmp_path / "a", "uv/channels/2026.1/simple/torch/index.html").decode()
    assert "../../packages/torch-2.3.1%2Bcpu-cp311-cp311-linux_x86_64.whl#sha256=" + sha(disk(tmp_path / "a", PLUS)) in index


def test_tiny_files_scale(tmp_path):
    root = tmp_path / "big"
    rels = make_repository(root, tiny=10_000, big_size=10_000)
    tiny = [r for r in rels if r.startswith("common/tiny/")]
    assert len(tiny) == 10_000
    shards = {r.split("/")[2] for r in tiny}
    assert len(shards) == 10
    assert all(len(os.listdir(root / "Downloads/packages/common/tiny" / s)) <= 1000 for s in shards)
    with ScmDouble(root) as double:
        listing = requests.get(double.listing_url(), auth=AUTH).text.splitlines()
        assert len(listing) == len(rels)
        sample = tiny[::50]  # 200 files over 16 concurrent keep-alive connections

        def fetch(chunk):
            with requests.Session() as s:
                return [(rel, s.get(double.url(rel), auth=AUTH)) for rel in chunk]

        with ThreadPoolExecutor(16) as pool:
            results = [x for part in pool.map(fetch, [sample[i::16] for i in range(16)]) for x in part]
        assert len(results) == len(sample)
        for rel, r in results:
            assert r.status_code == 200 and r.content == disk(root, rel)
        assert len({r.client_port for r in double.log}) <= 17


# ---------------------------------------------------------------- auth


def test_auth(scm_double):
    url = scm_double.url(ADF)
    assert requests.get(url, auth=AUTH).status_code == 200
    for auth in (None, (DEMO_USER, "wrong"), ("nobody", DEMO_PASSWORD)):
        r = requests.get(url, auth=auth)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="SCM"'
        assert len(r.content) < 100  # not the file
    r = requests.get(scm_double.listing_url())
    assert r.status_code == 401
    log = scm_double.log
    assert [x.status for x in log] == [200, 401, 401, 401, 401]
    assert [x.user for x in log] == ["demo", None, None, None, None]


def test_licensed_is_401_for_the_account(scm_double):
    r = requests.get(scm_double.url(LICENSED), auth=AUTH)
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers
    assert requests.head(scm_double.url(LICENSED), auth=AUTH).status_code == 401


def test_missing_and_traversal(scm_double, repo_tree):
    (repo_tree / "secret.txt").write_text("secret")
    assert requests.get(scm_double.url("linux/x86_64/nope.tar.zst"), auth=AUTH).status_code == 404
    assert requests.get(scm_double.url("linux/x86_64"), auth=AUTH).status_code == 404  # a folder
    conn = http.client.HTTPConnection("127.0.0.1", scm_double.port, timeout=5)
    headers = {"Authorization": requests.auth._basic_auth_str(*AUTH)}
    for path in ("/Downloads/packages/../../secret.txt", "/Downloads/packages/%2e%2e/%2E%2E/secret.txt",
                 "/Downloads/packages/..%2f..%2fsecret.txt"):
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 400 and b"secret" not in body, path
    conn.close()


# ---------------------------------------------------------------- validators, ranges, conditionals


def test_head_headers(scm_double, repo_tree):
    path = repo_tree / "Downloads/packages" / ADF
    st = path.stat()
    r = requests.head(scm_double.url(ADF), auth=AUTH)
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["Content-Length"]) == st.st_size == 300_000
    assert r.headers["ETag"] == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    assert email.utils.parsedate_to_datetime(r.headers["Last-Modified"]).timestamp() == int(st.st_mtime)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert scm_double.log[-1].method == "HEAD" and scm_double.log[-1].body_bytes == 0


def test_ranges(scm_double, repo_tree):
    data = disk(repo_tree, BIG)
    url = scm_double.url(BIG)
    r = requests.get(url, auth=AUTH, headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    r = requests.get(url, auth=AUTH, headers={"Range": "bytes=3000000-"})
    assert r.status_code == 206 and r.content == data[3000000:]
    assert int(r.headers["Content-Length"]) == len(data) - 3000000
    r = requests.get(url, auth=AUTH, headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = requests.get(url, auth=AUTH, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
    r = requests.get(scm_double.url("common/data/empty.dat"), auth=AUTH, headers={"Range": "bytes=0-"})
    assert r.status_code == 416
    log = scm_double.log
    assert [x.range for x in log][:2] == ["bytes=1000-1999", "bytes=3000000-"]
    assert [x.body_bytes for x in log] == [1000, len(data) - 3000000, 10, 0, 0]


def test_if_range_and_conditionals(scm_double, repo_tree):
    data = disk(repo_tree, ADF)
    url = scm_double.url(ADF)
    head = requests.head(url, auth=AUTH)
    etag, lm = head.headers["ETag"], head.headers["Last-Modified"]
    r = requests.get(url, auth=AUTH, headers={"Range": "bytes=100-", "If-Range": etag})
    assert r.status_code == 206 and r.content == data[100:]
    r = requests.get(url, auth=AUTH, headers={"Range": "bytes=100-", "If-Range": lm})
    assert r.status_code == 206 and r.content == data[100:]
    r = requests.get(url, auth=AUTH, headers={"Range": "bytes=100-", "If-Range": '"0-0"'})
    assert r.status_code == 200 and r.content == data
    r = requests.get(url, auth=AUTH, headers={"Range": "bytes=100-", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert r.status_code == 200 and r.content == data
    r = requests.get(url, auth=AUTH, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["ETag"] == etag
    r = requests.get(url, auth=AUTH, headers={"If-None-Match": '"other", ' + etag})
    assert r.status_code == 304
    r = requests.get(url, auth=AUTH, headers={"If-Modified-Since": lm})
    assert r.status_code == 304
    r = requests.get(url, auth=AUTH, headers={"If-None-Match": '"other"'})
    assert r.status_code == 200 and r.content == data
    assert [x.if_range for x in scm_double.log[1:5]] == [etag, lm, '"0-0"', "Mon, 01 Jan 2001 00:00:00 GMT"]


def test_changed_and_removed_files(scm_double, repo_tree):
    url = scm_double.url(ADF)
    before = requests.get(url, auth=AUTH)
    change_file(repo_tree, ADF, seed="v2", size=123_456)
    after = requests.get(url, auth=AUTH)
    assert after.headers["ETag"] != before.headers["ETag"]
    assert after.content == disk(repo_tree, ADF) and len(after.content) == 123_456
    assert after.content != before.content[:123_456]
    r = requests.get(url, auth=AUTH, headers={"Range": "bytes=10-", "If-Range": before.headers["ETag"]})
    assert r.status_code == 200 and r.content == after.content

    remove_file(repo_tree, ADF)
    assert requests.get(url, auth=AUTH).status_code == 404
    assert scm_double.url(ADF) in requests.get(scm_double.listing_url(), auth=AUTH).text  # still listed
    write_file(repo_tree, "common/new-2026.101.tar.zst", 1234, seed=5)
    write_listing(repo_tree, base_url=scm_double.base_url)
    listing = requests.get(scm_double.listing_url(), auth=AUTH).text
    assert scm_double.url(ADF) not in listing and scm_double.url("common/new-2026.101.tar.zst") in listing


def test_listing_retargeted_on_start(repo_tree):
    assert listing_path(repo_tree).read_text().startswith(PLACEHOLDER_ORIGIN + "/Downloads/packages/")
    with ScmDouble(repo_tree) as first:
        first_text = listing_path(repo_tree).read_text()
        assert first_text.count(first.base_url + "/") == len(repository_files(repo_tree))
    with ScmDouble(repo_tree) as second:
        text = requests.get(second.listing_url(), auth=AUTH).text
        assert text == first_text.replace(first.base_url, second.base_url)


# ---------------------------------------------------------------- faults


def test_cut_after(scm_double, repo_tree):
    scm_double.cut_after("linux/*", 5000, times=1)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        _ = requests.get(scm_double.url(ADF), auth=AUTH).content
    rec = scm_double.log[-1]
    assert rec.fault == "cut" and rec.status == 200 and rec.body_bytes == 5000
    # only once, and only for matching paths; a resume with Range works
    r = requests.get(scm_double.url(ADF), auth=AUTH, headers={"Range": "bytes=5000-"})
    assert r.status_code == 206 and r.content == disk(repo_tree, ADF)[5000:]
    assert scm_double.log[-1].range == "bytes=5000-" and scm_double.log[-1].fault is None

    # the client sees the partial body when streaming
    scm_double.cut_after("*.zip", 70_000, times=None)
    got = bytearray()
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        with requests.get(scm_double.url("windows/x86_64/adf-2026.101.zip"), auth=AUTH, stream=True) as r:
            assert r.headers["Content-Length"] == "310000"
            # small blocks: urllib3 drops the partial last block when the connection breaks
            for block in r.iter_content(1000):
                got += block
    assert bytes(got) == disk(repo_tree, "windows/x86_64/adf-2026.101.zip")[:70_000]
    assert requests.head(scm_double.url("windows/x86_64/adf-2026.101.zip"), auth=AUTH).status_code == 200
    scm_double.clear_faults()
    assert requests.get(scm_double.url("windows/x86_64/adf-2026.101.zip"), auth=AUTH).status_code == 200


def test_fail_status(scm_double):
    scm_double.fail_status("listings/*", 503, retry_after=7, times=2)
    scm_double.fail_status("*.zst", 429, times=1, method="HEAD")
    for _ in range(2):
        r = requests.get(scm_double.listing_url(), auth=AUTH)
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert requests.get(scm_double.listing_url(), auth=AUTH).status_code == 200
    assert requests.get(scm_double.url(ADF), auth=AUTH).status_code == 200  # GET not affected
    r = requests.head(scm_double.url(ADF), auth=AUTH)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert requests.head(scm_double.url(ADF), auth=AUTH).status_code == 200
    assert [x.status for x in scm_double.log] == [503, 503, 200, 200, 429, 200]
    assert [x.fault for x in scm_double.log].count("status") == 3


def test_throttle(scm_double, repo_tree):
    url = scm_double.url("common/data/forcefields-2026.101.tar.zst")  # 60,000 bytes
    scm_double.throttle(200_000)
    t0 = time.monotonic()
    r = requests.get(url, auth=AUTH)
    slow = time.monotonic() - t0
    assert r.content == disk(repo_tree, "common/data/forcefields-2026.101.tar.zst")
    assert slow >= 0.25  # 60,000 bytes at 200,000 B/s cannot arrive sooner (a lower bound, never flaky)
    assert scm_double.log[-1].body_bytes == 60_000
    scm_double.throttle(None)
    assert requests.get(url, auth=AUTH).content == r.content


def test_stall_after(scm_double):
    scm_double.stall_after(ADF, 1000, seconds=3)
    with pytest.raises(requests.exceptions.ConnectionError):  # read timeout while streaming
        _ = requests.get(scm_double.url(ADF), auth=AUTH, timeout=(2, 0.3)).content
    assert scm_double.log[-1].fault == "stall"


def test_stop_drops_keepalive_connections(repo_tree):
    double = ScmDouble(repo_tree).start()
    s = requests.Session()
    assert s.get(double.url(ADF), auth=AUTH).status_code == 200
    double.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        s.get(double.url(ADF), auth=AUTH)
    s.close()


def test_every_fault_is_in_the_one_table_and_help_lists_them(tmp_path, capsys):
    """FAULTS lists every switch: each quirk of misbehave() and each lie, and nothing else is accepted."""
    quirks = [name for name in inspect.signature(ScmDouble.misbehave).parameters if name not in ("self", "glob")]
    assert sorted(f"quirk:{q}" for q in quirks) == sorted(k for k in FAULTS if k.startswith("quirk:"))
    double = ScmDouble(tmp_path)
    lies = [k.removeprefix("lie:") for k in FAULTS if k.startswith("lie:")]
    for how in lies:
        double.lie("*", how)
    with pytest.raises(ValueError, match="unknown lie 'fib'"):
        double.lie("*", "fib")
    assert all(FAULTS[f"lie:{how}"].answers in ("range", "whole") for how in lies)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert all(line in out.splitlines() for line in fault_table().splitlines())
    assert len(fault_table().splitlines()) == len(FAULTS)


def test_main_serves_until_sigterm(tmp_path):
    env = dict(os.environ, SCM_TEST_PW="s3cret", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "amsrepomirror.testing.scmdouble", "--root", str(tmp_path / "r"), "--make",
         "--big-size", "1000", "--tiny", "5", "--user", "alice", "--password-env", "SCM_TEST_PW"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        listing_url = proc.stdout.readline().strip()
        assert listing_url.startswith("http://127.0.0.1:") and listing_url.endswith("/listings/AMS2026.1.txt")
        assert requests.get(listing_url, auth=AUTH).status_code == 401
        r = requests.get(listing_url, auth=("alice", "s3cret"))
        assert r.status_code == 200 and len(r.text.splitlines()) == 27 + 5
        assert all(u.startswith(listing_url.split("/Downloads")[0]) for u in r.text.splitlines())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "s3cret" not in out + err


# ---------------------------------------------------------------- real nginx


def test_nginx_serves_the_same_tree(nginx_server, repo_tree):
    n = nginx_server
    urls = requests.get(n.listing_url(), auth=AUTH).text.splitlines()
    assert urls and all(u.startswith(n.base_url + "/Downloads/packages/") for u in urls)
    assert n.url(SPACED) in urls and n.url(PLUS) in urls

    assert requests.get(n.url(ADF)).status_code == 401
    assert requests.get(n.url(ADF), auth=(DEMO_USER, "wrong")).status_code == 401
    r = requests.get(n.url(LICENSED), auth=AUTH)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="SCM"'

    data = disk(repo_tree, BIG)
    with requests.Session() as s:
        s.auth = AUTH
        full = s.get(n.url(PLUS))
        assert full.status_code == 200 and full.content == disk(repo_tree, PLUS)
        assert full.headers["ETag"].startswith('"') and full.headers["Accept-Ranges"] == "bytes"
        r = s.get(n.url(BIG), headers={"Range": "bytes=1000-"})
        assert r.status_code == 206 and r.content == data[1000:]
        assert r.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        etag = s.head(n.url(BIG)).headers["ETag"]
        r = s.get(n.url(BIG), headers={"Range": "bytes=5-", "If-Range": '"0-0"'})
        assert r.status_code == 200 and len(r.content) == len(data)
        assert s.get(n.url(BIG), headers={"If-None-Match": etag}).status_code == 304
        assert s.get(n.url(SPACED)).content == disk(repo_tree, SPACED)

    log = n.access_log(min_records=10)
    assert len(log) == 10
    by_uri = [x for x in log if x.relpath == BIG]
    assert [(x.method, x.status) for x in by_uri] == [("GET", 206), ("HEAD", 200), ("GET", 200), ("GET", 304)]
    assert by_uri[0].range == "bytes=1000-" and by_uri[0].body_bytes == len(data) - 1000
    assert by_uri[1].body_bytes == 0 and by_uri[3].body_bytes == 0
    assert by_uri[2].if_range == '"0-0"' and by_uri[2].body_bytes == len(data)
    assert log[-1].relpath == SPACED and log[-1].user == "demo"
    assert len({x.connection for x in log[-6:]}) == 1  # the session kept its connection
    assert parse_access_log(n.access_log_path) == log
    n.clear_access_log()
    assert n.access_log() == []


def test_nginx_sees_changes_on_disk(nginx_server, repo_tree):
    n = nginx_server
    before = requests.head(n.url(ADF), auth=AUTH).headers["ETag"]
    change_file(repo_tree, ADF, seed="v2")
    r = requests.get(n.url(ADF), auth=AUTH)
    assert r.headers["ETag"] != before and r.content == disk(repo_tree, ADF)


def test_require_tool_skips_or_fails(monkeypatch):
    assert require_tool("sh").endswith("/sh")
    monkeypatch.delenv(REQUIRE_TOOLS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_tool("no-such-tool-amsrepomirror")
    monkeypatch.setenv(REQUIRE_TOOLS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="requires it"):
        require_tool("no-such-tool-amsrepomirror")
