"""permessage-deflate (RFC 7692) on wsbridge's own read and write path.

Peers: a `websockets` server (not ours) with compression on and off and with each
parameter its `ServerPerMessageDeflateFactory` can be configured with, reading what
the client sends; and `RawServer` (raw sockets, on 127.0.0.1) answering the offer by
hand and sending compressed frames built here with zlib: fragmented, sharing a window
across messages, bombs, and the violations RFC 7692 says fail the connection.
"""

from __future__ import annotations

import asyncio
import json
import threading
import tracemalloc
import zlib
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
from test_wire import gives_up, start
from websockets.asyncio.server import serve
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

import wsbridge
from wsbridge.codecs import RawCodec
from wsbridge.testing import RawServer
from wsbridge.testing.raw import BINARY, CONTINUATION, PING, TEXT, accept_response, frame, header, read_close, read_frame_bits

from conftest import wait_until


def deflated(*messages: bytes, bits: int = 15, takeover: bool = True) -> List[bytes]:
    """Each message compressed as a permessage-deflate payload (sync flush, tail stripped);
    with ``takeover`` one compressor runs across them, so later ones refer to earlier ones."""
    out, compressor = [], zlib.compressobj(9, zlib.DEFLATED, -bits)
    for message in messages:
        if not takeover:
            compressor = zlib.compressobj(9, zlib.DEFLATED, -bits)
        data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        out.append(data[:-4])
    return out


def answering(extension: bytes) -> Callable[[bytes], bytes]:
    return lambda request: accept_response(request, b"Sec-WebSocket-Extensions: " + extension + b"\r\n")


def read_client_frame(conn: Any, timeout: float = 10.0) -> Tuple[int, bytes]:
    """One frame the client sent, as ``(first byte, unmasked payload)``."""
    first, _, payload = read_frame_bits(conn, None, timeout)
    return first, payload


def test_deflate_is_offered_by_default_and_not_with_compression_none(make_client):
    with RawServer() as server:
        client = make_client(server.url, codec=RawCodec()).start()
        client.wait_connected(timeout=10)
        offer = header(server.requests[0], b"sec-websocket-extensions")
        assert offer == b"permessage-deflate; client_no_context_takeover; client_max_window_bits"
        assert client.deflate is None  # the server did not accept it
        other = make_client(server.url, codec=RawCodec(), compression=None).start()
        other.wait_connected(timeout=10)
        assert header(server.requests[1], b"sec-websocket-extensions") is None


def test_compression_is_checked_at_construction():
    with pytest.raises(ValueError, match="compression='gzip'"):
        wsbridge.Client("ws://127.0.0.1:1/", compression="gzip")
    with pytest.raises(ValueError, match="Sec-WebSocket-Extensions header while compression is on"):
        wsbridge.Client("ws://127.0.0.1:1/", headers={"sec-websocket-extensions": "x"})
    wsbridge.Client("ws://127.0.0.1:1/", headers={"Sec-WebSocket-Extensions": "x"}, compression=None)


def test_headers_from_a_callable_cannot_make_a_second_offer(make_client, collector):
    with RawServer() as server:
        error = gives_up(make_client, server.url, collector, backoff=wsbridge.NO_RETRY,
                         headers=lambda: {"Sec-WebSocket-Extensions": "permessage-deflate"})
        assert "Sec-WebSocket-Extensions header while compression is on" in str(error) and not server.requests


ACCEPTED = [
    (b"permessage-deflate", wsbridge.PerMessageDeflate()),
    (b"PerMessage-Deflate ; Server_No_Context_Takeover", wsbridge.PerMessageDeflate(server_no_context_takeover=True)),
    (b"permessage-deflate; client_no_context_takeover", wsbridge.PerMessageDeflate(client_no_context_takeover=True)),
    (b"permessage-deflate; server_max_window_bits=10", wsbridge.PerMessageDeflate(server_max_window_bits=10)),
    (b'permessage-deflate; client_max_window_bits="9"', wsbridge.PerMessageDeflate(client_max_window_bits=9)),
    (b"permessage-deflate;server_no_context_takeover;client_no_context_takeover;"
     b"server_max_window_bits=8;client_max_window_bits=15",
     wsbridge.PerMessageDeflate(True, True, 8, 15)),
    (b", permessage-deflate ,", wsbridge.PerMessageDeflate()),  # empty list elements (RFC 9110 §5.6.1)
]


