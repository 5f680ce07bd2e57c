"""The frame reader: the read loop that runs websocket-client's `WebSocketApp`.

websocket-client's own reader gets RFC 6455 wrong in ways that lose data: it
hands a fragmented message on with the opcode of its last frame (0), joins
fragments with a quadratic, unbounded ``bytes +=``, and accepts masked server
frames. So wsbridge reads every frame itself and uses websocket-client for the
rest (the handshake, sending, pings, the callbacks and teardown).

`ReadLoop` is the loop websocket-client runs in (its "dispatcher" hook). Its
fast path cuts a complete, unfragmented, unmasked text or binary frame lying
whole in the buffer out in a few operations (text checked as UTF-8; a compressed
one inflated, once permessage-deflate is negotiated); every
other frame (control frames, fragments, anything unusual, a frame still
arriving) goes through `ReadLoop.read_frame` and the rules of `wsbridge.wire.frames`.
"""

from __future__ import annotations

import selectors
from typing import Any, Callable, Optional, Union

from websocket import WebSocketException

from ..errors import WireError
from .buffered import BufferedSocket
from .deflate import Inflater
from .frames import CLOSE, PING, PONG, PROTOCOL_ERROR, Reassembler, check_header, check_text, close_payload, parse_close
from .wsclient import ABNF, close_frame_sent, frame_bytes, pong_received, socket_send

TOPUP_MAX = 64 * 1024
"""The fast path tops a partly received frame up from the kernel itself when
the frame is at most this big (larger ones are `ReadLoop.read_frame`'s)."""

MAX_TOPUPS = 64
"""Top-ups in one run of the fast path before it returns to the read loop
(which checks pings and the stop flag between runs)."""

CLOSE_LOCK_WAIT = 1.0
"""Longest wait for the send lock to echo the server's close frame."""


