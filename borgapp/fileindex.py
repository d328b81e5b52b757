"""The file index (issue 16): every archive's entries, read from borg once, stored so that
consecutive archives of a backup set share what they hold alike.

- A path is stored once, as a number with its name among its folder's (IndexSpan,
  borgapp.filenames), whatever archive or repository holds it.
- The archives of one backup set (IndexChain: a repository, the host that made them and the
  set's prefix) are numbered in the order they are indexed (`seq`). A version of an entry
  (IndexVersion: type, mode, owner, size, time, link) is stored once with the run of
  archives `first`..`last` that hold it alike; `last` is None while the chain's newest
  archive holds it. A new archive costs rows in proportion to what changed.
- An archive is read as `borg list --format` writes it (NUL-separated fields,
  borg.index_list_cmd), by borgapp.itemlist (borg's own code, the same bytes in a quarter
  of the time), streamed: batches of BATCH entries through a bounded queue, the folders
  and names met recently in bounded caches, the paths seen as a bitmap, so memory stays
  flat whatever the archive's size. Each batch commits on its own (a listing of millions
  of entries never holds the database's write lock for long); until the archive's
  IndexedArchive row is written at the end, what was written is invisible, and a run
  that stopped midway is undone by the next (`_recover`).
"""

import contextlib
import fcntl
import functools
import gc
import hashlib
import operator
import os
import queue
import stat
import threading
import time
from datetime import UTC, datetime, timedelta

from django.db import OperationalError, connection, transaction
from django.db.models import Exists, OuterRef

from borgapp import borg, filenames, fileprints, naming
from borgapp.errors import OperationError
from borgapp.filenames import chunks
from borgapp.models import Archive, IndexChain, IndexedArchive, IndexOwner, IndexVersion

# entries per transaction: each commit writes the pages it dirtied, so fewer, larger commits
# write less (1,000,000 entries, when names were stored by their hash: 44 s in batches of
# 5,000, 37 s of 20,000, 36 s of 50,000; borg's listing alone 30 s)
BATCH = 20_000
QUEUED_BATCHES = 2  # parsed batches waiting to be stored, at most
PIPE_BYTES = 1 << 20  # borg's listing held in the pipe at most (`_widen`)
READ_BYTES = 1 << 20  # read from the pipe at once
CACHE_MIB = 64  # SQLite's page cache while indexing
TOPS_MAX = 1000  # more items without a stored folder than this: not a list of sources
CACHE = 20_000  # folder paths kept in memory with their numbers
KIDS = 2_000  # folders kept in memory with the names in them
KIDS_NAMES = 300_000  # names in those folders at most (then they are forgotten together)
DEADLOCK_TRIES = 5  # a batch stored again after PostgreSQL stopped it in a deadlock
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
ATTRS = ("type", "mode", "owner_id", "size", "mtime", "target", "healthy", "content")
COLUMNS = ", ".join(f'"{name}"' for name in ATTRS)
OWNER = 2  # the place of the owner in ATTRS: parsed as (user, group), stored as its id
PERMS = "rwxrwxrwx"
SPECIAL = {2: (stat.S_ISUID, "sS"), 5: (stat.S_ISGID, "sS"), 8: (stat.S_ISVTX, "tT")}


@functools.lru_cache(maxsize=4096)  # a listing repeats a few modes a million times
def mode_bits(text: str) -> int:
    """borg's `-rwxr-sr-x` as permission bits (0o2755)."""
    bits = 0
    for index, char in enumerate(text[1:10]):
        bit = 1 << (8 - index)
        special = SPECIAL.get(index)
        if special and char in special[1]:
            bits |= special[0]
            if char == special[1][0]:
                bits |= bit
        elif char != "-":
            bits |= bit
    return bits


def mode_text(kind: str, bits: int) -> str:
    """The other way: type character and permission bits as `ls -l` shows them."""
    chars = []
    for index in range(9):
        bit = 1 << (8 - index)
        char = PERMS[index] if bits & bit else "-"
        special = SPECIAL.get(index)
        if special and bits & special[0]:
            char = special[1][0] if bits & bit else special[1][1]
        chars.append(char)
    return (kind or "?") + "".join(chars)


