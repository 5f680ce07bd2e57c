"""Exceptions raised by wsbridge, all of them defined here. All derive from `WsbridgeError`."""

from __future__ import annotations

from typing import Optional, Union


class WsbridgeError(Exception):
    """Base class of every error wsbridge raises on purpose."""


def preview(data: Union[bytes, str, None], limit: int = 64) -> str:
    """A short, safe rendering of offending input for error messages and logs."""
    if data is None:
        return "None"
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data)} {'bytes' if isinstance(data, bytes) else 'chars'})"


class ProtocolError(WsbridgeError, ValueError):
    """A frame that does not follow the wire format.

    ``frame`` is the offending frame data and ``offset`` the position in it
    where decoding failed (when known). The message text shows a truncated
    preview of the frame, never all of it.
    """

    def __init__(self, reason: str, frame: Union[bytes, str, None] = None, offset: Optional[int] = None):
        self.reason = reason
        self.frame = frame
        self.offset = offset
        text = reason
        if offset is not None:
            text += f" (at byte {offset})"
        if frame is not None:
            text += f" in frame {preview(frame)}"
        super().__init__(text)


class WireError(ProtocolError):
    """The server broke RFC 6455 (a masked frame, invalid UTF-8 in a text
    message, a bad close code, ...). The client fails the connection: it sends
    a close frame with ``close_code`` (1002 protocol error, 1007 invalid data,
    1009 too big), cuts the socket, reports this error on the ``error`` signal
    with the offending bytes in ``frame``, and reconnects as usual.

    Errors of the application's format (bad JSON, a bad pipe length) are plain
    `ProtocolError`: reported, and the connection goes on."""

    FRAME_LIMIT = 1024
    """The most bytes of the offending data kept in ``frame`` (the error may
    outlive the connection as ``last_error``; a whole bad message need not)."""

    def __init__(self, reason: str, frame: Union[bytes, str, None] = None, close_code: int = 1002):
        self.close_code = close_code
        super().__init__(reason, frame[: self.FRAME_LIMIT] if frame is not None else None)


class MessageTooLarge(WireError):
    """A message larger than the client's ``max_message_size`` (whole, or its
    fragments so far): refused before the payload that crosses the limit is
    read, and the connection closed with code 1009."""

    def __init__(self, reason: str, frame: Union[bytes, str, None] = None, close_code: int = 1009):
        super().__init__(reason, frame, close_code)


class OutboxFull(WsbridgeError):
    """`send()` found the send buffer full and the overflow policy said raise."""


class ClientClosed(WsbridgeError):
    """The client is stopped: it cannot send, and the pull API has nothing more to give."""


class CloseFrameSent(WsbridgeError, ConnectionError):
    """A data frame was not written because a close frame already went out on its
    connection (ours, or our echo of the server's): RFC 6455 §5.5.1 allows no data
    frame after it, and a server discards one. Nothing of the frame was written; the
    sender keeps it for the next connection (internal: `send` never raises it)."""


class ConnectionLost(WsbridgeError, ConnectionError):
    """The connection a request went out on ended before its reply came (`Client.request`
    raises it at once, rather than wait out its timeout; ``resend=True`` sends the request
    again on the next connection instead)."""


class ConnectError(WsbridgeError, ConnectionError):
    """The client could not connect, and its retry policy says not to try again."""


class ConnectHookError(ConnectError):
    """The handshake of a new connection failed: a connect hook raised or ran out of
    ``connect_hook_timeout``, or a recorded subscription got no ack in time. The
    attempt fails (the connection is closed; the retry policy decides what next);
    the hook's own exception is the ``__cause__``."""


class HandshakeError(ConnectError):
    """The server's answer to the WebSocket upgrade breaks RFC 6455 §4 (a wrong
    ``Sec-WebSocket-Accept``, a subprotocol or extension the client never asked
    for, header lines over the limits), redirects elsewhere, or refuses it
    (`UpgradeRefused`); or a proxy's handshake failed. Unless ``fatal`` is false (a
    temporary redirect, a refusal the policy judges by its status: retried with
    backoff), retrying cannot help, so the client gives up (unless ``retry_fatal``)."""

    def __init__(self, message: str, fatal: bool = True) -> None:
        super().__init__(message)
        self.fatal = fatal


class UpgradeRefused(HandshakeError):
    """The server answered the upgrade with an HTTP status other than 101 (``proxy``
    true: the HTTP proxy answered CONNECT with one other than 2xx).

    ``status`` is the HTTP status, ``reason`` its reason phrase, ``retry_after`` the
    seconds the answer's ``Retry-After`` asked to wait (None: none, or unreadable).
    Whether it is retried is the retry policy's call, by ``status`` (a server's 401
    gives up by default; a 503 is retried); a redirect, and a proxy's 407 (its
    credentials are wrong), are ``fatal``."""

    def __init__(self, message: str, status: int, reason: str = "", retry_after: Optional[float] = None,
                 proxy: bool = False, fatal: bool = False) -> None:
        super().__init__(message, fatal)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.proxy = proxy


class StoreError(WsbridgeError):
    """The store cannot be opened, read or written."""

    stored = 0
    """Of a batch of received messages (`Store.append`): how many of it, the first ones,
    were stored before this error (keys from ``first`` on); the rest were not."""
    first: Optional[int] = None


class StoreInUse(StoreError):
    """Another client (this process or another) writes the store: one writes it at a time.

    The holder, as it wrote itself into the store when it took it (None when it did
    not say: an older wsbridge, or one still opening the store): ``pid``, ``client``
    (the client's name), ``host`` (its host name) and ``since`` (when it took the
    store, seconds since the epoch). The message names them too."""

    def __init__(self, message: str, pid: Optional[int] = None, client: Optional[str] = None,
                 host: Optional[str] = None, since: Optional[float] = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.client = client
        self.host = host
        self.since = since


class StoreFull(StoreError):
    """What was to be written does not fit in the store's ``max_size``: received
    messages once nothing handled is left to evict or one is larger than the store
    (the message says which; ``stored`` says how many of the batch were stored;
    reported on ``error``, delivery goes on), or a frame that would wait in the send
    buffer (`Client.send` raises it; the caller still has the message), or a full disk."""


class LeaseLost(StoreError):
    """Another process holds the lease this writer was fenced by: it must stop writing."""


class PatchError(WsbridgeError):
    """A patch did not apply to the document a `DocumentView` holds."""


class CliError(WsbridgeError):
    """A failure of a ``wsbridge`` command, reported as ``wsbridge: <message>``
    with the exit ``code`` (1 by default: ran, but did not do what was asked;
    the codes are the ``EXIT_*`` constants in ``wsbridge.cli.common``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class UsageError(WsbridgeError, RuntimeError):
    """A call that cannot work where it was made: the pull API from inside a
    subscriber (it would wait for the very thread it runs on), a filtered take
    under ``pull_overflow="block"`` at a buffer full of messages it leaves (the
    stream waits for room, so its message cannot come), or any method of a
    client inherited through ``fork()`` (its threads and socket belong to the
    parent process: make a new client in the child)."""


DISTRIBUTION = "wsbridge-sync"
"""The distribution's name on PyPI, where ``wsbridge`` is another project."""


def install_hint(extras: str) -> str:
    """What to run for a missing optional part: ``pip install 'wsbridge-sync[EXTRAS]'``.
    Every such error names the distribution through this, never the import name."""
    return f"pip install '{DISTRIBUTION}[{extras}]'"
