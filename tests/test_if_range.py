"""What ties a resume or a range to the bytes already held: a strong ETag, or a Last-Modified at least a second
before the Date of the answer that carried it (RFC 9110, 13.1.5), and the records that keep it across runs."""

import email.utils
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amsrepomirror.errors import FetchError
from amsrepomirror.online.http import (
    PART_SCHEMA,
    Asked,
    RemoteInfo,
    if_range_validator,
    resume_point,
    validator_returned,
    weak_date,
)

http_dates = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 31)).map(
    lambda d: d.replace(microsecond=0, tzinfo=timezone.utc))


def http_date(d: datetime) -> str:
    return email.utils.format_datetime(d, usegmt=True)


@settings(max_examples=300)
@given(st.one_of(st.none(), st.text(max_size=60)), st.one_of(st.none(), st.text(max_size=60)))
def test_weak_date_reads_any_header_values_without_raising(last_modified, date):
    assert weak_date(last_modified, date) in (True, False)
    if last_modified is None:
        assert weak_date(last_modified, date) is False  # nothing to tie with: not a weak date, no date at all


@settings(max_examples=300)
@given(http_dates, http_dates)
def test_a_date_ties_only_when_a_second_or_more_before_the_answer(modified, sent):
    assert weak_date(http_date(modified), http_date(sent)) == (sent - modified < timedelta(seconds=1))


def test_unreadable_or_absurd_dates_tie_nothing():
    assert weak_date("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", "Tue, 08 Dec 2026 01:00:00 GMT")
    assert weak_date("Tue, 01 Dec 2026 01:00:00 GMT", None)  # no Date: nothing says the date is old enough
    assert weak_date("Tue, 01 Dec 2026 01:00:00 GMT", "yesterday")
    assert not weak_date("Tue, 01 Dec 2026 01:00:00 GMT", "Tue, 08 Dec 2026 01:00:00 GMT")


def test_if_range_carries_a_strong_etag_else_a_date_that_ties():
    lm = "Tue, 01 Dec 2026 01:00:00 GMT"
    assert if_range_validator(RemoteInfo(200, 10, '"e"', lm, weak_date=True)) == '"e"'
    assert if_range_validator(RemoteInfo(200, 10, 'W/"e"', lm, weak_date=False)) == lm
    assert if_range_validator(RemoteInfo(200, 10, 'W/"e"', lm, weak_date=True)) is None
    assert if_range_validator(RemoteInfo(200, 10, None, lm, weak_date=True)) is None
    weak = RemoteInfo(200, 10, None, lm, weak_date=True)
    assert not validator_returned(weak, None, lm)  # no range is tied by it
    # the answer to the first bytes (no If-Range sent) carries its own date: accepted as the bytes it is, no more
    assert validator_returned(weak, None, lm, own=True)
    assert not validator_returned(weak, None, None, own=True)  # a 206 without a validator: never


def test_a_snapshot_entry_without_weak_date_is_read_as_weak():
    lm = "Tue, 01 Dec 2026 01:00:00 GMT"
    written_before = {"path": "a", "url": "u", "size": 10, "etag": None, "last_modified": lm}
    assert RemoteInfo.of_entry(written_before).weak_date is True
    assert if_range_validator(RemoteInfo.of_entry(written_before)) is None
    now = RemoteInfo.of_answer(10, {"Last-Modified": lm, "Date": "Tue, 08 Dec 2026 01:00:00 GMT"})
    assert now.validators()["weak_date"] is False
    assert RemoteInfo.of_entry({**written_before, **now.validators()}) == now


def test_a_part_record_from_before_the_rule_is_not_resumed(tmp_path):
    part = tmp_path / "f.part"
    part.write_bytes(b"x" * 1000)
    lm = "Tue, 01 Dec 2026 01:00:00 GMT"
    remote = RemoteInfo(200, 5000, None, lm, weak_date=False)
    record = tmp_path / "f.part.json"
    record.write_text(json.dumps({"etag": None, "last_modified": lm}))  # no schema: written before the rule
    assert resume_point(part, remote) == 0
    record.write_text(json.dumps({"schema": PART_SCHEMA, "etag": None, "last_modified": lm}))
    assert resume_point(part, remote) == 1000
    assert resume_point(part, RemoteInfo(200, 5000, None, lm, weak_date=True)) == 0


def test_a_range_is_never_asked_without_if_range():
    lm = "Tue, 01 Dec 2026 01:00:00 GMT"
    with pytest.raises(FetchError, match="nothing to tie"):
        Asked(1000, ranged=True).headers(RemoteInfo(200, 5000, None, lm, weak_date=True))
    assert Asked(1000, ranged=True).headers(RemoteInfo(200, 5000, None, lm)) == \
        {"Accept-Encoding": "identity", "Range": "bytes=1000-", "If-Range": lm}
    assert Asked().headers(RemoteInfo(200, 5000, None, lm, weak_date=True)) == {"Accept-Encoding": "identity"}
