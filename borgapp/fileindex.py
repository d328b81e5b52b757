"""The file index (issue 16): every archive's entries, read from borg once, stored so that
consecutive archives of a backup set share what they hold alike.

- A path is stored once, as a name (IndexName, each distinct name once) in its folder
  (IndexNode), whatever archive or repository holds it.
- The archives of one backup set (IndexChain: a repository, the host that made them and the
  set's prefix) are numbered in the order they are indexed (`seq`). A version of an entry
  (IndexVersion: type, mode, owner, size, time, link) is stored once with the run of
  archives `first`..`last` that hold it alike; `last` is None while the chain's newest
  archive holds it. A new archive costs rows in proportion to what changed.
- An archive is read with `borg list --json-lines`, streamed: batches of BATCH entries, the
  folders met recently and the names looked up recently in bounded caches, and the entries
  seen in a temporary table, so memory stays flat whatever the archive's size. Each batch
  commits on its own (a listing of millions of entries never holds the database's write
  lock for long); until the archive's IndexedArchive row is written at the end, what was
  written is invisible, and a run that stopped midway is undone by the next (`_recover`).
"""

import json
import stat
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Exists, OuterRef

from borgapp import naming
from borgapp.errors import OperationError
from borgapp.models import (
    Archive,
    IndexChain,
    IndexedArchive,
    IndexName,
    IndexNode,
    IndexVersion,
)

BATCH = 5000
CACHE = 20_000  # folders and names kept in memory (each cache)
EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
ATTRS = ("type", "mode", "user", "group", "size", "mtime", "target", "healthy")
PERMS = "rwxrwxrwx"
SPECIAL = {2: (stat.S_ISUID, "sS"), 5: (stat.S_ISGID, "sS"), 8: (stat.S_ISVTX, "tT")}


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


