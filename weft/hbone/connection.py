"""The sans-I/O HBONE protocol core: HTTP/2 CONNECT tunnels on top of h2, bytes in, events out."""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.flags
import hyperframe.frame

from weft.hbone import frame_flags, frame_repr
from weft.hbone.connect_block import send_connect, send_ok
from weft.hbone.errors import StreamClosedError
from weft.hbone.events import (
    CANCEL,
    FRAME_SIZE_ERROR,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ConnectionClosed,
    DataReceived,
    Event,
    StreamEnded,
    StreamReset,
    TunnelEstablished,
    TunnelRefused,
    TunnelRejected,
    TunnelRequested,
    WindowOpened,
)
from weft.hbone.request import MalformedRequestError, parse_authority, validate_connect

frame_repr.install()
frame_flags.install()

log = logging.getLogger(__name__)

# A DATA frame header as hyperframe packs it: 24-bit length (16 + 8 bits), type 0, flags, stream.
_DATA_FRAME_HEADER = struct.Struct(">HBBBL")
_DATA_FRAME_TYPE = 0x0
_END_STREAM_FLAG = 0x1
_DEFAULT_WINDOW = 65_535  # RFC 9113 section 6.9.2: every window starts here


class _ReceivedDataFrame(hyperframe.frame.DataFrame):
    """A DATA frame the fast path parsed. h2 formats repr(frame) for its trace log whether the
    log is on or not (a few percent of a 1 KiB exchange): this one's repr is just the header."""

    def __repr__(self) -> str:
        return f"DataFrame(stream_id={self.stream_id}, flags={self.flags!r}): {len(self.data)} B"


# The flags of a received unpadded DATA frame; h2 only reads a received frame's flags, so the
# frames the fast path makes share these two instead of building a Flags each.
_NO_FLAGS = hyperframe.flags.Flags(hyperframe.frame.DataFrame.defined_flags)
_END_STREAM_FLAGS = hyperframe.flags.Flags(hyperframe.frame.DataFrame.defined_flags)
_END_STREAM_FLAGS.add("END_STREAM")
_MAX_STREAM_ID = 2**31 - 1
# The states in which DATA may be received / sent on a stream without any state change (RFC
# 9113 5.1), and those of a connection that has not sent or received GOAWAY.
_RECEIVING = frozenset({h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL})
_SENDING = frozenset({h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE})
# A DATA frame up to this size is queued as one bytes object (header + a copy of the payload),
# so that a small message leaves in one transport write; larger payloads are queued uncopied.
_JOIN_LIMIT = 16 * 1024

# on_data(stream_id, data, flow_controlled_length): see HboneConnection.on_data.
DataCallback = Callable[[int, bytes, int], None]
# What one read produced so far, in order: h2's events, and DATA the core parsed itself.
_Pending = list[h2.events.Event | DataReceived]


@dataclass(frozen=True)
class TunnelSettings:
    """HTTP/2 settings of one end of a tunnel.

    The windows are large because a tunnel carries bulk TCP: with 64 KiB windows a single
    stream would stall on every round trip. The windows are still finite, so a slow reader
    back-pressures its writer instead of growing a buffer.
    """

    connection_window: int = 16 * 1024 * 1024
    stream_window: int = 4 * 1024 * 1024
    # One frame per 256 KiB relay read: fewer h2 calls per byte (TLS still cuts 16 KiB records).
    # Measured on the sans-I/O core: 64 KiB frames cost 1.5-2x more CPU per byte, 16 KiB 4-6x.
    max_frame_size: int = 256 * 1024
    max_concurrent_streams: int = 100
    max_header_list_size: int = 16 * 1024


