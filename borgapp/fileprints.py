"""What the newest indexed archive of each backup set listed, kept beside the database so
that the next archive's unchanged entries cost no database work (borgapp.fileindex).

Each record of borg's listing (an entry's path, type, mode, owner, size, time and link, as
borg printed them) is kept as a 16-byte digest with the node it was stored under, in
listing order, in one file per chain: DATA_DIR/index-prints/<chain id>. borg lists the next
archive of the set in much the same order, so its records are compared with the previous
ones a slice at a time, and one that is not the next is looked for in a window ahead: a
record whose digest is there is the same path with the same version, which the chain holds
open already. Only the others are parsed and stored.

The file is a cache. Missing, damaged, or written for another archive than the chain's
newest indexed one (or for an earlier indexing of it, whose nodes may be others), it is not
used, and every record is stored as before. A record that moved further than the window (a
folder of many thousands of entries added or removed) is stored as before too: slower,
never wrong.
"""

import hashlib
import itertools
import os
import struct
from array import array
from pathlib import Path

from django.conf import settings

MAGIC = b"OCPRINT1"
HEADER = struct.Struct(">8sQQ64sQ")  # magic, chain, seq, fileindex.prints_id, records
RECORD = struct.Struct(">16sQ")  # digest, node
WINDOW = 8192  # records of the previous archive looked ahead of the last one met
MOST = 1 << 18  # records looked ahead at most (bounded memory whatever the archive's size)
READ = 4096  # records read at a time
DROP = 1 << 16  # records met or passed over that are dropped together
RUN = 256  # records compared at a time with the previous ones
PASSED_MOST = 1 << 22  # nodes of records passed over kept at most (8 bytes each)


def digest(record: bytes) -> bytes:
    """A record of borg's listing (its fields joined by NUL) as 16 bytes."""
    return hashlib.blake2b(record, digest_size=16).digest()


def _folder() -> Path:
    return Path(settings.DATA_DIR) / "index-prints"


def path_of(chain_id: int) -> Path:
    return _folder() / str(chain_id)


class Previous:
    """The previous archive's records, met in listing order: `match(keys)` gives, for each
    of a run of this archive's record digests, the node of an equal previous record within
    the window ahead, or None. Most records follow the previous ones one for one, so these
    are compared a slice at a time; a record that is not the next one is looked for in the
    window, and the previous records before it are passed over (gone or changed).
    `passed` keeps the nodes of the records passed over, so that what went can be told from
    them alone (`end()`), not from every entry."""

    def __init__(self, chain_id: int, seq: int, made_for: str):
        self.keys: list[bytes] = []  # the previous records read and not yet dropped,
        self.nodes = array("q")  # from the `base`-th on
        self.where: dict[bytes, int] = {}  # a record's digest: its place (the last one read)
        self.base = self.pos = 0  # `pos`: the next previous record not met nor passed over
        self.end_at = WINDOW  # previous records before this place may be met (the window)
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

    def _fill(self, upto: int) -> None:
        """Read the previous records up to the `upto`-th (or the file's end)."""
        while self.file is not None and self.read < upto:
            wanted = max(READ, upto - self.read)
            data = self.file.read(RECORD.size * wanted)
            whole = len(data) // RECORD.size
            if whole:
                keys, nodes = zip(*RECORD.iter_unpack(data[: whole * RECORD.size]), strict=True)
                self.where.update(zip(keys, itertools.count(self.read)))
                self.keys += keys
                self.nodes.extend(nodes)
                self.read += whole
            if whole < wanted:
                self.close()  # the end of the file

    def _pass_to(self, place: int, met: bool = False) -> None:
        """Pass over the previous records before `place` (or to the end of the file); `met`:
        they were met again, not passed over."""
        self._fill(place)
        place = min(place, self.read)
        if self.passed is not None and not met:
            self.passed.extend(self.nodes[self.pos - self.base : place - self.base])
            if len(self.passed) > PASSED_MOST:
                self.passed = None  # so much went or changed: told from the database instead
        self.pos = place
        if self.pos - self.base >= DROP:  # those before `pos` are not needed any more
            del self.keys[: self.pos - self.base]
            del self.nodes[: self.pos - self.base]
            self.base = self.pos
            self.where = dict(zip(self.keys, itertools.count(self.base)))

    def _run(self, keys: list[bytes], start: int) -> int:
        """How many of `keys` from `start` on equal the previous records from `pos` on."""
        self._fill(self.pos + 1)
        if self.pos >= self.read or keys[start] != self.keys[self.pos - self.base]:
            return 0  # (a record new or changed: the common case past the first)
        count, step = 0, RUN
        while True:
            mine = keys[start + count : start + count + step]
            if not mine:
                return count
            place = self.pos + count
            self._fill(place + len(mine))
            if mine == self.keys[place - self.base : place - self.base + len(mine)]:
                count += len(mine)
            elif step > 1:
                step //= 2
            else:
                return count

    def match(self, keys: list[bytes]) -> list[int | None]:
        nodes: list[int | None] = [None] * len(keys)
        done = 0
        while done < len(keys):
            count = self._run(keys, done)
            if count:
                offset = self.pos - self.base
                nodes[done : done + count] = self.nodes[offset : offset + count]
                done += count
                self._pass_to(self.pos + count, met=True)
                self.end_at = max(self.end_at, self.pos + WINDOW)
                continue
            self._fill(self.end_at)
            place = self.where.get(keys[done])
            if place is not None and self.pos < place < self.end_at:
                self._pass_to(place)  # met further on: what lies before it is passed over
                continue
            done += 1  # new or changed; the window widens, so a long removal is caught up
            self.end_at += 2
            if self.end_at - self.pos > MOST:
                self._pass_to(self.end_at - MOST)
        return nodes

    def end(self) -> array | None:
        """After the last record of the listing: the nodes of every previous record not
        met again (passed over, or never reached), or None where they cannot be told
        (prints not whole, or too many)."""
        while self.file is not None:
            self._fill(self.read + READ)
            self._pass_to(self.read)
        self._pass_to(self.read)
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

    def add(self, keys: list[bytes], nodes: list[int]) -> None:
        self.file.write(b"".join(map(RECORD.pack, keys, nodes)))
        self.count += len(keys)

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
