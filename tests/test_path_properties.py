"""Property-based checks of the parsers of outside input this side owns: the listing (and the one
path rule it applies), and sizes. Seeded and bounded: the same examples on every run, seconds each."""

import posixpath
import unicodedata
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from amsrepomirror.errors import UsageError
from amsrepomirror.online.listing import parse_listing
from amsrepomirror.util.paths import RESERVED_PREFIX, STATE_DIR, folded, path_problem, tree_path_problems
from amsrepomirror.util.units import MAX_SIZE, format_size, parse_size

LISTING_URL = "https://downloads.scm.com/Downloads/packages/listings/AMS2026.1.txt"
ROOT = "https://downloads.scm.com/Downloads/packages/"

SEEDED = settings(derandomize=True, deadline=None, max_examples=200,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Characters that make names awkward: separators, dots, percent escapes, controls, bidi and line
# separators, composed and decomposed accents, case pairs, the long s and the Kelvin sign.
AWKWARD = list("/.%\\:?#;~ \t\r\x00\x1b\x7f\x85") + ["\u2028", "\u202e", "\u200d", "\ufeff", "é", "e\u0301", "É",
                                                      "ß", "ſ", "\u212a", "ı", "İ", "%2F", "%2e", "%C3%A9", "%FF", "%0A"]
RESERVED = [STATE_DIR, STATE_DIR.upper(), ".AmsRepoMirror", RESERVED_PREFIX, RESERVED_PREFIX.upper(), ".amſrepomirror"]
segment = st.lists(st.one_of(st.sampled_from(["a", "B", "x.tgz", "linux", "données"]), st.sampled_from(AWKWARD),
                             st.sampled_from(RESERVED), st.text(max_size=3)), min_size=0, max_size=4).map("".join)
rel_path = st.lists(segment, min_size=1, max_size=4).map("/".join)


def _case_variants(text: str) -> st.SearchStrategy:
    return st.lists(st.booleans(), min_size=len(text), max_size=len(text)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(text, upper, strict=True)))


# ---- the one path rule ---------------------------------------------------------------------------

@SEEDED
@given(name=st.one_of(rel_path, st.text(max_size=20), st.none(), st.integers(), st.binary(max_size=5)))
def test_path_problem_never_raises_and_what_it_accepts_is_a_plain_relative_path(name):
    why = path_problem(name)
    assert why is None or (isinstance(why, str) and why)
    if why is None:
        assert isinstance(name, str) and name.isprintable() and "\\" not in name
        assert not name.startswith("/") and posixpath.normpath(name) == name and ".." not in name.split("/")
        assert all(RESERVED_PREFIX not in folded(seg) for seg in name.split("/"))
        assert folded(name.split("/")[0]).rstrip(". ") != STATE_DIR
        assert path_problem(unicodedata.normalize("NFD", name)) is None
        assert path_problem(unicodedata.normalize("NFC", name)) is None


@SEEDED
@given(state=_case_variants(STATE_DIR), prefix=_case_variants(RESERVED_PREFIX), rest=st.sampled_from(["x", "a/b.json"]),
       form=st.sampled_from(["NFC", "NFD"]))
def test_the_state_folder_and_reserved_names_are_refused_in_any_case(state, prefix, rest, form):
    assert path_problem(unicodedata.normalize(form, f"{state}/{rest}"))
    assert path_problem(unicodedata.normalize(form, f"common/x{prefix}{rest}"))
    assert path_problem(f"common/{state}/{rest}") is None  # the state folder is at the top only


