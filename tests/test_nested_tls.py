"""`NestedTLS` alone: TLS inside a TLS socket, against the standard library's TLS as the far end.

The far end is a plain ``ssl.SSLObject`` driven by hand over the outer TLS connection, so a
test can put several inner records in one outer record (what a proxy does when it forwards
a burst) and stop reading to fill the socket."""

from __future__ import annotations

import select
import socket
import ssl
import threading
from typing import Iterator, Tuple

import pytest
import trustme

from wsbridge.wire.nested_tls import NestedTLS


class FarEnd:
    """The server's TLS, inside the outer TLS connection's server side."""

    def __init__(self, outer: ssl.SSLSocket, context: ssl.SSLContext) -> None:
        self.outer = outer
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self.outer.sendall(self.outgoing.read())
                return
            except ssl.SSLWantReadError:
                self.outer.sendall(self.outgoing.read())
                self.incoming.write(self.outer.recv(65536))

    def send_records(self, *texts: bytes) -> None:
        """Each text its own inner record, all of them in one write to the outer connection."""
        for text in texts:
            self.tls.write(text)
        self.outer.sendall(self.outgoing.read())

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes of plaintext (bounded by the outer socket's timeout)."""
        out = b""
        while len(out) < n:
            try:
                out += self.tls.read(n - len(out))
            except ssl.SSLWantReadError:
                data = self.outer.recv(65536)
                assert data, f"the stream ended after {len(out)} of {n} bytes"
                self.incoming.write(data)
        return out


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pair(ca) -> Iterator[Tuple[NestedTLS, FarEnd]]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("proxy.test", "server.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    outer_server = server_context.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
    outer_client = client_context.wrap_socket(a, server_hostname="proxy.test", do_handshake_on_connect=False)
    far = FarEnd(outer_server, server_context)
    errors = []

    def serve() -> None:
        try:
            outer_server.do_handshake()
            far.handshake()
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    server = threading.Thread(target=serve, name="test-far-end")
    server.start()
    outer_client.do_handshake()
    near = NestedTLS(outer_client, client_context, "server.test")
    near.do_handshake()
    server.join(10)
    assert not errors and not server.is_alive()
    try:
        yield near, far
    finally:
        near.close()
        outer_server.close()


def test_records_already_held_are_pending_though_the_socket_shows_nothing(pair):
    near, far = pair
    far.send_records(b"one", b"two", b"three")
    assert near.recv(65536) == b"one"
    assert not select.select([near], [], [], 0)[0]  # the kernel has nothing more: a select would wait
    assert near.pending() > 0
    assert near.recv(65536) == b"two"
    assert near.pending() > 0
    buffer = bytearray(10)
    assert near.recv_into(buffer, 3) == 3 and bytes(buffer[:3]) == b"thr"
    assert near.recv(65536) == b"ee"
    assert near.pending() == 0


@pytest.mark.parametrize("drained_by_the_reader", [False, True])
def test_a_send_that_timed_out_is_taken_once_when_called_again(pair, drained_by_the_reader):
    """The far end stops reading: sends fill the sockets and one times out. Called again with
    the same data, as for an ``ssl.SSLSocket``, the bytes arrive once each, in order, also when
    the reader thread's own flush (`_answer`, after a record it had to answer) finished the
    timed-out write in between."""
    near, far = pair
    near.settimeout(0.05)
    data = bytes(range(256)) * 64  # 16 KiB: one piece
    sent = []
    timeouts = 0
    for _ in range(200):
        view = memoryview(data)
        try:
            taken = near.send(view)
        except socket.timeout:
            timeouts += 1
            break
        sent.append(bytes(view[:taken]))
    assert timeouts == 1, "the sockets never filled"
    expected = b"".join(sent) + data + b"end"
    reader = threading.Thread(target=lambda: sent.append(far.read(len(expected))), name="test-reader")
    reader.start()
    near.settimeout(10)
    if drained_by_the_reader:
        near._answer()
    taken = near.send(data)
    assert taken == len(data)  # the piece whose write timed out, counted once
    near.sendall(b"end")
    reader.join(10)
    assert not reader.is_alive() and sent[-1] == expected


def test_the_far_ends_close_reads_as_the_end(pair):
    near, far = pair
    far.send_records(b"last")
    far.outer.close()
    assert near.recv(100) == b"last"
    assert near.recv(100) == b""


def _close_notify(far: FarEnd) -> bytes:
    try:
        far.tls.unwrap()
    except ssl.SSLWantReadError:
        pass  # our close_notify is written; the far end would wait for the peer's
    return far.outgoing.read()


def _corrupt_record(far: FarEnd) -> bytes:
    far.tls.write(b"forged")
    record = bytearray(far.outgoing.read())
    record[-1] ^= 0xFF  # the authentication tag no longer matches
    return bytes(record)


@pytest.mark.parametrize("tail", [_close_notify, _corrupt_record])
def test_the_end_or_a_bad_record_behind_the_last_message_is_met_at_once(pair, tail):
    """The far end's close_notify, or a forged record, in the same outer record as the last
    message: the connection stays open, so only `pending` can tell the reader to read on."""
    near, far = pair
    far.tls.write(b"last")
    far.outer.sendall(far.outgoing.read() + tail(far))
    assert near.recv(100) == b"last"
    assert not select.select([near], [], [], 0)[0] and near.pending() > 0
    if tail is _close_notify:
        assert near.recv(100) == b""
    else:
        with pytest.raises(ssl.SSLError):
            near.recv(100)
