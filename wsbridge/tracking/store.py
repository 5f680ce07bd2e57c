"""Keeping what was received: the `Store` interface and `SQLiteStore`.

A store holds every message the client accepted (after dedup) and two
positions: *received* (the last contiguous sequence id stored per stream,
what a resume asks to continue after) and *handled* (the last stored message
whose subscribers all returned). The client writes each batch before any
subscriber sees it and marks each message handled after its subscribers
return, so after a crash the messages past the handled mark are delivered
again first: the one in flight may be repeated, none is lost.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import sqlite3
import stat
import struct
import weakref
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

from ..errors import StoreError, StoreInUse  # defined in errors.py; importable from here as before
from ..message import Message
from .sequence import Epochs, Positions, digest

S = TypeVar("S", bound="Store")


class Store:
    """What the client needs of a store; `SQLiteStore` is the bundled one.

    Keys are increasing integers the store assigns, one per message, in
    arrival order. The client calls `open` (and `held_messages`) on start,
    then `append`, `mark_handled` and, as it stops, `keep_held` from its
    dispatcher thread only; `history` may be called from any thread.
    """

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: "S") -> "S":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def positions(self) -> Positions:
        """Last contiguous sequence id stored per stream."""
        raise NotImplementedError

    def epochs(self) -> Epochs:
        """The epoch of each stored position (streams whose messages carry one)."""
        return {}

    def digest(self, stream: Optional[str], seq: int) -> Optional[int]:
        """The `digest` of the last message stored at ``seq`` of ``stream`` (None: not
        known): after a restart, tells a server replaying what it sent from one whose
        numbering restarted (`SequenceTracker`'s ``recall``)."""
        return None

    def unhandled(self) -> Iterator[Tuple[int, Message]]:
        """Stored messages past the handled mark, oldest first, with their keys
        (read lazily: the backlog after a long outage need not fit in memory)."""
        raise NotImplementedError

    def append(self, messages: Sequence[Message], positions: Positions, raw_is_payload: bool = False,
               epochs: Optional[Epochs] = None) -> int:
        """Store ``messages`` (one transaction) and the new received positions
        (with ``epochs``, the epochs they belong to); return the key of the first
        (the rest follow, consecutive). ``raw_is_payload``: each message's ``raw``
        frame is its payload as JSON (`Codec.raw_is_payload`), so it may be stored
        as it came."""
        raise NotImplementedError

    def mark_handled(self, key: int) -> None:
        """Every subscriber returned for the message ``key`` (and all before it)."""
        raise NotImplementedError

    def history(
        self,
        type: Optional[str] = None,
        stream: Optional[str] = None,
        since: Optional[float] = None,
        after_seq: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> List[Message]:
        """Stored messages in arrival order, filtered by type, stream (None:
        all streams), ``received_at >= since``, ``seq > after_seq``; the
        first ``limit`` of them. Safe beside a writing client, from any
        thread (and, for `SQLiteStore`, any process)."""
        return list(self.iter_history(type, stream, since, after_seq, limit))

    def iter_history(
        self,
        type: Optional[str] = None,
        stream: Optional[str] = None,
        since: Optional[float] = None,
        after_seq: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> Iterator[Message]:
        """`history` one message at a time (for large stores)."""
        raise NotImplementedError

    # Messages held back behind open gaps when the client stops (see `Delivery.finish`).
    keeps_held = False
    """True when the store implements `keep_held` and `held_messages`."""

    def keep_held(self, messages: Sequence[Message]) -> None:
        """Keep ``messages``, held behind open gaps as the client stops, in place of
        those kept before (one transaction): the next run holds them again while it
        asks the server for the gaps. The stored positions do not move."""
        raise NotImplementedError

    def held_messages(self) -> List[Message]:
        """The messages `keep_held` kept, in order (they stay kept until the next call)."""
        return []

    # The send buffer, kept so queued sends survive a restart. A store that
    # does not keep it returns None from `outbox_add` and nothing else is called.
    def outbox_items(self) -> List[Tuple[int, Union[str, bytes], bool]]:
        """Queued frames from an earlier run, oldest first: ``(key, data, binary)``."""
        return []

    def outbox_add(self, data: Union[str, bytes], binary: bool) -> Optional[int]:
        """Keep a frame that waits in the send buffer; its key (None: not kept)."""
        return None

    def outbox_remove(self, key: int) -> None:
        """Forget one kept frame (dropped by the overflow policy)."""

    def outbox_remove_through(self, key: int) -> None:
        """Forget every kept frame up to ``key`` (the socket took them)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    key INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    stream TEXT,
    seq INTEGER,
    id,
    kind INTEGER NOT NULL,
    payload,
    received_at REAL
);
CREATE INDEX IF NOT EXISTS messages_stream_seq ON messages (stream, seq);
CREATE INDEX IF NOT EXISTS messages_type ON messages (type);
CREATE TABLE IF NOT EXISTS positions (
    skey TEXT PRIMARY KEY,
    stream TEXT,
    received INTEGER NOT NULL,
    epoch
);
CREATE TABLE IF NOT EXISTS outbox (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    data NOT NULL,
    binary INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    key INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    stream TEXT,
    seq INTEGER,
    id,
    kind INTEGER NOT NULL,
    payload,
    received_at REAL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value
);
"""

BUSY_TIMEOUT = 10.0
"""Seconds a write waits for the other connection's (the send buffer's and the messages' are two)."""

_COLUMNS = "type, stream, seq, id, kind, payload, received_at"

# payload kinds
_NONE, _TEXT, _BYTES, _JSON = 0, 1, 2, 3
JSON_FRAME = 4  # the JSON frame as it came (UTF-8 bytes), its payload once parsed

_MARK = struct.Struct("<8sq")
"""The handled mark's side file: the store's token, then the key."""


def stream_key(stream: Optional[str]) -> str:
    return "-" if stream is None else "s:" + stream


def encode_payload(payload: Any) -> Tuple[int, Any]:
    if payload is None:
        return _NONE, None
    if isinstance(payload, str):
        return _TEXT, payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return _BYTES, bytes(payload)
    return _JSON, json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def decode_payload(kind: int, value: Any) -> Any:
    if kind == _JSON or kind == JSON_FRAME:
        return json.loads(value)
    if kind == _BYTES:
        return bytes(value)
    return value


def encode_id(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def check_store_path(path: str, *, must_exist: bool = False) -> None:
    """`StoreError` for a path where no SQLite store can be: a folder, something other
    than a plain file (opening a FIFO would block for ever), a folder that does not
    exist, or (``must_exist``) nothing at all. Reads nothing."""
    if os.path.isdir(path):
        raise StoreError(f"cannot open the store {path!r}: it is a folder, not a store")
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise StoreError(f"cannot open the store {path!r}: it is not a store (not a plain file)")
        return
    if must_exist:
        raise StoreError(f"no store at {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StoreError(f"cannot open the store {path!r}: there is no folder {folder!r}")


_SIDE_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
"""No symbolic link is followed, and opening a FIFO does not wait for a writer."""


FILE_MODE = 0o600
"""The mode of every file the store creates: messages and queued sends are private data."""


def create_private(path: str, flags: int) -> Optional[int]:
    """Create ``path`` (``O_EXCL``, following no link) with mode `FILE_MODE`, whatever
    the umask; its descriptor, or None if something is there already."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | _SIDE_FLAGS, FILE_MODE)
    except FileExistsError:
        return None
    try:
        os.fchmod(fd, FILE_MODE)  # a umask such as 0o277 took the owner's bits away
    except (OSError, AttributeError):
        pass  # no modes here (a file system, or a system without fchmod): never wider than FILE_MODE anyway
    return fd


def _euid(default: int) -> int:
    """The effective user id (``default`` where the system has none)."""
    return os.geteuid() if hasattr(os, "geteuid") else default


def open_side_file(path: str, flags: int, what: str) -> int:
    """A side file of the store (its lock, a handled mark), opened only if it is a plain
    file of this user's with no other name: a symbolic link planted at that name in a
    shared folder would have the store write to (or create) whatever it points at, and
    a hard link is the same file under two names, so each is refused (`StoreError`), as
    is a FIFO, a device or a file of another user's. With ``O_CREAT`` a new file gets
    mode `FILE_MODE`. Other failures raise the `OSError`."""
    try:
        fd = create_private(path, flags & ~os.O_CREAT) if flags & os.O_CREAT else None
        if fd is None:
            fd = os.open(path, flags & ~os.O_CREAT | _SIDE_FLAGS)
    except OSError:
        if os.path.islink(path):
            raise StoreError(f"refused the store's {what} {path!r}: it is a symbolic link, and the store follows "
                             f"none (remove it; in a shared folder, someone else may have put it there)") from None
        raise
    info = os.fstat(fd)
    why = ("it is not a plain file" if not stat.S_ISREG(info.st_mode)
           else f"it has {info.st_nlink} names (a hard link to another file?)" if info.st_nlink != 1
           else f"it belongs to another user (uid {info.st_uid})" if info.st_uid != _euid(info.st_uid) else None)
    if why is not None:
        os.close(fd)
        raise StoreError(f"refused the store's {what} {path!r}: {why}; remove it (in a shared folder, someone else "
                         "may have put it there)")
    return fd


class SQLiteStore(Store):
    """Messages and positions in an SQLite database (stdlib ``sqlite3``).

    WAL mode, so other processes can read `history` while the client writes;
    ``synchronous=NORMAL``: a process crash loses nothing committed, a power
    loss may lose the last batches (which a resume fetches again). The
    handled mark is advanced after every message, which one SQLite commit
    each would make the bottleneck (about 24 us), so it lives in a 16-byte
    memory-mapped side file (``<path>-handled``): a plain memory write per
    message that the kernel keeps even when the process is killed. It is
    also saved in the database with every batch, the fallback when the side
    file is missing or belongs to another database. The side files (that one,
    ``<path>-lock`` and the readers' marks) are opened without following a
    symbolic link and only if they are plain files (`open_side_file`).

    ``max_size`` caps the database file in bytes: past it a write fails as
    on a full disk (a `StoreError`; the client reports it and keeps
    delivering). One client writes a store at a time.

    ``reader`` names the handled mark this store object moves (None: the
    store's main mark). A client that subscribes to only some types sees
    the others go by unhandled; with a mark of its own it leaves the main
    mark where it was, so a later client that wants everything is delivered
    them from the store (``wsbridge listen --type T --store FILE`` does
    this). A new reader's mark starts at the main mark: what was delivered
    to a reader of everything is not delivered again.
    """

    def __init__(self, path: str, *, max_size: Optional[int] = None, reader: Optional[str] = None) -> None:
        self.path = os.fspath(path)
        self.max_size = max_size
        if reader is not None:
            try:
                reader.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"reader must be text UTF-8 can encode, not {reader!r}") from None
        self.reader = reader
        self._mark_row = "handled" if reader is None else "handled:" + reader
        self._db: Optional[sqlite3.Connection] = None  # messages: the dispatcher's
        self._odb: Optional[sqlite3.Connection] = None  # the send buffer: senders' and the supervisor's
        self._mark: Optional[mmap.mmap] = None
        self._mark_file: Optional[int] = None
        self._lock_file: Optional[int] = None  # held open while this object writes the store
        self._token = b""
        self._next_key = 1
        self._handled = 0

    def __repr__(self) -> str:
        if self.reader is None:
            return f"SQLiteStore({self.path!r})"
        return f"SQLiteStore({self.path!r}, reader={self.reader!r})"

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> None:
        if self._db is not None:
            return
        check_store_path(self.path)
        self._lock_writer()
        try:
            self._open_db()
        except BaseException:
            self.close()  # what did open, and the lock
            raise

    def _lock_writer(self) -> None:
        """One client writes a store at a time: a second one would fail on every write
        (its keys collide) and move the marks under the first. An advisory lock on
        ``<path>-lock``, held until `close` (the kernel drops it when the process dies)."""
        path = self.path + "-lock"
        try:
            fd = open_side_file(path, os.O_RDWR | os.O_CREAT, "lock")
        except OSError as exc:
            raise StoreError(f"cannot open the store's lock {path!r}: {exc}") from exc
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            self._lock_file = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreInUse(f"the store {self.path!r} is in use by another client (one client writes a store "
                             f"at a time; `wsbridge history` reads it meanwhile)") from None
        self._lock_file = fd
        _locked.add(self)

    def _unlock_writer(self) -> None:
        fd, self._lock_file = self._lock_file, None
        if fd is not None:
            os.close(fd)  # releases the lock

    def _open_db(self) -> None:
        fd = create_private(self.path, os.O_RDWR)  # a new database: private (SQLite gives -wal and -shm its mode)
        if fd is not None:
            os.close(fd)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
            try:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                db.execute("PRAGMA synchronous=NORMAL")
                if self.max_size is not None:
                    page = db.execute("PRAGMA page_size").fetchone()[0]
                    db.execute(f"PRAGMA max_page_count = {max(1, int(self.max_size) // page)}")
                db.executescript(_SCHEMA)
                if "epoch" not in {row[1] for row in db.execute("PRAGMA table_info(positions)")}:
                    db.execute("ALTER TABLE positions ADD COLUMN epoch")  # a store made before epochs
                token = db.execute("SELECT value FROM meta WHERE name = 'token'").fetchone()
                if token is None:
                    db.execute("INSERT INTO meta VALUES ('token', ?)", (secrets.token_bytes(8),))
                    db.execute("INSERT INTO meta VALUES ('handled', 0)")
                    token = db.execute("SELECT value FROM meta WHERE name = 'token'").fetchone()
                self._token = bytes(token[0])
                row = db.execute("SELECT value FROM meta WHERE name = ?", (self._mark_row,)).fetchone()
                if row is None:  # a new reader: it starts where the main mark is
                    main = db.execute("SELECT value FROM meta WHERE name = 'handled'").fetchone()
                    handled = max(int(main[0]) if main else 0, self._read_mark(self.path + "-handled"))
                    db.execute("INSERT INTO meta VALUES (?, ?)", (self._mark_row, handled))
                else:
                    handled = row[0]
                self._next_key = (db.execute("SELECT MAX(key) FROM messages").fetchone()[0] or 0) + 1
            except BaseException:
                db.close()
                raise
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store {self.path!r}: {exc}") from exc
        if mode.lower() != "wal":
            db.close()
            raise StoreError(f"cannot open the store {self.path!r}: WAL journal mode refused ({mode})")
        try:
            odb = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
            odb.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot open the store {self.path!r}: {exc}") from exc
        self._handled = int(handled)
        try:
            self._handled = max(self._handled, self._open_mark())
        except BaseException:  # before the store counts as open: close() must not save a mark it never read
            odb.close()
            db.close()
            raise
        self._db, self._odb = db, odb

    def _mark_path(self) -> str:
        if self.reader is None:
            return self.path + "-handled"
        return self.path + "-handled-" + hashlib.sha256(self.reader.encode()).hexdigest()[:16]

    def _read_mark(self, path: str) -> int:
        """The key a side file records for this database (0: none, or another database's)."""
        try:
            fd = open_side_file(path, os.O_RDONLY, "handled mark")
            try:
                data = os.read(fd, _MARK.size)
            finally:
                os.close(fd)
        except OSError:
            return 0
        if len(data) < _MARK.size:
            return 0
        token, key = _MARK.unpack(data)
        return int(key) if token == self._token else 0

    def _open_mark(self) -> int:
        """Map the side file; return the key it records (0 when it is new or stale)."""
        path = self._mark_path()
        try:
            fd = open_side_file(path, os.O_RDWR | os.O_CREAT, "handled mark")
        except OSError as exc:
            raise StoreError(f"cannot open the store's handled mark {path!r}: {exc}") from exc
        try:
            if os.fstat(fd).st_size < _MARK.size:
                os.ftruncate(fd, _MARK.size)
            mark = mmap.mmap(fd, _MARK.size)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot map the store's handled mark {path!r}: {exc}") from exc
        token, key = _MARK.unpack_from(mark)
        self._mark_file, self._mark = fd, mark
        if token != self._token:
            key = 0
            _MARK.pack_into(mark, 0, self._token, self._handled)
        return key

    def close(self) -> None:
        db, self._db = self._db, None
        odb, self._odb = self._odb, None
        if odb is not None:
            odb.close()
        mark, self._mark = self._mark, None
        fd, self._mark_file = self._mark_file, None
        if db is not None:
            try:
                db.execute("UPDATE meta SET value = ? WHERE name = ?", (self._handled, self._mark_row))
            except sqlite3.Error:
                pass
            db.close()
        if mark is not None:
            mark.close()
        if fd is not None:
            os.close(fd)
        self._unlock_writer()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path!r} is not open")
        return self._db

    # -- the client's side ------------------------------------------------------
    def positions(self) -> Positions:
        rows = self._conn().execute("SELECT stream, received FROM positions").fetchall()
        return {stream: received for stream, received in rows}

    def epochs(self) -> Epochs:
        rows = self._conn().execute("SELECT stream, epoch FROM positions WHERE epoch IS NOT NULL").fetchall()
        return {stream: epoch for stream, epoch in rows}

    def digest(self, stream: Optional[str], seq: int) -> Optional[int]:
        """Known for a message stored as the frame it came as (a JSON codec's)."""
        row = self._conn().execute("SELECT kind, payload FROM messages WHERE stream IS ? AND seq = ? ORDER BY key DESC "
                                   "LIMIT 1", (stream, seq)).fetchone()
        return digest(bytes(row[1])) if row is not None and row[0] == JSON_FRAME else None

    @property
    def handled(self) -> int:
        """The handled mark: the key of the last message whose subscribers all returned."""
        return self._handled

    def unhandled(self) -> Iterator[Tuple[int, Message]]:
        self._conn()
        for row in self._read("SELECT key, " + _COLUMNS + " FROM messages WHERE key > ? ORDER BY key", [self._handled]):
            yield row[0], self._message(row[1:])

    def handled_positions(self) -> Positions:
        """The last handled sequence id per stream (derived from the handled mark)."""
        return {s: n for s, n in self._read(
            "SELECT stream, MAX(seq) FROM messages WHERE key <= ? AND seq IS NOT NULL GROUP BY stream", [self._handled]
        )}

    def append(self, messages: Sequence[Message], positions: Positions, raw_is_payload: bool = False,
               epochs: Optional[Epochs] = None) -> int:
        db = self._conn()
        epochs = epochs or {}
        first = self._next_key
        rows = _rows(messages, first, raw_is_payload)
        key = first + len(rows)
        try:
            db.execute("BEGIN")
            try:
                db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                db.executemany(
                    "INSERT INTO positions VALUES (?, ?, ?, ?) ON CONFLICT (skey) DO UPDATE SET received = excluded.received, "
                    "epoch = excluded.epoch",
                    [(stream_key(stream), stream, seq, epochs.get(stream)) for stream, seq in positions.items()],
                )
                db.execute("UPDATE meta SET value = ? WHERE name = ?", (self._handled, self._mark_row))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {len(rows)} message(s) to {self.path!r}: {exc}") from exc
        self._next_key = key
        return first

    def mark_handled(self, key: int) -> None:
        self._handled = key
        mark = self._mark
        if mark is not None:
            _MARK.pack_into(mark, 0, self._token, key)

    keeps_held = True

    def keep_held(self, messages: Sequence[Message]) -> None:
        db = self._conn()
        try:
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM held")
                db.executemany("INSERT INTO held VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _rows(messages, 1, False))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot keep {len(messages)} held message(s) in {self.path!r}: {exc}") from exc

    def held_messages(self) -> List[Message]:
        try:
            rows = self._conn().execute("SELECT " + _COLUMNS + " FROM held ORDER BY key").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the held messages from {self.path!r}: {exc}") from exc
        return [self._message(row) for row in rows]

    # -- the send buffer --------------------------------------------------------------
    def _outbox_db(self) -> sqlite3.Connection:
        if self._odb is None:
            raise StoreError(f"the store {self.path!r} is not open")
        return self._odb

    def _outbox_write(self, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self._outbox_db().execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot keep the send buffer in {self.path!r}: {exc}") from exc

    def outbox_items(self) -> List[Tuple[int, Union[str, bytes], bool]]:
        rows = self._outbox_db().execute("SELECT key, data, binary FROM outbox ORDER BY key").fetchall()
        return [(key, bytes(data) if binary else data, bool(binary)) for key, data, binary in rows]

    def outbox_add(self, data: Union[str, bytes], binary: bool) -> Optional[int]:
        return self._outbox_write("INSERT INTO outbox (data, binary) VALUES (?, ?)", (data, int(binary))).lastrowid

    def outbox_remove(self, key: int) -> None:
        self._outbox_write("DELETE FROM outbox WHERE key = ?", (key,))

    def outbox_remove_through(self, key: int) -> None:
        self._outbox_write("DELETE FROM outbox WHERE key <= ?", (key,))

    # -- reading back (any thread, any process) -------------------------------------
    def iter_history(
        self,
        type: Optional[str] = None,
        stream: Optional[str] = None,
        since: Optional[float] = None,
        after_seq: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> Iterator[Message]:
        """`history` one message at a time, on a read-only connection of its own."""
        where: List[str] = []
        args: List[Any] = []
        for clause, value in (("type = ?", type), ("stream = ?", stream), ("received_at >= ?", since), ("seq > ?", after_seq)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT " + _COLUMNS + " FROM messages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        for row in self._read(sql, args):
            yield self._message(row)

    def _read(self, sql: str, args: Sequence[Any]) -> Iterator[Tuple[Any, ...]]:
        """Rows of a query on a read-only connection of its own (WAL: readers
        never block the writer, nor it them)."""
        if not os.path.exists(self.path):
            raise StoreError(f"no store at {self.path!r}")
        try:
            reader = sqlite3.connect(Path(self.path).absolute().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store {self.path!r}: {exc}") from exc
        try:
            yield from reader.execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store {self.path!r}: {exc}") from exc
        finally:
            reader.close()

    @staticmethod
    def _message(row: Sequence[Any]) -> Message:
        mtype, stream, seq, mid, kind, payload, received_at = row
        return Message(mtype, decode_payload(kind, payload), seq, mid, stream, received_at, None)


def _rows(messages: Sequence[Message], first: int, raw_is_payload: bool) -> List[Tuple[Any, ...]]:
    """The rows of ``messages`` for the messages (or held) table, keys from ``first``."""
    rows = []
    for key, m in enumerate(messages, first):
        if raw_is_payload and m.raw.__class__ is bytes:
            kind, payload = JSON_FRAME, m.raw
        else:
            kind, payload = encode_payload(m.payload)
        rows.append((key, m.type, m.stream, m.seq, encode_id(m.id), kind, payload, m.received_at))
    return rows


_locked: "weakref.WeakSet[SQLiteStore]" = weakref.WeakSet()
"""Stores whose writer lock this process holds."""


def _drop_locks_in_child() -> None:
    """A child made by fork() shares the parent's lock (one open file): close its copy,
    or the lock would outlive the parent's close() while the child runs (a worker pool)."""
    for store in list(_locked):
        fd, store._lock_file = store._lock_file, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)
