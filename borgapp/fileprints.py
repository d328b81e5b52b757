"""What the newest indexed archive of each backup set listed, kept beside the database so
that the next archive's unchanged entries cost no database work (borgapp.fileindex).

Each record of borg's listing (an entry's path, type, mode, owner, size, time and link, as
borg printed them) is kept as a 16-byte digest with the node it was stored under, in
listing order, in one file per chain: DATA_DIR/index-prints/<chain id>. borg lists the next
archive of the set in much the same order, so its records are compared with the previous
ones a window at a time: a record whose digest is there is the same path with the same
version, which the chain holds open already. Only the others are stored.

The file is a cache. Missing, damaged, or written for another archive than the chain's
newest indexed one (or for an earlier indexing of it, whose nodes may be others), it is not
used, and every record is stored as before. A record that moved further than the window (a
folder of many thousands of entries added or removed) is stored as before too: slower,
never wrong.
"""

import hashlib
import os
import struct
from array import array
from collections import OrderedDict
from pathlib import Path

from django.conf import settings

MAGIC = b"OCPRINT1"
HEADER = struct.Struct(">8sQQ64sQ")  # magic, chain, seq, fileindex.prints_id, records
RECORD = struct.Struct(">16sQ")  # digest, node
WINDOW = 8192  # records of the previous archive looked ahead of the last one met
MOST = 1 << 18  # records held at most (bounded memory whatever the archive's size)
READ = 4096  # records read at a time
PASSED_MOST = 1 << 22  # nodes of records passed over kept at most (8 bytes each)


def digest(record: bytes) -> bytes:
    """A record of borg's listing (its fields joined by NUL) as 16 bytes."""
    return hashlib.blake2b(record, digest_size=16).digest()


def _folder() -> Path:
    return Path(settings.DATA_DIR) / "index-prints"


def path_of(chain_id: int) -> Path:
    return _folder() / str(chain_id)


class Previous:
    """The previous archive's records, met in listing order: `match(digest)` gives the
    node of an equal record within the window ahead (the records before it are passed
    over: gone or changed), or None. `passed` keeps the nodes of the records passed over,
    so that what went can be told from them alone (`end()`), not from every entry."""

    def __init__(self, chain_id: int, seq: int, made_for: str):
        self.ahead: OrderedDict[bytes, int] = OrderedDict()
        self.file = None
        self.valid = False  # the prints of that archive, whole and readable
        self.passed: array | None = array("q")  # None: too many kept, or not read to the end
        self.records = self.read = 0
        self.gone: array | None = None  # `end()`'s answer, once the whole listing was met
        try:
            handle = open(path_of(chain_id), "rb")  # noqa: SIM115 (kept open while read)
        except OSError:
            return
        try:
            found = HEADER.unpack(handle.read(HEADER.size))
        except struct.error:  # cut short
            found = None
        if found is None or found[:4] != (MAGIC, chain_id, seq,
                                          made_for.encode()[:64].ljust(64, b"\0")):  # fmt: skip
            handle.close()
            return
        self.file, self.valid, self.records = handle, True, found[4]
        self._read(WINDOW)

    def _read(self, count: int) -> None:
        while self.file is not None and count > 0:
            wanted = min(count, READ)
            data = self.file.read(RECORD.size * wanted)
            whole = len(data) // RECORD.size
            for key, node in RECORD.iter_unpack(data[: whole * RECORD.size]):
                self.ahead[key] = node
            self.read += whole
            count -= whole
            if whole < wanted:
                self.close()  # the end of the file
        while len(self.ahead) > MOST:
            self._pass(self.ahead.popitem(last=False)[1])

    def _pass(self, node: int) -> None:
        if self.passed is not None:
            self.passed.append(node)
            if len(self.passed) > PASSED_MOST:
                self.passed = None  # so much went or changed: told from the database instead

    def match(self, key: bytes) -> int | None:
        node = self.ahead.get(key)
        if node is None:
            self._read(2)  # a long run of removed records is caught up with
            return None
        while (first := self.ahead.popitem(last=False))[0] != key:
            self._pass(first[1])
        if len(self.ahead) < WINDOW:
            self._read(WINDOW - len(self.ahead))
        return node

    def end(self) -> array | None:
        """After the last record of the listing: the nodes of every previous record not
        met again (passed over, or never reached), or None where they cannot be told
        (prints not whole, or too many)."""
        while self.file is not None:
            self._read(READ)
        for node in self.ahead.values():
            self._pass(node)
        self.ahead.clear()
        if self.read != self.records:
            self.passed = None
        self.gone = self.passed
        return self.gone

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Writer:
    """This archive's records, written as they are stored; `keep()` makes them the chain's
    prints once the archive is in the index, `discard()` drops them."""

    def __init__(self, chain_id: int):
        self.chain_id, self.count = chain_id, 0
        _folder().mkdir(mode=0o700, exist_ok=True)
        self.temporary = _folder() / f"{chain_id}.partial"
        self.file = open(self.temporary, "wb")  # noqa: SIM115 (written batch by batch)
        self.file.write(bytes(HEADER.size))

    def add(self, records: list[tuple[bytes, int]]) -> None:
        self.file.write(b"".join(RECORD.pack(key, node) for key, node in records))
        self.count += len(records)

    def keep(self, seq: int, made_for: str) -> None:
        self.file.seek(0)
        self.file.write(HEADER.pack(MAGIC, self.chain_id, seq, made_for.encode()[:64],
                                    self.count))  # fmt: skip
        self.file.close()
        os.replace(self.temporary, path_of(self.chain_id))

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        self.temporary.unlink(missing_ok=True)


def prune(chains: set[int]) -> None:
    """Drop the prints of chains that are gone (not those being written now)."""
    try:
        found = list(_folder().iterdir())
    except OSError:
        return
    for path in found:
        chain = path.name.removesuffix(".partial")
        if chain.isdigit() and int(chain) not in chains:
            path.unlink(missing_ok=True)
