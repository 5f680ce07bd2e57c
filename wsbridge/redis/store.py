"""`RedisStreamStore`: received messages appended to a Redis Stream, one per feed.

Keys, all under ``PREFIX:FEED:``:

``messages``
    The stream. One entry per message, entry id ``KEY-0`` where KEY is the
    store key the client knows it by; fields ``type``, ``seq``, ``kind`` (how
    ``payload`` is encoded: 0 none, 1 text, 2 bytes, 3 and 4 JSON),
    ``payload``, ``at`` (``received_at``), empty when unset, then ``id`` and
    ``stream``, left out when unset (an empty stream name reads back as no
    stream). Trimmed with ``XTRIM MAXLEN ~ maxlen`` after each batch when it is set.
``positions``
    Hash: ``s:STREAM`` (``-`` for messages without a stream name, and for
    every message with one counter across streams) -> the last contiguous
    sequence id received, as the client tracks it (what a resume continues
    after), as `SQLiteStore` keeps them.
``meta``
    Hash: ``last`` (the newest key) and ``handled`` (the handled mark).
``epochs``
    Hash: ``s:STREAM`` -> the epoch of that stream's position (as JSON text), for
    streams whose messages carry one (the codec's ``epoch_field``).

A batch is written by one server-side script (one round trip, atomic): it
checks the lease when the store is fenced by one (see `Lease`), drops every
message whose seq is at or below the stored position that covers it (so a
standby bridge that takes over, or a resume that resends, never appends
twice what came before that position), appends the rest, then stores the
client's positions, their epochs and the marks. A position does not cover a
batch whose epoch for its stream differs from the stored one (a new epoch
numbers afresh: its messages are appended). The position that covers a message is
its stream's, or with one counter across streams (``seq_scope="global"``),
the one counter's: there a message may fill a gap after later ones were
stored, and it is appended (arrival order, as subscribers saw it). The
messages stored past an open gap are above the stored position: a process
that resumes from it gets them again and appends them again, as it
delivers them again (`SQLiteStore` does the same).

Redis may go away. A batch that cannot be written waits in a bounded local
buffer, and a thread of the store's writes the buffer, in order, once Redis
answers again (retried with a `Backoff`). Until then the client goes on
receiving; a full buffer fails the batch with a `StoreError` (reported on the
client's error signal). The handled mark is written with every batch, so a
crash repeats at most the last batch's messages to subscribers.

The script's cost per message is what Redis spends on it, while the
dispatcher waits: six strings unpacked from one flat array (a small table
more only for a message with a stream name or an id) and one ``XADD`` with
them in the call, no table or string built in Lua (what Lua allocates, its
collector walks again); the trim is one ``XTRIM`` a batch.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple, cast

from ..errors import LeaseLost, StoreError  # LeaseLost: defined in errors.py, importable from here as before
from ..message import Message
from ..redact import redact_url
from ..runtime.backoff import Backoff
from ..tracking.sequence import Epochs, Positions
from ..tracking.store import JSON_FRAME, Store, decode_payload, encode_id, encode_payload, stored_raw, stream_key
from .conn import REDIS_ERRORS, Entries, Fields, connect, feed_key, msgpack  # all but msgpack: importable here as before
from .conn import load_redis as load_redis  # re-exported: this module was its home
from .lease import Lease

if TYPE_CHECKING:  # pragma: no cover
    import redis

log = logging.getLogger("wsbridge")


_KINDS = tuple(str(kind) for kind in range(JSON_FRAME + 1))
"""The payload kinds as the append script takes them (text), by number."""
_RAW_KIND = _KINDS[JSON_FRAME]

_APPEND = """
-- KEYS: messages, positions, meta, lease (unused when ARGV[1] is '': not fenced), epochs
-- ARGV: token, maxlen ('' none), handled, lease ttl (ms), the batch: a MessagePack array
--       {positions, rows, epochs, first, extras}: positions {position key, seq, ...}, what the
--       client tracks after the batch; rows one flat array, six strings a message: entry id,
--       seq ('' none), type, kind, payload, at; extras {row number -> {position key, stream ('' none),
--       id ('' none)}} for the messages with a stream name or an id (the others' position key is
--       '-'), the position key naming the position that covers the row; the entry ids 'KEY-0', the
--       keys consecutive from first; every field a string (numbers as text, so no digit is lost to
--       Lua's doubles); epochs {position key, epoch as JSON, ...}: a stored position of another
--       epoch covers nothing.
-- Per message only what must be: one XADD with its arguments in the call (no table, no string
-- built in Lua: what Lua allocates, its collector walks), an unset id or stream left out; the
-- trim is one XTRIM after the batch.
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[4])
  if holder == false then
    redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[4])  -- expired while Redis was away; nobody took it
  elseif holder ~= ARGV[1] then
    return redis.error_reply('LEASE another process holds the lease ' .. KEYS[4])
  end
