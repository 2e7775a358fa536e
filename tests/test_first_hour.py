"""The mistakes of a first hour with the tool: each one answered by a message that names the
cause and the next step, with its documented exit code.

Driven through the command (run_cli) against the SCM double, real 7zz bundles and, for the
read-only cases, a read-only tmpfs (when the tests run as root).
"""

import trustme
from clihelp import run_cli
from servers import free_port

from amsrepomirror.errors import RUNTIME_FAILURE
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = "AMS2026.1"


def stderr_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


def error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def mirror(url, dest, *extra, env=None, timeout=300):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", url, *extra, env=env, timeout=timeout)


# --- 1: a listing that cannot be reached fails within seconds, saying each retry ----------------

def patient_settings(tmp_path):
    """[http] settings of a patient site: many retries with a long backoff (for file bodies)."""
    cfg = tmp_path / "patient.cfg"
    cfg.write_text("[http]\nretries = 10\nbackoff = 0.5\ntimeout = 60\n")
    return cfg


def test_refused_listing_says_each_retry_and_gives_up_quickly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/Downloads/packages/listings/{VERSION}.txt"
    # 10 patient retries would back off for minutes: the listing's own few quick ones end within the timeout
    result = run_cli("--config", patient_settings(tmp_path), "mirror", "--version", VERSION, "--mirror", tmp_path / "m",
                     "--listing-url", url, timeout=120)
    assert result.returncode == RUNTIME_FAILURE, result.stderr
    lines = stderr_lines(result)
    retries = [line for line in lines if line.startswith("retrying ")]
    assert retries == [f"retrying GET {url} (attempt {n}/5, connection refused)" for n in range(2, 6)], result.stderr
    assert lines[-1] == f"error: cannot fetch the listing {url}: connection refused"
    assert "Error" not in result.stderr  # no exception class names


def test_name_that_does_not_resolve_says_so(tmp_path):
    url = f"http://nonexistent.invalid/Downloads/packages/listings/{VERSION}.txt"
    result = run_cli("--config", patient_settings(tmp_path), "mirror", "--version", VERSION, "--mirror", tmp_path / "m",
                     "--listing-url", url, timeout=120)
    assert result.returncode == RUNTIME_FAILURE, result.stderr
    lines = stderr_lines(result)
    assert lines[0] == f"retrying GET http://nonexistent.invalid:80/Downloads/packages/listings/{VERSION}.txt " \
                       "(attempt 2/5, the host name does not resolve)"
    assert lines[-1] == f"error: cannot fetch the listing {url}: the host name does not resolve"


# --- 2: https against plain HTTP, and the reverse ----------------------------------------------

def test_https_url_against_a_plain_http_server_says_so(scm_double, tmp_path):
    url = scm_double.listing_url(VERSION).replace("http://", "https://")
    result = mirror(url, tmp_path / "m", "--no-ssl")
    assert result.returncode == RUNTIME_FAILURE, result.stderr
    where = url.split("/")[2]
    assert error_line(result) == (f"error: cannot fetch the listing {url}: the server at {where} speaks plain HTTP, "
                                  "not HTTPS: use an http:// URL (--no-ssl does not change this)")
    assert [r for r in scm_double.log if r.path.endswith(".txt")] == []  # nothing was asked in the clear


def test_http_url_against_an_https_server_says_so(repo_tree, tmp_path):
    pem = tmp_path / "server.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    with ScmDouble(repo_tree, tls=pem) as double:
        url = double.listing_url(VERSION).replace("https://", "http://")
        result = mirror(url, tmp_path / "m")
    assert result.returncode == RUNTIME_FAILURE, result.stderr
    where = url.split("/")[2]
    assert error_line(result) == (f"error: cannot fetch the listing {url}: the server at {where} speaks HTTPS (TLS), "
                                  "not plain HTTP: use an https:// URL")
