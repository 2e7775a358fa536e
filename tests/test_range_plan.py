"""How a file fetched as ranges is planned: pieces handed out in file order, halves at the end, and the
record of which bytes are on disk kept short without ever claiming a byte that is not.

These drive the scheduler (``segments.Transfers``) directly, with no connection: what it hands out
is what the connections would ask for. The downloads themselves are in tests/test_segments.py.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amsrepomirror.online.http import LowSpeed, StopSignal
from amsrepomirror.online.segments import Extent, SegmentedFile, SegmentPolicy, Transfers

MiB = 1024 * 1024
POLICY = SegmentPolicy(threshold=16 * MiB, max_ranges=8, piece=16 * MiB, min_range=1 * MiB)


def entry(size: int, path: str = "linux/x86_64/big.tar.zst") -> dict:
    return {"path": path, "url": f"http://127.0.0.1:1/{path}", "size": size, "etag": '"e1"', "last_modified": None}


def scheduler(tmp_path, entries, jobs=8, policy=POLICY) -> Transfers:
    def never(*_args):
        raise AssertionError("no transfer runs in these tests")

    return Transfers(None, entries, lambda path: tmp_path / (path.replace("/", "_") + ".part"), jobs=jobs,
                     policy=policy, timeout=1, low_speed=LowSpeed(), stop=StopSignal(), on_bytes=never,
                     fetch_whole=never, on_done=never, on_failed=never)


@pytest.fixture
def plan(tmp_path):
    made = []

    def make(*args, **kwargs):
        made.append(scheduler(tmp_path, *args, **kwargs))
        return made[-1]

    yield make
    for transfers in made:
        transfers.close_all()


def spans(f: SegmentedFile):
    return [(e.start // MiB, e.end // MiB, e.pos // MiB, e.busy) for e in f.extents]


def test_pieces_are_handed_out_in_file_order_once_the_server_honours_ranges(plan):
    t = plan([entry(100 * MiB)])
    first = t._pick(0)
    f = first.file
    assert (first.extent.start, first.extent.end) == (0, 100 * MiB)  # the first request asks for the whole file
    assert t._pick(0) is None  # no split before a 206 shows that the server honours ranges
    f.honours_ranges = True
    first.extent.pos = 3 * MiB  # its first bytes are in
    handed = [t._pick(0).extent for _ in range(6)]
    assert [(e.start // MiB, e.end // MiB) for e in handed] == [(19, 35), (35, 51), (51, 67), (67, 83), (83, 99), (99, 100)]
    assert first.extent.end == 19 * MiB  # the first range keeps one piece from where it is
    assert all(e.pos == e.start for e in handed)  # nothing of a piece is on disk before its answer
    assert spans(f) == [(0, 19, 3, True), (19, 35, 19, True), (35, 51, 35, True), (51, 67, 51, True),
                        (67, 83, 67, True), (83, 99, 83, True), (99, 100, 99, True)]
    half = t._pick(0).extent  # every byte is asked for: the largest running range is halved, up to 8 at once
    assert (half.start // MiB, half.end // MiB, half.pos // MiB) == (11, 19, 11) and first.extent.end == 11 * MiB
    assert t._pick(0) is None


def test_a_tail_shorter_than_the_smallest_range_stays_with_the_piece_before(plan):
    t = plan([entry(32 * MiB + MiB // 2)])
    first = t._pick(0)
    first.file.honours_ranges = True
    second = t._pick(0)
    assert (second.extent.start, second.extent.end) == (16 * MiB, 32 * MiB + MiB // 2)  # no half-MiB piece
    assert (first.extent.start, first.extent.end) == (0, 16 * MiB)


def test_at_the_end_the_largest_running_range_is_halved(plan):
    t = plan([entry(64 * MiB)])
    first = t._pick(0)
    f = first.file
    f.honours_ranges = True
    pieces = [first.extent] + [t._pick(0).extent for _ in range(3)]
    assert [(e.start // MiB, e.end // MiB) for e in pieces] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    pieces[1].pos = 30 * MiB  # 2 MiB left
    pieces[2].pos = 36 * MiB  # 12 MiB left: the largest
    pieces[3].pos = 58 * MiB  # 6 MiB left
    first.extent.pos = 2 * MiB  # 14 MiB left: larger still
    half = t._pick(0).extent
    assert (half.start, half.end, half.pos) == (9 * MiB, 16 * MiB, 9 * MiB)  # halved; its second half unwritten
    assert first.extent.end == 9 * MiB and first.extent.pos == 2 * MiB


def test_a_resumed_range_is_asked_for_whole_until_the_server_honours_ranges(plan, tmp_path):
    t = plan([entry(64 * MiB)])
    first = t._pick(0)
    f = first.file
    with t.cond:
        first.extent.end = 20 * MiB  # as a record a killed run left: [0, 20) and [20, 64) partly on disk
        f.extents.append(Extent(20 * MiB, 64 * MiB, 25 * MiB))
    second = t._pick(0).extent
    assert (second.start // MiB, second.end // MiB, second.pos // MiB) == (20, 64, 25)
    first.extent.busy = second.busy = False
    f.honours_ranges = True
    again = t._pick(0).extent
    assert (again.start // MiB, again.end // MiB, again.pos // MiB) == (0, 16, 0)  # now a piece from where it was


def test_finished_pieces_are_joined_in_the_record(plan):
    t = plan([entry(64 * MiB)])
    work = [t._pick(0)]
    f = work[0].file
    f.honours_ranges = True
    work += [t._pick(0) for _ in range(3)]
    for w in work[:2]:
        w.extent.pos = w.extent.end
        t._release(w, requeued=False)
    work[3].extent.pos = 50 * MiB
    assert spans(f) == [(0, 32, 32, False), (32, 48, 32, True), (48, 64, 50, True)]
    assert f.contiguous() == 32 * MiB


def extents_strategy():
    """A valid extents list: consecutive spans from 0, each with some bytes on disk and busy or not."""
    def build(parts):
        extents, at = [], 0
        for length, written, busy in parts:
            extents.append(Extent(at, at + length, at + min(written, length), busy))
            at += length
        return extents
    return st.lists(st.tuples(st.integers(1, 50), st.integers(0, 60), st.booleans()), min_size=1, max_size=12).map(build)


def on_disk(extents):
    return {b for e in extents for b in range(e.start, e.pos)}


@settings(max_examples=300, deadline=None)
@given(extents_strategy())
def test_coalesce_never_records_a_byte_not_on_disk(extents):
    f = SegmentedFile.__new__(SegmentedFile)
    f.extents = [Extent(e.start, e.end, e.pos, e.busy) for e in extents]
    busy = [e for e in f.extents if e.busy]
    before_prefix = f.contiguous()
    f.coalesce()
    assert on_disk(f.extents) == on_disk(extents)  # the same bytes on disk: none claimed, none lost
    assert [e.start for e in f.extents][0] == 0 and all(a.end == b.start for a, b in zip(f.extents, f.extents[1:], strict=False))
    assert f.extents[-1].end == extents[-1].end
    assert all(e.start <= e.pos <= e.end for e in f.extents)
    assert [e for e in f.extents if e.busy] == busy and all(any(e is b for e in f.extents) for b in busy)  # running ones kept
    assert f.contiguous() == before_prefix
    assert not any(not a.busy and not b.busy and a.pos == a.end for a, b in zip(f.extents, f.extents[1:], strict=False))


def test_coalesce_keeps_a_part_written_range_apart():
    f = SegmentedFile.__new__(SegmentedFile)
    f.extents = [Extent(0, 10, 4), Extent(10, 20, 20)]
    f.coalesce()
    assert [(e.start, e.end, e.pos) for e in f.extents] == [(0, 10, 4), (10, 20, 20)]  # bytes 4-9 are not on disk


def test_pieces_of_two_files_share_the_budget_largest_first(plan):
    t = plan([entry(20 * MiB, "a/small.bin"), entry(80 * MiB, "a/large.bin")], jobs=4,
             policy=SegmentPolicy(threshold=16 * MiB, max_ranges=2, piece=16 * MiB, min_range=1 * MiB))
    large = t._pick(0)
    assert large.entry["path"] == "a/large.bin"
    large.file.honours_ranges = True
    second = t._pick(0)
    assert second.file is large.file and (second.extent.start // MiB, second.extent.end // MiB) == (16, 32)
    third = t._pick(0)  # the large file has its two ranges: the next file starts
    assert third.entry["path"] == "a/small.bin" and (third.extent.start, third.extent.end) == (0, 20 * MiB)


def test_ranges_are_halved_only_once_no_file_is_left_to_start(plan):
    t = plan([entry(64 * MiB, "a/large.bin"), entry(8 * MiB, "a/small.bin")], jobs=8)
    large = t._pick(0)
    large.file.honours_ranges = True
    pieces = [t._pick(0).extent for _ in range(3)]
    assert [(e.start // MiB, e.end // MiB) for e in pieces] == [(16, 32), (32, 48), (48, 64)]
    small = t._pick(0)  # a running range could be halved, but a cut costs a connection: the waiting file starts
    assert small.entry["path"] == "a/small.bin" and small.file is None  # below the threshold: one stream
    half = t._pick(0).extent  # nothing left to start: now the largest running range is halved
    assert (half.start, half.end, half.pos) == (8 * MiB, 16 * MiB, 8 * MiB)
