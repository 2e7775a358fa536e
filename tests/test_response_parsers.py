"""The parsers of what a server says about a body: Content-Range and Content-Length (the response
gate, ``http.accept_response``) and the SCM double's Range. Random headers never crash them, and
what they accept is exactly what a well-formed header says."""

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from amsrepomirror.online.http import parse_content_length, parse_content_range
from amsrepomirror.testing.scmdouble import _parse_range

BOUNDED = settings(derandomize=True, max_examples=300, deadline=None)
HEADER_CHARS = st.characters(codec="latin-1")  # http.client decodes header values as Latin-1
NEAR_RANGE = st.text(alphabet="bytes -/*0123456789\t²٣" + string.ascii_letters[:4], max_size=40)
NUMBER = st.integers(min_value=0, max_value=10**19)


@BOUNDED
@given(st.one_of(st.text(HEADER_CHARS, max_size=60), NEAR_RANGE, st.none()))
def test_content_range_never_crashes_and_what_it_accepts_is_one_valid_range(value):
    parsed = parse_content_range(value)
    if parsed is not None:
        first, last, total = parsed
        assert 0 <= first <= last and (total is None or last < total)
        written = f"bytes {first}-{last}/{'*' if total is None else total}"
        assert parse_content_range(written) == parsed
        assert value.strip(" \t").lower().startswith("bytes ")


@BOUNDED
@given(NUMBER, NUMBER, st.one_of(NUMBER, st.none()))
def test_content_range_round_trips_every_valid_range(first, last, total):
    value = f"bytes {first}-{last}/{'*' if total is None else total}"
    valid = first <= last and (total is None or last < total)
    assert parse_content_range(value) == ((first, last, total) if valid else None)


def test_content_range_refuses_what_is_not_exactly_one_range():
    for value in ["bytes 0-9/10, 20-29/30", "bytes 0-9", "bytes */10", "bytes 5-4/10", "bytes 0-10/10",
                  "bytes  0-9/10", "bytes 0 - 9/10", "bytes -1-9/10", "items 0-9/10", "bytes 0-9/10x",
                  "bytes ０-9/10", "bytes 0-٩/10", ""]:
        assert parse_content_range(value) is None, value
    assert parse_content_range(" Bytes 0-9/10\t") == (0, 9, 10)
    assert parse_content_range("bytes 0-9/*") == (0, 9, None)


@BOUNDED
@given(st.one_of(st.text(HEADER_CHARS, max_size=30), st.none(), NUMBER.map(str)))
def test_content_length_never_crashes_and_accepts_only_plain_digits(value):
    parsed = parse_content_length(value)
    if parsed is not None:
        assert str(parsed) == value.strip(" \t").lstrip("0") or parsed == 0
    for bad in ["²", "١٢", "5, 5", "-1", "+1", "1e3", "0x10", ""]:
        assert parse_content_length(bad) is None


@BOUNDED
@given(st.text(HEADER_CHARS, max_size=40), st.integers(min_value=0, max_value=10**9))
def test_the_doubles_range_parser_never_crashes_and_stays_inside_the_file(header, size):
    parsed = _parse_range(header, size)
    assert parsed is None or parsed == "unsatisfiable" or 0 <= parsed[0] <= parsed[1] < size