class Bounded(OrderedDict):
    """A dict that forgets the least recently used keys past `limit`."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.limit:
            self.popitem(last=False)


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


class Indexer:
    """Fed the lines of `borg list --json-lines` of one archive (call it per line, then
    `finish()`); writes the archive's share of the index."""

    def __init__(self, archive: Archive, progress=None):
        self.archive, self.progress = archive, progress
        self.chain = _chain_for(archive)
        _recover(self.chain)
        self.prev = self.chain.last_seq
        self.seq = self.prev + 1
        self.names = Bounded(CACHE)
        self.folders = Bounded(CACHE)
        self.pending: list[tuple] = []
        self.count = self.changed = 0
        self.started = time.monotonic()
        self.seen = f"opscenter_seen_{uuid.uuid4().hex[:12]}"
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TEMPORARY TABLE {self.seen} (node bigint PRIMARY KEY)")

    def __call__(self, raw: bytes) -> None:
        line = raw.strip()
        if not line:
            return
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise OperationError("borg printed a line that is not JSON.") from None
        path = str(data.get("path", "")).strip("/")
        if not path:
            return
        kind = str(data.get("type") or "?")[:1]
        attrs = (
            kind,
            mode_bits(str(data.get("mode") or "")),
            str(data.get("user") or data.get("uid") or "")[:64],
            str(data.get("group") or data.get("gid") or "")[:64],
            data.get("size"),
            micros(data.get("mtime")),
            str(data.get("linktarget") or data.get("source") or ""),
            bool(data.get("healthy", True)),
        )
        self.pending.append((path, attrs))
        if len(self.pending) >= BATCH:
            self.flush()

    # --- names and folders -------------------------------------------------------------

    def name_ids(self, names: set[str]) -> dict[str, int]:
        found = {name: self.names.get(name) for name in names}
        missing = [name for name, pk in found.items() if pk is None]
        if missing:
            table = _table(IndexName)
            with connection.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {table} (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
                    [(name,) for name in missing],
                )
            for pk, name in IndexName.objects.filter(name__in=missing).values_list("pk", "name"):
                found[name] = pk
                self.names.put(name, pk)
        return found

    def folder(self, path: str) -> int | None:
        """The node of a folder path ('' : the top), made if new."""
        if not path:
            return None
        pk = self.folders.get(path)
        if pk is None:
            parent_path, _, name = path.rpartition("/")
            key = (self.folder(parent_path), self.name_ids({name})[name])
            pk = self.nodes({key})[key]
            self.folders.put(path, pk)
        return pk

    def nodes(self, wanted: set[tuple]) -> dict[tuple, int]:
        """Node ids of (parent, name id) pairs, made where missing."""
        found = self._select_nodes(wanted)
        missing = wanted - found.keys()
        if missing:
            table = _table(IndexNode)
            with connection.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {table} (parent_id, name_id) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    list(missing),
                )
            found.update(self._select_nodes(missing))
        return found

    def _select_nodes(self, wanted: set[tuple]) -> dict[tuple, int]:
        found = {}
        parents = {parent for parent, _ in wanted if parent is not None}
        names = {name for _, name in wanted}
        rows = []
        if parents:
            rows += IndexNode.objects.filter(parent_id__in=parents, name_id__in=names)\
                .values_list("pk", "parent_id", "name_id")  # fmt: skip
        if any(parent is None for parent, _ in wanted):
            rows += IndexNode.objects.filter(parent=None, name_id__in=names)\
                .values_list("pk", "parent_id", "name_id")  # fmt: skip
        for pk, parent, name in rows:
            if (parent, name) in wanted:
                found[(parent, name)] = pk
        return found

    # --- one batch ----------------------------------------------------------------------

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        split = [path.rpartition("/") for path, _ in batch]
        parents = [self.folder(folder) for folder, _, _ in split]
        names = self.name_ids({name for _, _, name in split})
        keys = [(parent, names[name]) for parent, (_, _, name) in zip(parents, split, strict=True)]
        node_ids = self.nodes(set(keys))
        nodes = [node_ids[key] for key in keys]
        for (path, attrs), node in zip(batch, nodes, strict=True):
            if attrs[0] == "d":
                self.folders.put(path, node)
        with transaction.atomic():
            self._write(nodes, [attrs for _, attrs in batch])
        self.count += len(batch)
        if self.progress is not None:
            self.progress.fields["progress_files"] = self.count
            self.progress.flush()

    def _write(self, nodes: list[int], attrs: list[tuple]) -> None:
        versions = _table(IndexVersion)
        open_now = {}
        if self.prev:
            rows = IndexVersion.objects.filter(
                chain=self.chain, last=None, node_id__in=set(nodes)
            ).values_list("pk", "node_id", *ATTRS)
            open_now = {row[1]: (row[0], tuple(row[2:])) for row in rows}
        close, insert = [], []
        for node, values in zip(nodes, attrs, strict=True):
            current = open_now.get(node)
            if current is not None and current[1] == values:
                continue  # the same as in the previous archive: nothing to write
            if current is not None:
                close.append(current[0])
            insert.append((node, self.chain.pk, self.seq, *values))
        with connection.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {self.seen} (node) VALUES (%s) ON CONFLICT DO NOTHING",
                               [(node,) for node in nodes])  # fmt: skip
            if close:
                IndexVersion.objects.filter(pk__in=close).update(last=self.prev)
            if insert:
                columns = ", ".join(connection.ops.quote_name(c) for c in ATTRS)
                marks = ", ".join(["%s"] * (3 + len(ATTRS)))
                cursor.executemany(
                    f"INSERT INTO {versions} (node_id, chain_id, {_q('first')}, {columns}) "
                    f"VALUES ({marks})",
                    insert,
                )
        self.changed += len(insert)

    def finish(self) -> IndexedArchive:
        """After borg's last line: close what the previous archive held and this one does
        not, then make the archive visible in the index."""
        self.flush()
        versions = _table(IndexVersion)
        with transaction.atomic():
            with connection.cursor() as cursor:
                if self.prev:
                    cursor.execute(
                        f"UPDATE {versions} SET {_q('last')} = %s WHERE chain_id = %s AND "
                        f"{_q('last')} IS NULL AND {_q('first')} <= %s AND NOT EXISTS "
                        f"(SELECT 1 FROM {self.seen} s WHERE s.node = {versions}.node_id)",
                        [self.prev, self.chain.pk, self.prev],
                    )
                    self.changed += cursor.rowcount
                cursor.execute(f"DROP TABLE {self.seen}")
            done = IndexedArchive.objects.create(
                archive=self.archive, chain=self.chain, seq=self.seq,
                borg_id=self.archive.borg_id, entries=self.count, changed=self.changed,
                seconds=round(time.monotonic() - self.started, 3),
            )  # fmt: skip
            IndexChain.objects.filter(pk=self.chain.pk).update(last_seq=self.seq)
        return done

    def abandon(self) -> None:
        """After a failure: the temporary table goes; what was written stays invisible and
        is undone by the next run (`_recover`)."""
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self.seen}")


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


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
    every version the last archive holds is open)."""
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
        _drop_unused_nodes()
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


def _drop_unused_nodes() -> None:
    """Paths no version uses, leaves first (a folder is kept while anything is in it)."""
    nodes, versions = _table(IndexNode), _table(IndexVersion)
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                f"DELETE FROM {nodes} WHERE NOT EXISTS (SELECT 1 FROM {versions} v WHERE "
                f"v.node_id = {nodes}.id) AND NOT EXISTS (SELECT 1 FROM {nodes} c WHERE "
                f"c.parent_id = {nodes}.id)"
            )
            if not cursor.rowcount:
                break


def index_archive(ctx, archive: Archive, list_command) -> IndexedArchive:
    """Read the archive's entries from borg (`ctx.borg(list_command, on_line=...)`) into
    the index, once: an archive already indexed is left as it is."""
    found = IndexedArchive.objects.filter(archive=archive).first()
    if found is not None:
        if found.borg_id == archive.borg_id:
            return found
        found.delete()  # a name used again by another archive
    indexer = Indexer(archive, ctx.progress)
    try:
        ctx.borg(list_command, on_line=indexer)
        done = indexer.finish()
    except BaseException:
        indexer.abandon()
        raise
    return done
