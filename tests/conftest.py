"""Shared fixtures: a synthetic repository tree, the SCM double serving it, and a real nginx.

``repo_tree`` is a fresh tree per test, so tests may change or delete files freely. Both
servers rewrite the origin of the tree's listing(s) on start: when a test uses both on one tree,
the listing points at the one started last (call ``write_listing``/``retarget_listing`` to
switch).
"""

import re
import sys
from pathlib import Path

import pytest

TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:  # so test modules can `from servers import ...`
    sys.path.insert(0, TESTS_DIR)

import clihelp  # noqa: E402
from servers import NginxServer, require_tool  # noqa: E402

from amsrepomirror.testing.repository import DEFAULT_VERSION, make_repository  # noqa: E402
from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER, ScmDouble  # noqa: E402

#: [http] first_bytes of the two ways a first run asks the server about a file it has no record of: a GET of its
#: first 64 KiB, or a HEAD.
PROBE_MODES = {"first-bytes": "64KiB", "head": "0"}


def pytest_generate_tests(metafunc):
    """A test that uses ``probe_mode`` (a fault or hostile-server module's ``pytestmark``) runs with both probes:
    with the one tests/luigi-test.cfg sets (as shipped) in the fast tier, with the other in the slow tier, unless its
    module names it in ``BOTH_PROBES_FAST`` (the representative fault classes)."""
    if "probe_mode" in metafunc.fixturenames:
        both = metafunc.function.__name__ in getattr(metafunc.module, "BOTH_PROBES_FAST", ())
        shipped = clihelp.first_bytes()
        metafunc.parametrize("probe_mode", [
            pytest.param(mode, marks=() if both or value == shipped else pytest.mark.slow)
            for mode, value in PROBE_MODES.items()], indirect=True)


@pytest.fixture
def probe_mode(request, tmp_path_factory, monkeypatch):
    """The tests' settings (clihelp.TEST_SETTINGS) with this mode's [http] first_bytes, for one test."""
    path = tmp_path_factory.mktemp("settings") / "luigi-test.cfg"
    path.write_text(re.sub(r"(?m)^first_bytes = .*$", f"first_bytes = {PROBE_MODES[request.param]}",
                           clihelp.TEST_SETTINGS.read_text()))
    monkeypatch.setattr(clihelp, "TEST_SETTINGS", path)
    return request.param


@pytest.fixture
def demo_auth():
    """(user, password) of the double's public demo account."""
    return (DEMO_USER, DEMO_PASSWORD)


@pytest.fixture
def repo_version():
    return DEFAULT_VERSION


@pytest.fixture
def repo_tree(tmp_path, repo_version):
    """Root folder (Path) holding ``Downloads/packages/`` of a default synthetic repository
    (about 5 MiB, one 3 MiB file). The listed relpaths: ``repository_files(root)``."""
    root = tmp_path / "scm"
    make_repository(root, repo_version)
    return root


@pytest.fixture
def scm_double(repo_tree):
    """A started ScmDouble on ``repo_tree`` (demo/demo-pass; ``licensed/`` answers 401)."""
    double = ScmDouble(repo_tree)
    double.start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def nginx_server(repo_tree, tmp_path):
    """A started real nginx on ``repo_tree`` with the same users and 401 prefixes as the
    double. Skipped when nginx is missing, failed instead when AMSREPOMIRROR_REQUIRE_TOOLS=1."""
    nginx = require_tool("nginx")
    server = NginxServer(repo_tree, nginx=nginx, workdir=tmp_path / "nginx")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def keys(tmp_path):
    """(a site signing key, an allowed_signers file naming it): the signature tests' keys."""
    from test_signature import allowed_signers, new_key
    folder = tmp_path / "keys"
    folder.mkdir()
    key = new_key(folder, "site")
    return key, allowed_signers(folder, key)
