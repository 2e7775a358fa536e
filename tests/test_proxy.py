"""Through a forward proxy named in the environment, with an account in its URL, as admins set ``http_proxy``.

The proxy here is a small real one on loopback: it answers 407 to a request without its account, and else
forwards GET and HEAD (absolute-form request targets) to the SCM double. Every request of a run (the listing,
the probes, the downloads) must reach the double through it, with the proxy's account, and never the
SCM account in the proxy's header.
"""

import base64
import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from clihelp import cli_env, run_cli, served_tree, tree_hashes

VERSION = "AMS2026.1"
PROXY_USER, PROXY_PASSWORD = "puser", "p@ss:word"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "proxy-authenticate"}


class ForwardProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[tuple[str, str, str | None]] = []  # (method, absolute URL, Proxy-Authorization)
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._forward()

    def do_GET(self):
        self._forward()

    def _forward(self):
        given = self.headers.get("Proxy-Authorization")
        with self.server.lock:
            self.server.seen.append((self.command, self.path, given))
        wanted = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
        if given != wanted:
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        target = urllib.parse.urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""), headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", answer.getheader("Content-Length", str(len(body))))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        finally:
            upstream.close()


@pytest.fixture
def proxy():
    server = ForwardProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _env(proxy_url: str, **extra):
    env = cli_env(**extra)
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "HTTP_PROXY"):
        env.pop(name, None)
    env["http_proxy"] = proxy_url
    return env


def test_a_run_goes_through_a_proxy_with_its_account(scm_double, repo_tree, tmp_path, proxy):
    account = urllib.parse.quote(PROXY_USER) + ":" + urllib.parse.quote(PROXY_PASSWORD, safe="")
    dest = tmp_path / "m"
    result = run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION),
                     env=_env(f"http://{account}@127.0.0.1:{proxy.port}"))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    methods = {m for m, _url, _auth in proxy.seen}
    assert methods >= {"GET"} and all(url.startswith(scm_double.base_url) for _m, url, _auth in proxy.seen)
    assert [x for x in proxy.seen if not x[2] or "demo" in base64.b64decode(x[2].split()[1]).decode()] == []
    forwarded = [r for r in scm_double.log if r.relpath is not None]
    assert len(forwarded) == len(proxy.seen)  # nothing reached the double but through the proxy
    files = {r.relpath for r in forwarded if not r.relpath.startswith("listings/")}
    assert files == set(served_tree(repo_tree, VERSION)) | {r.relpath for r in forwarded if r.status == 401}


def test_a_wrong_proxy_account_is_one_clear_line(scm_double, tmp_path, proxy):
    dest = tmp_path / "m"
    result = run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION),
                     env=_env(f"http://{PROXY_USER}:wrong@127.0.0.1:{proxy.port}"))
    assert result.returncode != 0
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "HTTP 407" in result.stderr
    assert not [r for r in scm_double.log if r.relpath is not None]  # the double never asked


@pytest.mark.parametrize("value", [
    "http://puser:s3cr/et@127.0.0.1:9",   # a "/" left unencoded in the password
    "http://puser:s3cr#et@127.0.0.1:9",
    "http://puser:%E2%82%ACs3cret@127.0.0.1:9",  # beyond Latin-1: requests cannot send it
    "puser:s3cret@127.0.0.1:9",           # an account without the scheme
    "socks5://puser:s3cret@127.0.0.1:9",
])
def test_a_proxy_setting_that_cannot_be_used_is_named_never_shown(scm_double, tmp_path, value):
    report = tmp_path / "report.json"
    dest = tmp_path / "m"
    result = run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION),
                     "--report", report, env=_env(value))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "$http_proxy" in result.stderr
    assert "s3cr" not in result.stderr and "s3cr" not in result.stdout
    assert not report.exists() or "s3cr" not in report.read_text()
    assert not [r for r in scm_double.log if r.relpath is not None]  # nothing was asked


def test_a_redirect_to_a_location_that_is_no_url_fails_the_file_in_one_line(scm_double, repo_tree, tmp_path):
    path = "common/docs/AMS 2026.1 release notes.pdf"
    scm_double.redirect(path, lambda _target: "http://[not-a-host/x", 302)
    dest = tmp_path / "m"
    result = run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION),
                     env=cli_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "redirects to a location that is not a URL" in result.stderr
    assert tree_hashes(dest) == {p: h for p, h in served_tree(repo_tree, VERSION).items() if p != path}


def test_the_redirect_rule_refuses_a_location_that_is_no_url():
    from amsrepomirror.online.http import RedirectRefused, refuse_redirect

    refuse_redirect("https://scm.example/a", "/b")  # a path on the same server: followed
    with pytest.raises(RedirectRefused, match="not a URL"):
        refuse_redirect("https://scm.example/a", "http://[not-a-host/x")


def test_a_proxy_setting_the_run_does_not_use_is_not_checked(scm_double, repo_tree, tmp_path):
    """no_proxy covers the server: the setting, however unreadable, is none of this run's business."""
    env = dict(_env("http://puser:s3cr/et@127.0.0.1:9"), no_proxy="127.0.0.1,localhost")
    dest = tmp_path / "m"
    result = run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION),
                     env=env)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