@SEEDED
@given(paths=st.lists(rel_path, max_size=6), data=st.data())
def test_tree_rule_is_stricter_where_case_folds_and_blind_to_order(paths, data):
    loose, strict = tree_path_problems(paths, case_insensitive=False), tree_path_problems(paths, case_insensitive=True)
    assert len(strict.problems) == len(loose.problems) + len(loose.warnings) and not strict.warnings
    assert tree_path_problems(data.draw(st.permutations(paths)), case_insensitive=True) == strict
    if paths and not strict.problems:
        folders = {posixpath.dirname(p) for p in paths} - {""}
        assert len({folded(p) for p in set(paths)}) == len(set(paths)) and not folders & set(paths)
        twin = data.draw(st.sampled_from(paths))
        nfd, swapped = unicodedata.normalize("NFD", twin), twin.swapcase()
        if nfd != twin and path_problem(nfd) is None:
            for case_insensitive in (False, True):
                assert any("normalisation" in p for p in tree_path_problems(paths + [nfd], case_insensitive).problems)
        if swapped not in paths and folded(swapped) == folded(twin) and path_problem(swapped) is None:
            assert tree_path_problems(paths + [swapped], case_insensitive=True).problems
            case = tree_path_problems(paths + [swapped], case_insensitive=False)
            assert case.warnings or any("normalisation" in p for p in case.problems)


# ---- the listing -----------------------------------------------------------------------------------

line = st.one_of(
    rel_path.map(lambda p: ROOT + p),
    rel_path.map(lambda p: ROOT + quote(p, safe="/")),
    st.sampled_from(["", "# comment", "   ", "\r", "http://downloads.scm.com/Downloads/packages/a",
                     "https://evil.example/Downloads/packages/a", f"{ROOT}a?x=1", f"{ROOT}a#f", "ftp://x/y"]),
    st.text(max_size=30),
)


@SEEDED
@given(lines=st.lists(line, max_size=8), newline=st.sampled_from(["\n", "\r\n"]))
def test_listing_is_refused_in_one_line_or_gives_paths_that_pass_the_rule_and_round_trip(lines, newline):
    text = newline.join(lines)
    try:
        files = parse_listing(text, LISTING_URL)
    except UsageError as exc:
        assert str(exc) and "\n" not in str(exc) and "\r" not in str(exc)
        return
    paths = [f.path for f in files]
    assert len(set(paths)) == len(paths) and all(path_problem(p) is None for p in paths)
    assert not tree_path_problems(paths).problems
    stripped = {raw.strip() for raw in text.split("\n")}
    assert all(f.url in stripped for f in files)
    again = parse_listing("".join(f"{ROOT}{quote(p, safe='/')}\n" for p in paths), LISTING_URL)
    assert [f.path for f in again] == paths


# ---- sizes -------------------------------------------------------------------------------------------

UNITS = {"": 1, "B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
         "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


@SEEDED
@given(text=st.one_of(st.text(max_size=12), st.from_regex(r"\s*[0-9٣]{0,25}(\.[0-9]{0,8})?\s*[a-zA-Z]{0,4}\s*")))
@example(text="9" * 400)  # past a float's range
@example(text="\u0663MiB")  # a digit, but not an ASCII one
def test_parse_size_reads_a_size_or_refuses_in_one_line(text):
    try:
        value = parse_size(text)
    except UsageError as exc:
        assert str(exc).startswith("size ") or str(exc).startswith("cannot read size")
        return
    assert type(value) is int and 0 < value <= MAX_SIZE and text.isascii()


@SEEDED
@given(whole=st.integers(0, 10**6), fraction=st.text("0123456789", max_size=6), unit=st.sampled_from(sorted(UNITS)),
       upper=st.booleans(), space=st.sampled_from(["", " ", "\t"]))
def test_parse_size_is_exact_in_whole_bytes(whole, fraction, unit, upper, space):
    number = f"{whole}.{fraction}" if fraction else str(whole)
    exact = (whole * 10 ** len(fraction) + int(fraction or "0")) * UNITS[unit] // 10 ** len(fraction)
    text = f"{number}{space}{unit.upper() if upper else unit}"
    if exact <= 0:
        with pytest.raises(UsageError, match="greater than zero"):
            parse_size(text)
    else:
        assert parse_size(text) == exact


@SEEDED
@given(n=st.integers(1, 2**62))
def test_a_shown_size_reads_back_within_its_rounding(n):
    shown = format_size(n)
    number, unit = shown.split(" ")
    assert parse_size(shown) == pytest.approx(n, abs=UNITS[unit] * 0.05 + 1) if unit != "B" else parse_size(shown) == n
    assume(unit != "TiB")
    assert float(number) < 1024
