"""The paths of the file index (borgapp.fileindex), packed: each entry is a number, and the
names of a folder's entries are stored together (IndexSpan), deflated, as the run of
numbers `start`..`start + count - 1` in that folder. A folder's own number is its entry's
(0: the top). Names are added as new spans, never rewritten: a number keeps its path.

A name search asks a trigram index of the names by number: SQLite's FTS5, contentless (it
keeps each name's trigrams, not the name: a match is checked against the span), or on
PostgreSQL pg_trgm over IndexSearchName. Spans are written, and numbers given, by one job
at a time (`lock`): SQLite's IMMEDIATE transactions hold its write lock already, and on
PostgreSQL an advisory lock does, so that a folder never gets the same name twice."""

import json
import zlib
from collections import defaultdict

from django.db import connection

from borgapp.models import IndexSearchName, IndexSpan, IndexVersion

TRIGRAMS = "borgapp_indexspan_trigram"  # migration 0030 (SQLite with FTS5's trigrams)
SPANS = IndexSpan._meta.db_table
VERSIONS = IndexVersion._meta.db_table
LOCK = 0x6F7073_6E616D  # PostgreSQL's advisory lock of the spans ("opsnam")
CHUNK = 500


def pack(names: list[str]) -> bytes:
    """Names joined by NUL (which no name holds), deflated (raw: no header, no checksum)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress("\0".join(names).encode("utf-8", "surrogateescape")) + packer.flush()


def searchable(name: str) -> str:
    """A name as the search index takes it: text, where a name holding surrogates (bytes
    not in UTF-8) has a character that no database takes as text."""
    return name if name.isascii() else name.encode("utf-8", "replace").decode("utf-8")


def unpack(blob: bytes) -> list[str]:
    return zlib.decompress(bytes(blob), -15).decode("utf-8", "surrogateescape").split("\0")


def chunks(items, size: int = 900):
    """Lists of at most `size` (query parameters stay well under SQLite's limit)."""
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


# --- writing ------------------------------------------------------------------------------


def lock() -> None:
    """Within a transaction: this job alone writes spans until it ends."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK])


def next_number() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT start + count FROM {SPANS} ORDER BY start DESC LIMIT 1")
        row = cursor.fetchone()
    return row[0] if row else 1


def add(new: dict[int, list[str]]) -> dict[tuple[int, str], int]:
    """Numbers for new names in their folders (folder number -> names, none of them there
    yet): one span per folder, and the names into the search index. Under `lock`."""
    start = next_number()
    rows, made, search = [], {}, []
    for folder in sorted(new):
        names = new[folder]
        rows.append((start, folder, len(names), pack(names)))
        for place, name in enumerate(names):
            made[(folder, name)] = start + place
            search.append((start + place, searchable(name)))
        start += len(names)
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {SPANS} (start, folder, count, names) VALUES "
                           "(%s, %s, %s, %s)", rows)  # fmt: skip
        if connection.vendor == "sqlite":
            if has_trigrams():
                cursor.executemany(f"INSERT INTO {TRIGRAMS} (rowid, name) VALUES (%s, %s)",
                                   search)  # fmt: skip
        else:
            table = IndexSearchName._meta.db_table
            with cursor.cursor.copy(f"COPY {table} (num, name) FROM STDIN") as copy:
                for row in search:
                    copy.write_row(row)
    return made


def missing(nums) -> set[int]:
    """Those of these numbers that no span holds (dropped by `drop_unused`)."""
    gone = set()
    with connection.cursor() as cursor:
        for chunk in chunks(sorted(nums)):
            values = ", ".join(["(%s)"] * len(chunk))
            cursor.execute(
                f"WITH n(v) AS (VALUES {values}) SELECT n.v FROM n WHERE NOT EXISTS (SELECT 1 "
                f"FROM {SPANS} s WHERE s.start = (SELECT MAX(m.start) FROM {SPANS} m WHERE "
                "m.start <= n.v) AND n.v < s.start + s.count)",
                [int(num) for num in chunk],
            )
            gone.update(row[0] for row in cursor.fetchall())
    return gone


def spans_since(start: int) -> list[tuple[int, int, int, bytes]]:
    """Spans written from number `start` on: (start, folder, count, names)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT start, folder, count, names FROM {SPANS} WHERE start >= %s "
                       "ORDER BY start", [start])  # fmt: skip
        return cursor.fetchall()


