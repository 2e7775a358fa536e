"""The par2 block size of about 1/256 of the bundle (a chunk at least 16 blocks): one-stick parity must still cover
the loss of any one stick, whatever the chunk sizes, and par2 must never be asked for more source blocks than its
limit of 32768."""

from hypothesis import given, settings
from hypothesis import strategies as st

from amsrepomirror.errors import UsageError
from amsrepomirror.pack.parity import MIN_BLOCK, ONE_STICK, block_size, data_blocks, plan_on_sticks

MiB = 1024 * 1024


@settings(max_examples=300, deadline=None)
@given(chunk=st.integers(1, 64 * MiB), count=st.integers(3, 40), last=st.integers(1, 64 * MiB),
       per_stick=st.integers(1, 6), slack=st.integers(0, 8 * MiB))
def test_one_stick_parity_covers_any_stick_for_odd_chunk_sizes(chunk, count, last, per_stick, slack):
    sizes = {f"c.7z.{i:03d}": chunk for i in range(1, count)} | {f"c.7z.{count:03d}": min(last, chunk)}
    room = chunk * per_stick + slack + chunk  # the chunks of a stick and about one more for its volume
    try:
        planned = plan_on_sticks(sizes, ONE_STICK, room)
    except UsageError:
        return  # refused with a message: nothing made
    block = planned.block
    assert block % MIN_BLOCK == 0 and block % 4 == 0
    assert sum(data_blocks(s, block) for s in sizes.values()) <= 32768  # par2's limit of source blocks
    assert sorted(n for s in planned.chunks for n in s) == sorted(sizes)
    per_volume = planned.recovery_blocks // planned.volumes
    for number, chunks in enumerate(planned.chunks):
        lost = sum(data_blocks(sizes[n], block) for n in chunks)
        assert planned.recovery_blocks - per_volume * len(planned.placed[number]) >= lost, number
        assert sum(sizes[n] for n in chunks) + planned.volume_bytes * len(planned.placed[number]) <= room - planned.index_bytes


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4 * 1024 * MiB), min_size=1, max_size=3000))
def test_par2_is_never_asked_for_more_source_blocks_than_its_limit(sizes):
    block = block_size(sizes)
    assert block % MIN_BLOCK == 0
    assert sum(data_blocks(s, block) for s in sizes) <= 32768
