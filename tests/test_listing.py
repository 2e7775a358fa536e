import pytest

from amsrepomirror.errors import UsageError
from amsrepomirror.online.listing import (
    decode_listing,
    listing_url_for,
    parse_listing,
    platform_of,
    redact,
    repository_root,
    select_platforms,
)
from amsrepomirror.tasks.base import platform_rules

LISTING_URL = "https://downloads.scm.com/Downloads/packages/listings/AMS2026.1.txt"
ROOT = "https://downloads.scm.com/Downloads/packages/"


def test_root_is_the_folder_holding_listings():
    assert repository_root(LISTING_URL) == ROOT
    assert listing_url_for("AMS2026.1") == LISTING_URL


def test_listing_tolerates_blank_lines_comments_crlf_and_duplicates():
    text = f"# AMS listing\r\n\r\n{ROOT}AMS2026.1.yml\r\n  {ROOT}linux/a%20b.tar.zst  \n{ROOT}AMS2026.1.yml\n"
    files = parse_listing(text, LISTING_URL)
    assert [f.path for f in files] == ["AMS2026.1.yml", "linux/a b.tar.zst"]
    assert files[1].url == f"{ROOT}linux/a%20b.tar.zst"


@pytest.mark.parametrize("bad, why", [
    ("ftp://downloads.scm.com/Downloads/packages/x.zip", "non-HTTP"),
    ("file:///etc/passwd", "non-HTTP"),
    ("https://downloads.scm.com/Downloads/other/x.zip", "outside"),
    ("https://evil.example/Downloads/packages/x.zip", "outside"),
    (f"{ROOT}linux/../../x.zip", "unsafe"),
    (f"{ROOT}linux/%2e%2e/x.zip", "unsafe"),
    (f"{ROOT}linux//x.zip", "unsafe"),
    (f"{ROOT}a%2Fb", "unsafe"),
    (f"{ROOT}.amsrepomirror/records/x.json", "state"),
    (f"{ROOT}x.zip?token=1", "query"),
    (f"{ROOT}bad%FF.zip", "UTF-8"),
    (f"{ROOT}two%0Alines.zip", "unsafe"),
    (f"{ROOT}bell%07.zip", "unsafe"),
    (f"{ROOT}next%C2%85line.zip", "unsafe"),
    (f"{ROOT}next\u0085line.zip", "unsafe"),
])
def test_unsafe_urls_refuse_the_whole_listing(bad, why):
    text = f"{ROOT}AMS2026.1.yml\n{bad}\n"
    with pytest.raises(UsageError, match=r"listing line 2|state") as info:
        parse_listing(text, LISTING_URL)
    assert "\n" not in str(info.value)


def test_listing_is_utf8_from_its_bytes_bom_tolerated():
    body = f"\ufeff{ROOT}AMS2026.1.yml\n{ROOT}donn%C3%A9es/%C3%BCn%C3%AF.tgz\n{ROOT}r\u00e4w/\u00c5ngstr\u00f6m.tgz\n"
    files = parse_listing(decode_listing(body.encode("utf-8"), LISTING_URL), LISTING_URL)
    assert [f.path for f in files] == ["AMS2026.1.yml", "données/ünï.tgz", "räw/Ångström.tgz"]
    with pytest.raises(UsageError, match=r"^listing line 3: .* not UTF-8 text \(byte 0xE9\)$"):
        decode_listing(f"{ROOT}a\n\n{ROOT}donn".encode() + b"\xe9es\n", LISTING_URL)


def test_two_undecodable_escapes_are_refused_not_merged():
    with pytest.raises(UsageError, match=r"listing line 2: .*not UTF-8 once percent-decoded"):
        parse_listing(f"{ROOT}AMS2026.1.yml\n{ROOT}a%FF.zip\n{ROOT}a%FE.zip\n", LISTING_URL)


def test_lines_end_at_lf_only():
    """U+2028 is a character of a name, not a line end (str.splitlines would split there); the one
    path check refuses it, as it refuses it in a bundle (it would break one-line messages)."""
    assert [f.path for f in parse_listing(f"{ROOT}AMS2026.1.yml\r\n{ROOT}c d.zip\n", LISTING_URL)] == \
        ["AMS2026.1.yml", "c d.zip"]
    with pytest.raises(UsageError, match=r"listing line 2: .*control character"):
        parse_listing(f"{ROOT}AMS2026.1.yml\r\n{ROOT}c\u2028d.zip\n", LISTING_URL)


def test_file_and_folder_clash_and_empty_listing_are_refused():
    with pytest.raises(UsageError, match="both as a file and as a folder"):
        parse_listing(f"{ROOT}a\n{ROOT}a/b\n", LISTING_URL)
    with pytest.raises(UsageError, match="lists no files"):
        parse_listing("# nothing\n\n", LISTING_URL)


def test_listing_outside_a_listings_folder_is_a_usage_error():
    with pytest.raises(UsageError, match="listings/"):
        repository_root("https://downloads.scm.com/Downloads/packages/AMS2026.1.txt")


def test_redact_removes_userinfo():
    assert redact("https://u:secret@h.example:8443/x") == "https://h.example:8443/x"
    assert redact("https://h/x") == "https://h/x"


def test_platform_rules_select_platform_and_independent_files():
    rules = platform_rules()  # the shipped [platforms] rules
    assert platform_of("linux/x86_64/adf-2026.101.tar.zst", rules) == "linux"
    assert platform_of("macos/arm64/adf.tar.zst", rules) == "macos"
    assert platform_of("windows/x86_64/adf.zip", rules) == "windows"
    assert platform_of("uv/channels/2026.1/packages/numpy-2.0-cp311-cp311-manylinux_2_28_x86_64.whl", rules) == "linux"
    assert platform_of("uv/channels/2026.1/packages/numpy-2.0-cp311-cp311-win_amd64.whl", rules) == "windows"
    assert platform_of("common/docs.tar.zst", rules) is None
    files = parse_listing("\n".join(ROOT + p for p in [
        "AMS2026.1.yml", "linux/x86_64/a.tar.zst", "windows/x86_64/a.zip", "macos/arm64/a.tar.zst", "common/d.zst"]),
        LISTING_URL)
    kept = [f.path for f in select_platforms(files, ["Linux"], rules)]
    assert kept == ["AMS2026.1.yml", "linux/x86_64/a.tar.zst", "common/d.zst"]
    assert len(select_platforms(files, [], rules)) == 5
    with pytest.raises(UsageError, match="unknown platform"):
        select_platforms(files, ["beos"], rules)


def test_names_windows_cannot_store_are_refused_on_windows(monkeypatch):
    import amsrepomirror.online.listing as listing
    import amsrepomirror.util.paths as paths
    monkeypatch.setattr(listing, "WINDOWS", True)
    monkeypatch.setattr(paths, "CASE_INSENSITIVE", True)
    for bad in ("common/con.txt", "ab:c.zip", "trailing.", "x|y"):
        with pytest.raises(UsageError, match="cannot be stored on Windows"):
            parse_listing(f"{ROOT}{bad}\n", LISTING_URL)
    with pytest.raises(UsageError, match="case-insensitive"):
        parse_listing(f"{ROOT}Docs/a.pdf\n{ROOT}docs/A.pdf\n", LISTING_URL)
    monkeypatch.setattr(listing, "WINDOWS", False)
    assert len(parse_listing(f"{ROOT}ab:c.zip\n", LISTING_URL)) == 1
