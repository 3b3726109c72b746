"""``send_frames``, the MLLP client of ``gateway send``, against a real MLLP peer on a loopback port."""

from __future__ import annotations

import asyncio

from adapters.hl7.framing import END, START
from adapters.hl7.mllp import send_frames


def message(control_id: str, accept: str) -> bytes:
    return (
        f"MSH|^~\\&|LAB|H|GW|G|20240101||ADT^A01^ADT_A01|{control_id}|P|2.5.1|||{accept}|NE\rPID|1\r".encode()
    )


def test_a_late_error_reply_is_never_read_as_the_next_messages() -> None:
    """A message that asks for an ACK only on error (MSH-15 ER) gets its CE after the grace: it counts as
    no reply, and the next message, sent on a new connection, gets its own ACK, not that late CE."""

    handlers: set[asyncio.Task[None]] = set()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                await reader.readuntil(START)
                data = (await reader.readuntil(END))[: -len(END)]
                control_id = data.split(b"|")[9]
                late = b"|ER|" in data
                if late:
                    await asyncio.sleep(1.0)
                code = b"CE" if late else b"AA"
                writer.write(
                    START + b"MSH|^~\\&|GW|G|LAB|H|||ACK|1|P|2.5.1\rMSA|" + code + b"|" + control_id + END
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def main() -> list[bytes | None]:
        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            replies = await send_frames(
                "127.0.0.1",
                port,
                [message("M1", "ER"), message("M2", "AL"), message("M3", "AL")],
                timeout_s=10,
                unasked=[True, False, False],
                grace_s=0.3,
            )
            await asyncio.sleep(1.0)  # the late CE goes out, to a connection the client has closed
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            return replies

    replies = asyncio.run(main())
    assert replies[0] is None
    assert [r.split(b"MSA|")[1] for r in replies[1:] if r is not None] == [b"AA|M2", b"AA|M3"]
