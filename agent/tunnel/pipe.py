"""Copy bytes between two TCP connections both ways, with half-close and reset propagated."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from weft.hbone.relay import READ_SIZE, abort_tcp


@dataclass
class PipeResult:
    a_to_b: int = 0
    b_to_a: int = 0
    reset: bool = False


async def pipe(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> PipeResult:
    """Until both directions are closed: a FIN becomes a FIN (write_eof), an error or RST on
    either side resets both, so the application sees what it would have seen without us."""
    result = PipeResult()

    def reset_both() -> None:
        if not result.reset:
            result.reset = True
            abort_tcp(a[1])
            abort_tcp(b[1])

    async def copy(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, forward: bool
    ) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                if forward:
                    result.a_to_b += len(data)
                else:
                    result.b_to_a += len(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (OSError, RuntimeError):
            reset_both()

    try:
        await asyncio.gather(copy(a[0], b[1], True), copy(b[0], a[1], False))
    except asyncio.CancelledError:
        reset_both()
        raise
    finally:
        for writer in (a[1], b[1]):
            if not result.reset:
                writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
    return result
