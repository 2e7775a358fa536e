"""The tasks' shortcuts through Luigi's parameter handling give what Luigi's own code gives."""

import luigi
import pytest

from amsrepomirror.tasks.mirror import DownloadFile, FetchListing, VerifyTree

# the settings of [DownloadFile] that are not parameters (batch sizes) are named again each time the check is reset
pytestmark = pytest.mark.filterwarnings("ignore::luigi.parameter.UnconsumedParameterWarning")


@pytest.mark.parametrize("cls, kwargs", [
    (DownloadFile, {"mirror": "/m", "run_id": "r", "path": "common/a.tgz"}),
    (FetchListing, {"mirror": "/m", "version": "AMS2026.1", "listing_url": "http://x/l.txt", "platform": ["linux"],
                    "strict_authentication": False, "no_ssl": True, "jobs": 3, "run_id": "r", "adopt": False}),
    (VerifyTree, {"mirror": "/m", "version": "AMS2026.1", "listing_url": "http://x/l.txt", "platform": [],
                  "strict_authentication": True, "no_ssl": False, "jobs": "8", "run_id": "r", "adopt": True,
                  "deep": False}),
])
def test_parameter_values_are_luigis(cls, kwargs):
    params = cls.get_params()
    assert params == luigi.Task.get_params.__func__(cls)
    luigis = luigi.Task.get_param_values.__func__(cls, params, [], kwargs)
    for _ in range(2):  # the first call walks the settings section, later ones take the shortcut
        assert cls.get_param_values(params, [], kwargs) == luigis
    assert cls(**kwargs).task_id == cls(**kwargs).clone().task_id


def test_a_setting_no_parameter_takes_is_still_named(monkeypatch):
    settings = luigi.configuration.get_config()
    monkeypatch.setattr(DownloadFile, "_unconsumed_params", set(), raising=False)
    from amsrepomirror.tasks import base
    monkeypatch.setattr(base, "_SECTION_WALKED", set())
    settings.set("DownloadFile", "no_such_setting", "1")
    try:
        with pytest.warns(luigi.parameter.UnconsumedParameterWarning, match="no_such_setting"):
            DownloadFile(mirror="/m", run_id="r", path="p")
    finally:
        settings.remove_option("DownloadFile", "no_such_setting")


def test_a_parameter_left_out_is_still_refused():
    DownloadFile(mirror="/m", run_id="r", path="p")
    with pytest.raises(luigi.parameter.MissingParameterException):
        DownloadFile(mirror="/m", run_id="r")
    with pytest.raises(luigi.parameter.UnknownParameterException):
        DownloadFile(mirror="/m", run_id="r", path="p", nope=1)