end
local batch = ARGV[5] and cmsgpack.unpack(ARGV[5]) or {{}, {}, {}, '1', {}}
local positions, rows, epochs, extras = batch[1], batch[2], batch[3], batch[5]
local epoch = {}
for i = 1, #epochs, 2 do epoch[epochs[i]] = epochs[i + 1] end
local stored = {}  -- per position key: the position stored before this batch (none, or another epoch's: -inf)
local call, xkey = redis.call, KEYS[1]
local appended = 0
local last = tonumber(redis.call('HGET', KEYS[3], 'last') or '0')
local lastrow = nil
-- the keys are consecutive: the rows at or below the stored last key are a prefix
local count = #rows / 6
for i = math.max(1, last - tonumber(batch[4]) + 2), count do
  local o = 6 * i - 6
  local seq, extra = rows[o + 2], extras[i]
  local fresh = true
  if seq ~= '' then
    local pkey = extra and extra[1] or '-'
    local cur = stored[pkey]
    if cur == nil then
      cur = tonumber(redis.call('HGET', KEYS[2], pkey) or '') or -math.huge
      if epoch[pkey] ~= nil and epoch[pkey] ~= redis.call('HGET', KEYS[5], pkey) then cur = -math.huge end
      stored[pkey] = cur
    end
    fresh = tonumber(seq) > cur
  end
  if fresh then
    local id = rows[o + 1]
    if extra == nil then
      call('XADD', xkey, id, 'type', rows[o + 3], 'seq', seq, 'kind', rows[o + 4], 'payload', rows[o + 5], 'at', rows[o + 6])
    elseif extra[2] == '' then
      call('XADD', xkey, id, 'type', rows[o + 3], 'seq', seq, 'kind', rows[o + 4], 'payload', rows[o + 5], 'at', rows[o + 6],
           'id', extra[3])
    elseif extra[3] == '' then
      call('XADD', xkey, id, 'type', rows[o + 3], 'seq', seq, 'kind', rows[o + 4], 'payload', rows[o + 5], 'at', rows[o + 6],
           'stream', extra[2])
    else
      call('XADD', xkey, id, 'type', rows[o + 3], 'seq', seq, 'kind', rows[o + 4], 'payload', rows[o + 5], 'at', rows[o + 6],
           'id', extra[3], 'stream', extra[2])
    end
    lastrow = id
    appended = appended + 1
  end
end
if appended > 0 and ARGV[2] ~= '' then redis.call('XTRIM', xkey, 'MAXLEN', '~', ARGV[2]) end
-- written as the strings that came in: Lua would print a number above 1e14 as 1e+14. Within one
-- epoch a stored position never moves back (a numbering restarted without an epoch is appended
-- again only past it, whatever batches it came in)
for i = 1, #positions, 2 do
  local pkey, seq = positions[i], positions[i + 1]
  local cur = tonumber(redis.call('HGET', KEYS[2], pkey) or '')
  if cur == nil or tonumber(seq) > cur or (epoch[pkey] ~= nil and epoch[pkey] ~= redis.call('HGET', KEYS[5], pkey)) then
    redis.call('HSET', KEYS[2], pkey, seq)
  end
end
for i = 1, #epochs, 2 do redis.call('HSET', KEYS[5], epochs[i], epochs[i + 1]) end
if lastrow then redis.call('HSET', KEYS[3], 'last', string.sub(lastrow, 1, -3)) end
redis.call('HSET', KEYS[3], 'handled', ARGV[3])
return {appended, count - appended}
"""


CLOSE_WAIT = 5.0
"""Seconds `close` keeps trying to write what waits in the local buffer."""


class RedisStreamStore(Store):
    """The `Store` interface on a Redis Stream per feed (see the module's docs).

    ``url`` is a redis-py URL (``redis://host:6379/0``); ``feed`` names the
    feed (several feeds share one Redis under one ``prefix``); ``maxlen``
    keeps about that many entries (``XADD MAXLEN ~``; None: everything).
    ``buffer_size`` bounds the messages kept locally while Redis is away;
    ``backoff`` paces the retries. ``lease``: a `Lease` the writer must hold
    (a bridge's), checked by Redis itself with every batch.

    `history` reads the stream from any thread or process. The send buffer
    is not kept in Redis (`outbox_add` returns None).
    """

    def __init__(
        self,
        url: str,
        *,
        feed: str = "default",
        prefix: str = "wsbridge",
        maxlen: Optional[int] = None,
        buffer_size: int = 100_000,
        backoff: Optional[Backoff] = None,
        lease: Optional[Lease] = None,
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ValueError("maxlen must be >= 1 or None")
        if buffer_size < 0:
            raise ValueError("buffer_size must be >= 0")
        self.url, self.feed, self.prefix, self.maxlen = url, feed, prefix, maxlen
        self.buffer_size = buffer_size
        self.backoff = backoff or Backoff(initial=0.1, max_delay=2.0)
        self.lease = lease
        self.key_messages = feed_key(prefix, feed, "messages")
        self.key_positions = feed_key(prefix, feed, "positions")
        self.key_meta = feed_key(prefix, feed, "meta")
        self.key_epochs = feed_key(prefix, feed, "epochs")
        self._redis: Optional["redis.Redis"] = None
        self._script: Any = None
        self._next_key = 1
        self._handled = 0
        self._lock = threading.Lock()  # the write path: one batch on the wire at a time, in order
        self._cond = threading.Condition(threading.Lock())  # the backlog and the retry thread
        self._backlog: Deque[Tuple[int, bytes]] = collections.deque()  # (message count, packed batch)
        self._backlogged = 0
        self._closing = False
        self._close_by = 0.0
        self._retry: Optional[threading.Thread] = None
        self.appended = self.skipped = 0
        """Entries written and messages the script dropped as already stored (counters)."""

    def __repr__(self) -> str:
        return f"RedisStreamStore({redact_url(self.url)!r}, feed={self.feed!r})"

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> None:
        if self._redis is not None:
            return
        client = connect(self.url)
        try:
            meta = client.hgetall(self.key_meta)
        except REDIS_ERRORS as exc:
            client.close()
            raise StoreError(f"cannot open {self!r}: {exc}") from exc
        self._next_key = int(meta.get(b"last", 0)) + 1
        self._handled = int(meta.get(b"handled", 0))
        self._script = client.register_script(_APPEND)
        self._redis = client
        self._closing = False

    def close(self) -> None:
        """Write what waits in the local buffer (for up to a few seconds) and the handled mark, then disconnect."""
        client = self._redis
        if client is None:
            return
        with self._cond:
            self._closing = True
            self._close_by = time.monotonic() + CLOSE_WAIT
            self._cond.notify_all()
        retry, self._retry = self._retry, None
        if retry is not None:
            retry.join(CLOSE_WAIT + 10.0)  # a write in flight may take its socket timeout
        with self._cond:
            if self._backlog:
                log.error("%r closed with %d message(s) Redis did not take", self, self._backlogged)
        try:
            with self._lock:
                if not self._backlog:
                    self._run(None)  # the handled mark, through the script: fenced like every write
        except (StoreError, *REDIS_ERRORS) as exc:  # type: ignore[misc]  # a tuple display mypy misreads
            log.warning("%r: could not save the handled mark on close: %s", self, exc)
        self._redis = None
        client.close()

    def _client(self) -> "redis.Redis":
        if self._redis is None:
            raise StoreError(f"{self!r} is not open")
        return self._redis

    @property
    def backlog(self) -> int:
        """Messages waiting locally for Redis to come back."""
        return self._backlogged

    # -- the client's side ------------------------------------------------------
    def positions(self) -> Positions:
        try:
            raw = cast(Fields, self._client().hgetall(self.key_positions))
        except REDIS_ERRORS as exc:
            raise StoreError(f"cannot read the positions from {self!r}: {exc}") from exc
        return {(None if k == b"-" else k.decode()[2:]): int(v) for k, v in raw.items()}  # keys: store.stream_key

    def epochs(self) -> Epochs:
        try:
            raw = cast(Fields, self._client().hgetall(self.key_epochs))
        except REDIS_ERRORS as exc:
            raise StoreError(f"cannot read the epochs from {self!r}: {exc}") from exc
        # Text, as the codec makes epochs (a store written before that may hold JSON integers).
        return {(None if k == b"-" else k.decode()[2:]): str(json.loads(v)) for k, v in raw.items()}

    @property
    def handled(self) -> int:
        return self._handled

    def unhandled(self) -> Iterator[Tuple[int, Message]]:
        for key, message in self._entries(f"({self._handled}-0"):
            yield key, message

    def mark_handled(self, key: int) -> None:
        self._handled = key  # written to Redis with the next batch, and on close

    def append(self, messages: Sequence[Message], positions: Positions, raw_is_payload: bool = False,
               epochs: Optional[Epochs] = None) -> int:
        """Append ``messages`` and store ``positions`` (see the module's docs). A message
        is checked against the position that covers it: its stream's when ``positions``
        has one, else the unnamed stream's (one counter across streams has only that),
        unless the batch's epoch for it is another. A stream that numbers afresh without
        an epoch (a ``reset`` judged by content) is appended again only once its seq
        passes the position stored before."""
        first = self._next_key
        rows: List[Any] = []  # six fields a message, one flat list: no table a message in Lua
        extras: Dict[int, Tuple[str, str, str]] = {}  # row number (from 1) -> position key, stream, id
        add = rows.extend
        key = first
        for m in messages:
            mtype, payload, seq, mid, stream, at, raw = m[:7]
            if raw_is_payload and raw.__class__ is bytes:
                kind, payload = _RAW_KIND, raw
            else:
                code, payload = encode_payload(payload)
                kind, payload = _KINDS[code], "" if payload is None else payload
            add(("%d-0" % key, "" if seq is None else str(seq), mtype, kind, payload, "" if at is None else repr(at)))
            if stream is not None or mid is not None:
                mid = encode_id(mid)
                extras[key - first + 1] = (stream_key(stream if stream in positions else None), stream or "",
                                           "" if mid is None else str(mid))
            key += 1
        self._next_key = key
        tracked = [part for stream, seq in positions.items() for part in (stream_key(stream), str(seq))]
        kept = [part for stream, epoch in (epochs or {}).items() if stream in positions
                for part in (stream_key(stream), json.dumps(epoch))]
        # One MessagePack argument for the batch: redis-py packs each argument in Python
        # (13.8 us a message for nine of them, measured), msgpack the whole batch in C;
        # raw strings (no bin type), as Redis's cmsgpack reads them.
        self._write(len(messages), msgpack.packb([tracked, rows, kept, str(first), extras], use_bin_type=False))
        return first

    def _write(self, count: int, batch: bytes) -> None:
        """Write a batch now, or keep it for the retry thread when Redis is away (or others wait before it)."""
        with self._cond:
            waiting = bool(self._backlog)
            if waiting:
                self._keep(count, batch)
                return
        try:
            with self._lock:
                self._run(batch)
        except REDIS_ERRORS as exc:
            with self._cond:
                self._keep(count, batch)
            log.warning("%r: Redis is unreachable (%s); keeping messages locally until it answers", self, exc)

    def _keep(self, count: int, batch: bytes) -> None:
        """Append to the backlog (under ``_cond``) and make sure the retry thread runs."""
        if self._backlogged + count > self.buffer_size:
            raise StoreError(
                f"{self!r}: Redis has been unreachable and the local buffer is full "
                f"({self._backlogged:,} of {self.buffer_size:,} messages); {count} message(s) not stored"
            )
        self._backlog.append((count, batch))
        self._backlogged += count
        self._cond.notify_all()
        if self._retry is None or not self._retry.is_alive():
            self._retry = threading.Thread(target=self._drain, name=f"wsbridge-redis-{self.feed}", daemon=True)
            self._retry.start()

    def _run(self, batch: Optional[bytes]) -> None:
        """One batch through the append script (under ``_lock``); None: only the handled mark."""
        client = self._client()
        lease = self.lease
        keys = [self.key_messages, self.key_positions, self.key_meta, lease.key if lease is not None else "", self.key_epochs]
        args = [lease.token if lease is not None else "", self.maxlen or "", self._handled,
                int(lease.ttl * 1000) if lease is not None else 0] + ([batch] if batch is not None else [])
        try:
            appended, skipped = self._script(keys=keys, args=args, client=client)
        except REDIS_ERRORS:
            raise
        except Exception as exc:  # a script error: the lease, a full Redis (OOM), a wrong type at a key
            if str(exc).startswith("LEASE"):
                raise LeaseLost(f"{self!r}: {str(exc)[6:]}; this process must stop writing") from exc
            raise StoreError(f"{self!r} refused a batch: {exc}") from exc
        self.appended += appended
        self.skipped += skipped
        if skipped:
            log.info("%r: %d message(s) were already stored (dropped, not appended twice)", self, skipped)

    def _drain(self) -> None:
        """The retry thread: write the backlog, oldest first, retrying with the backoff policy."""
        attempt = 0
        while True:
            with self._cond:
                if not self._backlog:
                    return
                count, batch = self._backlog[0]
            try:
                with self._lock:
                    self._run(batch)
            except REDIS_ERRORS as exc:
                attempt += 1
                delay = self.backoff.delay(attempt) if self.backoff.allows(attempt) else self.backoff.max_delay
                log.debug("%r: Redis still unreachable (%s); retry in %.2f s", self, exc, delay)
                with self._cond:
                    if self._closing:
                        delay = min(delay, self._close_by - time.monotonic())
                        if delay <= 0:
                            return
                    self._cond.wait(delay)
                continue
            except StoreError as exc:
                log.error("%s; %d message(s) not stored", exc, count)
            with self._cond:
                self._backlog.popleft()
                self._backlogged -= count
                if attempt:
                    log.info("%r: Redis answers again; wrote %d message(s) kept meanwhile", self, count)
                attempt = 0

    # -- reading back (any thread, any process) -------------------------------------
    def iter_history(
        self,
        type: Optional[str] = None,
        stream: Optional[str] = None,
        since: Optional[float] = None,
        after_seq: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> Iterator[Message]:
        n = 0
        for _key, m in self._entries("-"):
            if limit is not None and n >= limit:
                return
            if ((type is None or m.type == type) and (stream is None or m.stream == stream)
                    and (since is None or (m.received_at or 0) >= since)
                    and (after_seq is None or (m.seq is not None and m.seq > after_seq))):
                n += 1
                yield m

    def _entries(self, start: str, page: int = 1000) -> Iterator[Tuple[int, Message]]:
        """Stream entries from ``start`` on, a page at a time, as (key, Message)."""
        client = self._redis or connect(self.url)
        try:
            while True:
                try:
                    entries = cast(Entries, client.xrange(self.key_messages, start, "+", count=page) or [])
                except REDIS_ERRORS as exc:
                    raise StoreError(f"cannot read {self!r}: {exc}") from exc
                for entry_id, fields in entries:
                    yield int(entry_id.split(b"-")[0]), entry_message(fields)
                if len(entries) < page:
                    return
                start = "(" + entries[-1][0].decode()
        finally:
            if client is not self._redis:
                client.close()


def entry_message(fields: Fields) -> Message:
    """The `Message` a stream entry holds (``raw``: the frame, when it was kept as it came)."""
    stream = fields.get(b"stream", b"").decode()
    seq = fields.get(b"seq", b"")
    mid = fields.get(b"id", b"")
    at = fields.get(b"at", b"")
    kind = int(fields.get(b"kind", b"0"))
    payload: Any = fields.get(b"payload", b"")
    if kind == 1:  # text
        payload = payload.decode()
    elif kind == 0:
        payload = None
    return Message(
        fields[b"type"].decode(),
        decode_payload(kind, payload),
        int(seq) if seq else None,
        decode_id(mid),
        stream or None,
        float(at) if at else None,
        stored_raw(kind, payload),
    )


def decode_id(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode()
    try:
        return int(text)
    except ValueError:
        return text

