"""What changed between two indexed archives, answered from the file index (issue 16)
instead of a `borg diff` job: at once, page by page, in the words `borg diff --json-lines`
uses (its change records, its four kinds).

Within one backup set (IndexChain) only the versions that start or end between the two
archives are read: a version both archives hold is no change. Archives of different sets
are compared entry by entry.

A regular file is `modified` when its content identity (borgapp.itemlist: a digest of
its chunks' ids, as borg compares chunks) differs; a file touched without a change is a
`metadata` change, as borg says. What the index cannot tell, said plainly (the API's
description says it too): where a version has no content identity (indexed by the borg
binary, or a hardlink borg lists without chunks), a file whose time or size moved is
`modified`; it holds no ctime, so a change of ctime alone (which borg lists, and the pages
never showed) is not one; and it says a modified file's sizes, not borg's bytes added and
removed.
"""

from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection

from borgapp import filenames, listing, validation
from borgapp.fileindex import is_indexed, mode_text, moment, sql_name, sql_table
from borgapp.filesearch import node_of, paths_of
from borgapp.models import Archive, ArchiveDiffItem, IndexedArchive, IndexOwner, IndexVersion

CHANGES = ("added", "removed", "modified", "metadata")
KEPT = ("node_id", "type", "mode", "owner_id", "size", "mtime", "target", "content")


@dataclass
class Row:
    """One changed path, as a stored ArchiveDiffItem reads (path, change, changes)."""

    path: str
    change: str
    changes: list[dict]
    details: list[str] = field(default_factory=list)

    def get_change_display(self) -> str:
        return ArchiveDiffItem.Change(self.change).label


def _held(side: str, indexed: IndexedArchive, since: int | None, until: int | None):
    """The versions one archive holds (SQL and its parameters); within one set only those
    that end before the other archive (`until`) or start after it (`since`)."""
    columns = ", ".join(sql_name(name) for name in KEPT)
    sql = (f"{side} AS (SELECT {columns} FROM {sql_table(IndexVersion)} "
           f"WHERE chain_id = %s AND {sql_name('first')} <= %s AND "
           f"({sql_name('last')} IS NULL OR {sql_name('last')} >= %s)")  # fmt: skip
    params = [indexed.chain_id, indexed.seq, indexed.seq]
    if until is not None:
        sql += f" AND {sql_name('last')} < %s"
        params.append(until)
    if since is not None:
        sql += f" AND {sql_name('first')} > %s"
        params.append(since)
    return sql + ")", params


def _differs(column: str) -> str:
    return f"COALESCE(a.{column}, -1) <> COALESCE(b.{column}, -1)"


CONTENT_DIFFERS = "(a.content IS NOT NULL AND b.content IS NOT NULL AND a.content <> b.content)"
# a regular file's content changed: its identity, where both versions have one; else its
# size or time moved (records() says the same in Python)
MODIFIED = (
    "(CASE WHEN a_content IS NOT NULL AND b_content IS NOT NULL THEN a_content <> b_content "
    "ELSE COALESCE(a_size, -1) <> COALESCE(b_size, -1) OR "
    "COALESCE(a_mtime, -1) <> COALESCE(b_mtime, -1) END)"
)


