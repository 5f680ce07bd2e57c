"""Large frames through wsbridge's read buffer (`wsbridge.wire.buffered`, `wsbridge.wire.reader`).

Frames are cut from one read buffer per connection, filled by the kernel directly:
a message's bytes are the only thing reading allocates for it (one copy after the
kernel's), and a fragment is copied from the buffer straight into its message.
Against the `websockets` library's server (plain and TLS) every size lands whole
across the buffer's edges; against the raw-frame server, what reading allocates
is measured with tracemalloc.
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import threading
import time
import tracemalloc
from typing import Iterator, List, Union

import pytest
import trustme

from wsbridge import RawCodec
from wsbridge.testing.raw import BINARY, RawServer, fragments, frame
from wsbridge.wire.buffered import CAPACITY, LARGE, BufferedSocket
from wsbridge.wire.reader import ReadLoop

from conftest import Feed

KIB64 = 64 * 1024


def sizes() -> List[int]:
    """Payload sizes around every edge the reader has (header forms, the fast path's
    top-up limit, the buffer's largest payload, the buffer itself), then enough 64 KiB
    messages to wrap the buffer many times."""
    edges = [0, 1, 125, 126, 127, 65535, KIB64, KIB64 + 1, LARGE - 1, LARGE, LARGE + 1,
             CAPACITY - 14, CAPACITY, CAPACITY + 1, 3 * CAPACITY + 7]
    rng = random.Random(25)
    return edges + [KIB64] * 40 + [rng.randrange(0, 3 * KIB64) for _ in range(60)]


def payloads() -> List[Union[bytes, str, List[bytes]]]:
    """Binary messages of every size in `sizes`, a few text ones with multi-byte
    characters, and fragmented ones (a list: `websockets` sends it as fragments)."""
    out: List[Union[bytes, str, List[bytes]]] = []
    for i, size in enumerate(sizes()):
        out.append(bytes((i + k) % 251 for k in range(min(size, 251))) * (size // 251) + bytes(size % 251))
        if i % 10 == 3:
            out.append("é€𝄞" * (size // 9 + 1))
        if i % 10 == 7:
            blob = hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1)
            out.append([blob[k:k + 4096] for k in range(0, len(blob), 4096)])
    return out


def as_received(payload: Union[bytes, str, List[bytes]]) -> Union[bytes, str]:
    return b"".join(payload) if isinstance(payload, list) else payload


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(params=["ws", "wss"])
def feed(request, ca) -> Iterator[Feed]:
    """A `websockets` server (not ours) that answers "go" with every payload, plain or over TLS."""
    kwargs = {}
    if request.param == "wss":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        kwargs["ssl"] = context
    with Feed(respond=lambda _number, _data: payloads(), max_size=None, **kwargs) as server:
        yield server


def test_messages_of_every_size_arrive_whole_across_the_buffer_edges(feed, ca, tmp_path, make_client, collector):
    options = {}
    if feed.scheme == "wss":
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        options["sslopt"] = {"ca_certs": str(tmp_path / "ca.pem")}
    client = make_client(feed.url, codec=RawCodec(), max_message_size=8 * CAPACITY, **options)
    got = collector()
    client.on_any(got)
    client.start().wait_connected(timeout=10)
    client.send("go")
    expected = [as_received(p) for p in payloads()]
    messages = got.wait(len(expected), timeout=60)
    assert [m.payload for m in messages] == expected
    assert all(m.raw is m.payload for m in messages if m.type == "binary")  # one bytes object a message
    assert client.stats.reconnects == 0 and client.stats.protocol_errors == 0


# -- what reading allocates ------------------------------------------------------------------------


def upgraded(raw: RawServer) -> BufferedSocket:
    """A socket upgraded by ``raw`` (its 101 read to the end and no further), under the read buffer."""
    sock = socket.create_connection(("127.0.0.1", raw.port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n") and len(head) < 4096:
        piece = sock.recv(1)  # a byte at a time: the frames after the head stay for the buffer
        assert piece, "the raw server closed during the upgrade"
        head += piece
    assert head.startswith(b"HTTP/1.1 101"), head
    return BufferedSocket(sock)


def read_peak(raw: RawServer, wire: bytes, expected: bytes, count: int) -> int:
    """Send ``wire`` (``count`` messages, each ``expected``) from the raw server while the
    read loop reads them; return the peak of what was allocated meanwhile (tracemalloc)."""
    sock = upgraded(raw)
    conn = raw.wait_connection()
    same: List[bool] = []
    reader = ReadLoop(None, None, sock, lambda data, _opcode: same.append(data == expected), lambda _drained: None,
                      lambda: None, 1 << 24, lambda exc: None)
    sender = threading.Thread(target=conn.sendall, args=(wire,), name="test-frames-sender")
    tracemalloc.start()
    try:
        sender.start()
        deadline = time.monotonic() + 30
        for _ in range(64 * count):  # each turn reads at least one frame (a fragment, at least)
            if len(same) >= count or time.monotonic() > deadline:
                break
            reader.take_data_frames() or reader.read_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sender.join(10)
        sock.close()
    assert same == [True] * count
    return peak


@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "in 4 KiB fragments"])
def test_reading_large_messages_allocates_little_more_than_the_messages(fragmented):
    """A 64 KiB message, whole or in 4 KiB fragments, costs its own bytes (and the join of its
    fragments): the kernel fills the connection's read buffer, which no message copies out
    of twice. At most two messages (the one delivered, the one being cut) are alive at once."""
    blob = random.Random(3).randbytes(KIB64)
    count = 48  # 3 MiB: the read buffer wraps, and reads meet frames cut anywhere
    wire = (fragments(blob, 4096, BINARY) if fragmented else frame(blob, BINARY)) * count
    with RawServer() as raw:
        peak = read_peak(raw, wire, blob, count)
    assert peak < 3 * KIB64, f"reading 64 KiB messages allocated up to {peak} bytes at once"