class ReadLoop:
    """websocket-client's read loop ("dispatcher"), and the frame reader under it.

    Every frame is read here, never by websocket-client's parser: whole plain
    data frames lying in the buffer by the fast path (`take_data_frames`), any
    other frame by `read_frame`, which applies RFC 6455 (`wsbridge.wire.frames`):
    fragments are reassembled, pings answered, the close handshake completed,
    and a violation fails the connection with its close code (`fail`).
    Between reads it waits on the socket for at most ``ping_timeout``
    (websocket-client's own choice) and runs its ping check after every wait,
    as its stock loop does. Runs on the connection's reader thread, which owns
    everything here.
    """

    def __init__(
        self,
        app: Any,
        ping_timeout: Optional[float],
        sock: BufferedSocket,
        deliver: Callable[[bytes, int], Any],
        after_run: Callable[[bool], Any],
        on_control: Callable[[], Any],
        max_message_size: int,
        disconnect: Callable[[Any], Any],
        before_fail: Callable[[], Any] = lambda: None,
    ) -> None:
        self.app = app
        self.ping_timeout = ping_timeout
        self.buffered = sock
        """The connection's socket (dialled by wsbridge, proxied or not)."""
        self.deliver = deliver
        """``deliver(payload, opcode)``: where whole messages go (websocket-client's on_data, in effect)."""
        self.after_run = after_run
        """Called once after each run of frames the fast path delivered (not after each frame),
        with True when the kernel was found empty (no more bytes to read now)."""
        self.on_control = on_control
        """Called after each control frame (ping, pong): the peer is alive."""
        self.assembler = Reassembler(max_message_size)
        self.rsv = 0
        """The RSV bits a data frame may carry: RSV1 once permessage-deflate is negotiated
        (`use_deflate`). Frames with it set leave the fast path for `read_frame`."""
        self.disconnect = disconnect
        """websocket-client's end of a connection (``handleDisconnect``: on_error, teardown, on_close)."""
        self.before_fail = before_fail
        """Called before a violation fails the connection (the client lets its
        subscribers finish the messages that came first; bounded)."""
        self.peer_closed = False
        """The server closed with a valid close frame (code or none)."""
        self.running = True
        """False once the connection is being cut (`Connection.abort`, any thread)."""
        self.close_sent = False
        """Has a close frame gone out (ours, or our echo of the server's)? Set by this thread
        and, before it starts waiting for the echo, by the supervisor's polite close."""

    def use_deflate(self, inflater: Inflater) -> None:
        """permessage-deflate was negotiated: data frames may carry RSV1, and
        ``inflater`` inflates them. Called once the upgrade is checked, before
        the first frame is read (websocket-client makes this loop before it connects)."""
        self.assembler.inflater = inflater
        self.rsv = 0x40

    def read(self, sock: Any, read_callback: Callable[[], bool], check_callback: Callable[[], Any]) -> None:
        buffered = self.buffered
        pending = buffered.pending
        fast = self.take_data_frames
        frame = self.read_frame
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(buffered.fileno(), selectors.EVENT_READ)
                while self.running:
                    if pending() or selector.select(self.ping_timeout):
                        # Whole data frames at hand first; else one frame, waiting for it if need be.
                        if not fast() and not frame():
                            return
                        while pending() and self.running:
                            if not fast() and not frame():
                                return
                    check_callback()
        except WireError as exc:
            self.fail(exc)
            return
        except (OSError, WebSocketException) as exc:  # the peer went away, the socket timed out mid-frame, no pong
            self.disconnect(exc)
            return
        read_callback()  # stopped: websocket-client's teardown (it reads nothing once stopped)

    def read_frame(self) -> bool:
        """Read one frame, however it lies in the buffer and the kernel, and act
        on it; False once the connection has ended (a close frame)."""
        sock = self.buffered
        head = sock.read_exact(2)
        first, second = head[0], head[1]
        check_header(first, second, self.rsv)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(sock.read_exact(2), "big")
        elif length == 127:
            length = int.from_bytes(sock.read_exact(8), "big")
            if length >> 63:
                raise WireError("a 64-bit frame length with its top bit set", head, close_code=PROTOCOL_ERROR)
        opcode = first & 0x0F
        if opcode < CLOSE:
            assembler = self.assembler
            check = assembler.begin(first, length)  # refuses a message past the limit before its payload is read
            # A fragment joined to its message is copied there from the read buffer; other payloads get bytes of their own.
            read = sock.read_view if assembler.joins(first) else sock.read_exact
            message = assembler.add(first, read(length, check) if length else b"")
            if message is not None:
                self.deliver(*message)
                self.after_run(False)
            return True
        payload = sock.read_exact(length) if length else b""
        if opcode == PING:
            ws = self.app.sock
            if ws is not None and not self.close_sent:
                ws.pong(payload)
        elif opcode == PONG:
            pong_received(self.app)
        else:
            self.closed_by_peer(payload)
            return False
        self.on_control()
        return True

    def closed_by_peer(self, payload: bytes) -> None:
        """The server's close frame: echo it (unless ours went first), then end."""
        parse_close(payload)  # a bad code or reason raises: failed with 1002 / 1007
        if not self.close_sent:
            self.send_close(payload[:2])  # the RFC's usual echo: the code, no reason
        self.peer_closed = True  # an orderly end, even with no code in it
        # websocket-client's closed(frame): on_error, teardown, then on_close with the frame's code and reason
        self.disconnect(ABNF(fin=1, opcode=ABNF.OPCODE_CLOSE, data=payload))

    def fail(self, exc: WireError) -> None:
        """Fail the connection (RFC 6455 §7.1.7): send a close frame with the
        error's code if the socket takes it at once, then let it be cut."""
        self.before_fail()
        if not self.close_sent:
            self.send_close(close_payload(exc.close_code, exc.reason), lock_wait=0, only_if_writable=True)
        self.disconnect(exc)

    def send_close(self, payload: bytes, lock_wait: float = CLOSE_LOCK_WAIT, only_if_writable: bool = False) -> bool:
        """Write a close frame (any thread: the reader's echo or failure, the supervisor's
        polite close). Skipped when another thread's write holds the send lock longer
        than ``lock_wait`` s (against a peer that does not read) or, ``only_if_writable``,
        when the socket would not take it at once: the RFC's failing of a connection is
        the cut, the close frame a courtesy. Returns whether the send lock was had."""
        self.close_sent = True  # the peer's answer is not to be echoed
        ws = self.app.sock
        sock = self.buffered
        if ws is None:
            return False
        close_frame_sent(ws)  # websocket-client's teardown then sends no close of its own
        data = frame_bytes(ws, payload, ABNF.OPCODE_CLOSE)
        if not ws.lock.acquire(timeout=lock_wait):
            return False
        try:
            if not only_if_writable or sock.writable_now():
                sock.sendall(data)
        except OSError:
            pass  # the peer is gone: nothing more to say
        finally:
            ws.lock.release()
        return True

    def take_data_frames(self) -> int:
        """Deliver the whole, plain data frames at the front of the buffer (and,
        once permessage-deflate is negotiated, whole compressed messages of one
        frame); return how many (0: the next frame is `read_frame`'s)."""
        if self.assembler.opcode:
            return 0  # inside a fragmented message
        sock = self.buffered
        view, pos, end = sock._view, sock._pos, sock._end
        rsv = self.rsv
        deliver, inflate_whole = self.deliver, self.assembler.inflate_whole
        head_mask, kind_mask = 0xF0 ^ rsv, 0x0F | rsv  # with deflate: RSV1 may be set, and rides with the opcode
        read_now = sock.read_now
        count = topups = 0
        drained = False
        while True:
            if end - pos >= 2:
                first, second = view[pos], view[pos + 1]
                if first & head_mask != 0x80 or second & 0x80:
                    break  # not FIN, extension bits, or masked: read_frame decides
                opcode = first & kind_mask
                if opcode != 1 and opcode != 2 and opcode != 0x41 and opcode != 0x42:
                    break  # control frame, continuation or reserved: read_frame's
                size, start = second, pos + 2
                if size == 126:
                    size, start = ((view[pos + 2] << 8) | view[pos + 3], pos + 4) if end - pos >= 4 else (TOPUP_MAX, end + 1)
                elif size == 127:
                    size, start = (
                        (int.from_bytes(view[pos + 2 : pos + 10], "big"), pos + 10) if end - pos >= 10 else (TOPUP_MAX, end + 1)
                    )
                stop = start + size
                if size > sock.max_frame:
                    break  # too large: read_frame refuses it
                if stop <= end:
                    pos = stop
                    sock._pos = pos  # the buffer's state is right before anyone else looks
                    count += 1
                    data = view[start:stop].tobytes()  # the message's own bytes: the one copy after the kernel's
                    if opcode == 1:
                        if not data.isascii():
                            check_text(data)
                    elif opcode != 2:  # 0x41, 0x42: compressed (RSV1 rides with the opcode); text checked inflated
                        opcode &= 0x0F
                        data = inflate_whole(data, opcode)
                    deliver(data, opcode)
                    if not self.running:
                        break
                    continue
                if size > TOPUP_MAX:
                    break  # a large frame still arriving: read into its final buffer by read_frame
            # The buffer ends inside a frame (or at a frame's end): take what
            # the kernel has now, rather than a select and a blocking read.
            if topups >= MAX_TOPUPS:
                break
            if not read_now():
                drained = sock._direct
                break
            topups += 1
            pos, end = sock._pos, sock._end  # the kept bytes may have moved to the buffer's front
        if count:
            self.after_run(drained)
        return count

    # Unused with reconnect=0, but part of websocket-client's dispatcher contract.
    def timeout(self, seconds: Optional[float], callback: Callable[[], Any]) -> None:
        callback()

    def reconnect(self, seconds: int, reconnector: Callable[..., Any]) -> None:
        raise RuntimeError("wsbridge reconnects in its supervisor, never inside websocket-client")

    def send(self, sock: Any, data: Union[str, bytes]) -> int:
        return socket_send(sock, data)
