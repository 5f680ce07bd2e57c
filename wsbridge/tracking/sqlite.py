"""`SQLiteStore`: a `Store` in an SQLite database (stdlib ``sqlite3``), safe to read from
other processes while the client writes. Its own module so that ``sqlite3`` is loaded only
by the programs that keep a store."""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import secrets
import socket
import sqlite3
import stat
import struct
import threading
import time
import weakref
from operator import itemgetter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..errors import StoreError, StoreFull, StoreInUse  # defined in errors.py; importable from here as before
from ..message import Message
from .sequence import Epochs, Positions, digest
from .store import JSON_FRAME, Store, check_store_path, decode_payload, encode_id, encode_payload, stored_raw, stream_key

log = logging.getLogger("wsbridge")


_MESSAGE_COLUMNS = """\
    type TEXT NOT NULL,
    stream TEXT,
    seq INTEGER,
    id,
    kind INTEGER NOT NULL,
    payload,
    received_at REAL
"""
"""A kept message's columns: the messages table and the held table (messages behind an open gap) alike."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    key INTEGER PRIMARY KEY,
{_MESSAGE_COLUMNS});
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
    binary INTEGER NOT NULL,
    expires REAL
);
CREATE TABLE IF NOT EXISTS held (
    key INTEGER PRIMARY KEY,
{_MESSAGE_COLUMNS});
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value
);
"""

BUSY_TIMEOUT = 10.0
"""Seconds a write waits for the other connection's (the send buffer's and the messages' are two)."""

_COLUMNS = "type, stream, seq, id, kind, payload, received_at"
_SLOT = struct.Struct("<8s8sq")
"""The lock file's contents, memory-mapped by the writer: the store's token, which mark
the writer moves (`_mark_id`), then that mark's key."""

_KEY = struct.Struct("<q")
"""The key in the slot (at byte 16): all `mark_handled` writes."""

_OLD_MARK = struct.Struct("<8sq")
"""A handled mark's side file of the earlier layout (``<path>-handled``, ``<path>-handled-<hash>``):
the store's token, then the key. Folded into the database once, then removed."""

SHM_BYTES = 32 * 1024
"""SQLite's WAL index (``-shm``): 32 KiB while the WAL holds fewer than 4,062 frames,
which `WAL_SHARE_MAX` keeps it under."""

WAL_SHARE_MAX = 4 * 1024 * 1024
"""The most of ``max_size`` the WAL may use (a quarter of it, up to this): about
1,000 pages of 4 KiB, SQLite's own checkpoint threshold."""

READER_WAIT = 0.5
"""Seconds a write waits, once the files pass ``max_size``, for a reader that holds the
WAL (a `history` call in another process) to let go, so it can be truncated."""

PART_PAGES = 8
"""Pages a write of messages touches besides their rows' (the tables' and indexes' inner
pages, positions, marks, the free list): `_parts` leaves them room in the WAL's share."""

_ROW_EXTRA = 64
"""Bytes a stored message takes besides its payload (its other columns, its index entries)."""

MIN_SIZE = 64 * 1024
"""The smallest ``max_size``: the WAL index, a WAL and the tables' first pages."""

WRITER_CHECKPOINT_PAGES = 8192
"""An unbounded store's writer checkpoints at a commit itself only once the WAL holds
this many pages (32 MiB of 4 KiB; SQLite's ``wal_autocheckpoint``, 1,000 by default):
a backstop for when `SQLiteStore.idle` is not called (a store used without a client)
or cannot keep up, so the WAL stays bounded. The file keeps the size it reached until
the store closes: cutting it back (``journal_size_limit``) as each checkpoint resets it
took the p99 latency at 10,000 msg/s from under 3 ms to 12 ms."""

SMALL_PAGES = 256 * 1024
"""A new store whose ``max_size`` is below this gets 1 KiB pages (not 4 KiB), or its
tables' first pages would not fit."""


def _mark_id(row: str) -> bytes:
    """The 8 bytes naming a mark's ``meta`` row in the lock file: the first 8 bytes of the
    SHA-256 of the reader's name (which named the earlier layout's side file), zeros for the main mark."""
    if row == "handled":
        return bytes(8)
    return hashlib.sha256(row[len("handled:"):].encode()).digest()[:8]