class Comparison:
    """The changes from `older` to `newer` (both indexed, one repository): a lazy sequence
    for a paginator (`count()`, slices), in the order borg listed the paths."""

    def __init__(self, older: Archive, newer: Archive, *, path: str = "", change: str = ""):
        if change and change not in CHANGES:
            raise validation.InvalidInput(f"change must be one of: {', '.join(CHANGES)}.")
        old = IndexedArchive.objects.get(archive=older)
        new = IndexedArchive.objects.get(archive=newer)
        same = old.chain_id == new.chain_id
        a_sql, a_params = _held("a", old, None, new.seq if same else None)
        b_sql, b_params = _held("b", new, old.seq if same else None, None)
        a_cols = ", ".join(f"a.{name}" for name in KEPT[1:])
        b_cols = ", ".join(f"b.{name}" for name in KEPT[1:])
        nulls = ", ".join(["NULL"] * (len(KEPT) - 1))
        unequal = [f"a.{name} <> b.{name}" for name in ("type", "mode", "owner_id", "target")]
        differ = " OR ".join([*unequal, _differs("size"), _differs("mtime"), CONTENT_DIFFERS])
        kind = (
            "CASE WHEN a_type IS NULL THEN 'added' WHEN b_type IS NULL THEN 'removed' "
            "WHEN a_type = b_type AND (a_target <> b_target OR (a_type = '-' AND "
            f"{MODIFIED})) THEN 'modified' ELSE 'metadata' END"
        )
        names = ", ".join([f"a_{n}" for n in KEPT[1:]] + [f"b_{n}" for n in KEPT[1:]])
        self.base = (
            f"WITH {a_sql}, {b_sql}, d(node_id, {names}) AS ("
            f"SELECT a.node_id, {a_cols}, {b_cols} FROM a LEFT JOIN b ON b.node_id = a.node_id "
            f"WHERE b.node_id IS NULL OR {differ} "
            f"UNION ALL SELECT b.node_id, {nulls}, {b_cols} FROM b "
            "WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.node_id = b.node_id)), "
            f"c AS (SELECT d.*, {kind} AS kind_of FROM d) SELECT {{}} FROM c WHERE 1 = 1"
        )
        self.params = a_params + b_params
        if change:
            self.base += " AND kind_of = %s"
            self.params.append(change)
        folder = (path or "").strip("/")
        if folder:
            node = node_of(validation.validate_archive_path(folder))
            where, params = filenames.subtree(node if node is not None else -1)
            self.base += f" AND {where}"
            self.params += params
        self._count: int | None = None

    def count(self) -> int:
        if self._count is None:
            with connection.cursor() as cursor:
                cursor.execute(self.base.format("COUNT(*)"), self.params)
                self._count = cursor.fetchone()[0]
        return self._count

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index):
        if not isinstance(index, slice):
            return self[index : index + 1][0]
        start = index.start or 0
        stop = self.count() if index.stop is None else index.stop
        if stop <= start:
            return []
        sql = self.base.format("*") + " ORDER BY node_id LIMIT %s OFFSET %s"
        with connection.cursor() as cursor:
            cursor.execute(sql, [*self.params, stop - start, start])
            found = cursor.fetchall()
        return rows_of(found)

    def __iter__(self):
        start = 0
        while page := self[start : start + 2000]:
            yield from page
            start += len(page)


def rows_of(found: list[tuple]) -> list[Row]:
    width = len(KEPT) - 1
    paths = paths_of({row[0] for row in found})
    owners = {pk: (user, group) for pk, user, group in IndexOwner.objects.filter(
        pk__in={row[i] for row in found for i in (3, 3 + width)} - {None}
    ).values_list("pk", "user", "group")}  # fmt: skip
    rows = []
    for row in found:
        old = _version(row[1 : 1 + width], owners)
        new = _version(row[1 + width : 1 + 2 * width], owners)
        rows.append(Row(path=paths.get(row[0], "?"), change=row[-1], changes=records(old, new)))
    return rows


def _version(values: tuple, owners: dict) -> dict | None:
    if values[0] is None:
        return None
    kind, mode, owner, size, mtime, target, content = values
    user, group = owners.get(owner, ("", ""))
    return {"type": kind, "mode": mode_text(kind, mode), "user": user, "group": group,
            "size": size, "mtime": mtime, "target": target, "content": content}  # fmt: skip


def _iso(value: int | None) -> str | None:
    when: datetime | None = moment(value)
    return when.replace(tzinfo=None).isoformat(timespec="microseconds") if when else None


def content_changed(old: dict, new: dict) -> bool:
    """As MODIFIED says it in SQL."""
    if old["content"] is not None and new["content"] is not None:
        return old["content"] != new["content"]
    return old["size"] != new["size"] or old["mtime"] != new["mtime"]


def records(old: dict | None, new: dict | None) -> list[dict]:
    """borg diff's change records of one path, from its two versions (None: not there)."""
    if old is None or new is None:
        there, verb = (new, "added") if old is None else (old, "removed")
        if there["type"] == "d":
            return [{"type": f"{verb} directory"}]
        if there["type"] == "l":
            return [{"type": f"{verb} link"}]
        return [{"type": verb, "size": there["size"] or 0}]
    changes = []
    if old["type"] == new["type"] == "l" and old["target"] != new["target"]:
        changes.append({"type": "changed link"})
    elif old["type"] == new["type"] == "-" and content_changed(old, new):
        changes.append({"type": "modified", "old_size": old["size"], "new_size": new["size"]})
    if old["mode"] != new["mode"]:
        changes.append({"type": "mode", "old_mode": old["mode"], "new_mode": new["mode"]})
    if (old["user"], old["group"]) != (new["user"], new["group"]):
        changes.append({"type": "owner", "old_user": old["user"], "old_group": old["group"],
                        "new_user": new["user"], "new_group": new["group"]})  # fmt: skip
    if old["mtime"] != new["mtime"]:
        changes.append({"type": "mtime", "old_mtime": _iso(old["mtime"]),
                        "new_mtime": _iso(new["mtime"])})  # fmt: skip
    return changes


def compare(archive: Archive, other: Archive, *, path: str = "", change: str = ""):
    """The index's comparison of two archives (older to newer, whichever was named first),
    or None while either is not indexed (then a `borg diff` job answers)."""
    if not (is_indexed(archive) and is_indexed(other)):
        return None
    older, newer = listing.in_order(archive, other)
    return Comparison(older, newer, path=path, change=change)