@pytest.mark.parametrize("extension,agreed", ACCEPTED, ids=[a[0].decode()[:60] for a in ACCEPTED])
def test_a_valid_answer_is_agreed_and_readable_on_the_client(make_client, collector, extension, agreed):
    with RawServer(respond=answering(extension)) as server:
        client, got, _ = start(make_client, server.url, collector)
        assert client.deflate == agreed
        compressed = deflated(b"squeezed " * 50)[0]
        server.sendall(frame(compressed, TEXT, rsv=4) + frame(b"plain", TEXT))  # a message may go uncompressed (§6)
        assert [m.payload for m in got.wait(2)] == ["squeezed " * 50, "plain"]
    assert str(agreed).startswith("permessage-deflate")


REFUSED = [
    (b"permessage-deflate; client_max_window_bits", "it must be 8 to 15"),
    (b"permessage-deflate; server_max_window_bits", "it must be 8 to 15"),
    (b"permessage-deflate; server_max_window_bits=16", "it must be 8 to 15"),
    (b"permessage-deflate; server_max_window_bits=7", "it must be 8 to 15"),
    (b"permessage-deflate; server_max_window_bits=010", "it must be 8 to 15"),
    (b"permessage-deflate; client_max_window_bits=08", "it must be 8 to 15"),  # no leading zero (RFC 7692 §7.1.2.2)
    (b"permessage-deflate; server_no_context_takeover=1", "takes no value"),
    (b"permessage-deflate; client_no_context_takeover=true", "takes no value"),
    (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", "given twice"),
    (b"permessage-deflate; mystery", "'mystery', which RFC 7692 does not define"),
    (b"permessage-deflate, permessage-deflate", "more than once"),
    (b"permessage-deflate, x-webkit-deflate-frame", "did not offer"),
    (b"x-webkit-deflate-frame", "did not offer"),
    (b"permessage-deflate; server_max_window_bits=1 0", "not a token"),
    (b'permessage-deflate; server_max_window_bits="10', "unterminated quoted string"),
]


@pytest.mark.parametrize("extension,words", REFUSED, ids=[r[0].decode()[19:70] for r in REFUSED])
def test_a_malformed_or_unoffered_answer_is_refused_with_a_clear_error(make_client, collector, extension, words):
    with RawServer(respond=answering(extension)) as server:
        error = gives_up(make_client, server.url, collector, backoff=wsbridge.NO_RETRY)
    assert isinstance(error.__cause__, wsbridge.HandshakeError), repr(error)
    assert words in str(error.__cause__)


def test_client_max_window_bits_is_refused_when_not_offered(make_client, collector):
    """With compression=None the user's own offer is what the answer is checked against."""
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate"}
    with RawServer(respond=answering(b"permessage-deflate; client_max_window_bits=10")) as server:
        error = gives_up(make_client, server.url, collector, backoff=wsbridge.NO_RETRY, compression=None, headers=offer)
    assert "client_max_window_bits, which was not offered" in str(error.__cause__)
    with RawServer(respond=answering(b"permessage-deflate; server_max_window_bits=12")) as server:
        offer = {"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=10"}
        error = gives_up(make_client, server.url, collector, backoff=wsbridge.NO_RETRY, compression=None, headers=offer)
    assert "server_max_window_bits=12 in the server's permessage-deflate exceeds the 10 offered" in str(error.__cause__)


def test_an_answer_to_compression_none_is_refused(make_client, collector):
    with RawServer(respond=answering(b"permessage-deflate")) as server:
        error = gives_up(make_client, server.url, collector, backoff=wsbridge.NO_RETRY, compression=None)
    assert "did not offer" in str(error.__cause__)


# -- reading compressed frames (RawServer) --------------------------------------------------


@pytest.fixture
def deflate_raw() -> Iterator[RawServer]:
    with RawServer(respond=answering(b"permessage-deflate")) as server:
        yield server


def test_compressed_messages_whole_fragmented_and_sharing_a_window(make_client, collector, deflate_raw):
    client, got, errors = start(make_client, deflate_raw.url, collector)
    conn = deflate_raw.wait_connection()
    first, second, third = deflated("héllo wörld ✓ ".encode() * 200, "héllo wörld ✓ ".encode() * 201, b"\x00\x01" * 3000)
    assert len(second) < 40  # it refers to the first message's window
    parts = [third[i : i + 7] for i in range(0, len(third), 7)]
    conn.sendall(
        frame(first, TEXT, rsv=4)
        + frame(second[:5], TEXT, fin=False, rsv=4) + frame(b"p", PING) + frame(second[5:], CONTINUATION)
        + b"".join(frame(p, BINARY if i == 0 else CONTINUATION, fin=i == len(parts) - 1, rsv=4 if i == 0 else 0)
                   for i, p in enumerate(parts))
        + frame(deflated(b"")[0], TEXT, rsv=4)  # an empty message
        + frame(b"", TEXT, rsv=4)  # an empty payload inflates to nothing too
    )
    assert [m.payload for m in got.wait(5)] == [
        "héllo wörld ✓ " * 200, "héllo wörld ✓ " * 201, b"\x00\x01" * 3000, "", ""]
    assert not errors.items and client.stats.protocol_errors == 0


def test_server_no_context_takeover_starts_each_message_afresh(make_client, collector):
    with RawServer(respond=answering(b"permessage-deflate; server_no_context_takeover")) as server:
        client, got, _ = start(make_client, server.url, collector)
        wire = deflated(b"same words " * 100, b"same words " * 100, takeover=False)
        server.sendall(b"".join(frame(w, TEXT, rsv=4) for w in wire))
        assert [m.payload for m in got.wait(2)] == ["same words " * 100] * 2


def test_a_server_that_ends_its_deflate_stream_is_read_on(make_client, collector, deflate_raw):
    """A final deflate block (BFINAL) ends zlib's stream: the next message starts a new one."""
    client, got, _ = start(make_client, deflate_raw.url, collector)
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    whole = final.compress(b"the end") + final.flush()
    deflate_raw.sendall(frame(whole, TEXT, rsv=4) + frame(deflated(b"and after")[0], TEXT, rsv=4))
    assert [m.payload for m in got.wait(2)] == ["the end", "and after"]


@pytest.mark.parametrize("shape", ["one-frame", "fragmented", "one-byte-past"])
def test_a_decompression_bomb_is_refused_with_1009_at_the_limit(make_client, collector, shape):
    """A bomb in a frame still arriving (the general reader), in fragments, and one byte
    past the limit in a small frame lying whole in the buffer (the fast path)."""
    with RawServer(respond=answering(b"permessage-deflate")) as server:
        client, got, errors = start(make_client, server.url, collector, max_message_size=1_000_000)
        size = 1_000_001 if shape == "one-byte-past" else 100_000_000
        bomb = deflated(b"\x00" * size)[0]  # 100 MB in about 100 KB: well within the limit on the wire
        assert len(bomb) < 200_000
        conn = server.wait_connection()
        conn.sendall(frame(deflated(b"a" * 1_000_000)[0], BINARY, rsv=4))  # exactly at the limit: fine
        assert got.wait(1)[0].payload == b"a" * 1_000_000
        if shape == "fragmented":
            half = len(bomb) // 2
            wire = frame(bomb[:half], BINARY, fin=False, rsv=4) + frame(bomb[half:], CONTINUATION)
        else:
            wire = frame(bomb, BINARY, rsv=4)
        tracemalloc.start()  # every thread's allocations: the reader's too
        try:
            threading.Thread(target=conn.sendall, args=(wire,), daemon=True).start()  # the client stops reading
            assert read_close(conn) == 1009
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10_000_000, f"{peak} bytes allocated while refusing a 100 MB bomb"  # the limit, not the bomb
        error = errors.wait(1)[0]["error"]
        assert isinstance(error, wsbridge.MessageTooLarge) and error.close_code == 1009
        assert "inflates past max_message_size" in str(error)
        assert len(got.items) == 1


def test_a_bomb_in_many_fragments_is_refused_at_the_limit(make_client, collector, deflate_raw):
    client, got, errors = start(make_client, deflate_raw.url, collector, max_message_size=50_000)
    conn = deflate_raw.wait_connection()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    pieces = [compressor.compress(b"z" * 10_000) + compressor.flush(zlib.Z_SYNC_FLUSH) for _ in range(10)]
    conn.sendall(b"".join(frame(p, TEXT if i == 0 else CONTINUATION, fin=False, rsv=4 if i == 0 else 0)
                          for i, p in enumerate(pieces)))
    assert read_close(conn) == 1009
    assert isinstance(errors.wait(1)[0]["error"], wsbridge.MessageTooLarge) and not got.items


def _final(data: bytes) -> bytes:
    """``data`` deflated as a stream that ends (its last block final)."""
    deflater = zlib.compressobj(wbits=-15)
    return deflater.compress(data) + deflater.flush(zlib.Z_FINISH)


COMPRESSED_VIOLATIONS = [
    # (what the server sends after the deflate answer, close code, words)
    (frame(b"a", TEXT, fin=False, rsv=4) + frame(b"b", CONTINUATION, rsv=4), 1002, "RSV1 set on a continuation frame"),
    (frame(b"a", TEXT, fin=False) + frame(b"b", CONTINUATION, rsv=4), 1002, "RSV1 set on a continuation frame"),
    (frame(b"", PING, rsv=4), 1002, "RSV1 set on a control frame"),
    (frame(b"hi", TEXT, rsv=2), 1002, "permessage-deflate defines only RSV1"),
    (frame(b"hi", TEXT, rsv=6), 1002, "permessage-deflate defines only RSV1"),
    (frame(deflated(b'{"x": "\xff\xfe"}')[0], TEXT, rsv=4), 1007, "not valid UTF-8"),
    (frame(b"\xff\xff\xff\xff", BINARY, rsv=4), 1007, "does not inflate"),
    (frame(_final(b"hello") + b"xyz", TEXT, rsv=4), 1007, "bytes follow the end"),
    (frame(_final(b"hello "), TEXT, fin=False, rsv=4) + frame(deflated(b"world")[0], CONTINUATION), 1007,
     "goes on after the end"),
]


@pytest.mark.parametrize("wire,code,words", COMPRESSED_VIOLATIONS, ids=[f"{v[1]}-{v[2][:30]}" for v in COMPRESSED_VIOLATIONS])
def test_a_compressed_violation_fails_the_connection_with_its_code(make_client, collector, deflate_raw, wire, code, words):
    client, got, errors = start(make_client, deflate_raw.url, collector)
    conn = deflate_raw.wait_connection()
    conn.sendall(frame(deflated(b"before")[0], TEXT, rsv=4) + wire)
    assert read_close(conn) == code
    error = errors.wait(1)[0]["error"]
    assert isinstance(error, wsbridge.WireError) and error.close_code == code and words in str(error), error
    assert [m.payload for m in got.wait(1)] == ["before"]


def test_rsv1_without_negotiation_is_a_protocol_error(make_client, collector):
    with RawServer() as server:  # it does not answer the offer
        client, got, errors = start(make_client, server.url, collector)
        conn = server.wait_connection()
        conn.sendall(frame(deflated(b"sneaky")[0], TEXT, rsv=4))
        assert read_close(conn) == 1002
        assert "no extension was negotiated" in str(errors.wait(1)[0]["error"])
        assert not got.items


# -- sending compressed frames ---------------------------------------------------------------------------


def test_sends_are_compressed_with_rsv1_on_their_frame(make_client, collector, deflate_raw):
    client, got, errors = start(make_client, deflate_raw.url, collector)
    conn = deflate_raw.wait_connection()
    client.send("compress me " * 100)
    client.send(b"\x00" * 5000)
    for opcode, expected in ((TEXT, ("compress me " * 100).encode()), (BINARY, b"\x00" * 5000)):
        first, payload = read_client_frame(conn)
        assert first == 0xC0 | opcode  # FIN, RSV1
        assert len(payload) < len(expected) // 10
        # Each message stands alone: a fresh inflater reads it.
        assert zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") == expected


def test_client_max_window_bits_8_sends_uncompressed(make_client, collector):
    """zlib cannot compress with an 8-bit window: the client sends plain frames (§6 lets it)."""
    with RawServer(respond=answering(b"permessage-deflate; client_max_window_bits=8")) as server:
        client, got, _ = start(make_client, server.url, collector)
        assert client.deflate == wsbridge.PerMessageDeflate(client_max_window_bits=8)
        client.send("plain " * 100)
        first, payload = read_client_frame(server.wait_connection())
        assert first == 0x80 | TEXT and payload == ("plain " * 100).encode()


# -- a `websockets` server ---------------------------------------------------------------------------------


class DeflateServer:
    """A `websockets` server (on 127.0.0.1) with the given permessage-deflate settings
    (None: compression off): it sends ``messages`` to each client, then echoes what the
    client sends back, prefixed with "echo:", and records it in ``received``."""

    def __init__(self, messages: List[Any], factory: Optional[ServerPerMessageDeflateFactory]) -> None:
        self.messages, self.factory = messages, factory
        self.received: List[Any] = []
        self.extensions: List[str] = []
        self._ready = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Future[None]] = None
        self.port = 0
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="deflate-server", daemon=True)

    async def _handler(self, ws: Any) -> None:
        self.extensions.append(ws.response.headers.get("Sec-WebSocket-Extensions", ""))
        for message in self.messages:
            await ws.send(message)
        async for message in ws:
            self.received.append(message)
            await ws.send(("echo:" + message) if isinstance(message, str) else b"echo:" + message)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        extensions = [self.factory] if self.factory is not None else None
        async with serve(self._handler, "127.0.0.1", 0, extensions=extensions, compression=None,
                         ping_interval=None, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def __enter__(self) -> "DeflateServer":
        self._thread.start()
        assert self._ready.wait(10), "the websockets server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


FEED = [json.dumps({"type": "trade", "seq": i, "price": 100 + i % 7, "note": "héllo ✓" * (i % 5)}) for i in range(50)]
BIG = "x" * 300_000  # several frames' worth for websockets' reader, one frame on the wire
FACTORIES = [
    dict(),
    dict(server_no_context_takeover=True),
    dict(client_no_context_takeover=True),
    dict(server_no_context_takeover=True, client_no_context_takeover=True),
    dict(server_max_window_bits=9),
    dict(server_max_window_bits=12, client_max_window_bits=10),
    dict(client_max_window_bits=9, require_client_max_window_bits=True),
    dict(server_no_context_takeover=True, client_no_context_takeover=True, server_max_window_bits=10,
         client_max_window_bits=11),
]


@pytest.mark.parametrize("settings", FACTORIES, ids=[",".join(f"{k}={v}" for k, v in f.items()) or "default" for f in FACTORIES])
def test_a_websockets_server_with_compression_is_read_and_reads_us(make_client, collector, settings):
    with DeflateServer([*FEED, BIG, b"\x00\xff" * 1000], ServerPerMessageDeflateFactory(**settings)) as server:  # type: ignore[arg-type]
        client, got, errors = start(make_client, f"ws://127.0.0.1:{server.port}/", collector)
        agreed = client.deflate
        # (the server's handler records what it agreed, then sends: once the messages are in, it is there)
        assert got.wait(52)[:52] and [m.payload for m in got.items[:52]] == [*FEED, BIG, b"\x00\xff" * 1000]
        assert agreed is not None and str(agreed) == server.extensions[0]
        for message in FEED[:5]:
            client.send(message)
        client.send(b"\x01\x02" * 3000)
        wait_until(lambda: len(server.received) == 6, what="the websockets server read our sends")
        assert server.received == [*FEED[:5], b"\x01\x02" * 3000]
        assert [m.payload for m in got.wait(58)[52:]] == [*("echo:" + m for m in FEED[:5]), b"echo:" + b"\x01\x02" * 3000]
        assert not errors.items


def test_a_websockets_server_without_compression(make_client, collector):
    with DeflateServer(FEED[:3], None) as server:
        client, got, _ = start(make_client, f"ws://127.0.0.1:{server.port}/", collector)
        assert [m.payload for m in got.wait(3)] == FEED[:3]
        assert client.deflate is None and server.extensions == [""]  # (recorded before the handler sends)
        client.send("hi")
        assert got.wait(4)[3].payload == "echo:hi"


def test_a_bomb_in_one_frame_is_refused_with_no_more_than_the_limit_allocated():
    """zlib builds a large output in pieces and joins them (twice the limit at once): the
    inflater takes it a step at a time, so refusing 1 GiB of zeros at 16 MiB allocates
    little more than 16 MiB."""
    from wsbridge.wire.deflate import STEP, Inflater, PerMessageDeflate

    deflater = zlib.compressobj(wbits=-15)
    bomb = b"".join(deflater.compress(b"\0" * (1 << 24)) for _ in range(64)) + deflater.flush(zlib.Z_SYNC_FLUSH)[:-4]
    room = 16 << 20
    tracemalloc.start()
    try:
        with pytest.raises(wsbridge.MessageTooLarge):
            Inflater(PerMessageDeflate()).inflate(bomb, True, room)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < room * 1.25 + 2 * STEP, peak
