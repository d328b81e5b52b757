"""The previous archive's prints (borgapp.fileprints): a record equal to one of the previous
archive's is given that record's node, whatever was added, removed or moved around it, and
prints of another archive, or damaged ones, are never used."""

import os
import random

import pytest

from borgapp import fileprints


@pytest.fixture
def prints_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path / "index-prints"


def write_prints(records, chain=7, seq=3, borg_id="ab" * 32):
    writer = fileprints.Writer(chain)
    for start in range(0, len(records), 1000):
        keys, nodes = zip(*records[start : start + 1000], strict=True)
        writer.add(keys, nodes)
    writer.keep(seq, borg_id)


def key(n: int) -> bytes:
    return fileprints.digest(b"\0".join([b"-rw-r--r--", b"root", f"file-{n}".encode()]))


def test_each_record_met_again_gets_its_own_node_whatever_moved(prints_dir):
    old = list(range(100_000))
    write_prints([(key(n), 10_000 + n) for n in old])
    # the next archive: a run removed that is longer than the window, a run added, files
    # changed here and there, and a few moved later in the listing
    rnd = random.Random(16)
    new = [n for n in old if not 20_000 <= n < 20_000 + 3 * fileprints.WINDOW]
    new[50_000:50_000] = [1_000_000 + n for n in range(5_000)]
    changed = set(rnd.sample(new, 1000))
    moved = [new.pop(rnd.randrange(60_000, 70_000)) for _ in range(20)]
    new += moved
    previous = fileprints.Previous(7, 3, "ab" * 32)
    assert previous.valid
    found = {}
    for start in range(0, len(new), 7000):  # as the listing arrives, a read at a time
        part = new[start : start + 7000]
        nodes = previous.match([key(-n if n in changed else n) for n in part])
        found.update((n, node) for n, node in zip(part, nodes, strict=True) if node is not None)
    assert all(node == 10_000 + n for n, node in found.items())  # never another's node
    assert not changed & found.keys() and not any(n >= 1_000_000 for n in found)
    # all the rest is met again, but for what had to be passed over (moved later) and
    # what follows the long removal before the window caught up with it
    missed = set(new) - changed - found.keys() - {n for n in new if n >= 1_000_000}
    assert missed - set(moved) and len(missed) < 3 * fileprints.WINDOW
    assert len(previous.keys) <= fileprints.MOST + fileprints.DROP + fileprints.READ
    # what went is told from the records passed over: each previous record not met again
    # (removed, changed, moved too far), and none that was
    passed = previous.end()
    assert sorted(passed) == sorted(10_000 + n for n in old if n not in found)


def test_what_went_is_not_told_from_prints_not_read_whole(prints_dir):
    write_prints([(key(n), n + 1) for n in range(10)])
    previous = fileprints.Previous(7, 3, "ab" * 32)
    assert previous.match([key(0)]) == [1] and previous.match([key(5), key(42)]) == [6, None]
    assert previous.gone is None  # nothing is told before the listing's end
    assert sorted(previous.end()) == [2, 3, 4, 5, 7, 8, 9, 10]  # passed over, and never reached
    assert previous.gone is not None and sorted(previous.gone) == [2, 3, 4, 5, 7, 8, 9, 10]
    with open(prints_dir / "7", "r+b") as handle:  # one record short of what its header says
        handle.truncate(fileprints.HEADER.size + 9 * fileprints.RECORD.size)
    previous = fileprints.Previous(7, 3, "ab" * 32)
    assert previous.valid and previous.match([key(0)]) == [1] and previous.end() is None
    assert previous.gone is None


def test_prints_of_another_archive_or_damaged_are_not_used(prints_dir):
    """Each check of the header: the chain, the archive's place in it, and which indexing."""
    write_prints([(key(n), n + 1) for n in range(10)])
    assert fileprints.Previous(7, 3, "ab" * 32).valid
    assert not fileprints.Previous(7, 2, "ab" * 32).valid  # another archive of the chain
    assert not fileprints.Previous(7, 3, "cd" * 32).valid  # the same place, another archive
    assert not fileprints.Previous(8, 3, "ab" * 32).valid  # no prints for that chain
    (prints_dir / "7").write_bytes(b"OCPRINT1\0\0")  # cut short
    assert not fileprints.Previous(7, 3, "ab" * 32).valid
    # a run that did not end leaves no prints of its own
    writer = fileprints.Writer(9)
    writer.add([key(1)], [2])
    writer.discard()
    assert not (prints_dir / "9").exists() and not (prints_dir / "9.partial").exists()
    fileprints.prune({9})
    assert os.listdir(prints_dir) == []


def test_prints_name_the_indexing_they_were_written_for():
    """The same archive indexed again (another row at another time: a new database, say,
    whose nodes are others) gets other prints, never the old ones."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from borgapp.fileindex import prints_id

    at = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    once = SimpleNamespace(borg_id="ab" * 32, pk=4, indexed_at=at)
    assert prints_id(once) == prints_id(SimpleNamespace(**vars(once)))
    for other in ({"pk": 5}, {"indexed_at": at + timedelta(microseconds=1)},
                  {"borg_id": "cd" * 32}):  # fmt: skip
        assert prints_id(SimpleNamespace(**{**vars(once), **other})) != prints_id(once)
