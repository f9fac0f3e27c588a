"""The half TunnelChannel and StreamTransport share as an HBONE stream's sink: acks, queued sends.

Both read a weft.hbone stream from its callbacks and write into its DATA frames with TCP's
semantics; what they do the same way lives here once: received bytes are acknowledged (their
window given back) in batches as they are consumed, written bytes the windows cannot take yet
wait in `_pending` and go as the stream reports it writable, and write_eof() is END_STREAM once
they have gone. How each hands bytes to its reader and reports back-pressure stays its own.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from weft.hbone import HboneError, HboneStream
from weft.hbone.relay import ACK_BATCH


class StreamSide:
    """One side of an HBONE stream: its acknowledgement batch and its queue of unsent bytes."""

    def __init__(self, stream: HboneStream) -> None:
        super().__init__()
        self._stream = stream
        self._pending: deque[memoryview] = deque()  # written, not yet taken by the stream
        self._pending_size = 0
        self._end_requested = False  # write_eof() or close(): END_STREAM once _pending is sent
        self._ack_batch = ack_batch(stream)
        self._unacknowledged = 0

    # --- what each side answers for itself --------------------------------------------------

    def abort(self) -> None:
        raise NotImplementedError

    def _gone(self) -> bool:
        """The stream is reset or the connection lost: nothing more is sent."""
        raise NotImplementedError

    def _ended(self) -> None:
        """END_STREAM went after the last queued byte (close() may now be complete)."""

    # --- shared ------------------------------------------------------------------------------

    def _acknowledge(self) -> None:
        if self._unacknowledged:
            acknowledged, self._unacknowledged = self._unacknowledged, 0
            self._stream.acknowledge(acknowledged)

    def write_eof(self) -> None:
        """Half-close (END_STREAM) after what is written; reading goes on."""
        if self._end_requested or self._gone():
            return
        self._end_requested = True
        if not self._pending:
            self._stream.close_write()

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: who is calling is in the Downstream the proxy is given

    def _queue(self, view: memoryview) -> None:
        """Keep what the windows cannot take now, to go from _send_pending()."""
        self._pending.append(view)
        self._pending_size += len(view)

    def _drop_pending(self) -> None:
        """The stream is gone: what waits for its window never goes."""
        self._pending.clear()
        self._pending_size = 0

    def _send_pending(self) -> bool:
        """Hand queued bytes to the stream as far as its windows and TLS buffer take them now;
        True once all went (then END_STREAM if asked) or the stream is gone (then aborted)."""
        pending = self._pending
        try:
            while pending:
                view = pending[0]
                sent = self._stream.send_some(view)
                self._pending_size -= sent
                if sent < len(view):
                    pending[0] = view[sent:]
                    return False
                pending.popleft()
        except HboneError:
            self.abort()
            return True
        if self._end_requested:
            self._stream.close_write()
            self._ended()
        return True


def ack_batch(stream: HboneStream) -> int:
    """How many read bytes to acknowledge at once: in batches, as weft.hbone's relay does (a
    call per small message costs), bounded so that idle streams never hold the connection
    window."""
    settings = stream.session.core.settings
    return min(
        ACK_BATCH,
        settings.stream_window // 4,
        settings.connection_window // (2 * max(settings.max_concurrent_streams, 1)),
    )