def drop_unused() -> int:
    """Spans of which no entry has a version, nor holds a folder of spans, go with their
    names' trigrams, deepest first. Returns the spans dropped."""
    lock()
    dropped = 0
    doomed_sql = (
        f"SELECT s.start, s.count, s.names FROM {SPANS} s WHERE NOT EXISTS (SELECT 1 FROM "
        f"{VERSIONS} v WHERE v.node_id >= s.start AND v.node_id < s.start + s.count) AND NOT "
        f"EXISTS (SELECT 1 FROM {SPANS} c WHERE c.folder >= s.start AND "
        "c.folder < s.start + s.count)"
    )
    with connection.cursor() as cursor:
        while True:
            cursor.execute(doomed_sql)
            doomed = cursor.fetchall()
            if not doomed:
                return dropped
            for chunk in chunks(doomed):
                _unsearch(cursor, chunk)
                cursor.execute(f"DELETE FROM {SPANS} WHERE start IN ({_marks(len(chunk))})",
                               [start for start, _, _ in chunk])  # fmt: skip
            dropped += len(doomed)


def _unsearch(cursor, spans) -> None:
    if connection.vendor == "sqlite":
        if has_trigrams():  # contentless: FTS5 is told the names it had
            cursor.executemany(
                f"INSERT INTO {TRIGRAMS} ({TRIGRAMS}, rowid, name) VALUES ('delete', %s, %s)",
                [(start + place, searchable(name)) for start, _, blob in spans
                 for place, name in enumerate(unpack(blob))],
            )  # fmt: skip
        return
    table = IndexSearchName._meta.db_table
    for start, count, _ in spans:
        cursor.execute(f"DELETE FROM {table} WHERE num >= %s AND num < %s", [start, start + count])


# --- reading ------------------------------------------------------------------------------


def children(folders) -> dict[int, dict[str, int]]:
    """The names in each folder and their numbers (the first, were a name twice)."""
    found: dict[int, dict[str, int]] = {folder: {} for folder in folders}
    with connection.cursor() as cursor:
        for chunk in chunks(found):
            cursor.execute(f"SELECT folder, start, names FROM {SPANS} WHERE folder IN "
                           f"({_marks(len(chunk))}) ORDER BY start DESC", chunk)  # fmt: skip
            for folder, start, blob in cursor.fetchall():
                names = found[folder]
                for place, name in enumerate(unpack(blob)):
                    names[name] = start + place
    return found


def lookup(nums) -> dict[int, tuple[int, str]]:
    """Each number's folder and name; numbers of no span are left out."""
    nums = sorted(set(nums))
    found: dict[int, tuple[int, str]] = {}
    with connection.cursor() as cursor:
        for chunk in chunks(nums):
            values = ", ".join(["(%s)"] * len(chunk))
            cursor.execute(
                f"WITH n(v) AS (VALUES {values}) SELECT DISTINCT (SELECT MAX(s.start) FROM "
                f"{SPANS} s WHERE s.start <= n.v) FROM n",
                [int(num) for num in chunk],
            )
            starts = [row[0] for row in cursor.fetchall() if row[0] is not None]
            cursor.execute(f"SELECT start, folder, count, names FROM {SPANS} WHERE start IN "
                           f"({_marks(len(starts))})", starts)  # fmt: skip
            spans = sorted(cursor.fetchall()) if starts else []
            names: dict[int, list[str]] = {}
            at = 0
            for num in chunk:
                while at + 1 < len(spans) and spans[at + 1][0] <= num:
                    at += 1
                if not spans or not spans[at][0] <= num < spans[at][0] + spans[at][2]:
                    continue
                start, folder, _, blob = spans[at]
                if start not in names:
                    names[start] = unpack(blob)
                found[num] = (folder, names[start][num - start])
    return found