class HboneConnection:
    """One end of an HBONE connection; feed it bytes, act on its events, send data_to_send()."""

    def __init__(self, *, client_side: bool, settings: TunnelSettings | None = None) -> None:
        self.settings = settings or TunnelSettings()
        # The server validates requests itself so that a malformed header block costs the
        # client one stream (400), not the whole connection as h2's own check would.
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=client_side,
            normalize_inbound_headers=client_side,
        )
        self._h2 = h2.connection.H2Connection(config)
        # The state of a connection with no GOAWAY either way; compared by identity (Enum's hash
        # is a Python function and the check runs for every message).
        self._open_state = (
            h2.connection.ConnectionState.CLIENT_OPEN
            if client_side
            else h2.connection.ConnectionState.SERVER_OPEN
        )
        # h2 dispatches on the frame's exact class: ours is handled as the DATA frame it is.
        dispatch = self._h2._frame_dispatch_table
        dispatch[_ReceivedDataFrame] = dispatch[hyperframe.frame.DataFrame]
        self._closed = False
        self._outbound: list[bytes | bytearray | memoryview] = []
        self._inbound = bytearray()  # a frame whose end has not arrived yet
        # If set, DATA on an established stream is handed to this callback as it is parsed,
        # instead of as a DataReceived event (a dataclass and a dispatch per message). Only when
        # no event of the same read is still waiting, so the order of events never changes.
        self.on_data: DataCallback | None = None
        self._h2.initiate_connection()
        self._h2.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.settings.stream_window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: self.settings.max_frame_size,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: (
                    self.settings.max_concurrent_streams
                ),
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.settings.max_header_list_size,
            }
        )
        if self.settings.connection_window > _DEFAULT_WINDOW:
            self._h2.increment_flow_control_window(
                self.settings.connection_window - _DEFAULT_WINDOW
            )

    @property
    def closed(self) -> bool:
        """True once a GOAWAY was sent or received, or the connection failed."""
        return self._closed

    @property
    def open_streams(self) -> int:
        return self._h2.open_inbound_streams + self._h2.open_outbound_streams

    def data_to_send(self) -> bytes:
        """The bytes the core wants on the wire, in order; empty when there are none."""
        return b"".join(self.buffers_to_send())

    @property
    def has_output(self) -> bool:
        """True if data_to_send() would return bytes."""
        return bool(self._outbound or self._h2._data_to_send)

    def buffers_to_send(self) -> list[bytes | bytearray | memoryview]:
        """data_to_send() as a list of buffers, for transport.writelines(): payloads uncopied."""
        if self._h2._data_to_send:
            self._take_h2_output()
        buffers, self._outbound = self._outbound, []
        return buffers

    def _take_h2_output(self) -> None:
        # h2 queues control frames in its own buffer; moving them to ours keeps frame order.
        if self._h2._data_to_send:
            self._outbound.append(self._h2._data_to_send)
            self._h2._data_to_send = bytearray()

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Process bytes from the peer; never raises: a protocol error becomes ConnectionClosed.

        The core keeps no reference to `data` (a reused read buffer may be passed).
        """
        if self._closed:
            return []
        # h2's events are translated (and the server's answers to bad requests sent) once the
        # whole read is parsed, as h2.receive_data() would; DATA the fast path parsed while
        # events were waiting is queued among them as our DataReceived, in order.
        pending: list[h2.events.Event | DataReceived] = []
        try:
            self._receive_frames(data, pending)
        except h2.exceptions.ProtocolError as error:
            # h2 has queued a GOAWAY with the right code already.
            self._closed = True
            return [ConnectionClosed(int(error.error_code), 0, str(error), remote=False)]
        except Exception as error:
            # A bug in a parser must close one connection, never the agent or the waypoint.
            log.exception("HBONE core failed on received data; closing the connection")
            return self._fail(INTERNAL_ERROR, f"internal error: {error!r}")
        events: list[Event] = []
        for event in pending:
            if isinstance(event, DataReceived):  # ours, not h2.events.DataReceived
                events.append(event)
            else:
                events.extend(self._translate(event))
        # h2 checks a frame's length only once the whole frame has arrived, so a peer declaring
        # a 16 MiB frame would make us buffer 16 MiB. What h2 leaves buffered is at most one
        # partial frame: more than a maximal frame means the declared length is too long.
        if len(self._h2.incoming_buffer._data) > self._h2.max_inbound_frame_size + 9:
            events.extend(self._fail(FRAME_SIZE_ERROR, "frame longer than SETTINGS_MAX_FRAME_SIZE"))
        return events

    # Class-level switch so that a test can compare the fast path with h2's own parser.
    fast_data_path = True

    def _receive_frames(self, data: bytes | bytearray | memoryview, events: _Pending) -> None:
        """h2.receive_data(), with the framing done here and DATA frames handled here.

        h2 copies every received byte into its frame buffer, parses a Frame out of it and then
        deletes it from the buffer; for the DATA frames that make up a tunnel that was a third
        of the CPU of a 1 KiB request/response and a large share of bulk. Here the byte stream
        is cut into whole frames without copying. DATA on an established stream is accounted
        and delivered here (_receive_stream_data); other DATA frames become a DataFrame handed
        to h2's own frame handler, and every other frame is given to h2.receive_data() whole.
        test_hbone_connection checks that the result is the same as h2's on random traffic.
        """
        connection = self._h2
        if not self.fast_data_path:
            events += connection.receive_data(data)
            return
        view = memoryview(data)
        preface_left = connection.incoming_buffer._preamble_len
        if preface_left:  # the server's first 24 bytes: h2 checks them
            events += connection.receive_data(view[:preface_left])
            view = view[preface_left:]
        if self._inbound:  # the rest of a frame that began in an earlier read
            rest = self._complete_inbound_frame(view, events)
            if rest is None:
                return
            view = rest
        offset, end = 0, len(view)
        max_length = connection.max_inbound_frame_size
        while end - offset >= 9:
            length = int.from_bytes(view[offset : offset + 3], "big")
            if length > max_length:
                self._frame_length(view[offset : offset + 3])  # raises
            stop = offset + 9 + length
            if stop > end:
                break
            frame = view[offset:stop]
            # The common case first: DATA without flags on an established stream.
            if frame[3] or frame[4] or not self._receive_stream_data(frame, events):
                self._receive_frame(frame, events)
            offset = stop
        if offset < end:
            self._inbound += view[offset:]
            if len(self._inbound) >= 9:
                self._frame_length(self._inbound[:3])  # refuse an oversized frame right away

    def _complete_inbound_frame(self, view: memoryview, events: _Pending) -> memoryview | None:
        """Add bytes to the buffered partial frame; process it once whole. None: need more."""
        if len(self._inbound) < 9:
            taken = min(9 - len(self._inbound), len(view))
            self._inbound += view[:taken]
            view = view[taken:]
            if len(self._inbound) < 9:
                return None
        missing = 9 + self._frame_length(self._inbound[:3]) - len(self._inbound)
        if len(view) < missing:
            self._inbound += view
            return None
        self._inbound += view[:missing]
        frame, self._inbound = self._inbound, bytearray()
        view_of_frame = memoryview(frame)
        if frame[3] or frame[4] or not self._receive_stream_data(view_of_frame, events):
            self._receive_frame(view_of_frame, events)
        return view[missing:]

    def _frame_length(self, header: memoryview | bytearray) -> int:
        length = int.from_bytes(header, "big")
        if length > self._h2.max_inbound_frame_size:
            # h2 would only notice once the whole frame had been buffered.
            self._h2._terminate_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            raise h2.exceptions.FrameTooLargeError(
                f"Received overlong frame: length {length}, max {self._h2.max_inbound_frame_size}"
            )
        return length

    def _receive_frame(self, frame: memoryview, events: _Pending) -> None:
        """Process one whole frame (header included)."""
        connection = self._h2
        stream_id = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        if (
            frame[3] != _DATA_FRAME_TYPE
            or frame[4] & ~_END_STREAM_FLAG
            or not stream_id
            or connection.incoming_buffer._headers_buffer  # must be CONTINUATION: h2 says so
        ):
            events += connection.receive_data(frame)
            return
        # What DataFrame(stream_id) then parse_body() would give, without their per-frame
        # setup (a third of this method's cost): the attributes h2 reads, set directly.
        data_frame = _ReceivedDataFrame.__new__(_ReceivedDataFrame)
        data_frame.stream_id = stream_id
        data_frame.flags = _END_STREAM_FLAGS if frame[4] & _END_STREAM_FLAG else _NO_FLAGS
        data_frame.pad_length = 0
        data_frame.data = frame[9:].tobytes()
        data_frame.body_len = len(frame) - 9
        try:
            events += connection._receive_frame(data_frame)
        except h2.exceptions.ProtocolError as error:
            connection._terminate_connection(error.error_code)  # as h2.receive_data does
            raise

    def _receive_stream_data(self, frame: memoryview, events: _Pending) -> bool:
        """A DATA frame without flags on an established stream, handled without h2's machinery.

        h2 would run two state machines (whose transitions change nothing here), consume both
        windows, make a DataReceived event and trace the frame; we do what of that changes
        state (the windows, the received length), after checking everything h2 would check.
        False: anything unusual (closed or half-closed stream, no response yet, a window
        overrun, a GOAWAY, an unfinished header block): _receive_frame() and h2 handle the
        frame and its errors as usual.
        """
        connection = self._h2
        length = len(frame) - 9
        stream = connection.streams.get(int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF)
        if (
            not length
            or stream is None
            or stream.state_machine.state not in _RECEIVING
            or not stream.state_machine.headers_received
            or stream._expected_content_length is not None
            or connection.state_machine.state is not self._open_state
            or connection.incoming_buffer._headers_buffer  # must be CONTINUATION: h2 says so
        ):
            return False
        connection_window = connection._inbound_flow_control_window_manager
        stream_window = stream._inbound_window_manager
        if (
            length > connection_window.current_window_size
            or length > stream_window.current_window_size
        ):
            return False
        connection_window.current_window_size -= length
        stream_window.current_window_size -= length
        stream._actual_content_length += length
        data = frame[9:].tobytes()
        if self.on_data is not None and not events:
            self.on_data(stream.stream_id, data, length)
        else:
            events.append(DataReceived(stream.stream_id, data, length))
        return True

    def send_window(self, stream_id: int) -> int:
        """How many bytes send_data() would accept now on `stream_id`."""
        try:
            return self._h2.local_flow_control_window(stream_id)
        except h2.exceptions.H2Error as error:
            raise StreamClosedError(f"HBONE stream {stream_id} is closed: {error}") from error

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue as much of `data` as the flow-control windows allow; return how much that was.

        This is h2's send_data without its copies and state machines: h2 copies a DATA payload
        five times on the way out (memoryview.tobytes, body join, header concat, frame join,
        buffer append), which cost about a third of the CPU of a bulk tunnel, and runs two
        state machines whose transitions change nothing on an open stream. We check the same
        states, do the same flow-control accounting, and queue header and payload (a view, not
        a copy, unless it is small) after the frames h2 has pending.
        test_hbone_connection checks the bytes are identical to h2's.
        """
        connection = self._h2
        stream = connection.streams.get(stream_id)
        if (
            stream is None
            or stream.state_machine.state not in _SENDING
            or connection.state_machine.state is not self._open_state
        ):
            return self._send_data_checked(stream_id, data)
        allowed = min(
            len(data), connection.outbound_flow_control_window, stream.outbound_flow_control_window
        )
        if allowed <= 0:
            return 0
        if connection._data_to_send:
            self._take_h2_output()
        frame_size = connection.max_outbound_frame_size
        outbound = self._outbound
        if allowed <= _JOIN_LIMIT and allowed <= frame_size:
            outbound.append(
                _DATA_FRAME_HEADER.pack(allowed >> 8, allowed & 0xFF, 0, 0, stream_id)
                + data[:allowed]
            )
        else:
            view = memoryview(data)  # slices of bytes would be copies
            for offset in range(0, allowed, frame_size):
                length = min(frame_size, allowed - offset)
                outbound.append(
                    _DATA_FRAME_HEADER.pack(length >> 8, length & 0xFF, 0, 0, stream_id)
                )
                outbound.append(view[offset : offset + length])
        stream.outbound_flow_control_window -= allowed
        connection.outbound_flow_control_window -= allowed
        return allowed

    def _send_data_checked(self, stream_id: int, data: bytes | memoryview) -> int:
        """send_data() through h2's state machines: they raise on a closed stream or connection."""
        connection = self._h2
        try:
            allowed = max(0, min(len(data), connection.local_flow_control_window(stream_id)))
            stream = connection.streams[stream_id]
            frame_size = connection.max_outbound_frame_size
            for offset in range(0, allowed, frame_size):
                length = min(frame_size, allowed - offset)
                connection.state_machine.process_input(h2.connection.ConnectionInputs.SEND_DATA)
                stream.state_machine.process_input(h2.stream.StreamInputs.SEND_DATA)
                self._take_h2_output()
                self._outbound.append(
                    _DATA_FRAME_HEADER.pack(length >> 8, length & 0xFF, 0, 0, stream_id)
                )
                self._outbound.append(data[offset : offset + length])
                stream.outbound_flow_control_window -= length
                connection.outbound_flow_control_window -= length
        except (h2.exceptions.H2Error, KeyError) as error:
            raise StreamClosedError(f"HBONE stream {stream_id} is closed: {error!r}") from error
        return allowed

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side of the stream (END_STREAM): the tunnel's TCP FIN."""
        try:
            self._h2.end_stream(stream_id)
        except h2.exceptions.H2Error as error:
            raise StreamClosedError(f"HBONE stream {stream_id} is closed: {error}") from error

    def reset_stream(self, stream_id: int, error_code: int = CANCEL) -> None:
        """Abort the stream (RST_STREAM): the tunnel's TCP RST. A closed stream stays closed."""
        # Already closed or reset: the abort has nothing left to do.
        with contextlib.suppress(h2.exceptions.H2Error):
            self._h2.reset_stream(stream_id, error_code)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application consumed `size` received bytes: give the peer that window back."""
        if size <= 0 or self._closed:
            return
        # If h2 refuses, the connection is going away: there is no window left to return.
        with contextlib.suppress(h2.exceptions.H2Error):
            self._h2.acknowledge_received_data(size, stream_id)

    def close(self, error_code: int = NO_ERROR) -> None:
        """Send GOAWAY; streams already open may finish, no new ones are accepted."""
        if self._closed:
            return
        self._closed = True
        # If h2 refuses, the peer's GOAWAY closed its state machine first.
        with contextlib.suppress(h2.exceptions.H2Error):
            self._h2.close_connection(error_code)

    def _fail(self, error_code: int, reason: str) -> list[Event]:
        self.close(error_code)
        return [ConnectionClosed(error_code, 0, reason, remote=False)]

    def _translate(self, event: h2.events.Event) -> Iterable[Event]:
        if isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            assert event.data is not None
            if event.data:
                yield DataReceived(event.stream_id, event.data, event.flow_controlled_length or 0)
            else:
                # Only padding or an END_STREAM carrier: nothing for the application to consume.
                self.acknowledge(event.stream_id, event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.WindowUpdated):
            yield WindowOpened(event.stream_id or 0)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            yield StreamEnded(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            yield StreamReset(event.stream_id, int(event.error_code or 0), event.remote_reset)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            # A new initial window or frame size changes what every stream may send.
            yield WindowOpened(0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._closed = True
            reason = (event.additional_data or b"").decode("utf-8", "replace")
            yield ConnectionClosed(
                int(event.error_code or 0), event.last_stream_id or 0, reason, remote=True
            )
        elif isinstance(event, h2.events.RequestReceived):
            yield from self._on_request(event)
        elif isinstance(event, h2.events.ResponseReceived):
            yield from self._on_response(event)
        # Pings are answered by h2; trailers, priorities, unknown frames mean nothing to a tunnel.

    def _on_request(self, event: h2.events.RequestReceived) -> Iterable[Event]:
        # h2 lets a server open a stream towards a client; HBONE never does, so refuse it.
        assert event.stream_id is not None
        self.reset_stream(event.stream_id, REFUSED_STREAM)
        return ()

    def _on_response(self, event: h2.events.ResponseReceived) -> Iterable[Event]:
        assert event.stream_id is not None
        self.reset_stream(event.stream_id, PROTOCOL_ERROR)
        return ()


class ClientConnection(HboneConnection):
    """The client end: opens one CONNECT stream per tunnelled TCP connection."""

    def __init__(self, settings: TunnelSettings | None = None) -> None:
        super().__init__(client_side=True, settings=settings)

    @property
    def can_open_tunnel(self) -> bool:
        """True if one more stream fits under both ends' concurrency limits."""
        limit = min(
            self._h2.remote_settings.max_concurrent_streams, self.settings.max_concurrent_streams
        )
        return (
            not self._closed
            and self._h2.open_outbound_streams < limit
            and self._h2.highest_outbound_stream_id < _MAX_STREAM_ID - 2
        )

    def open_tunnel(self, authority: str, headers: Iterable[tuple[str, str]] = ()) -> int:
        """Send a CONNECT for `authority` (`<ip>:<port>`); return the new stream's id."""
        parse_authority(authority)
        try:
            stream_id = self._h2.get_next_available_stream_id()
            send_connect(self._h2, stream_id, authority, tuple(headers))  # a cached block
        except (h2.exceptions.H2Error, ValueError) as error:
            raise StreamClosedError(f"cannot open a stream on this connection: {error}") from error
        return stream_id

    def _on_response(self, event: h2.events.ResponseReceived) -> Iterable[Event]:
        assert event.stream_id is not None
        status = dict(event.headers or []).get(b":status", b"")
        if status == b"200":
            yield TunnelEstablished(event.stream_id)
        else:
            yield TunnelRefused(event.stream_id, int(status) if status.isdigit() else 0)