def micros(value) -> int | None:
    """A time borg printed (ISO, UTC: borg runs with TZ=UTC) as microseconds since 1970."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return (moment - EPOCH) // MICROSECOND


def moment(value: int | None) -> datetime | None:
    return None if value is None else (EPOCH + value * MICROSECOND).replace(tzinfo=UTC)


def chain_key(archive: Archive) -> str:
    """The backup set an archive continues: the host that made it and its set's prefix (an
    archive named otherwise is a set of its own name)."""
    return f"{archive.hostname}:{naming.set_of(archive.name) or archive.name}"[:255]


class Bounded:
    """A cache that holds at least the `limit` keys put or met last, at most twice as many:
    two generations of plain dicts, the older dropped whole when the newer is full (a
    million lookups cost a dict's, not an LRU's bookkeeping per key)."""

    def __init__(self, limit: int):
        self.limit, self.new, self.old = limit, {}, {}

    def get(self, key, default=None):
        found = self.new.get(key)
        if found is None:
            found = self.old.get(key)
            if found is None:
                return default
            self.put(key, found)  # met again: kept with the newer generation
        return found

    def put(self, key, value) -> None:
        self.new[key] = value
        if len(self.new) >= self.limit:
            self.old, self.new = self.new, {}


def sql_name(name: str) -> str:
    """A column's (or a table's) name quoted for this database's SQL."""
    return connection.ops.quote_name(name)


def sql_table(model) -> str:
    return sql_name(model._meta.db_table)


def prints_id(indexed: IndexedArchive) -> str:
    """Which indexing of which archive a chain's prints were written for: the same archive
    indexed again, in this database or a new one (whose nodes are others), has another."""
    made = f"{indexed.borg_id}:{indexed.pk}:{indexed.indexed_at.isoformat()}"
    return hashlib.sha256(made.encode()).hexdigest()


class Stale(Exception):
    """Paths a job held in memory were dropped meanwhile (Indexer._store_once)."""


class Stopped(Exception):
    """Storing stopped early: a cancel, or another job of the repository waits."""


