"""HTTPS: the mirror authenticates the server before it sends the account or takes a byte.

The SCM double and a real nginx serve TLS with a throw-away CA made here (``trustme``). A server
that cannot be authenticated is exit 3 with one line naming certificate verification, on the
listing GET (requests) and on the HEAD probes (a bare urllib3 pool) alike; the CA is trusted
through REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or SSL_CERT_FILE, on both paths.
"""

import time

import pytest
import trustme
from clihelp import cli_env, probe_method, probe_range, run_cli, served_tree, spare_probes, tree_hashes
from servers import NginxServer, require_tool

from amsrepomirror.errors import AUTH_FAILURE, AuthError
from amsrepomirror.online.credentials import Credentials
from amsrepomirror.online.http import fetch_text, make_session, probe
from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER, ScmDouble

VERSION = "AMS2026.1"
pytestmark = pytest.mark.usefixtures("probe_mode")  # each test with both probes (conftest.py)
#: Run with both probes in the fast tier (a redirect to plain http, from the probe and from the transfer); the
#: others' second probe is in the slow tier.
BOTH_PROBES_FAST = {
    "test_a_redirect_from_https_to_plain_http_is_not_followed",
}
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM files: ``ca`` (the CA to trust), ``server`` (key + chain for 127.0.0.1 from that CA),
    ``stranger`` (the same names from ``other_ca``), ``wrong_name`` (``ca``, for localhost only)."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other_ca.pem"))
    for name, issuer, names in (("server", ca, ("127.0.0.1", "localhost")), ("stranger", other, ("127.0.0.1",)),
                                ("wrong_name", ca, ("localhost",))):
        issuer.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(folder / f"{name}.pem"))
    return {p.stem: p for p in folder.glob("*.pem")}


@pytest.fixture
def https_double(repo_tree, pki):
    with ScmDouble(repo_tree, tls=pki["server"]) as double:
        yield double


def env_trusting(ca=None, variable="REQUESTS_CA_BUNDLE", **extra):
    """The CLI's environment with no CA bundle variable from outside; ``ca`` named in ``variable``."""
    env = {k: v for k, v in cli_env(**extra).items() if k not in CA_VARIABLES}
    if ca is not None:
        env[variable] = str(ca)
    return env


def mirror(url, dest, *extra, env):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", url, *extra, env=env)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def handshake_failures(double, at_least=1, timeout=5.0):
    """The double's failed handshakes, once at least ``at_least`` were noted (the server thread
    notes a refused handshake just after the client hung up)."""
    deadline = time.monotonic() + timeout
    while len(double.handshake_failures) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # any later attempt would have been made before the client exited
    return double.handshake_failures


def assert_not_authenticated(result):
    assert result.returncode == AUTH_FAILURE, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "could not be authenticated: certificate verification failed" in lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


# --- the double --------------------------------------------------------------------------------

@pytest.mark.parametrize("certificate,why", [("stranger", "unable to get local issuer certificate"),
                                             ("wrong_name", "not valid for '127.0.0.1'")],
                         ids=["unknown-ca", "wrong-name"])
def test_unauthenticated_server_is_exit_3_and_is_sent_nothing(repo_tree, pki, tmp_path, certificate, why):
    dest = tmp_path / "m"
    with ScmDouble(repo_tree, tls=pki[certificate]) as double:
        result = mirror(double.listing_url(VERSION), dest, env=env_trusting(pki["ca"]))
        line = assert_not_authenticated(result)
        assert why in line and "listings/AMS2026.1.txt" in line
        # The client hung up in the handshake: no request (so no password) ever reached the server,
        # and a certificate that fails verification was not tried again.
        assert double.log == []
        assert len(handshake_failures(double)) == 1
    assert tree_hashes(dest) == {}
    assert DEMO_PASSWORD not in result.stderr


def test_without_the_ca_trusted_the_run_is_exit_3(https_double, tmp_path):
    result = mirror(https_double.listing_url(VERSION), tmp_path / "m", env=env_trusting(None))
    assert "unable to get local issuer certificate" in assert_not_authenticated(result)
    assert https_double.log == []


@pytest.mark.parametrize("variable", CA_VARIABLES)
def test_ca_named_in_any_bundle_variable_is_trusted_by_heads_and_gets(https_double, repo_tree, pki, tmp_path, variable):
    dest = tmp_path / "m"
    result = mirror(https_double.listing_url(VERSION), dest, env=env_trusting(pki["ca"], variable))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    log = https_double.log
    files = [r for r in log if r.relpath and not r.relpath.startswith("listings/")]
    assert {r.method for r in files} == {"HEAD", "GET"}  # both paths (urllib3 probes, requests downloads) ran
    assert {r.tls for r in log} <= {"TLSv1.2", "TLSv1.3"}, {r.tls for r in log}
    assert https_double.handshake_failures == []


@pytest.mark.parametrize("bundle", [None, "other_ca"], ids=["no-ca-variable", "ca-variable-set"])
def test_no_ssl_mirrors_and_warns_once(https_double, repo_tree, pki, tmp_path, bundle):
    """--no-ssl holds even where REQUESTS_CA_BUNDLE is set (requests would let it win)."""
    dest = tmp_path / "m"
    result = mirror(https_double.listing_url(VERSION), dest, "--no-ssl", env=env_trusting(bundle and pki[bundle]))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    assert [line for line in result.stderr.splitlines() if "--no-ssl" in line] == [
        "WARNING: --no-ssl: TLS certificates are NOT verified; anyone on the network path can alter what is mirrored"]
    assert {r.method for r in https_double.log} == {"HEAD", "GET"}


#: Probes run in listing order: this file, the last one listed, is probed after every probe
#: connection is open and before any download connection is.
LAST_LISTED = "windows/x86_64/python3.11-2026.101.zip"


