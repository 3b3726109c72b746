"""MLLP framing: ``0x0B`` + message + ``0x1C 0x0D``, and an incremental deframer.

Kept apart from the listener so that the MLLP sink and ``gateway send`` frame
messages the same way without depending on intake.

A start byte inside an open frame abandons that frame and opens a new one: the
sender gave up on the first message and began again. ``0x0B`` is not a legal
character in an HL7 message, so it can only mean a new frame.
"""

from __future__ import annotations

START = b"\x0b"
END = b"\x1c\x0d"


def frame(message: bytes) -> bytes:
    return START + message + END


class FrameTooLarge(Exception):
    """A frame passed the size limit. ``head`` is its first bytes; ``frames`` are the complete frames
    that came before it in the same :meth:`FrameReader.feed` call, still to be handled by the caller."""

    def __init__(self, head: bytes, frames: list[bytes]) -> None:
        super().__init__("frame too large")
        self.head = head
        self.frames = frames


class FrameReader:
    """Incremental MLLP deframer: feed bytes, get complete frames.

    ``abandoned`` counts the frames given up so far because a start byte came before their end.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.abandoned = 0
        self._buf = bytearray()
        self._in_frame = False
        self._scan = 0

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        while True:
            if not self._in_frame:
                start = buf.find(START)
                if start < 0:
                    buf.clear()
                    return frames
                del buf[: start + 1]
                self._in_frame = True
                self._scan = 0
            end = buf.find(END, self._scan)
            restart = buf.find(START, self._scan, end if end >= 0 else len(buf))
            if restart >= 0:
                del buf[: restart + 1]
                self.abandoned += 1
                self._scan = 0
                continue
            if end < 0:
                if len(buf) > self.max_frame_bytes:
                    head = bytes(buf[:4096])
                    buf.clear()
                    self._in_frame = False
                    raise FrameTooLarge(head, frames)
                self._scan = max(0, len(buf) - 1)
                return frames
            if end > self.max_frame_bytes:
                head = bytes(buf[:4096])
                del buf[: end + 2]
                self._in_frame = False
                raise FrameTooLarge(head, frames)
            frames.append(bytes(buf[:end]))
            del buf[: end + 2]
            self._in_frame = False