class Indexer:
    """Fed the items of one archive in batches (`write(batch)`, each a `Batch`, then
    `finish()`); writes the archive's share of the index."""

    def __init__(self, archive: Archive, progress=None):
        self.archive, self.progress = archive, progress
        self.chain = _chain_for(archive)
        _recover(self.chain)
        self.prev = self.chain.last_seq
        self.seq = self.prev + 1
        self.owners = Bounded(1000)
        self.folders = Bounded(CACHE)  # folder path -> number
        self.kids = Bounded(KIDS)  # folder number -> {name: number}
        self.kids_names = 0  # names loaded into it (about)
        self.known = None  # spans from this number on are not in the caches yet
        self.unchecked: set[int] = set()  # numbers taken from the caches in this batch
        self.count = self.changed = self.matched = self.reused = 0
        self.prints: fileprints.Writer | None = None  # this archive's, for the next one
        self.seen = bytearray()  # one bit per node id met in this archive
        if connection.vendor == "sqlite":
            # the trigram index takes inserts all over: a page cache of CACHE_MIB instead
            # of SQLite's 2 MiB keeps them off the disk (bounded)
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA cache_size = -{CACHE_MIB * 1024}")
        self.open: list[bytes] = []  # the stored folders holding the current item, each + "/"
        self.tops: list[str] = []
        self.started = time.monotonic()

    # --- names and folders -------------------------------------------------------------

    def owner_id(self, pair: tuple[str, str]) -> int:
        pk = self.owners.get(pair)
        if pk is None:
            pk = IndexOwner.objects.get_or_create(user=pair[0], group=pair[1])[0].pk
            self.owners.put(pair, pk)
        return pk

    def resolve_folders(self, paths: set[str]) -> dict[str, int]:
        """The numbers of folder paths ('' : the top, 0), made where new: every folder not
        in the cache and its uncached ancestors, a level at a time."""
        known: dict[str, int] = {"": 0}
        needed = set()
        for path in paths:
            while path and path not in known and path not in needed:
                cached = self.folders.get(path)
                if cached is not None:
                    known[path] = cached
                    self.unchecked.add(cached)
                    break
                needed.add(path)
                path = path.rpartition("/")[0]
        for depth in sorted({path.count("/") for path in needed}):
            level = [path for path in needed if path.count("/") == depth]
            split = [path.rpartition("/") for path in level]
            nums = self.numbers({(known[parent], name) for parent, _, name in split})
            for path, (parent, _, name) in zip(level, split, strict=True):
                known[path] = nums[(known[parent], name)]
                self.folders.put(path, known[path])
        return {path: known[path] for path in paths}

    def numbers(self, wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
        """The numbers of (folder number, name) pairs, given where new (in this batch's
        transaction, under filenames.lock)."""
        if self.known is not None:  # what other jobs added since, into the folders cached
            for start, folder, _, blob in filenames.spans_since(self.known):
                kids = self.kids.get(folder)
                if kids is not None:
                    for place, name in enumerate(filenames.unpack(blob)):
                        kids.setdefault(name, start + place)
        self.known = filenames.next_number()
        wanted_in = filenames.group_by_folder(wanted)
        maps = {folder: self.kids.get(folder) for folder in wanted_in}
        loaded = [folder for folder, kids in maps.items() if kids is None]
        if loaded:
            maps.update(filenames.children(loaded))
        if loaded:
            self.kids_names += sum(len(maps[folder]) for folder in loaded)
            if self.kids_names > KIDS_NAMES:  # memory stays bounded in folders of millions
                self.kids, self.kids_names = Bounded(KIDS), 0
        found, new = {}, {}
        for folder, names in wanted_in.items():
            kids = maps[folder]
            self.kids.put(folder, kids)
            for name in names:
                num = kids.get(name)
                if num is None:
                    new.setdefault(folder, []).append(name)
                else:
                    found[(folder, name)] = num
                    if folder not in loaded:
                        self.unchecked.add(num)
        if new:
            made = filenames.add(new)
            for (folder, name), num in made.items():
                maps[folder][name] = num
            found.update(made)
            self.known = filenames.next_number()
        return found

    # --- one batch ----------------------------------------------------------------------

    def write(self, batch: "Batch") -> None:
        """One batch of records: those equal to one of the previous archive's (a node given,
        borgapp.fileprints) are versions the chain holds open already; the others are
        stored in one transaction: their new paths and versions commit together, so another
        repository's index job dropping unused paths (`collect_garbage`) never sees a path
        of this batch without its version. Then each record is noted in listing order: the
        tops, the folders met, the nodes seen, this archive's prints."""
        todo = [place for place, node in enumerate(batch.nodes) if node is None]  # not met before
        if todo:
            # the records met by the prints count as seen first: a path borg listed twice,
            # met once by the prints and once among the new, then keeps one version
            self._mark_seen([node for node in batch.nodes if node is not None])
            stored = self._store([batch.parsed[place] for place in todo])
            for place, node in zip(todo, stored, strict=True):
                batch.nodes[place] = node
        stack, seen, folders, tops = self.open, self.seen, self.folders, self.tops
        for path, mode, node in zip(batch.paths, batch.modes, batch.nodes, strict=True):
            # borg lists a folder before what it holds: the open folders are a stack (each
            # as its path and a slash), and an item whose folder is not on top of it is a
            # top (its folder was not stored)
            while stack and not path.startswith(stack[-1]):
                stack.pop()
            if b"/" in path and (not stack or path.find(b"/", len(stack[-1])) != -1):
                if len(tops) < TOPS_MAX:
                    tops.append(path.decode("utf-8", "replace").strip("/"))
            if mode[:1] == b"d":
                stack.append(path + b"/")
                folders.put(path.decode("utf-8", "replace").strip("/"), node)
            byte = node >> 3  # seen: one bit per node id
            if byte >= len(seen):
                seen.extend(bytes(byte - len(seen) + 4096))
            seen[byte] |= 1 << (node & 7)
        if self.prints is not None:
            try:
                self.prints.add(batch.keys, batch.nodes)
            except OSError:  # a full disk, say: no prints this time, the index goes on
                self.prints.discard()
                self.prints = None
        self.matched += len(batch.nodes) - len(todo)
        self.count += len(batch.nodes)
        self.reused += len(batch.nodes) - len(todo)
        if self.progress is not None:
            self.progress.fields["progress_files"] = self.count
            self.progress.flush()

    def _store(self, batch: list[tuple]) -> list[int]:
        """The nodes of (path, attrs) pairs, with their versions, stored where new. Two
        jobs storing the same new names or paths at once can deadlock on PostgreSQL (one
        waits for a row the other inserted, and the other the same way round): the
        database stops one of them, whose batch is then stored again, forgetting what the
        rolled back transaction had put in the caches."""
        attempt = 0
        while True:
            attempt += 1
            saved = (self.changed, self.matched)
            try:
                return self._store_once(batch)
            except Stale:
                if attempt >= DEADLOCK_TRIES:
                    message = "The file index kept changing under this job; run it again."
                    raise OperationError(message, "index_busy") from None
            except OperationalError as error:
                if attempt >= DEADLOCK_TRIES or not _deadlock(error):
                    raise
            self.changed, self.matched = saved
            self.folders, self.kids, self.known = Bounded(CACHE), Bounded(KIDS), None
            time.sleep(0.05 * attempt)

    def _store_once(self, batch: list[tuple]) -> list[int]:
        split = [path.rpartition("/") for path, _ in batch]
        stored = [(*a[:OWNER], self.owner_id(a[OWNER]), *a[OWNER + 1 :]) for _, a in batch]
        with transaction.atomic():
            filenames.lock()
            self.unchecked = set()
            folders = self.resolve_folders({folder for folder, _, _ in split})
            keys = [(folders[folder], name) for folder, _, name in split]
            nums = self.numbers(set(keys))
            if filenames.missing(self.unchecked):
                # paths that this job knew were dropped since (collect_garbage, another
                # job): it forgets what it knew, and the batch is stored again
                raise Stale
            nodes = [nums[key] for key in keys]
            self._versions(nodes, stored)
        return nodes

    def _mark_seen(self, nodes: list[int]) -> None:
        seen = self.seen
        for node in nodes:
            byte = node >> 3
            if byte >= len(seen):
                seen.extend(bytes(byte - len(seen) + 4096))
            seen[byte] |= 1 << (node & 7)

    def _seen(self, node: int) -> bool:
        byte = node >> 3
        return byte < len(self.seen) and bool(self.seen[byte] & (1 << (node & 7)))

    def _versions(self, nodes: list[int], attrs: list[tuple]) -> None:
        """Versions of these nodes as this archive holds them: where equal to the one the
        chain holds open, nothing is written; else that one is closed and a new one opens.
        A node listed twice in one archive (a path borg stored twice) keeps its first."""
        versions = sql_table(IndexVersion)
        open_now = {}
        with connection.cursor() as cursor:
            if self.prev:
                for chunk in chunks(sorted(set(nodes))):
                    marks = ", ".join(["%s"] * len(chunk))
                    cursor.execute(
                        f"SELECT node_id, {COLUMNS} FROM {versions} WHERE chain_id = %s "
                        f"AND {sql_name('last')} IS NULL AND node_id IN ({marks})",
                        [self.chain.pk, *chunk],
                    )
                    for row in cursor.fetchall():
                        open_now[row[0]] = (*row[1:7], bool(row[7]), row[8])
            close, insert, identify, met = [], [], [], set()
            for node, values in zip(nodes, attrs, strict=True):
                if node in met or self._seen(node):
                    continue
                met.add(node)
                current = open_now.pop(node, None)
                if current is not None:
                    self.matched += 1
                    if same_version(current, values):
                        if current[-1] is None and values[-1] is not None:
                            identify.append((values[-1], node))  # stored without one
                        continue  # as in the previous archive: nothing else to write
                    close.append(node)
                insert.append((node, self.chain.pk, self.seq, *values))
            is_open = f"chain_id = {int(self.chain.pk)} AND {sql_name('last')} IS NULL"
            if identify:
                cursor.executemany(f"UPDATE {versions} SET content = %s WHERE {is_open} "
                                   "AND node_id = %s", identify)  # fmt: skip
            for chunk in chunks(close):
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(f"UPDATE {versions} SET {sql_name('last')} = %s "
                               f"WHERE {is_open} AND node_id IN ({marks})",
                               [self.prev, *chunk])  # fmt: skip
            insert.sort(key=operator.itemgetter(0))  # the key's order: pages filled, not split
            columns = f"node_id, chain_id, {sql_name('first')}, {COLUMNS}"
            row = "(" + ", ".join(["%s"] * (3 + len(ATTRS))) + ")"
            if connection.vendor == "sqlite":  # its executemany binds row by row in C
                cursor.executemany(f"INSERT INTO {versions} ({columns}) VALUES {row}", insert)
            elif insert:
                _copy(cursor, versions, columns, insert)
        self.changed += len(insert)

    def finish(self, prints: fileprints.Previous | None = None) -> IndexedArchive:
        """After the last batch: close what the previous archive held and this one does not
        (only looked for when the counts say something went: among the previous records
        that the prints passed over, or else among every entry), then make the archive
        visible in the index."""
        previous = IndexedArchive.objects.filter(chain=self.chain, seq=self.prev).first()
        if self.prev and (previous is None or previous.entries != self.matched):
            gone = prints.gone if prints is not None else None
            if gone is not None and previous is not None and prints.records == previous.entries:
                self.changed += self._close_gone(gone)
            else:
                self.changed += self._close_unseen()
        with transaction.atomic():
            done = IndexedArchive.objects.create(
                archive=self.archive, chain=self.chain, seq=self.seq,
                borg_id=self.archive.borg_id, entries=self.count, changed=self.changed,
                reused=self.reused,
                seconds=round(time.monotonic() - self.started, 3), tops=self.tops,
            )  # fmt: skip
            IndexChain.objects.filter(pk=self.chain.pk).update(last_seq=self.seq)
        return done

    def open_prints(self) -> fileprints.Previous | None:
        """The previous archive's records, if the chain has them for its newest archive;
        and a file for this archive's."""
        try:
            self.prints = fileprints.Writer(self.chain.pk)
        except OSError:
            self.prints = None  # no prints this time: the next archive is stored whole
        previous = IndexedArchive.objects.filter(chain=self.chain, seq=self.prev).first()
        if previous is None:
            return None
        found = fileprints.Previous(self.chain.pk, self.prev, prints_id(previous))
        return found if found.valid else None

    def close_prints(self, done: IndexedArchive | None) -> None:
        """This archive's records become the chain's prints once it is in the index."""
        if self.prints is None:
            return
        try:
            if done is None:
                self.prints.discard()
            else:
                self.prints.keep(done.seq, prints_id(done))
        except OSError:
            self.prints.discard()

    def _close_gone(self, passed) -> int:
        """Close the versions of the previous records passed over and not met since."""
        gone = sorted({node for node in passed if not self._seen(node)})
        closed = 0
        for chunk in chunks(gone):
            closed += IndexVersion.objects.filter(
                chain=self.chain, last=None, first__lte=self.prev, node_id__in=chunk
            ).update(last=self.prev)
        return closed

    def _close_unseen(self) -> int:
        open_before = IndexVersion.objects.filter(
            chain=self.chain, last=None, first__lte=self.prev
        ).values_list("node_id", flat=True)
        gone = [node for node in open_before.iterator(chunk_size=BATCH) if not self._seen(node)]
        for chunk in chunks(gone):
            IndexVersion.objects.filter(
                chain=self.chain, last=None, first__lte=self.prev, node_id__in=chunk
            ).update(last=self.prev)
        return len(gone)


def _copy(cursor, table: str, columns: str, rows: list[tuple]) -> None:
    """PostgreSQL: rows into a table by COPY (psycopg escapes each value)."""
    with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _deadlock(error: OperationalError) -> bool:
    """Whether PostgreSQL stopped the transaction to end a deadlock (SQLSTATE 40P01)."""
    return getattr(error.__cause__, "sqlstate", None) == "40P01"


def same_version(stored: tuple, listed: tuple) -> bool:
    """Two versions in ATTRS order alike. A content identity missing on either side (stored
    before the index had them, or listed by the borg binary) is not a difference: the
    stored one gets the listed one (Indexer._versions)."""
    if stored[:-1] != listed[:-1]:
        return False
    return stored[-1] is None or listed[-1] is None or stored[-1] == listed[-1]


def parse_record(record: bytes) -> tuple[str, tuple]:
    """One item of `borg.index_list_cmd` (its fields joined by NUL) as (path, attrs in
    ATTRS order). Decoded whole, once: a field cannot end inside a character's bytes, NUL
    being a character of its own. The content identity (borgapp.itemlist), where listed,
    as a signed 64-bit number."""
    mode, user, group, size, mtime, target, source, health, path, *more = record.decode(
        "utf-8", "replace"
    ).split("\0")
    kind = mode[:1] or "?"
    content = (
        int.from_bytes(bytes.fromhex(more[0]), "big", signed=True) if more and more[0] else None
    )
    # borg's `h` (a hardlink to an earlier item, named as its target) is a regular file
    return path.strip("/"), (
        "-" if kind == "h" else kind, mode_bits(mode), (user[:64], group[:64]),
        int(size) if size.isdigit() else None, micros(mtime), target or source,
        health != "broken", content,
    )  # fmt: skip


PATH = borg.INDEX_FIELDS.index("path")  # its place in a record


class Batch:
    """Records of a listing in order, column by column: each one's path and mode as borg
    wrote them, its digest, the node of the previous archive's equal record (None if there
    was none), and for the others what `parse_record` makes of them (None for the rest)."""

    def __init__(self):
        self.paths: list[bytes] = []
        self.modes: list[bytes] = []
        self.keys: list[bytes] = []
        self.nodes: list[int | None] = []
        self.parsed: list[tuple[str, tuple] | None] = []

    def add(self, parts: list[bytes], width: int, previous: fileprints.Previous | None) -> None:
        """The records of `parts`, borg's fields (`width` of them per record)."""
        records = [b"\0".join(parts[start : start + width]) for start in range(0, len(parts),
                                                                               width)]  # fmt: skip
        keys = list(map(fileprints.digest, records))
        paths, modes = parts[PATH::width], parts[0::width]
        if previous is None:  # every record new: a first archive
            nodes: list[int | None] = [None] * len(keys)
            parsed = list(map(parse_record, records))
            whole = all(map(operator.itemgetter(0), parsed))
        else:
            nodes, parsed, whole = previous.match(keys), [None] * len(keys), True
            for place in [place for place, node in enumerate(nodes) if node is None]:
                parsed[place] = found = parse_record(records[place])
                whole = whole and bool(found[0])
        if not whole:  # a record with no path to store it under: skipped
            kept = [place for place, found in enumerate(parsed) if found is None or found[0]]
            paths, modes = [paths[place] for place in kept], [modes[place] for place in kept]
            keys, nodes = [keys[place] for place in kept], [nodes[place] for place in kept]
            parsed = [parsed[place] for place in kept]
        self.paths += paths
        self.modes += modes
        self.keys += keys
        self.nodes += nodes
        self.parsed += parsed

    def __len__(self) -> int:
        return len(self.keys)


def read_records(fd: int, batches: queue.Queue, stop: threading.Event,
                 previous: fileprints.Previous | None = None,
                 width: int = len(borg.INDEX_FIELDS)) -> None:  # fmt: skip
    """Split borg's NUL-separated output into batches (`Batch`) as it arrives (a thread of
    its own, so that borg writes on while the batches are stored). A record equal to one of
    the previous archive's gets that one's node, and is not parsed. Ends with None, or with
    the exception that stopped it."""
    try:
        rest, pending, batch = b"", [], Batch()
        while not stop.is_set() and (data := os.read(fd, READ_BYTES)):
            parts = (rest + data).split(b"\0")
            rest = parts.pop()
            if pending:  # the first fields of a record the last read cut
                parts[:0] = pending
            whole = len(parts) - len(parts) % width
            pending = parts[whole:]
            batch.add(parts[:whole], width, previous)
            if len(batch) >= BATCH:
                batches.put(batch)
                batch = Batch()
        if stop.is_set():
            return
        if rest or pending:
            raise OperationError("borg's listing of the archive ended midway.", "borg_error")
        if previous is not None:
            previous.end()
        batches.put(batch)
        batches.put(None)
    except BaseException as exc:  # noqa: BLE001 (handed to the thread that stores)
        batches.put(exc)
    finally:
        os.close(fd)
        if previous is not None:
            previous.close()


def _chain_for(archive: Archive) -> IndexChain:
    """The chain the archive continues; an archive older than the chain's newest indexed
    one (made elsewhere, synced late) starts a chain of its own instead."""
    chain, _ = IndexChain.objects.get_or_create(repository=archive.repository,
                                                key=chain_key(archive))  # fmt: skip
    newest = IndexedArchive.objects.filter(chain=chain).order_by("-seq").first()
    newest_start = newest.archive.start if newest is not None else None
    if newest_start and archive.start and archive.start < newest_start:
        chain, _ = IndexChain.objects.get_or_create(
            repository=archive.repository, key=f"{chain.key}@{archive.name}"[:255]
        )
    return chain


def _recover(chain: IndexChain) -> None:
    """Undo what a run that stopped midway wrote: its new versions (after the chain's last
    archive) go, and the versions it closed at that archive are open again (before a run,
    every version the last archive holds is open). The paths it stored stay (each batch's
    with its names' trigrams: found by a search, they are left out while no version holds
    them)."""
    chain.refresh_from_db()
    IndexVersion.objects.filter(chain=chain, first__gt=chain.last_seq).delete()
    IndexVersion.objects.filter(chain=chain, last=chain.last_seq).update(last=None)


def unindexed(repository):
    """Complete archives the index does not hold (or holds for another archive of that
    name), oldest first."""
    current = IndexedArchive.objects.filter(archive=OuterRef("pk"), borg_id=OuterRef("borg_id"))
    return (
        Archive.objects.filter(repository=repository, is_checkpoint=False)
        .exclude(Exists(current))
        .order_by("start", "pk")
    )


def next_unindexed(repository) -> Archive | None:
    return unindexed(repository).first()


def is_indexed(archive: Archive) -> bool:
    found = IndexedArchive.objects.filter(archive=archive).first()
    return found is not None and found.borg_id == archive.borg_id


def collect_garbage(repository_id: int) -> int:
    """Versions that no indexed archive holds any more (their archives were deleted or
    pruned) go; so do names and paths no version uses. Returns versions removed."""
    removed = 0
    for chain in IndexChain.objects.filter(repository_id=repository_id):
        seqs = sorted(IndexedArchive.objects.filter(chain=chain).values_list("seq", flat=True))
        # a version is kept while some remaining archive lies in its [first, last]
        for low, high in _gaps(seqs, chain.last_seq):
            doomed = IndexVersion.objects.filter(chain=chain, first__gte=low)
            doomed = doomed.filter(last__lte=high) if high is not None else doomed
            removed += doomed.delete()[0]
    if removed:
        filenames.drop_unused()
    fileprints.prune(set(IndexChain.objects.values_list("pk", flat=True)))
    return removed


def _gaps(seqs: list[int], last_seq: int) -> list[tuple[int, int | None]]:
    """Runs of seq numbers that no remaining archive has: (low, high), high None when it
    runs to the chain's end."""
    gaps, expected = [], 1
    for seq in seqs:
        if seq > expected:
            gaps.append((expected, seq - 1))
        expected = seq + 1
    if expected <= last_seq:
        gaps.append((expected, None))
    return gaps


@contextlib.contextmanager
def cycles_uncollected():
    """Python's cycle collector paused: a listing is parsed into millions of tuples that
    live until their batch is stored, and each one counts towards the next collection,
    which looks at every object that lives (200,000 records read: 0.93 s, 0.61 s without
    it). The index makes no cycles of its own; what others make is collected after."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _widen(pipe: int) -> None:
    """Give the pipe from borg room for PIPE_BYTES: this process's threads take turns
    (Python's lock, held up to 5 ms at a time), and while the storing thread holds it the
    reader cannot empty the pipe; Linux's 64 KiB fill in under a millisecond, then borg
    waits. (1,025,844 entries, a later archive: 7.8 s with 64 KiB, 5.6 s with 1 MiB.)
    Where the system allows less, the pipe stays as it is."""
    try:
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass


def index_archive(ctx, archive: Archive) -> IndexedArchive:
    """Read the archive's items from borg into the index, once (an archive indexed already
    is left as it is). borg writes into a pipe that a reader thread splits into batches;
    this thread stores them, while a third runs borg (`ctx.borg`: its passphrase, cancel
    and deadline). The queue between them is bounded: a slow database slows borg down,
    memory stays flat."""
    found = IndexedArchive.objects.filter(archive=archive).first()
    if found is not None:
        if found.borg_id == archive.borg_id:
            return found
        found.delete()  # a name used again by another archive
    indexer = Indexer(archive, ctx.progress)
    previous = indexer.open_prints()
    read_end, write_end = os.pipe()
    _widen(write_end)
    command = borg.index_list_cmd(ctx.repo.location, archive.name, write_end)
    batches: queue.Queue = queue.Queue(maxsize=QUEUED_BATCHES)
    stop = threading.Event()  # the storing side failed: the reader stops, so borg does too
    width = len(borg.index_fields(command))
    reader = threading.Thread(target=read_records, daemon=True,
                              args=(read_end, batches, stop, previous, width))  # fmt: skip
    outcome: dict = {}

    def run_borg():
        try:
            outcome["result"] = ctx.borg(command)
        except BaseException as exc:  # noqa: BLE001 (raised again in the caller's thread)
            outcome["error"] = exc
        finally:
            os.close(write_end)  # the end of the listing for the reader
            connection.close()  # this thread's own database connection

    runner = threading.Thread(target=run_borg, daemon=True)
    with cycles_uncollected():  # the threads make and keep millions of small tuples
        reader.start()
        runner.start()
        failure = None
        try:
            while (batch := batches.get()) is not None:
                if isinstance(batch, BaseException):
                    raise batch
                if batch:
                    indexer.write(batch)
                if ctx.progress is not None and ctx.progress.should_stop():
                    raise Stopped("The index job was stopped (cancelled, or another job waits).")
        except BaseException as exc:  # noqa: BLE001 (raised below, once both threads ended)
            failure = exc
            stop.set()
        while runner.is_alive() or reader.is_alive():
            try:  # what the reader still hands over is dropped, so that it can end
                batches.get(timeout=0.1)
            except queue.Empty:
                pass
        runner.join()
        reader.join()
    try:
        if "error" in outcome:  # borg's own failure (or a cancel) explains a cut listing
            raise outcome["error"]
        if failure is not None:
            raise failure
        done = indexer.finish(previous)
    except BaseException:
        indexer.close_prints(None)
        raise
    indexer.close_prints(done)
    return done