def _is_full(exc: sqlite3.Error) -> bool:
    """Did SQLite refuse for want of room (``max_page_count``, or a full disk)?"""
    return getattr(exc, "sqlite_errorcode", None) == getattr(sqlite3, "SQLITE_FULL", 13) or "full" in str(exc)


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
    loss may lose the last batches (which a resume fetches again). A batch is
    one transaction of multi-row INSERTs (`_insert_rows`). Without ``max_size``,
    the client's supervisor thread checkpoints the WAL soon after writes (`idle`),
    so the writer's commits never wait for a checkpoint's copy and syncs.

    A store is the database, SQLite's ``-wal`` and ``-shm``, and ``<path>-lock``.
    The lock file carries the writer lock (an OS lock: SQLite's own locks last a
    transaction, and POSIX ones are dropped when any descriptor of the file
    closes, so neither can say "this client writes the store until it closes or
    dies") and the writer's handled mark. That mark is advanced after every
    message, which one SQLite commit each would make the bottleneck (about
    24 us), so it is a 24-byte memory-mapped slot of the lock file: a plain
    memory write per message that the kernel keeps even when the process is
    killed. Every mark is also saved in the database (table ``meta``) with
    every batch and at `close`; the next writer folds the slot into its row as
    it opens the store. Who holds the lock (pid, client name, host, since
    when) is in ``meta`` too, for `StoreInUse`. The lock file is opened without
    following a symbolic link and only if it is a plain file (`open_side_file`).
    A store of the earlier layout (a side file per mark, ``<path>-handled``,
    ``<path>-handled-<hash>``) is migrated as it opens: the marks are folded
    into the database and the side files removed.

    ``max_size`` bounds the whole store on disk, in bytes (all four files, at
    least `MIN_SIZE`): SQLite's WAL index takes 32 KiB, the WAL a quarter (up to
    4 MiB; checkpointed after every commit, and truncated after any that leaves
    it larger), and the database the rest, enforced by SQLite's
    ``max_page_count``. A batch of received messages is written in parts that
    fit in the WAL's share (`_parts`); a part that does not fit evicts the
    oldest messages every mark has passed (handled by every reader; counted in
    ``evicted``, `history` then starts later), in a transaction of its own.
    When nothing handled is left, the batch's newest messages are refused with
    `StoreFull`, which says how many of it (the first ones) were stored and
    why the rest were not: the client delivers the stored ones, which lets them
    be evicted, then offers the rest again, and reports what is still refused.
    A frame that would wait in the send buffer and does not fit is refused:
    `Client.send` raises `StoreFull` and the caller still has it. While a
    reader in another process holds the WAL (a long `iter_history`) it cannot
    be truncated; once the files pass ``max_size``, a write waits up to
    `READER_WAIT` for it, then is refused. One client writes a store at a time.

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
        if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < MIN_SIZE):
            raise ValueError(f"max_size must be a number of bytes of at least {MIN_SIZE} (SQLite's WAL index alone "
                             f"takes {SHM_BYTES}), not {max_size!r}")
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
        self._olock = threading.Lock()  # one send-buffer operation at a time on _odb
        self._mark: Optional[mmap.mmap] = None  # the lock file's slot: the dispatcher writes it
        self._lock_file: Optional[int] = None  # held open while this object writes the store
        self._token = b""
        self._next_key = 1
        self._handled = 0
        self._wal_share = 0  # bytes the WAL may take of max_size (set at open)
        self._part_bytes = 0  # the most bytes of rows one transaction writes (set at open)
        self._db_bytes = 0  # the most bytes the database may take (set at open)
        self._over = False  # the files passed max_size and the WAL could not be truncated (writers')
        self._cdb: Optional[sqlite3.Connection] = None  # no max_size: `idle`'s connection (open, close)
        self._checkpointing = threading.Lock()  # `idle` (the supervisor) against `close` (the dispatcher)
        self._written = threading.Event()  # set after a commit (writers), cleared by `idle`
        self.evicted = 0
        """Messages evicted to keep within ``max_size`` since `open` (the dispatcher's)."""

    def __repr__(self) -> str:
        if self.reader is None:
            return f"SQLiteStore({self.path!r})"
        return f"SQLiteStore({self.path!r}, reader={self.reader!r})"

    def size_on_disk(self) -> int:
        """Bytes of the store's files on disk now (database, ``-wal``, ``-shm``, ``-lock``):
        what ``max_size`` bounds."""
        total = 0
        for name in (self.path, self.path + "-wal", self.path + "-shm", self.path + "-lock"):
            try:
                total += os.stat(name).st_size
            except OSError:
                pass
        return total

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
            raise self._in_use() from None
        self._lock_file = fd
        _locked.add(self)

    def _in_use(self) -> StoreInUse:
        """`StoreInUse` naming the holder, as it wrote itself into the database."""
        try:
            rows = list(self._read("SELECT value FROM meta WHERE name = 'holder'", ()))
            holder = json.loads(rows[0][0]) if rows else {}
        except (StoreError, ValueError, TypeError):
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        pid, client, host, since = (holder.get(k) for k in ("pid", "client", "host", "since"))
        if isinstance(pid, int):
            who = f"pid {pid}" + (f" on {host}" if isinstance(host, str) else "")
            if isinstance(client, str):
                who += f", client {client!r}"
            if isinstance(since, (int, float)):
                who += ", since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        else:  # an older wsbridge, or one that has the lock and is still opening the database
            who = "a client that did not say who it is"
        return StoreInUse(
            f"the store {self.path!r} is in use by another client ({who}): one client writes a store at a time; "
            "`wsbridge history` reads it meanwhile",
            pid=pid if isinstance(pid, int) else None, client=client if isinstance(client, str) else None,
            host=host if isinstance(host, str) else None, since=since if isinstance(since, (int, float)) else None,
        )

    def _unlock_writer(self) -> None:
        fd, self._lock_file = self._lock_file, None
        if fd is not None:
            os.close(fd)  # releases the lock (the slot's mapping is closed before)

    def _tune(self, db: sqlite3.Connection) -> None:
        """Per-connection settings: durability, and ``max_size``'s shares (`_bounds`)."""
        db.execute("PRAGMA synchronous=NORMAL")
        if self.max_size is not None:
            page = db.execute("PRAGMA page_size").fetchone()[0]
            pages, self._wal_share = self._bounds(page)
            db.execute(f"PRAGMA max_page_count = {pages}")
            db.execute(f"PRAGMA journal_size_limit = {self._wal_share}")
            # a checkpoint after every commit: each write starts on an empty WAL, so a part
            # of a batch (`_parts`) within the WAL's share keeps the WAL within it
            db.execute("PRAGMA wal_autocheckpoint = 1")
            frames = (self._wal_share - 32) // (page + 24)
            self._part_bytes = max(page, (frames - PART_PAGES) * page * 3 // 4)
            self._db_bytes = pages * page
        else:
            db.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")  # the checkpointer's work

    def _bounds(self, page: int) -> Tuple[int, int]:
        """``max_size`` shared out: (pages of the database, bytes of the WAL)."""
        assert self.max_size is not None
        wal = min(WAL_SHARE_MAX, max(4 * (page + 24) + 32, self.max_size // 4))
        return max(1, (self.max_size - SHM_BYTES - _SLOT.size - wal) // page), wal

    def _open_db(self) -> None:
        fd = create_private(self.path, os.O_RDWR)  # a new database: private (SQLite gives -wal and -shm its mode)
        if fd is not None:
            os.close(fd)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
            try:
                if self.max_size is not None and self.max_size < SMALL_PAGES and fd is not None:
                    db.execute("PRAGMA page_size = 1024")  # before WAL mode: it writes the header
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                self._tune(db)
                db.executescript(_SCHEMA)
                if "epoch" not in {row[1] for row in db.execute("PRAGMA table_info(positions)")}:
                    db.execute("ALTER TABLE positions ADD COLUMN epoch")  # a store made before epochs
                if "expires" not in {row[1] for row in db.execute("PRAGMA table_info(outbox)")}:
                    db.execute("ALTER TABLE outbox ADD COLUMN expires REAL")  # a store of before send ttls
                handled = self._take_over(db)
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
            self._tune(odb)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot open the store {self.path!r}: {exc}") from exc
        self._handled = int(handled)
        try:
            self._map_slot()
        except BaseException:  # before the store counts as open: close() must not save a mark it never read
            odb.close()
            db.close()
            raise
        self._db, self._odb = db, odb
        if self.max_size is None:
            self._open_checkpointer()

    def _open_checkpointer(self) -> None:
        """The connection `idle` checkpoints with: a checkpoint copies the WAL into the
        database and syncs both files (milliseconds, each ``wal_autocheckpoint`` pages),
        which at the writer's commit would hold up the messages behind it. (With
        ``max_size`` the writer checkpoints after each commit itself: the bound needs that
        WAL emptied first.)"""
        try:
            cdb = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
            self._tune(cdb)
        except sqlite3.Error as exc:  # (open closes what did open)
            raise StoreError(f"cannot open the store {self.path!r}: {exc}") from exc
        self._cdb = cdb
        self._written.set()  # once at the start: what an earlier writer left in the WAL

    def idle(self) -> None:
        """After writes, a passive checkpoint (it never waits for the writer, nor the writer
        for it): the client's supervisor calls this about four times a second, off the
        dispatcher; once it has caught up, the writer's next transaction starts the WAL over
        from its start. A failed one is logged at debug level: the next, or the writer's
        backstop (`WRITER_CHECKPOINT_PAGES`), does its work. Any thread, one at a time."""
        if not self._written.is_set():
            return
        with self._checkpointing:
            cdb = self._cdb
            if cdb is None:
                return
            self._written.clear()
            try:
                cdb.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                log.debug("%r: a checkpoint failed: %s", self, exc)

    def _close_checkpointer(self) -> None:
        """Close `idle`'s connection (a checkpoint under way finishes first)."""
        with self._checkpointing:
            cdb, self._cdb = self._cdb, None
        if cdb is not None:
            cdb.close()

    def _take_over(self, db: sqlite3.Connection) -> int:
        """With the lock held, in one transaction: fold the last writer's slot and the
        earlier layout's mark files into the marks' rows, create this reader's row (at
        the main mark), and say who writes the store now. Returns this reader's mark.
        The old mark files are removed once that committed."""
        old = self._old_mark_files()  # read (and checked) before anything is written
        slot = self._read_slot()
        db.execute("BEGIN IMMEDIATE")
        try:
            token = db.execute("SELECT value FROM meta WHERE name = 'token'").fetchone()
            if token is None:
                db.execute("INSERT INTO meta VALUES ('token', ?)", (secrets.token_bytes(8),))
                db.execute("INSERT INTO meta VALUES ('handled', 0)")
                token = db.execute("SELECT value FROM meta WHERE name = 'token'").fetchone()
            self._token = bytes(token[0])
            marks = {_mark_id(name): name for (name,) in db.execute("SELECT name FROM meta WHERE name LIKE 'handled%'")}
            for _, ident, written_for, key in old + ([("", *slot)] if slot else []):
                if written_for == self._token and ident in marks:  # else another database's: stale
                    db.execute("UPDATE meta SET value = MAX(value, ?) WHERE name = ?", (key, marks[ident]))
            row = db.execute("SELECT value FROM meta WHERE name = ?", (self._mark_row,)).fetchone()
            if row is None:  # a new reader: it starts where the main mark is
                row = db.execute("SELECT value FROM meta WHERE name = 'handled'").fetchone()
                db.execute("INSERT INTO meta VALUES (?, ?)", (self._mark_row, row[0] if row else 0))
            holder = {"pid": os.getpid(), "client": self.owner, "host": socket.gethostname(), "since": time.time()}
            db.execute("INSERT OR REPLACE INTO meta VALUES ('holder', ?)", (json.dumps(holder),))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        for path, *_ in old:
            try:
                os.remove(path)
            except OSError:
                pass
        return int(row[0] or 0)

    def _old_mark_files(self) -> List[Tuple[str, bytes, bytes, int]]:
        """The earlier layout's mark files (``<path>-handled``, ``<path>-handled-<16 hex>``),
        as (path, mark id, token, key). Opened as side files: a link, or anything but a
        plain file of this user's, is refused (`StoreError`) and left alone."""
        folder, base = os.path.split(os.path.abspath(self.path))
        found = []
        for name in sorted(os.listdir(folder)):
            if name == base + "-handled":
                ident = bytes(8)
            elif name.startswith(base + "-handled-") and len(name) == len(base) + 25:
                try:
                    ident = bytes.fromhex(name[-16:])
                except ValueError:
                    continue
            else:
                continue
            path = os.path.join(folder, name)
            fd = open_side_file(path, os.O_RDONLY, "handled mark")
            try:
                data = os.read(fd, _OLD_MARK.size)
            finally:
                os.close(fd)
            token, key = _OLD_MARK.unpack(data) if len(data) == _OLD_MARK.size else (b"", 0)
            found.append((path, ident, token, key))
        return found

    def _read_slot(self) -> Optional[Tuple[bytes, bytes, int]]:
        """The last writer's slot in the lock file: (mark id, token, key); None if empty."""
        if self._lock_file is None:
            return None
        data = os.pread(self._lock_file, _SLOT.size, 0)
        if len(data) < _SLOT.size:
            return None
        token, ident, key = _SLOT.unpack(data)
        return ident, token, key

    def _map_slot(self) -> None:
        """Map the lock file's slot and write this writer's mark in it."""
        fd = self._lock_file
        if fd is None:
            return
        try:
            if os.fstat(fd).st_size < _SLOT.size:
                os.ftruncate(fd, _SLOT.size)
            mark = mmap.mmap(fd, _SLOT.size)
        except OSError as exc:
            raise StoreError(f"cannot map the store's lock {self.path + '-lock'!r}: {exc}") from exc
        _SLOT.pack_into(mark, 0, self._token, _mark_id(self._mark_row), self._handled)
        self._mark = mark

    def close(self) -> None:
        self._close_checkpointer()  # first: the last connection to close empties the WAL
        db, self._db = self._db, None
        odb, self._odb = self._odb, None
        if odb is not None:
            odb.close()
        mark, self._mark = self._mark, None
        if db is not None:
            try:
                db.execute("BEGIN")
                db.execute("UPDATE meta SET value = ? WHERE name = ?", (self._handled, self._mark_row))
                db.execute("DELETE FROM meta WHERE name = 'holder'")
                db.execute("COMMIT")
            except sqlite3.Error:
                pass
            db.close()
        if mark is not None:
            mark.close()
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
        return {stream: str(epoch) for stream, epoch in rows}  # (a store written before epochs were text has ints)

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
        """With ``max_size``, see `_append_bounded`: the batch may be stored in parts, and
        a `StoreFull` says how many of it (the first ones) were stored."""
        db = self._conn()
        epochs = epochs or {}
        first = self._next_key
        rows = _rows(messages, first, raw_is_payload)
        places = [(stream_key(stream), stream, seq, epochs.get(stream)) for stream, seq in positions.items()]
        if self.max_size is not None:
            return self._append_bounded(db, rows, places, [m.epoch for m in messages])
        try:
            self._write_batch(db, rows, places)
        except sqlite3.Error as exc:
            error = StoreFull if _is_full(exc) else StoreError
            raise error(f"cannot write {len(rows)} message(s) to {self.path!r}: {exc}") from exc
        self._next_key = first + len(rows)
        return first

    def _write_batch(self, db: sqlite3.Connection, rows: List[Tuple[Any, ...]], places: List[Tuple[Any, ...]]) -> None:
        """One transaction: store ``rows`` and the positions (``places``: rows of the positions table)."""
        db.execute("BEGIN")
        try:
            _insert_rows(db, "messages", rows)
            db.executemany(
                "INSERT INTO positions VALUES (?, ?, ?, ?) ON CONFLICT (skey) DO UPDATE SET received = excluded.received, "
                "epoch = excluded.epoch",
                places,
            )
            db.execute("UPDATE meta SET value = ? WHERE name = ?", (self._handled, self._mark_row))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                db.execute("ROLLBACK")
            raise
        self._written.set()

    def _append_bounded(self, db: sqlite3.Connection, rows: List[Tuple[Any, ...]], places: List[Tuple[Any, ...]],
                        epochs: List[Any]) -> int:
        """Store a batch within ``max_size``, in parts of at most `_part_bytes` (each its
        own transaction, so no commit takes the WAL past its share). A part that does not
        fit evicts handled messages (`_evict`, transactions of their own) until it does;
        when nothing handled is left, it is halved, so the batch is stored as far as the
        bound allows: its first messages, in order. The rest is refused (`StoreFull`,
        with ``stored`` and ``first``). Each part writes the received positions it reaches
        (`_reached`; ``epochs``: each row's message's), the batch's last part the batch's:
        a crash between parts, or a batch stored in part, leaves the positions at what is
        stored, so a resume repeats only what was in flight, and never skips."""
        first = self._next_key
        todo = self._parts(rows)
        todo.reverse()  # a stack: the next part last
        last = rows[-1] if rows else None
        try:
            while todo:
                part = todo.pop()
                reached = places if part[-1] is last else _reached(part, places, epochs, first)
                if not self._write_part(db, part, reached):
                    if len(part) == 1:
                        raise StoreFull(self._refusal(db, part, len(rows) - (self._next_key - first)))
                    half = len(part) // 2
                    todo += [part[half:], part[:half]]
                    continue
                self._next_key += len(part)
                self._settle(db)
        except (sqlite3.Error, StoreError) as exc:
            if isinstance(exc, StoreError):
                exc.stored, exc.first = self._next_key - first, first
                raise
            error = StoreFull if _is_full(exc) else StoreError
            refused = error(f"cannot write {len(rows) - (self._next_key - first)} message(s) to {self.path!r}: {exc}"
                            + self._why_full())
            refused.stored, refused.first = self._next_key - first, first
            raise refused from exc
        return first

    def _parts(self, rows: List[Tuple[Any, ...]]) -> List[List[Tuple[Any, ...]]]:
        """``rows`` cut into parts of at most `_part_bytes` each (a larger row alone)."""
        parts: List[List[Tuple[Any, ...]]] = [[]]
        size = 0
        budget = self._part_bytes
        for row in rows:
            weight = _row_bytes(row)
            if size + weight > budget and parts[-1]:
                parts.append([])
                size = 0
            parts[-1].append(row)
            size += weight
        return parts

    def _write_part(self, db: sqlite3.Connection, part: List[Tuple[Any, ...]], places: List[Tuple[Any, ...]]) -> bool:
        """Write one part, evicting handled messages (`_evict`) until it fits; False when
        it does not and nothing handled is left to evict."""
        need = sum(_row_bytes(row) for row in part)
        while True:
            if self._over:
                self._check_room(db, f"cannot write {len(part)} message(s)")
            try:
                self._write_batch(db, part, places)
                return True
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
            if not self._evict(db, need):
                return False
            need = min(2 * need, self._part_bytes)

    def _evict(self, db: sqlite3.Connection, need: int) -> int:
        """One transaction of its own: evict the oldest messages every mark has passed
        (handled by every reader), about ``need`` bytes of them (at most a part's worth),
        then the commit's checkpoint empties the WAL for the part: together in one
        transaction, the deletes and the part took the WAL past its share. The number
        evicted (0: none is left)."""
        others = db.execute("SELECT MIN(value) FROM meta WHERE name LIKE 'handled%' AND name != ?",
                            (self._mark_row,)).fetchone()[0]
        limit = self._handled if others is None else min(self._handled, int(others))
        through, size = None, 0
        for key, length in db.execute("SELECT key, length(CAST(payload AS BLOB)) FROM messages WHERE key <= ? "
                                      "ORDER BY key LIMIT ?", (limit, need // _ROW_EXTRA + 1)).fetchall():
            through, size = key, size + (length or 0) + _ROW_EXTRA
            if size >= need:
                break
        if through is None:
            return 0
        db.execute("BEGIN")
        try:
            evicted = db.execute("DELETE FROM messages WHERE key <= ?", (through,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if evicted and not self.evicted:
            log.info("%r is full (max_size %d bytes): evicting the oldest handled messages", self, self.max_size)
        self.evicted += evicted
        self._settle(db)
        return evicted

    def _refusal(self, db: sqlite3.Connection, part: List[Tuple[Any, ...]], refused: int) -> str:
        """Why ``refused`` messages of a batch, from ``part``'s on, cannot be stored: the
        first is larger than the store can hold, or nothing handled is left to evict
        (and whose mark keeps the rest)."""
        what = f"cannot write {refused} message(s) to {self.path!r}"
        queued = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        sends = f", beside {queued} queued send(s) that are never evicted" if queued else ""
        marks = {name: int(value) for name, value in db.execute("SELECT name, value FROM meta WHERE name LIKE 'handled%'")}
        marks[self._mark_row] = self._handled
        lowest = min(marks.values())
        unhandled = db.execute("SELECT COUNT(*) FROM messages WHERE key > ?", (lowest,)).fetchone()[0]
        if _row_bytes(part[0]) > self._db_bytes or not unhandled and not queued:
            return (f"{what}: a message of about {_row_bytes(part[0])} bytes is larger than the store can hold"
                    f"{sends}{self._why_full()}")
        if not unhandled:
            return f"{what}: the store is full of {queued} queued send(s), which are never evicted{self._why_full()}"
        who = ", ".join("this client" if name == self._mark_row else "the main mark" if name == "handled"
                        else f"reader {name[len('handled:'):]!r}" for name, value in sorted(marks.items()) if value == lowest)
        return (f"{what}: the store is full and nothing handled is left to evict: it holds {unhandled} message(s) not "
                f"yet handled by {who} (handled through key {lowest}){sends}; these newest messages of the batch "
                f"are delivered unstored{self._why_full()}")

    def _why_full(self) -> str:
        return f" (max_size {self.max_size} bytes: {self.size_on_disk()} on disk)"

    def _check_room(self, db: sqlite3.Connection, what: str) -> None:
        """`StoreFull` while the files still pass ``max_size`` (the WAL could not be truncated,
        a reader held it for more than `READER_WAIT`)."""
        self._settle(db, READER_WAIT)
        if self._over:
            raise StoreFull(f"{what} to {self.path!r}: the store is full: its WAL is held by a reader (another "
                            f"connection) and cannot be truncated yet{self._why_full()}")

    def _settle(self, db: sqlite3.Connection, wait: float = 0.0) -> None:
        """After a commit (``max_size`` set): a WAL larger than its share (a write larger
        than it, or a reader that held it) is checkpointed into the database and truncated,
        waiting ``wait`` seconds at most for readers (one that holds it longer makes this
        fail: the next commit tries again, and `_check_room` refuses writes while the files
        pass ``max_size``)."""
        try:
            wal = os.stat(self.path + "-wal").st_size
        except OSError:
            wal = 0
        if wal > self._wal_share:
            db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass
            finally:
                db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            self._over = self.size_on_disk() > (self.max_size or 0)
        else:
            self._over = False

    def mark_handled(self, key: int) -> None:
        self._handled = key
        mark = self._mark
        if mark is not None:
            _KEY.pack_into(mark, 16, key)

    keeps_held = True

    def keep_held(self, messages: Sequence[Message], raw_is_payload: bool = False) -> None:
        db = self._conn()
        try:
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM held")
                _insert_rows(db, "held", _rows(messages, 1, raw_is_payload))
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
        with self._olock:
            db = self._outbox_db()
            if self._over:
                self._check_room(db, "cannot keep the send buffer")
            try:
                cursor = db.execute(sql, args)
            except sqlite3.Error as exc:
                error = StoreFull if _is_full(exc) else StoreError
                raise error(f"cannot keep the send buffer in {self.path!r}: {exc}"
                            + ("" if self.max_size is None else self._why_full())) from exc
            if self.max_size is not None:
                self._settle(db)
            self._written.set()
            return cursor

    def outbox_items(self) -> List[Tuple[int, Union[str, bytes], bool, Optional[float]]]:
        with self._olock:
            rows = self._outbox_db().execute("SELECT key, data, binary, expires FROM outbox ORDER BY key").fetchall()
        return [(key, bytes(data) if binary else data, bool(binary), expires) for key, data, binary, expires in rows]

    def outbox_add(self, data: Union[str, bytes], binary: bool, expires: Optional[float] = None) -> Optional[int]:
        """Keep a frame; `StoreFull` when it does not fit in ``max_size`` (never evicted
        to make room: the caller still has it)."""
        return self._outbox_write("INSERT INTO outbox (data, binary, expires) VALUES (?, ?, ?)",
                                  (data, int(binary), expires)).lastrowid

    def outbox_written(self, key: int) -> None:
        self._outbox_write("UPDATE outbox SET expires = NULL WHERE key = ?", (key,))

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
        return Message(mtype, decode_payload(kind, payload), seq, mid, stream, received_at, stored_raw(kind, payload))


def _rows_per_insert() -> int:
    """The most rows (8 values each) one INSERT may bind, a power of two up to 512: SQLite
    allows 32,766 bound variables since 3.32 (999 before), or what it was built with."""
    db = sqlite3.connect(":memory:")
    try:
        getlimit = getattr(db, "getlimit", None)  # Python 3.11+
        limit = getlimit(getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER")) if getlimit is not None else (  # noqa: B009
            32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999)
    finally:
        db.close()
    return max(1, min(512, 1 << ((limit // 8).bit_length() - 1)))


ROWS_PER_INSERT = _rows_per_insert()
"""The most rows one INSERT statement writes (512 with any SQLite of the last years)."""

_INSERTS: Dict[Tuple[str, int, bool], str] = {}
"""The INSERT statement of each (table, count of rows, without stream and id): a power
of two up to `ROWS_PER_INSERT`."""

_STREAM, _ID = itemgetter(2), itemgetter(4)
_BOUND = itemgetter(0, 1, 3, 5, 6, 7)
"""A row's values but its stream and id (both None: written as NULL literals)."""


def _insert_rows(db: sqlite3.Connection, table: str, rows: List[Tuple[Any, ...]]) -> None:
    """Insert ``rows`` (of `_rows`) into ``table`` in statements of many rows each. The
    ``sqlite3`` module lets go of the GIL around every step of a statement and takes it
    back after: `executemany` does that once per row, and while the reader thread runs,
    taking it back waits for the reader (a GIL hand-off per stored message). One
    statement per `ROWS_PER_INSERT` rows (and one per power of two for the rest, so a
    handful of statements are ever compiled) does it once per statement. When no row
    has a stream or an id (most feeds), those are NULL in the statement, not bound: the
    module binds a None (as a bytes payload) only after looking for an adapter for it,
    a third of the cost of a row."""
    bare = {*map(_STREAM, rows), *map(_ID, rows)} == {None}
    at, left = 0, len(rows)
    while left:
        count = min(ROWS_PER_INSERT, 1 << (left.bit_length() - 1))
        sql = _INSERTS.get((table, count, bare))
        if sql is None:
            values = "(?, ?, NULL, ?, NULL, ?, ?, ?)" if bare else "(?, ?, ?, ?, ?, ?, ?, ?)"
            sql = _INSERTS[(table, count, bare)] = f"INSERT INTO {table} VALUES " + ",".join([values] * count)
        chunk = rows[at:at + count]
        db.execute(sql, [value for row in (map(_BOUND, chunk) if bare else chunk) for value in row])
        at, left = at + count, left - count


def _row_bytes(row: Tuple[Any, ...]) -> int:
    """About the bytes a row of `_rows` takes once stored (more, for text that is not ASCII)."""
    _, mtype, stream, _, mid, _, payload, _ = row
    size = _ROW_EXTRA + 2 * len(mtype) + 2 * len(stream or "") + (len(mid) if isinstance(mid, str) else 0)
    if isinstance(payload, str):
        return size + (len(payload) if payload.isascii() else 4 * len(payload))
    return size + (len(payload) if payload is not None else 0)


def _reached(part: List[Tuple[Any, ...]], places: List[Tuple[Any, ...]], epochs: List[Any],
             first: int) -> List[Tuple[Any, ...]]:
    """The positions rows (of ``places``, the batch's) that a part of the batch reaches:
    per stream, the highest seq of the part's messages of the batch's epoch (the tracker
    releases a stream's messages in order, each its position then), capped by the
    batch's position. None for a stream with a message of another epoch in the part (a
    reset inside the batch: its last part says), nor for one counter across streams
    (``{None: n}`` with named streams: the part does not tell what is contiguous)."""
    named = any(row[2] is not None for row in part)
    if named and len(places) == 1 and places[0][1] is None:
        return []
    wanted = {stream: epoch for _, stream, _, epoch in places}
    top: Dict[Any, Optional[int]] = {}  # per stream: the highest seq, None once another epoch's met
    for row in part:  # one pass, however many streams
        stream, seq = row[2], row[3]
        if seq is None or stream not in wanted:
            continue
        if epochs[row[0] - first] != wanted[stream]:
            top[stream] = None
        elif stream not in top:
            top[stream] = seq
        else:
            best = top[stream]
            if best is not None and seq > best:
                top[stream] = seq
    out = []
    for skey, stream, seq, epoch in places:
        reached = top.get(stream)
        if reached is not None:
            out.append((skey, stream, min(seq, reached), epoch))
    return out


def _rows(messages: Sequence[Message], first: int, raw_is_payload: bool) -> List[Tuple[Any, ...]]:
    """The rows of ``messages`` for the messages (or held) table, keys from ``first``."""
    rows: List[Tuple[Any, ...]] = []
    append = rows.append
    for key, (mtype, payload, seq, mid, stream, received_at, raw, _) in enumerate(messages, first):  # (per message)
        if raw_is_payload and raw.__class__ is bytes:
            kind, payload = JSON_FRAME, raw
        else:
            kind, payload = encode_payload(payload)
        if mid is not None and mid.__class__ is not int and mid.__class__ is not str:
            mid = encode_id(mid)
        append((key, mtype, stream, seq, mid, kind, payload, received_at))
    return rows


_locked: "weakref.WeakSet[SQLiteStore]" = weakref.WeakSet()
"""Stores whose writer lock this process holds."""


def _drop_locks_in_child() -> None:
    """A child made by fork() shares the parent's lock (one open file): close its copies
    (the descriptor, and the slot's mapping, which holds one too), or the lock would
    outlive the parent's close() while the child runs (a worker pool)."""
    for store in list(_locked):
        mark, store._mark = store._mark, None
        if mark is not None:
            try:
                mark.close()
            except (OSError, ValueError, BufferError):
                pass
        fd, store._lock_file = store._lock_file, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)