def paths_of(nums) -> dict[int, str]:
    """The full path of each number (one look-up per folder level)."""
    known: dict[int, tuple[int, str]] = {}
    todo = set(nums)
    while todo:
        found = lookup(todo)
        known.update(found)
        todo = {folder for folder, _ in found.values() if folder and folder not in known}
    paths: dict[int, str] = {}

    def path(num):
        if num not in paths:
            folder, name = known[num]
            paths[num] = name if not folder else f"{path(folder)}/{name}"
        return paths[num]

    def whole(num) -> bool:
        while num:
            if num not in known:
                return False
            num = known[num][0]
        return True

    return {num: path(num) for num in nums if num in known and whole(num)}


def node_of(path: str) -> int | None:
    """The number of a path, walking down from the top (None: the index has no such path)."""
    folder = 0
    for name in path.strip("/").split("/"):
        found = children([folder])[folder].get(name)
        if found is None:
            return None
        folder = found
    return folder


def below(folders, most: int) -> list[int]:
    """The numbers of every entry under these folders (breadth first, about `most` at most)."""
    found, level = [], list(folders)
    with connection.cursor() as cursor:
        while level and len(found) < most:
            nums = []
            for chunk in chunks(level):
                cursor.execute(f"SELECT start, count FROM {SPANS} WHERE folder IN "
                               f"({_marks(len(chunk))})", chunk)  # fmt: skip
                for start, count in cursor.fetchall():
                    nums.extend(range(start, start + count))
            found += nums
            level = nums
    return found


TREE = (
    "WITH RECURSIVE tree(f) AS (SELECT CAST(%s AS BIGINT) UNION SELECT c.folder FROM tree "
    f"JOIN {SPANS} p ON p.folder = tree.f JOIN {SPANS} c ON c.folder >= p.start AND "
    "c.folder < p.start + p.count) SELECT f FROM tree"
)  # the folders at and below the folder numbered %s that have entries
BY_NUMBER = 100_000  # entries below a folder at most to be asked for by number