@pytest.mark.parametrize("when,hook", [("after-listing", ("listings/*", "GET")),
                                       ("before-downloads", (LAST_LISTED, "HEAD"))], ids=["after-listing", "before-downloads"])
def test_certificate_changing_mid_run_stops_it_with_exit_3(https_double, repo_tree, pki, tmp_path, when, hook):
    """A node with a foreign certificate behind the same name (a CDN gone wrong, an interceptor):
    connections opened after the switch fail verification. "after-listing": the HEAD probes'
    (the listing came over a verified connection); "before-downloads": the download GETs'."""
    double = https_double
    if when == "before-downloads" and probe_range() is not None:
        pytest.skip("with [http] first_bytes the downloads reuse the probes' connections, verified when opened: "
    "no connection is opened after the last probe")
    double.on_request(hook[0], lambda: double.use_certificate(pki["stranger"]), method=hook[1])
    result = mirror(double.listing_url(VERSION), tmp_path / "m", env=env_trusting(pki["ca"]))
    line = assert_not_authenticated(result)
    assert "listings/" not in line  # a file's URL: the listing itself was authenticated
    assert handshake_failures(double)
    probed = {r.relpath for r in double.records("HEAD")}
    if when == "after-listing":
        assert probed == set() and tree_hashes(tmp_path / "m") == {}
    else:
        assert LAST_LISTED in probed  # every probe went through; a download was refused


def test_head_probe_alone_refuses_an_untrusted_server(https_double, pki, monkeypatch):
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    url = https_double.url(f"{VERSION}.yml")
    session = make_session(Credentials(DEMO_USER, DEMO_PASSWORD), retries=0)
    with pytest.raises(AuthError, match="certificate verification failed") as info:
        probe(session, url, timeout=10)
    assert info.value.exit_code == AUTH_FAILURE
    with pytest.raises(AuthError, match="certificate verification failed"):
        fetch_text(session, https_double.listing_url(VERSION), timeout=10)
    assert https_double.log == []
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))
    trusted = make_session(Credentials(DEMO_USER, DEMO_PASSWORD), retries=0)
    assert probe(trusted, url, timeout=10).status == 200
    assert [(r.method, r.status) for r in https_double.log] == [("HEAD", 200)]


def test_ca_variable_naming_a_missing_file_is_a_usage_error(https_double, tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    result = mirror(https_double.listing_url(VERSION), tmp_path / "m", env=env_trusting(missing, "SSL_CERT_FILE"))
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [f"error: SSL_CERT_FILE={missing}: no such CA certificate file or folder"]
    assert https_double.log == []


# --- real nginx --------------------------------------------------------------------------------

def test_nginx_over_https(repo_tree, pki, tmp_path):
    nginx = NginxServer(repo_tree, nginx=require_tool("nginx"), workdir=tmp_path / "nginx", tls=pki["server"])
    with nginx:
        refused = mirror(nginx.listing_url(VERSION), tmp_path / "refused", env=env_trusting(None))
        assert "unable to get local issuer certificate" in assert_not_authenticated(refused)
        assert nginx.access_log() == []  # nothing was asked
        dest = tmp_path / "m"
        result = mirror(nginx.listing_url(VERSION), dest, env=env_trusting(pki["ca"], "SSL_CERT_FILE"))
        assert result.returncode == 0, result.stderr
        assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
        log = nginx.access_log(min_records=len(served_tree(repo_tree, VERSION)))
        assert {r.method for r in log if r.relpath and not r.relpath.startswith("listings/")} == {probe_method(), "GET"}
        assert {r.tls for r in log} <= {"TLSv1.2", "TLSv1.3"}, {r.tls for r in log}


# One redirect rule on every request path (http.refuse_redirect): from https only to https.

@pytest.mark.parametrize("glob,method", [("linux/x86_64/python3.11-2026.101.tar.zst", "GET"),
                                         ("linux/x86_64/python3.11-2026.101.tar.zst", "HEAD"), ("listings/*", None)],
                         ids=["GET", "HEAD", "listing"])
def test_a_redirect_from_https_to_plain_http_is_not_followed(https_double, repo_tree, pki, tmp_path, glob, method):
    """~/.netrc names the host: requests would strip the password on the way to plain http and
    put it back from ~/.netrc; the file would come unprotected."""
    from amsrepomirror.testing.repository import retarget_listing

    big = "linux/x86_64/python3.11-2026.101.tar.zst"
    if method == "HEAD":  # the probe: a HEAD, or with [http] first_bytes the GET of the first bytes
        method = probe_method()
    elif method == "GET":  # the transfer, not a first run's probe of the first bytes
        spare_probes(https_double)
    with ScmDouble(repo_tree) as plain:
        retarget_listing(repo_tree, VERSION, https_double.base_url)
        https_double.redirect(glob, plain.url, 302, method=method)
        home = tmp_path / "home"
        home.mkdir()
        (home / ".netrc").write_text(f"machine 127.0.0.1 login {DEMO_USER} password {DEMO_PASSWORD}\n")
        (home / ".netrc").chmod(0o600)
        env = env_trusting(pki["ca"], user=None, password=None, home=str(home))
        dest = tmp_path / "m"
        result = mirror(https_double.listing_url(VERSION), dest, env=env)
        assert result.returncode == 1, result.stderr
        [line] = error_lines(result)
        assert "redirect from https to http is not followed" in line and DEMO_PASSWORD not in result.stderr
        assert plain.log == []  # sent nothing: neither the password nor a request
    expected = {} if glob == "listings/*" else {p: h for p, h in served_tree(repo_tree, VERSION).items() if p != big}
    assert tree_hashes(dest) == expected
