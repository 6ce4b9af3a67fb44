"""The result store: pickled results on disk, keyed by a string, with a size limit.

One store serves the cache (a key made by a cache policy) and retries of a flow
run (a key made of the run's id). Under its ``root`` (by default
``NBFLOW_HOME/results``)::

    index.sqlite            the index: each entry's task, size, age and last use; the small
                            entries themselves (table ``inline``); the key parts remembered
                            per slot (``remember``)
    entries/ab/ab01...      one file per larger entry, named by the SHA-1 of the key
    locks/ab01....lock      lock files of ``lock(key)``

An entry is ``MAGIC`` (7 bytes), a format version (1 byte), the length of a
JSON header (4 bytes, little-endian), the header (``key``, ``task``,
``created``, ``expires``, and the sizes of what follows: ``pickle`` and
``buffers``), the pickle of ``(meta, value)`` (cloudpickle, protocol 5) and its
out-of-band buffers, raw. One of at most ``INLINE_MAX`` bytes lives in the
index, as a row of table ``inline``: creating a file costs far more than the
rest of a small write. A larger one has a file of its own, where a numpy array
or a pandas block is written straight from its memory and read back into one
buffer of its own: no second copy either way. File writes go to a temporary
file in the same folder, renamed over the entry, so a crash never leaves half
an entry. A key has one live entry: committing its inline row removes its file,
and committing the index row of its file removes its inline row; of two writes
of a key that meet in the index (from two processes), the one made last wins. An entry that
does not parse (truncated, garbage, another version, a class that no longer
imports) is a miss, logged once per key, and the next write replaces it.

Nothing on the hot path waits for SQLite. ``write`` pickles on the caller's
thread (the value as it is at that moment); a small entry goes into the
process-local ``pending`` map, where this process's reads find it at once, and
into a queue bounded in items and bytes (a flood of writes waits for room). A background thread applies the queue in batches, one
SQLite transaction each (WAL mode, busy timeout, retries): inline rows, the
bookkeeping that ``read`` and ``write`` queue (sizes, last use), then evicts the
least recently used entries while the total is over ``max_bytes``. Other
processes see a small entry once its batch is committed; :meth:`ResultStore.flush`
waits for that, and :meth:`ResultStore.close` and exit flush. ``read`` looks in
``pending``, then in the index (a small pool of read connections; WAL lets readers
run beside the writer), then for the file. The thread ends when idle for a
while and starts again with the next use. Several kernels can share a store:
each has its own thread, SQLite serialises their transactions, and an entry is
never evicted while it is being rewritten.

If the index cannot be used (it cannot be opened, or a transaction fails: a
read-only folder, a full disk), small entries are written as files, as larger
ones are. If the index is missing or corrupt (a corrupt one is set aside), it is
rebuilt from the entry files' headers; the inline entries it held are gone.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import pickle
import queue
import shutil
import sqlite3
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import cloudpickle

logger = logging.getLogger("nbflow")

T = TypeVar("T")

MAGIC = b"NBFLOWR"
VERSION = 1
#: Entries of at most this many bytes (header, pickle and buffers) live in the index, not in files.
INLINE_MAX = 64 * 1024
_PREFIX = struct.Struct("<7sBI")  # magic, version, header length
_HEAD = 1 << 14  # read at once: a small entry in one read
_PLAIN = frozenset((int, float, complex, bool, str, bytes, type(None)))  # values pickle writes as well as cloudpickle
_HEADER = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call
_QUEUE = 100_000  # queued items before writers wait (reads then skip their bookkeeping)
_QUEUED_BYTES = 64 * 1024 * 1024  # inline entries queued and not yet applied before writers wait
_BATCH = 500  # queued items per index transaction
_ATTEMPTS = 5  # tries of an index transaction that finds the database busy
_STALE_TEMP = 3600.0  # seconds after which a rebuild removes a temporary file left by a crash
_IDLE = 30.0  # seconds without work after which the background thread ends (the next use starts one)
_WAKE = 1.0  # seconds between checks that the background thread runs, while waiting for it
_READERS = 4  # read connections a store keeps open at most (reads hold one for microseconds)
_LINGER = 0.005  # seconds a batch of uses alone waits for more items before its transaction
_USES = ("file use", "inline use")  # the kinds of queued items that note a read


class Entry(NamedTuple):
    """A stored result: its ``value``, the ``task`` that made it, when (``created``,
    ``expires``, seconds since the epoch) and the ``meta`` stored with it."""

    value: Any
    task: str
    created: float
    expires: float | None
    meta: dict[str, Any]


class TaskSummary(NamedTuple):
    """What the store holds for one task: ``entries``, their ``bytes``, and when one was ``last_used``."""

    name: str
    entries: int
    bytes: int
    last_used: float


class StoreError(Exception):
    """A write that failed; the message says why (unpicklable value, read-only or full store)."""


class _Unreadable(Exception):
    """Stored bytes that are not a valid entry for their key."""


class _Header(NamedTuple):
    key: str
    task: str
    created: float
    expires: float | None
    pickle: int
    buffers: list[int]


class _Write(NamedTuple):
    """A write queued for the background thread; ``data`` is the whole entry if it is inline, else None."""

    kind: str  # "write", so the queue tells it from its other items by item[0]
    key: str
    task: str
    size: int
    created: float
    expires: float | None
    used: float
    data: bytes | None


# -- entries ------------------------------------------------------------------------------------
def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_header(raw: bytes) -> _Header:
    try:
        fields = json.loads(raw)
    except ValueError as exc:
        raise _Unreadable(f"its header is not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise _Unreadable("its header is not a JSON object")
    key, task, created, expires = (fields.get(name) for name in ("key", "task", "created", "expires"))
    pickled, buffers = fields.get("pickle"), fields.get("buffers")
    if not (
        isinstance(key, str) and isinstance(task, str) and _number(created) and (expires is None or _number(expires))
        and _size(pickled) and isinstance(buffers, list) and all(_size(n) for n in buffers)
    ):
        raise _Unreadable("its header lacks a field or has one of the wrong type")
    return _Header(key, task, float(created), None if expires is None else float(expires), pickled, buffers)


def _header_end(data: bytes) -> int:
    """Where the header that starts ``data`` ends (and the pickle starts)."""
    if len(data) < _PREFIX.size:
        raise _Unreadable("it is shorter than its header")
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _Unreadable("it is not an nbflow result")
    if version != VERSION:
        raise _Unreadable(f"it has format version {version}, this nbflow reads version {VERSION}")
    return _PREFIX.size + length


def _header_of(data: bytes, start: int, key: str | None) -> _Header:
    """The header in ``data[:start]``, checked to be one of ``key`` (unless None)."""
    if start > len(data):
        raise _Unreadable("it is shorter than its header")
    header = _parse_header(data[_PREFIX.size:start])
    if key is not None and header.key != key:
        raise _Unreadable("it holds another key")
    return header


def _read_header(file: Any, key: str | None) -> tuple[_Header, bytes, int]:
    """The header of an open entry file (of ``key``, unless None), the bytes read so far, and where
    the pickle starts."""
    head = file.read(_HEAD)
    start = _header_end(head)
    if start > len(head):
        head += file.read(start - len(head))
    return _header_of(head, start, key), head, start


def _loads(pickled: Any, buffers: list[bytearray]) -> tuple[dict[str, Any], Any]:
    try:
        found = pickle.loads(pickled, buffers=buffers)
    except Exception as exc:  # noqa: BLE001 - garbage can fail anyhow, as can a class that no longer imports
        raise _Unreadable(f"its value cannot be unpickled ({type(exc).__name__}: {exc})") from None
    if not (isinstance(found, tuple) and len(found) == 2 and isinstance(found[0], dict)):
        raise _Unreadable("it does not hold a (meta, value) pair")
    return found


def _loads_from(data: bytes, header: _Header, start: int) -> tuple[dict[str, Any], Any]:
    """``(meta, value)`` of an entry held whole in memory (its buffers copied, so arrays stay writable)."""
    view = memoryview(data)
    offsets = itertools.accumulate(header.buffers, initial=start + header.pickle)
    return _loads(view[start:start + header.pickle], [bytearray(view[a:b]) for a, b in itertools.pairwise(offsets)])


def _load(file: Any, key: str, now: float) -> tuple[_Header, int, dict[str, Any], Any] | None:
    """``(header, file size, meta, value)`` of an open entry file; None if it has expired."""
    header, head, start = _read_header(file, key)
    if header.expires is not None and header.expires < now:
        return None
    end = start + header.pickle + sum(header.buffers)
    size = len(head) if len(head) < _HEAD else os.fstat(file.fileno()).st_size
    if size != end:
        raise _Unreadable(f"it has {size} bytes where its header says {end}")
    if end <= len(head):  # all read already
        meta, value = _loads_from(head, header, start)
    else:
        file.seek(start)
        pickled = _read_exactly(file, header.pickle)
        meta, value = _loads(pickled, [_read_exactly(file, n) for n in header.buffers])
    return header, size, meta, value


def _inline_header(data: bytes, key: str) -> tuple[_Header, int]:
    """The header of an inline entry of ``key`` and where its pickle starts."""
    if not isinstance(data, bytes):  # what the index holds: anything, if something else wrote there
        raise _Unreadable(f"the index holds a {type(data).__name__} where its bytes should be")
    start = _header_end(data)
    return _header_of(data, start, key), start


def _decode(data: bytes, key: str, now: float) -> tuple[_Header, dict[str, Any], Any] | None:
    """``(header, meta, value)`` of an inline entry; None if it has expired."""
    header, start = _inline_header(data, key)
    if header.expires is not None and header.expires < now:
        return None
    end = start + header.pickle + sum(header.buffers)
    if len(data) != end:
        raise _Unreadable(f"it has {len(data)} bytes where its header says {end}")
    meta, value = _loads_from(data, header, start)
    return header, meta, value


def _read_exactly(file: Any, size: int) -> bytearray:
    buffer = bytearray(size)
    if file.readinto(buffer) != size:
        raise _Unreadable("it is truncated")
    return buffer


_NO_FILE = -1.0  # what _created_of gives for a path with no file


def _created_of(path: str, key: str) -> float | None:
    """When the entry file at ``path`` was written; ``_NO_FILE`` if there is none, None if it does not parse."""
    try:
        with open(path, "rb") as file:
            return _read_header(file, key)[0].created
    except FileNotFoundError:
        return _NO_FILE
    except (OSError, _Unreadable):
        return None


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# -- the index ----------------------------------------------------------------------------------
_SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, task TEXT NOT NULL,"
    " bytes INTEGER NOT NULL, created REAL NOT NULL, expires REAL, last_used REAL NOT NULL)"),
    "CREATE INDEX IF NOT EXISTS entries_by_use ON entries (last_used)",
    "CREATE INDEX IF NOT EXISTS entries_by_task ON entries (task)",
    # The total size, kept by triggers: cheap to read after every batch, right across processes.
    "CREATE TABLE IF NOT EXISTS total (one INTEGER PRIMARY KEY CHECK (one = 1), bytes INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO total VALUES (1, 0)",
    ("CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries"
    " BEGIN UPDATE total SET bytes = bytes + NEW.bytes; END"),
    ("CREATE TRIGGER IF NOT EXISTS entries_resized AFTER UPDATE OF bytes ON entries"
    " BEGIN UPDATE total SET bytes = bytes - OLD.bytes + NEW.bytes; END"),
    ("CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries"
    " BEGIN UPDATE total SET bytes = bytes - OLD.bytes; END"),
    "CREATE TABLE IF NOT EXISTS slots (slot TEXT PRIMARY KEY, parts TEXT NOT NULL, used REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS slots_by_use ON slots (used)",
    # Small entries, whole (their row in entries says the rest); apart, so scans of entries stay small.
    "CREATE TABLE IF NOT EXISTS inline (key TEXT PRIMARY KEY, data BLOB NOT NULL)",
)
_SCHEMA_VERSION = 2  # 2 added table inline; an index of version 1 gains it when opened

# A write, unless the row is of a newer entry (written meanwhile by another thread or process): the newest wins.
_UPSERT_ENTRY = (
    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET task = excluded.task,"
    " bytes = excluded.bytes, created = excluded.created, expires = excluded.expires,"
    " last_used = excluded.last_used WHERE excluded.created >= entries.created"
)
# A file read: the row of a file that has none is added (the files are the truth), else only its use.
_NOTE_FILE_USE = (
    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
    " last_used = max(last_used, excluded.last_used)"
)
_NOTE_INLINE_USE = "UPDATE entries SET last_used = max(last_used, ?) WHERE key = ?"
_SELECT_INLINE = "SELECT data FROM inline WHERE key = ?"
_SELECT_SLOT = "SELECT parts FROM slots WHERE slot = ?"
_UPSERT_SLOT = (
    "INSERT INTO slots VALUES (?, ?, ?) ON CONFLICT (slot) DO UPDATE SET parts = excluded.parts,"
    " used = excluded.used"
)


def _busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Index:
    """The store's SQLite index, written by its background thread only."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, _SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"index schema version {version}, expected {_SCHEMA_VERSION}")
            #: A new index: entries already on disk (if any) have no rows yet.
            self.new = version == 0
            self.transaction(self._create)
        except BaseException:
            self.db.close()
            raise

    def _create(self) -> None:
        for statement in _SCHEMA:
            self.db.execute(statement)
        self.db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def transaction(self, work: Callable[[], T]) -> T:
        """``work()`` in one write transaction, tried again while another process holds the database."""
        for attempt in itertools.count(1):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    result = work()
                    self.db.execute("COMMIT")
                    return result
                except BaseException:
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or attempt == _ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)  # past the 30 s busy timeout: back off, then try again

    def total(self) -> int:
        return int(self.db.execute("SELECT bytes FROM total").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class _Outcome(NamedTuple):
    """What a transaction made of its batch's writes, by key."""

    applied: set[str]  # the writes now in the index
    beaten: set[str]  # file writes kept out by a newer inline entry


class _Work:
    """What the queued items between two calls change in the index."""

    __slots__ = ("newest", "remembered", "slots", "uses", "writes", "written")

    def __init__(self) -> None:
        self.writes: dict[str, _Write] = {}  # by key: the write made last
        self.written: list[_Write] = []  # every write, each let go of once applied
        self.uses: dict[str, tuple[Any, ...]] = {}  # by key: the last use, the latest
        self.slots: dict[str, tuple[Any, ...]] = {}  # by slot: the last remembered parts win
        self.remembered: list[tuple[Any, ...]] = []  # every remember(), each let go of once applied
        self.newest: str | None = None  # the key written last, which eviction spares

    def add(self, item: tuple[Any, ...]) -> None:
        if isinstance(item, _Write):
            last = self.writes.get(item.key)
            if last is None or item.created >= last.created:  # the newest wins, as in the index
                self.writes[item.key] = item
            self.written.append(item)
            self.newest = item.key
        elif item[0] == "slot":
            self.slots[item[1]] = item[1:]
            self.remembered.append(item)
        else:  # a use, of a file or of an inline entry
            self.uses[item[1]] = item

    def __bool__(self) -> bool:
        return bool(self.writes or self.uses or self.slots)


# -- the store ----------------------------------------------------------------------------------
class _KeyLock:
    """A key's lock within this process, shared by the threads that use it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


_open_stores: weakref.WeakSet[ResultStore] = weakref.WeakSet()
_inherited: list[list[sqlite3.Connection]] = []  # a forked child's copies of its parent's read connections


class ResultStore:
    """Pickled results under ``root``, at most about ``max_bytes`` of them (least recently used go first).

    Thread safe, and safe to share between processes. ``clock`` gives the
    "last used" times that order eviction (``time.time`` by default).
    ``max_slots`` caps the key parts kept by :meth:`remember`.
    """

    def __init__(
        self, root: Path, max_bytes: int, *, clock: Callable[[], float] = time.time, max_slots: int = 200_000
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_slots = max_slots
        self._clock = clock
        self._entries = os.path.join(self.root, "entries")
        self._locks = os.path.join(self.root, "locks")
        # mode=rw: a reader never creates the index (the background thread does)
        self._index_uri = (self.root / "index.sqlite").absolute().as_uri() + "?mode=rw"
        self._folders: set[str] = set()  # entry folders known to exist
        self._names = itertools.count()  # temporary file names
        self._warned: set[str] = set()  # keys whose unreadable entry was logged
        self._problem: str | None = None  # why the index cannot be used, once it failed to open
        self._lock_warned = False
        _open_stores.add(self)
        self._process_local_state()

    def _process_local_state(self) -> None:
        """Threads, queue, pending entries and connections: this process's own (set again in a forked child)."""
        self._held: set[int] = set()  # descriptors of the lock files held
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(_QUEUE)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._key_locks: dict[str, _KeyLock] = {}
        self._key_locks_guard = threading.Lock()
        self._slot_writes = 0
        # key -> its latest write not yet applied: an inline entry, or a file whose index row may still
        # leave an older inline row in place (reads then skip the index)
        self._pending: dict[str, _Write] = {}
        self._pending_lock = threading.Lock()
        self._room = threading.Condition(self._pending_lock)  # notified as applied writes free their bytes
        self._queued_bytes = 0  # of the inline entries queued, until applied
        self._pending_slots: dict[str, tuple[Any, ...]] = {}  # slot -> its latest remember() not yet applied
        self._readers: list[sqlite3.Connection] = []  # idle read connections to the index
        self._reader_count = 0  # read connections open, idle or in use by one thread
        self._reader_free = threading.Condition(threading.Lock())  # guards both; notified as one is given back
        self._inline: bool | None = None  # whether small entries go to the index; None: not known yet
        self._index_tried = threading.Event()  # the background thread tried to open the index

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r}, max_bytes={self.max_bytes})"

    def _path(self, key: str) -> str:
        name = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
        return os.path.join(self._entries, name[:2], name)

    # -- reading ----------------------------------------------------------------------------------
    def read(self, key: str) -> Entry | None:
        """The entry stored under ``key``; None if there is none, it has expired or it cannot be read.

        Never raises. A hit counts as a use for the least-recently-used order.
        """
        data = self._inline_data(key)
        if data is not None:
            return self._inline_entry(key, data)
        try:
            with open(self._path(key), "rb") as file:
                found = _load(file, key, time.time())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (_Unreadable, OSError) as exc:  # not a valid entry, a directory in the way, an I/O error
            self._warn_unreadable(key, exc)
            return None
        if found is None:
            return None
        header, size, meta, value = found
        self._note(("file use", key, header.task, size, header.created, header.expires, self._clock()), wait=False)
        return Entry(value, header.task, header.created, header.expires, meta)

    def _inline_data(self, key: str) -> bytes | None:
        """The inline entry of ``key``: pending, else in the index; None if it is a file (or there is none)."""
        pending = self._pending.get(key)
        return self._lookup(_SELECT_INLINE, key) if pending is None else pending.data

    def _inline_entry(self, key: str, data: bytes) -> Entry | None:
        try:
            found = _decode(data, key, time.time())
        except _Unreadable as exc:
            self._warn_unreadable(key, exc)
            return None
        if found is None:
            return None
        header, meta, value = found
        self._note(("inline use", key, self._clock()), wait=False)
        return Entry(value, header.task, header.created, header.expires, meta)

    def _lookup(self, query: str, key: str) -> Any:
        """The value ``query`` selects for ``key`` in the index; None if it selects no row (or there is no
        index to read)."""
        db = self._take_reader()
        try:
            for _attempt in (1, 2):
                try:
                    if db is None:
                        db = sqlite3.connect(self._index_uri, uri=True, isolation_level=None, check_same_thread=False)
                    rows = db.execute(query, (key,)).fetchall()
                    return rows[0][0] if rows else None
                except sqlite3.Error as exc:  # no index (yet), or a broken one: connect again next time
                    if db is not None:
                        db.close()
                        db = None
                    if not self._read_only_index(exc):
                        return None
            return None
        finally:
            self._give_back(db)

    def _take_reader(self) -> sqlite3.Connection | None:
        """An idle read connection, or None to open one; waits while ``_READERS`` are in use.

        A pool, not a connection per thread: each holds two file descriptors, and a thread
        runner may have a thousand threads.
        """
        with self._reader_free:
            while not self._readers and self._reader_count >= _READERS:
                self._reader_free.wait()
            if self._readers:
                return self._readers.pop()
            self._reader_count += 1
            return None

    def _give_back(self, db: sqlite3.Connection | None) -> None:
        """Return a connection from :meth:`_take_reader` (None if it was closed) to the pool."""
        with self._reader_free:
            if db is None:
                self._reader_count -= 1
            else:
                self._readers.append(db)
            self._reader_free.notify()

    def _read_only_index(self, exc: sqlite3.Error) -> bool:
        """Whether the index could not be read because its folder is read-only; if so, read it as immutable.

        SQLite reads a database in WAL mode only beside its ``-shm`` file, which a
        read-only folder may lack and cannot be given; the index is then read as a
        file nobody changes (nobody who cannot write to the folder can).
        """
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if (code not in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN) or self._index_uri.endswith("&immutable=1")
                or not os.path.isfile(self.root / "index.sqlite") or os.access(self.root, os.W_OK)):
            return False
        self._index_uri = self._index_uri.replace("?mode=rw", "?mode=ro") + "&immutable=1"
        return True

    def exists(self, key: str) -> bool:
        """Whether an unexpired entry is stored under ``key`` (its header is read, its value is not)."""
        data = self._inline_data(key)
        try:
            if data is not None:
                header = _inline_header(data, key)[0]
            else:
                with open(self._path(key), "rb") as file:
                    header = _read_header(file, key)[0]
        except (OSError, _Unreadable):
            return False
        return header.expires is None or header.expires >= time.time()

    def _warn_unreadable(self, key: str, reason: object) -> None:
        if key in self._warned:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned.add(key)
        logger.warning(
            "The result stored under key %r cannot be read (%s); it counts as not stored, and the "
            "next result stored under that key replaces it.", key, reason
        )

    # -- writing ----------------------------------------------------------------------------------
    def write(
        self, key: str, value: Any, *, task: str, expires: float | None = None, meta: dict[str, Any] | None = None
    ) -> int:
        """Store ``value`` under ``key`` for the task named ``task``; the bytes written.

        ``expires`` (seconds since the epoch) ends the entry's life. The value is
        pickled at once. An entry of at most ``INLINE_MAX`` bytes is queued for the
        index: this process reads it at once, others once it is committed (a few
        milliseconds; :meth:`flush` waits for it). Raises :class:`StoreError` if the
        value cannot be pickled or its file cannot be written; the entry stored
        before, if any, is then left as it was.
        """
        buffers: list[pickle.PickleBuffer] = []
        try:
            # Plain values need no by-value pickling, and pickle's C pickler costs a tenth of cloudpickle's.
            dumps = pickle.dumps if type(value) in _PLAIN and not meta else cloudpickle.dumps
            pickled = dumps((meta or {}, value), protocol=5, buffer_callback=buffers.append)
            raws = [buffer.raw() for buffer in buffers]
        except Exception as exc:
            kind = type(value)
            name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
            raise StoreError(f"the value (a {name}) cannot be pickled ({type(exc).__name__}: {exc})") from exc
        created = time.time()
        header = _HEADER.encode(
            {"key": key, "task": task, "created": created, "expires": expires,
             "pickle": len(pickled), "buffers": [raw.nbytes for raw in raws]}
        ).encode()
        prefix = _PREFIX.pack(MAGIC, VERSION, len(header)) + header
        size = len(prefix) + len(pickled) + sum(raw.nbytes for raw in raws)
        if size <= INLINE_MAX and self._inline_usable():
            item = _Write("write", key, task, size, created, expires, self._clock(), b"".join((prefix, pickled, *raws)))
            self._hold(item)
        else:
            item = _Write("write", key, task, size, created, expires, self._clock(), None)
            self._hold(item)  # before the file: from now on this process's reads skip any older inline row
            try:
                self._write_file(self._path(key), (prefix, pickled, *raws))
            except OSError as exc:
                self._let_go(item)
                raise StoreError(self._write_failure(exc)) from exc
        self._note(item)
        return size

    def _inline_usable(self) -> bool:
        """Whether small entries go to the index (the first write waits until the index was tried)."""
        usable = self._inline
        if usable is None:
            self._ensure_thread()
            while not self._index_tried.wait(_WAKE):
                self._ensure_thread()
            usable = self._inline
        return bool(usable)

    def _hold(self, item: _Write) -> None:
        """Make ``item`` the pending write of its key, once the queue has room for its bytes."""
        cost = 0 if item.data is None else item.size
        while True:
            with self._pending_lock:
                if not (cost and self._queued_bytes) or self._queued_bytes + cost <= _QUEUED_BYTES:
                    self._queued_bytes += cost
                    self._pending[item.key] = item
                    return
                self._room.wait(_WAKE)
            self._ensure_thread()  # outside the lock: close() holds the thread's lock while it waits for it

    def _let_go(self, item: _Write) -> None:
        with self._pending_lock:
            if self._pending.get(item.key) is item:
                del self._pending[item.key]

    def _write_file(self, path: str, chunks: tuple[Any, ...]) -> None:
        folder = os.path.dirname(path)
        for attempt in (1, 2):
            if folder not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(folder)
            temporary = os.path.join(folder, f".tmp-{os.getpid()}-{threading.get_ident()}-{next(self._names)}")
            try:
                with open(temporary, "xb") as file:
                    file.writelines(chunks)  # the buffers straight from memory
                if os.path.isdir(path) and not os.path.islink(path):  # something no file can replace
                    shutil.rmtree(path, ignore_errors=True)
                os.replace(temporary, path)
                return
            except FileNotFoundError:  # the folder was removed since: make it again, once
                _unlink(temporary)
                self._folders.discard(folder)
                if attempt == 2:
                    raise
            except BaseException:
                with contextlib.suppress(OSError):
                    _unlink(temporary)
                raise

    def _write_failure(self, exc: OSError) -> str:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return (f"the result store {self.root} is read-only ({exc.strerror}); make it writable "
                    f"or point NBFLOW_HOME to a writable folder")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"the disk holding the result store {self.root} is full; free some space "
                    f"or lower NBFLOW_RESULTS_MAX_MB")
        return f"writing to the result store {self.root} failed ({exc})"

    # -- locks --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold ``key`` exclusively, against other threads and other processes sharing the store."""
        with self._key_locks_guard:
            held = self._key_locks.get(key)
            if held is None:
                held = self._key_locks[key] = _KeyLock()
            held.users += 1
        try:
            with held.lock, self._file_lock(key):
                yield
        finally:
            with self._key_locks_guard:
                held.users -= 1
                if not held.users:
                    del self._key_locks[key]

    @contextlib.contextmanager
    def _file_lock(self, key: str) -> Iterator[None]:
        name = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
        try:
            os.makedirs(self._locks, exist_ok=True)
            fd = os.open(os.path.join(self._locks, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only store: other threads are still kept out
            if not self._lock_warned:
                self._lock_warned = True
                logger.warning(
                    "The result store %s cannot hold a lock for other processes (%s); only this "
                    "process's threads wait for each other.", self.root, exc
                )
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held.add(fd)
            yield
        finally:
            self._held.discard(fd)
            os.close(fd)  # releases the lock

    # -- remembered key parts -------------------------------------------------------------------------
    def remember(self, slot: str, parts: dict[str, str]) -> None:
        """Keep ``parts`` (label -> digest) as the last key parts of ``slot``, for :meth:`recall`."""
        item = ("slot", slot, json.dumps(parts), self._clock())
        with self._pending_lock:
            self._pending_slots[slot] = item
        self._note(item)

    def recall(self, slot: str) -> dict[str, str] | None:
        """The parts last remembered for ``slot`` (in this process or another), or None."""
        item = self._pending_slots.get(slot)
        raw = self._lookup(_SELECT_SLOT, slot) if item is None else item[2]
        try:
            parts = None if raw is None else json.loads(raw)
        except (ValueError, TypeError):  # only an explanation is lost
            return None
        return parts if isinstance(parts, dict) else None

    # -- the whole store ------------------------------------------------------------------------------
    def summary(self) -> list[TaskSummary]:
        """Per task (by name): its entries, their bytes and when one was last used."""

        def summary(index: _Index | None) -> list[TaskSummary]:
            rows = self._index_of(index).db.execute(
                "SELECT task, count(*), total(bytes), max(last_used) FROM entries GROUP BY task ORDER BY task"
            )
            return [TaskSummary(name, entries, int(size), used) for name, entries, size, used in rows]

        return self._call(summary)

    def total_bytes(self) -> int:
        """The bytes of all entries."""
        return self._call(lambda index: self._index_of(index).total())

    def clear(self, task: str | None = None) -> int:
        """Remove every entry (of the task named ``task``); the number removed."""

        def clear(index: _Index | None) -> int:
            index = self._index_of(index)
            if task is not None:

                def forget() -> int:
                    keys = [(row[0],) for row in index.db.execute("SELECT key FROM entries WHERE task = ?", (task,))]
                    for (key,) in keys:
                        _unlink(self._path(key))
                    index.db.executemany("DELETE FROM inline WHERE key = ?", keys)
                    index.db.executemany("DELETE FROM entries WHERE key = ?", keys)
                    return len(keys)

                return index.transaction(forget)

            def forget_all() -> int:
                removed = index.db.execute("SELECT count(*) FROM inline").fetchone()[0]
                for folder in _folders(self._entries):
                    for name in os.listdir(folder):
                        if not name.startswith("."):  # a temporary file is another writer's
                            _unlink(os.path.join(folder, name))
                            removed += 1
                index.db.execute("DELETE FROM inline")
                index.db.execute("DELETE FROM entries")
                return removed

            return index.transaction(forget_all)

        return self._call(clear)

    def _index_of(self, index: _Index | None) -> _Index:
        if index is None:
            raise StoreError(f"the index of the result store {self.root} cannot be opened ({self._problem})")
        return index

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written, read and remembered before this call is applied to the index.

        Small entries are then in the index, seen by every process (or, where the
        index cannot take them, in files). False if ``timeout`` seconds passed first.
        """
        return self._submit(lambda index: None, timeout) is not None

    def close(self) -> None:
        """Flush, then stop the background thread and close the idle read connections (the next use
        opens them again)."""
        with self._reader_free:
            readers, self._readers = self._readers, []
            self._reader_count -= len(readers)
        for db in readers:
            db.close()
        with self._thread_lock:
            thread = self._thread
            if thread is None:
                return
            self._queue.put(None)
            thread.join()
            self._thread = None

    # -- the background thread ------------------------------------------------------------------------
    def _note(self, item: tuple[Any, ...], *, wait: bool = True) -> None:
        """Queue an item for the background thread; a use is dropped rather than waited for."""
        if wait:
            self._queue.put(item)
        else:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                return
        self._ensure_thread()  # after the put: a thread that goes idle first sees the item

    def _submit(self, work: Callable[[_Index | None], T], timeout: float | None) -> Future[T] | None:
        """``work(index)`` run on the background thread after what was queued before it: its future once
        done, None if ``timeout`` seconds passed first."""
        future: Future[T] = Future()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._queue.put(("call", work, future), timeout=timeout)
        except queue.Full:
            return None
        self._ensure_thread()
        while True:
            left = _WAKE if deadline is None else min(_WAKE, deadline - time.monotonic())
            try:
                future.exception(timeout=max(left, 0.0))
                return future
            except TimeoutError:  # still busy, or the thread died: it starts again
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                self._ensure_thread()

    def _call(self, work: Callable[[_Index | None], T]) -> T:
        """``work(index)`` on the background thread, after everything queued before it."""
        future = self._submit(work, None)
        assert future is not None  # no timeout
        try:
            return future.result()
        except sqlite3.Error as exc:
            raise StoreError(f"the index of the result store {self.root} failed ({exc})") from exc

    def _ensure_thread(self) -> None:
        with self._thread_lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nbflow-result-store", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        """Apply queued items in batches until close() (a None), or until idle for ``_IDLE`` seconds."""
        index = None
        try:
            index = self._open_index()
            self._inline = index is not None
        finally:
            self._index_tried.set()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=_IDLE)
                except queue.Empty:
                    if self._end_if_idle():
                        return
                    continue
                batch = self._batch(item)
                ends = batch[-1] is None  # None (from close) ends the thread after what came before it
                self._apply(index, batch[:-1] if ends else batch)
                if ends:
                    return
        finally:
            if index is not None:
                index.close()

    def _batch(self, first: tuple[Any, ...] | None) -> list[Any]:
        """``first`` and the items queued after it, up to ``_BATCH`` of them or a None.

        Uses alone wait up to ``_LINGER`` seconds for more items, so a stream of reads costs a
        transaction every few milliseconds, not one per read; anything else ends the wait at once.
        """
        batch = [first]
        lazy = first is not None and first[0] in _USES
        deadline = None
        while len(batch) < _BATCH and batch[-1] is not None:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if not lazy:
                    break
                deadline = deadline or time.monotonic() + _LINGER
                try:
                    item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    break
            batch.append(item)
            lazy = lazy and item is not None and item[0] in _USES
        return batch

    def _end_if_idle(self) -> bool:
        """Let the thread (and its database connection) go while nothing is queued."""
        if not self._thread_lock.acquire(blocking=False):  # a close() is under way: its None comes next
            return False
        try:
            if not self._queue.empty():
                return False
            self._thread = None  # the next _note starts a thread again
            return True
        finally:
            self._thread_lock.release()

    def _apply(self, index: _Index | None, batch: list[tuple[Any, ...]]) -> None:
        """Apply a batch in order: the items between calls in one transaction, each call after what precedes it."""
        work = _Work()
        for item in batch:
            if item[0] == "call":
                self._commit(index, work)
                work = _Work()
                _, call, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(call(index))
                    except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                        future.set_exception(exc)
            else:
                work.add(item)
        self._commit(index, work)

    def _commit(self, index: _Index | None, work: _Work) -> None:
        """Apply ``work`` in one transaction, let its writes go from ``pending``, then evict if over the limit."""
        if not work:
            return
        if index is None:
            self._settle(work, None)
            return
        try:
            outcome = index.transaction(lambda: self._record(index, work))
        except (sqlite3.Error, OSError) as exc:  # the files are the truth: the index catches up on later uses
            logger.warning(
                "The index of the result store %s could not be updated (%s); small results are written "
                "as files until it can be.", self.root, exc
            )
            self._inline = False
            self._settle(work, None)
            return
        self._inline = True
        self._settle(work, outcome)
        newest = work.newest
        if newest is None:
            return
        try:
            if index.total() > self.max_bytes:
                index.transaction(lambda: self._evict(index, newest))
        except (sqlite3.Error, OSError) as exc:
            logger.warning("The index of the result store %s could not be updated (%s).", self.root, exc)

    def _record(self, index: _Index, work: _Work) -> _Outcome:
        """Write ``work`` to the index (a write that finds a newer entry there leaves it as it is)."""
        db = index.db
        outcome = _Outcome(set(), set())
        for write in work.writes.values():
            if db.execute(_UPSERT_ENTRY, write[1:7]).rowcount:
                outcome.applied.add(write.key)
                if write.data is not None:
                    db.execute("INSERT OR REPLACE INTO inline VALUES (?, ?)", (write.key, write.data))
                else:
                    db.execute("DELETE FROM inline WHERE key = ?", (write.key,))
            elif write.data is None and db.execute(_SELECT_INLINE, (write.key,)).fetchall():
                outcome.beaten.add(write.key)
        uses = work.uses.values()
        db.executemany(_NOTE_FILE_USE, (use[1:] for use in uses if use[0] == "file use"))
        db.executemany(_NOTE_INLINE_USE, ((use[2], use[1]) for use in uses if use[0] == "inline use"))
        if work.slots:
            db.executemany(_UPSERT_SLOT, work.slots.values())
            self._slot_writes += len(work.slots)
            if self._slot_writes >= max(1, self.max_slots // 100):  # so the cap is exceeded by 1% at most
                self._slot_writes = 0
                db.execute(
                    "DELETE FROM slots WHERE slot IN "
                    "(SELECT slot FROM slots ORDER BY used DESC LIMIT -1 OFFSET ?)", (self.max_slots,)
                )
        return outcome

    def _settle(self, work: _Work, outcome: _Outcome | None) -> None:
        """Let applied writes and slots go from ``pending`` (unless written again since) and free their bytes.

        ``outcome`` is None if the index was not updated. Under the pending lock, so no write of
        the same key in this process runs meanwhile.
        """
        if not (work.written or work.remembered):
            return
        with self._pending_lock:
            for item in work.remembered:
                if self._pending_slots.get(item[1]) is item:
                    del self._pending_slots[item[1]]
            for write in work.written:
                if self._pending.get(write.key) is write:  # no later write of the key is queued
                    del self._pending[write.key]
                    self._tidy_files(work.writes[write.key], outcome)  # the batch's newest write of the key
                if write.data is not None:
                    self._queued_bytes -= write.size
            self._room.notify_all()

    def _tidy_files(self, write: _Write, outcome: _Outcome | None) -> None:
        """Keep the entry files in step with what the index made of ``write``: one live entry per key."""
        path = self._path(write.key)
        if outcome is None:  # the index did not take it: a small entry becomes a file
            if write.data is not None:
                try:
                    self._write_file(path, (write.data,))
                except OSError as exc:
                    logger.warning("The result under key %r was not stored: %s.", write.key, self._write_failure(exc))
            return
        if write.key in outcome.beaten:  # a newer inline entry won (another process's): this write's file goes
            drop = _created_of(path, write.key) == write.created
        elif write.data is not None and write.key in outcome.applied:  # it replaces an older file, never a newer
            on_disk = _created_of(path, write.key)  # most often no file: one failed open, no unlink
            drop = on_disk != _NO_FILE and (on_disk is None or on_disk <= write.created)
        else:
            return
        if drop:
            with contextlib.suppress(OSError):  # e.g. a directory in the way: reads look in the index first
                _unlink(path)

    def _evict(self, index: _Index, newest: str) -> None:
        """Remove least recently used entries, never ``newest``, until the total fits ``max_bytes``."""
        total = index.total()
        gone = []
        rows = index.db.execute("SELECT key, bytes, created FROM entries ORDER BY last_used")
        for key, size, created in rows:
            if total <= self.max_bytes:
                break
            if key == newest:
                continue
            path = self._path(key)
            on_disk = _created_of(path, key)
            if on_disk is not None and on_disk > created:  # (_NO_FILE is never later)
                continue  # rewritten since it was indexed: it is not the entry this row describes
            _unlink(path)
            gone.append((key,))
            total -= size
        rows.close()
        index.db.executemany("DELETE FROM inline WHERE key = ?", gone)
        index.db.executemany("DELETE FROM entries WHERE key = ?", gone)

    def _open_index(self) -> _Index | None:
        path = self.root / "index.sqlite"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                index = _Index(path)
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as exc:  # not a database, malformed, another schema
                logger.warning(
                    "The index of the result store %s is corrupt (%s); it is set aside as %s and "
                    "rebuilt from the stored entries.", self.root, exc, path.name + ".corrupt"
                )
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(str(path) + suffix)
                os.replace(path, str(path) + ".corrupt")
                index = _Index(path)
            if index.new:
                index.transaction(lambda: self._rebuild(index))
            return index
        except (OSError, sqlite3.Error) as exc:
            self._problem = str(exc)
            logger.warning(
                "The index of the result store %s cannot be opened (%s): stored results stay readable and "
                "small ones are written as files, but their sizes are not tracked and the size limit is "
                "not enforced.", self.root, exc
            )
            return None

    def _rebuild(self, index: _Index) -> None:
        """Index the entry files that have no row (and remove temporary files left by crashes)."""
        rows = []
        stale = time.time() - _STALE_TEMP
        for folder in _folders(self._entries):
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                if name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        if os.stat(path).st_mtime < stale:
                            os.unlink(path)
                    continue
                row = _row_of(path)
                if row is not None:
                    rows.append(row)
        index.db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?)", rows)


def _folders(entries: str) -> list[str]:
    try:
        return [entry.path for entry in os.scandir(entries) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _row_of(path: str) -> tuple[Any, ...] | None:
    """An index row for the entry file at ``path``, None if it does not parse."""
    try:
        with open(path, "rb") as file:
            header = _read_header(file, None)[0]
            size = os.fstat(file.fileno()).st_size
    except (OSError, _Unreadable):
        return None
    return (header.key, header.task, size, header.created, header.expires, header.created)


def _close_all() -> None:
    for store in list(_open_stores):
        store.close()


def _after_fork() -> None:
    for store in list(_open_stores):
        # The child shares the parent's locked files: it closes its copies, or the parent's locks
        # would last as long as the child. Its copies of the parent's SQLite connections are never
        # used or closed (SQLite forbids both). Its threads, queue, pending entries and locks start afresh.
        for fd in store._held:
            with contextlib.suppress(OSError):
                os.close(fd)
        _inherited.append(store._readers)
        store._process_local_state()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork)

__all__ = ["INLINE_MAX", "Entry", "ResultStore", "StoreError", "TaskSummary"]