def _spans_in(folders_sql: str, params: list) -> list[tuple[int, int, int]]:
    """(start, count, folder) of the spans of the folders that `folders_sql` selects."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT start, count, folder FROM {SPANS} WHERE folder IN "
                       f"({folders_sql})", params)  # fmt: skip
        return cursor.fetchall()


def _numbers(spans) -> list[int]:
    return [num for start, count, _ in spans for num in range(start, start + count)]


def one_of(numbers: list[int], term: str = "node_id") -> tuple[str, list]:
    """A condition that `term` is one of these numbers, and its one parameter: a list the
    planner counts (an array on PostgreSQL, JSON on SQLite) and looks up as a set, however
    long (asked for `node_id`: one look-up in the versions' key per number)."""
    if connection.vendor == "postgresql":
        return f"{term} = ANY(%s)", [numbers]
    return f"{term} IN (SELECT value FROM json_each(%s))", [json.dumps(numbers)]


def in_spans(versions, starts: list[int], only: tuple[int, int] = (-1, -1)):
    """Those of `versions` (a query of IndexVersion) whose entry is in one of the spans that
    begin at `starts`, in number order: each span's run of numbers is read from the
    versions' key, whatever the number of spans or of versions. `only`: (folder, node): of
    that folder's spans, the entry `node` alone."""
    where, params = one_of(sorted(starts), f"{SPANS}.start")
    return versions.extra(
        tables=[SPANS],
        where=[where, f"node_id >= {SPANS}.start AND node_id < {SPANS}.start + {SPANS}.count",
               f"({SPANS}.folder <> %s OR node_id = %s)"],
        params=[*params, *only], order_by=[f"{SPANS}.start", "node_id"],
    )  # fmt: skip


def folder_spans(folder: int) -> list[int]:
    """The starts of the spans of the entries directly in a folder."""
    return [start for start, _, _ in _spans_in("%s", [folder])]


def subtree_spans(node: int) -> tuple[list[int], tuple[int, int]]:
    """The starts of the spans at and below the entry `node` (its folder's span that holds
    it, and those of the folders below it), and `in_spans`'s `only` for them."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT start, folder FROM {SPANS} WHERE start <= %s ORDER BY start "
                       "DESC LIMIT 1", [node])  # fmt: skip
        own, folder = cursor.fetchone()
    return [own, *(start for start, _, _ in _spans_in(TREE, [node]))], (folder, node)


# the folder of the entry numbered `node_id`: that of the last span starting at or before it
FOLDER_OF = f"(SELECT folder FROM {SPANS} WHERE start <= node_id ORDER BY start DESC LIMIT 1)"


def subtree(node: int) -> tuple[str, list]:
    """A condition on `node_id` and its parameters: the entry `node` or any entry below it.
    Up to BY_NUMBER entries are asked for by number (the cost is the subtree's size); more
    by the folder of each row asked (the cost is the rows', read anyway)."""
    spans = _spans_in(TREE, [node])
    if sum(count for _, count, _ in spans) <= BY_NUMBER:
        return one_of([node, *_numbers(spans)])
    where, params = one_of(sorted({folder for _, _, folder in spans}), FOLDER_OF)
    return f"(node_id = %s OR {where})", [node, *params]


# --- searching ----------------------------------------------------------------------------


def has_trigrams() -> bool:
    """Whether this SQLite database has the names' trigram index (migration 0030). Asked
    each time (a look at the schema): an answer kept from before a migrate would leave new
    names out of the index."""
    if connection.vendor != "sqlite":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE name = %s", [TRIGRAMS])
        return cursor.fetchone() is not None


def named(literal: str, test):
    """(number, name) of the names for which `test(name)` holds, a chunk at a time, read
    lazily. `literal`: a part that each such name holds (any case), which the trigram index
    narrows them to where it has three characters or more; else every name is read."""
    if connection.vendor == "postgresql":
        query = IndexSearchName.objects.order_by()
        if literal:
            query = query.filter(name__icontains=literal)  # UPPER(name) LIKE: the GIN index
        batch = []
        for num, name in query.values_list("num", "name").iterator(chunk_size=2000):
            if test(name):
                batch.append((num, name))
                if len(batch) >= CHUNK:
                    yield batch
                    batch = []
        if batch:
            yield batch
        return
    if len(literal) >= 3 and has_trigrams():
        yield from _by_trigrams(literal, test)
        return
    with connection.cursor() as cursor:
        after = -1
        while True:
            cursor.execute(f"SELECT start, names FROM {SPANS} WHERE start > %s ORDER BY start "
                           "LIMIT 200", [after])  # fmt: skip
            spans = cursor.fetchall()
            if not spans:
                return
            batch = [(start + place, name) for start, blob in spans
                     for place, name in enumerate(unpack(blob)) if test(name)]  # fmt: skip
            if batch:
                yield batch
            after = spans[-1][0]


def _by_trigrams(literal: str, test):
    folded = literal.lower()
    grams = sorted({folded[at : at + 3] for at in range(len(folded) - 2)})
    query = " AND ".join('"' + gram.replace('"', '""') + '"' for gram in grams)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT rowid FROM {TRIGRAMS} WHERE {TRIGRAMS} MATCH %s ORDER BY rowid",
                       [query])  # fmt: skip
        while rows := cursor.fetchmany(CHUNK):
            found = lookup(row[0] for row in rows)  # (another cursor: this one reads on)
            batch = [(num, name) for num, (_, name) in sorted(found.items()) if test(name)]
            if batch:
                yield batch


def forget_all_trigrams(using: str) -> None:
    """SQLite: empty the trigram index (its rows are no model's, a flush leaves them)."""
    from django.db import connections

    with connections[using].cursor() as cursor:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE name = %s", [TRIGRAMS])
        if cursor.fetchone() is not None:
            cursor.execute(f"INSERT INTO {TRIGRAMS} ({TRIGRAMS}) VALUES ('delete-all')")


def group_by_folder(pairs) -> dict[int, set[str]]:
    wanted: dict[int, set[str]] = defaultdict(set)
    for folder, name in pairs:
        wanted[folder].add(name)
    return wanted