class ServerConnection(HboneConnection):
    """The server end: validates CONNECT requests; the driver accepts or rejects them."""

    def __init__(self, settings: TunnelSettings | None = None) -> None:
        super().__init__(client_side=False, settings=settings)

    def accept(self, stream_id: int) -> None:
        """Answer 200: the tunnel is open."""
        try:
            send_ok(self._h2, stream_id)  # a constant frame
        except h2.exceptions.H2Error as error:
            raise StreamClosedError(f"HBONE stream {stream_id} is closed: {error}") from error

    def reject(self, stream_id: int, status: int) -> None:
        """Answer `status` (401, 503, ...) and end the stream; a closed stream is left alone."""
        try:
            self._h2.send_headers(stream_id, [(b":status", str(status).encode())], end_stream=True)
        except h2.exceptions.H2Error:
            return  # the client gave up first
        # RFC 9113 8.1: after a complete response the server may stop the request with NO_ERROR,
        # so a client that never half-closes does not hold a stream slot.
        self.reset_stream(stream_id, NO_ERROR)

    def _on_request(self, event: h2.events.RequestReceived) -> Iterable[Event]:
        assert event.stream_id is not None
        headers = [(bytes(name), bytes(value)) for name, value in event.headers or []]
        try:
            request = validate_connect(headers)
        except MalformedRequestError as error:
            self.reject(event.stream_id, 400)
            yield TunnelRejected(event.stream_id, 400, str(error))
            return
        yield TunnelRequested(event.stream_id, request.authority, request.headers)
