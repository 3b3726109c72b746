"""The MLLP deframer: a start byte inside an open frame, and frames around an oversized one."""

from __future__ import annotations

import pytest

from adapters.hl7.framing import END, START, FrameReader, FrameTooLarge

PART = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|PART|P|2.5\rPID|1||MRN-PART"
FULL = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|FULL|P|2.5\rPID|1||MRN-FULL\r"


def test_a_start_byte_inside_an_open_frame_abandons_it() -> None:
    reader = FrameReader(1000)
    assert reader.feed(START + PART + START + FULL + END) == [FULL]
    assert reader.abandoned == 1
    assert not reader.in_frame


def test_an_abandoned_frame_split_across_reads() -> None:
    reader = FrameReader(1000)
    assert reader.feed(START + PART) == []
    assert reader.in_frame
    assert reader.feed(START + FULL[:20]) == []
    assert reader.abandoned == 1
    assert reader.feed(FULL[20:] + END) == [FULL]
    assert reader.abandoned == 1


def test_frames_on_either_side_of_an_abandoned_one_are_kept() -> None:
    reader = FrameReader(1000)
    frames = reader.feed(START + FULL + END + START + PART + START + PART + START + FULL + END)
    assert frames == [FULL, FULL]
    assert reader.abandoned == 2


def test_the_size_limit_counts_from_the_new_start_byte() -> None:
    reader = FrameReader(len(FULL))
    assert reader.feed(START + b"x" * 5000 + START + FULL + END) == [FULL]


def test_frames_before_an_oversized_one_come_with_the_refusal() -> None:
    reader = FrameReader(len(FULL))
    big = b"MSH|BIG|" + b"x" * 500
    with pytest.raises(FrameTooLarge) as ended:
        reader.feed(START + FULL + END + START + FULL + END + START + big + END)
    assert ended.value.frames == [FULL, FULL]
    assert ended.value.head.startswith(b"MSH|BIG|")


def test_frames_before_an_unfinished_oversized_one_come_with_the_refusal() -> None:
    reader = FrameReader(len(FULL))
    with pytest.raises(FrameTooLarge) as ended:
        reader.feed(START + FULL + END + START + b"MSH|BIG|" + b"x" * 500)
    assert ended.value.frames == [FULL]
