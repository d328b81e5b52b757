#!/usr/bin/env python
"""A probe of a layout for the file index (issue 16), not the app's code: plain sqlite3 on
the names and tree of bench/file_index.py's generator (the same random calls, no files, no
borg), measuring whether a packed per-folder layout meets the 100 bytes per entry target
while search and folder pages stay fast. Measured on 2 cores, 1,000,000 files: 75 bytes
per entry (versions 43, trigram index 23, packed names 8), search p95 18-22 ms, a folder
page 0.3 ms, 30 days 1.25x.

Layout:
  folder(id INTEGER PRIMARY KEY, parent INT, pslot INT, name TEXT, names BLOB)
      names = raw deflate of the children's names in slot order (front-coded or "\\0"-joined)
      index folder_parent(parent, pslot)  -- children folders of a folder
  span(num INTEGER PRIMARY KEY, folder INT)   -- FTS rowid num..: folder's slots num-base..
  version(folder, slot, chain, first, last, ... ) WITHOUT ROWID, PK (folder, slot, chain, first)
  tri: fts5(name, content='', tokenize='trigram', detail='none', columnsize=0)
      rowid = span.num + slot for the first archive's children (dense numbering),
              2**40 + folder<<20 | slot for children appended later.
  FTS5 refuses a phrase (a fragment of over 3 characters) where detail is not 'full':
  a fragment is asked as an AND of its trigrams, and the candidates checked by name.

Usage: .venv/bin/python bench/index_layout_probe.py [--files 1000000] [--days 30]
           [--workdir /var/tmp/probe] [--packed-flags 0|1] [--coding front|join]
"""

import argparse
import json
import os
import random
import sqlite3
import statistics
import time
import zlib

WORDS = (
    "invoice report photo backup notes draft summary budget contract letter scan "
    "minutes plan design export data log config index readme"
).split()
EXTENSIONS = ("pdf", "txt", "jpg", "csv", "json", "md", "log", "png", "html", "py")
HIGH = 1 << 40
FTS_ROWID = "dense"  # or "shift": folder << 20 | slot for every child
MTIME_BASE = 0  # stored mtime = mtime - MTIME_BASE
MTIME0 = 1_700_000_000_000_000


def name_for(rnd, serial):
    return f"{rnd.choice(WORDS)}-{serial:07d}-{rnd.randrange(1000):03d}.{rnd.choice(EXTENSIONS)}"


def generate(count, rnd):
    """bench/file_index.py's generate(), without files: same rnd calls (randbytes included)."""
    folders = {}  # path tuple -> list of (name, size)
    order = []
    nfiles, serial = 0, 0
    while nfiles < count:
        depth = rnd.randint(4, 6)
        path = tuple(f"{rnd.choice(WORDS)}{rnd.randrange(8)}" for _ in range(depth))
        if path not in folders:
            folders[path] = []
        order.append(path)
        for _ in range(min(rnd.randint(50, 250), count - nfiles)):
            serial += 1
            name = name_for(rnd, serial)
            size = rnd.randint(10, 2000)
            rnd.randbytes(size)
            folders[path].append((name, size))
            nfiles += 1
    return folders, order


# ---------------------------------------------------------------- name blobs
def front_encode(names):
    out, prev = bytearray(), b""
    for n in names:
        b = n.encode()
        lcp = len(os.path.commonprefix([prev, b]))
        if lcp > 255:
            lcp = 255
        out.append(lcp)
        out += b[lcp:]
        out.append(0)
        prev = b
    return bytes(out)


def front_decode(raw):
    names, prev, i, n = [], b"", 0, len(raw)
    while i < n:
        lcp = raw[i]
        j = raw.index(0, i + 1)
        cur = prev[:lcp] + raw[i + 1 : j]
        names.append(cur)
        prev = cur
        i = j + 1
    return [b.decode() for b in names]


def deflate(raw, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush()


def inflate(blob):
    return zlib.decompress(blob, -15)


class Codec:
    def __init__(self, coding):
        self.coding = coding

    def pack(self, names):
        if self.coding == "front":
            return deflate(front_encode(names))
        return deflate("\0".join(names).encode())

    def unpack(self, blob):
        raw = inflate(blob)
        if self.coding == "front":
            return front_decode(raw)
        return raw.decode().split("\0")


def compare_codings(children):
    """Bytes of all folders' name blobs under several codings (children: list of name lists,
    in generation order)."""
    res = {}
    gen = [names for names in children]
    srt = [sorted(names) for names in children]
    res["raw join (no compression)"] = sum(len("\0".join(n).encode()) for n in gen)
    res["zlib6 join, generation order"] = sum(
        len(zlib.compress("\0".join(n).encode(), 6)) for n in gen
    )
    res["zlib6 join, sorted"] = sum(len(zlib.compress("\0".join(n).encode(), 6)) for n in srt)
    res["deflate6 (raw, no header) join, sorted"] = sum(
        len(deflate("\0".join(n).encode())) for n in srt
    )
    res["front-coded sorted, no compression"] = sum(len(front_encode(n)) for n in srt)
    res["zlib6 front-coded sorted"] = sum(len(zlib.compress(front_encode(n), 6)) for n in srt)
    res["deflate6 (raw) front-coded sorted"] = sum(len(deflate(front_encode(n))) for n in srt)
    res["deflate9 (raw) front-coded sorted"] = sum(len(deflate(front_encode(n), 9)) for n in srt)
    zd = (" ".join(WORDS) + " " + " ".join("." + e for e in EXTENSIONS)).encode()

    def zdict(raw):
        c = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=zd)
        return len(c.compress(raw) + c.flush())

    res["deflate6 + zdict(words) join sorted (stdlib)"] = sum(
        zdict("\0".join(n).encode()) for n in srt
    )
    res["deflate6 + zdict(words) front-coded sorted"] = sum(zdict(front_encode(n)) for n in srt)
    try:
        import zstandard

        for lvl in (3, 19):
            z = zstandard.ZstdCompressor(level=lvl, write_checksum=False, write_content_size=False)
            res[f"zstd{lvl} join sorted"] = sum(len(z.compress("\0".join(n).encode())) for n in srt)
            res[f"zstd{lvl} front-coded sorted"] = sum(
                len(z.compress(front_encode(n))) for n in srt
            )
    except ImportError:
        pass
    return res


# ---------------------------------------------------------------- schema
def schema(db, packed_flags):
    db.executescript("""
        CREATE TABLE folder(id INTEGER PRIMARY KEY, parent INT, pslot INT, name TEXT, names BLOB);
        CREATE INDEX folder_parent ON folder(parent, pslot);
        CREATE TABLE span(num INTEGER PRIMARY KEY, folder INT);
        CREATE VIRTUAL TABLE tri USING fts5(name, content='', tokenize='trigram',
                                            detail='none', columnsize=0);
    """)
    if packed_flags:
        db.execute("""CREATE TABLE version(folder INT, slot INT, chain INT, first INT, last INT,
            flags INT, owner INT, size INT, mtime INT, target TEXT, content INT,
            PRIMARY KEY(folder, slot, chain, first)) WITHOUT ROWID""")
    else:
        db.execute("""CREATE TABLE version(folder INT, slot INT, chain INT, first INT, last INT,
            type TEXT, mode INT, owner INT, size INT, mtime INT, target TEXT, healthy INT,
            content INT, PRIMARY KEY(folder, slot, chain, first)) WITHOUT ROWID""")


TYPES = {"d": 0, "f": 1, "l": 2}
UNTYPES = {v: k for k, v in TYPES.items()}


def vrow(packed_flags, folder, slot, first, typ, mode, size, mtime, content):
    mtime -= MTIME_BASE
    if packed_flags:  # perm bits (9) | type << 9 | healthy << 12
        return (
            folder,
            slot,
            1,
            first,
            None,
            (mode & 0o777) | TYPES[typ] << 9 | 1 << 12,
            1,
            size,
            mtime,
            "",
            content,
        )
    return (folder, slot, 1, first, None, typ, mode, 1, size, mtime, "", 1, content)


def vinsert_sql(packed_flags):
    n = 11 if packed_flags else 13
    return f"INSERT INTO version VALUES({','.join('?' * n)})"


# ---------------------------------------------------------------- build
def build(db, folders, codec, packed_flags, rnd):
    """Folders (path tuple -> [(name, size)]) into the tables. Returns the in-memory model
    used by the day simulation: files list [(folder, slot)], folder_children {id: [names]},
    leaf folder ids."""
    # the tree: every prefix of every path is a folder; root = ()
    ids = {(): 1}
    kids = {(): []}
    for path in folders:
        for k in range(1, len(path) + 1):
            p = path[:k]
            if p not in ids:
                ids[p] = len(ids) + 1
                kids[p] = []
                kids[path[: k - 1]].append(("d", p[-1], 0))
    for path, files in folders.items():
        kids[path].extend(("f", name, size) for name, size in files)
    began = time.perf_counter()
    num = 1
    frows, srows, vrows, trows = [], [], [], []
    files, child_names = [], {}
    slot_of_dir = {}
    for path, fid in ids.items():  # insertion order: ids ascending
        ch = sorted(kids[path], key=lambda c: c[1])
        names = [c[1] for c in ch]
        child_names[fid] = names
        for slot, (typ, name, size) in enumerate(ch):
            if typ == "d":
                slot_of_dir[path + (name,)] = slot
            trows.append((num + slot if FTS_ROWID == "dense" else (fid << 20) + slot, name))
            mtime = MTIME0 + rnd.randrange(300 * 86400 * 10**6)
            if typ == "f":
                vrows.append(
                    vrow(packed_flags, fid, slot, 0, "f", 0o644, size, mtime, rnd.getrandbits(63))
                )
                files.append((fid, slot))
            else:
                vrows.append(vrow(packed_flags, fid, slot, 0, "d", 0o755, 0, mtime, None))
        if ch:
            srows.append((num, fid))
            num += len(ch)
        frows.append((fid, path, names))
    t0 = time.perf_counter()
    with db:
        db.executemany(
            "INSERT INTO folder VALUES(?,?,?,?,?)",
            (
                (
                    fid,
                    ids[path[:-1]] if path else None,
                    slot_of_dir[path] if path else None,
                    path[-1] if path else "",
                    codec.pack(names),
                )
                for fid, path, names in frows
            ),
        )
        db.executemany("INSERT INTO span VALUES(?,?)", srows)
        t1 = time.perf_counter()
        db.executemany(vinsert_sql(packed_flags), vrows)
        t2 = time.perf_counter()
        db.executemany("INSERT INTO tri(rowid, name) VALUES(?,?)", trows)
        t3 = time.perf_counter()
    times = {
        "prepare": t0 - began,
        "folder+span": t1 - t0,
        "version": t2 - t1,
        "fts": t3 - t2,
        "total": t3 - began,
    }
    leaves = [ids[p] for p in folders]
    return {
        "files": files,
        "child_names": child_names,
        "leaves": leaves,
        "entries": len(vrows),
        "nfolders": len(ids),
        "times": times,
        "next_serial": len(files),
    }


# ---------------------------------------------------------------- sizes
def sizes(db):
    rows = db.execute(
        "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
    ).fetchall()
    free = (
        db.execute("PRAGMA freelist_count").fetchone()[0]
        * db.execute("PRAGMA page_size").fetchone()[0]
    )
    return dict(rows), free


def print_sizes(label, sz, entries):
    total = sum(sz.values())
    print(
        f"\n{label}: {total / 2**20:.1f} MiB = {total / entries:.1f} bytes per entry "
        f"({entries:,} entries)"
    )
    tri = sum(v for k, v in sz.items() if k.startswith("tri"))
    for k, v in sorted(sz.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<24} {v / entries:7.2f}")
    print(f"  {'(all tri* = FTS5)':<24} {tri / entries:7.2f}")
    return total


# ---------------------------------------------------------------- queries
class Reader:
    def __init__(self, db, codec):
        self.db, self.codec = db, codec

    def locate(self, rowid, cache):
        """FTS rowid -> (folder, slot)."""
        if rowid >= HIGH or FTS_ROWID == "shift":
            r = rowid - HIGH if rowid >= HIGH else rowid
            return r >> 20, r & 0xFFFFF
        span = cache.get("span")
        if span is None or not (span[0] <= rowid < span[2]):
            num, folder = self.db.execute(
                "SELECT num, folder FROM span WHERE num <= ? ORDER BY num DESC LIMIT 1", (rowid,)
            ).fetchone()
            nxt = self.db.execute(
                "SELECT num FROM span WHERE num > ? ORDER BY num LIMIT 1", (num,)
            ).fetchone()
            span = cache["span"] = (num, folder, nxt[0] if nxt else HIGH)
        return span[1], rowid - span[0]

    def names(self, folder, cache):
        names = cache.get(folder)
        if names is None:
            blob = self.db.execute("SELECT names FROM folder WHERE id = ?", (folder,)).fetchone()[0]
            names = cache[folder] = self.codec.unpack(blob)
        return names

    def path(self, folder, cache):
        key = ("path", folder)
        if key not in cache:
            parts, f = [], folder
            while f is not None:
                parent, name = self.db.execute(
                    "SELECT parent, name FROM folder WHERE id = ?", (f,)
                ).fetchone()
                parts.append(name)
                f = parent
            cache[key] = "/".join(reversed(parts))
        return cache[key]

    def search(self, fragment, cap=200):
        """(folder, slot, path/name) hits whose name holds fragment (case-insensitive, as the
        trigram tokenizer); cap None: all. Returns hits, candidates seen."""
        frag = fragment.lower()
        grams = sorted({frag[i : i + 3] for i in range(len(frag) - 2)})
        query = " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)
        cache, hits, seen = {}, [], 0
        for (rowid,) in self.db.execute("SELECT rowid FROM tri WHERE tri MATCH ?", (query,)):
            seen += 1
            folder, slot = self.locate(rowid, cache)
            name = self.names(folder, cache)[slot]
            if frag in name.lower():
                if cap is None:
                    hits.append((folder, slot))
                else:
                    spans = self.db.execute(  # the archives (chain, first..last) holding it
                        "SELECT chain, first, last FROM version WHERE folder = ? AND slot = ?",
                        (folder, slot),
                    ).fetchall()
                    hits.append((folder, slot, self.path(folder, cache) + "/" + name, spans))
                    if len(hits) >= cap:
                        break
        return hits, seen

    def page(self, folder, seq, packed_flags):
        names = self.names(folder, {})
        sub = dict(self.db.execute("SELECT pslot, id FROM folder WHERE parent = ?", (folder,)))
        cols = (
            "slot, flags, owner, size, mtime, target, content"
            if packed_flags
            else "slot, type, mode, owner, size, mtime, target, healthy, content"
        )
        out = []
        for row in self.db.execute(
            f"SELECT {cols} FROM version WHERE folder = ? AND chain = 1 AND first <= ? "
            "AND (last IS NULL OR last >= ?)",
            (folder, seq, seq),
        ):
            out.append((names[row[0]], sub.get(row[0])) + row[1:])
        return out


def pct(xs):
    xs = sorted(xs)
    return statistics.median(xs) * 1000, xs[min(len(xs) - 1, int(round(0.95 * len(xs))) - 1)] * 1000


def bench_queries(dbpath, codec, packed_flags, all_names, folders_for_page, seqs, rnd, label):
    db = sqlite3.connect(dbpath)
    rd = Reader(db, codec)
    # warm-up
    rd.search("voice")
    frags = []
    for _ in range(100):
        name = rnd.choice(all_names)
        frags.append(name[rnd.randrange(len(name) - 6) :][:5])  # the bench's fragment
    ts, tall, nh, nall, cands, tcount = [], [], [], [], [], []
    for f in frags:
        t = time.perf_counter()
        hits, seen = rd.search(f, 200)
        ts.append(time.perf_counter() - t)
        nh.append(len(hits))
        t = time.perf_counter()
        allhits, seenall = rd.search(f, None)
        tall.append(time.perf_counter() - t)
        nall.append(len(allhits))
        cands.append(seenall)
        t = time.perf_counter()
        grams = sorted({f.lower()[i : i + 3] for i in range(len(f) - 2)})
        db.execute(
            "SELECT count(*) FROM tri WHERE tri MATCH ?",
            (" AND ".join('"' + g + '"' for g in grams),),
        ).fetchone()
        tcount.append(time.perf_counter() - t)
        assert all(f.lower() in rd.names(a, {})[b].lower() for a, b in allhits[:50])
    fp = sum(c - h for c, h in zip(cands, nall, strict=True)) / max(1, sum(cands))
    pts = []
    sample = [rnd.choice(folders_for_page) for _ in range(200)]
    for fid in sample:
        s = rnd.choice(seqs)
        t = time.perf_counter()
        rows = rd.page(fid, s, packed_flags)
        pts.append(time.perf_counter() - t)
    res = {
        "search_p50_ms": pct(ts)[0],
        "search_p95_ms": pct(ts)[1],
        "search_all_p50_ms": pct(tall)[0],
        "search_all_p95_ms": pct(tall)[1],
        "hits_median_capped": statistics.median(nh),
        "hits_all_median": statistics.median(nall),
        "hits_all_max": max(nall),
        "candidates_all_median": statistics.median(cands),
        "false_positive_share_of_candidates": fp,
        "count_unverified_p50_ms": pct(tcount)[0],
        "count_unverified_p95_ms": pct(tcount)[1],
        "page_p50_ms": pct(pts)[0],
        "page_p95_ms": pct(pts)[1],
        "page_rows_last": len(rows),
    }
    print(
        f"\n[{label}] search (cap 200): p50 {res['search_p50_ms']:.1f} ms "
        f"p95 {res['search_p95_ms']:.1f} ms; "
        f"count all: p50 {res['search_all_p50_ms']:.1f} p95 {res['search_all_p95_ms']:.1f} ms; "
        f"hits median {res['hits_all_median']:.0f} max {res['hits_all_max']}, "
        f"candidates median {res['candidates_all_median']:.0f}, false-positive share {fp:.1%}; "
        f"unverified FTS count(*): p50 {res['count_unverified_p50_ms']:.1f} "
        f"p95 {res['count_unverified_p95_ms']:.1f} ms"
    )
    print(f"[{label}] folder page: p50 {res['page_p50_ms']:.2f} ms p95 {res['page_p95_ms']:.2f} ms")
    db.close()
    return res


# ---------------------------------------------------------------- days
def simulate_days(db, model, codec, packed_flags, days, percent, new_permille, rnd):
    files, child_names = model["files"], model["child_names"]
    leaves = model["leaves"]
    t0 = time.perf_counter()
    serial = model["next_serial"]
    for day in range(1, days + 1):
        n_mod = max(1, round(len(files) * percent / 100))
        n_new = max(1, round(len(files) * new_permille / 1000))
        picked = rnd.sample(range(len(files)), n_mod)
        closes, inserts = [], []
        for i in picked:
            folder, slot = files[i]
            closes.append((day - 1, folder, slot))
            mtime = (
                MTIME0 + 300 * 86400 * 10**6 + day * 86400 * 10**6 + rnd.randrange(86400 * 10**6)
            )
            inserts.append(
                vrow(
                    packed_flags,
                    folder,
                    slot,
                    day,
                    "f",
                    0o644,
                    rnd.randint(10, 2000),
                    mtime,
                    rnd.getrandbits(63),
                )
            )
        touched, trows = {}, []
        for k in range(n_new):
            serial += 1
            folder = rnd.choice(leaves)
            name = f"new-{day}-{k}-{name_for(rnd, serial)}"
            names = child_names[folder]
            slot = len(names)
            names.append(name)
            touched[folder] = names
            files.append((folder, slot))
            mtime = MTIME0 + 300 * 86400 * 10**6 + day * 86400 * 10**6
            inserts.append(
                vrow(
                    packed_flags,
                    folder,
                    slot,
                    day,
                    "f",
                    0o644,
                    rnd.randint(10, 2000),
                    mtime,
                    rnd.getrandbits(63),
                )
            )
            trows.append((HIGH + (folder << 20) + slot, name))
        with db:
            db.executemany(
                "UPDATE version SET last = ? WHERE folder = ? AND slot = ? AND chain = 1 "
                "AND last IS NULL",
                closes,
            )
            db.executemany(vinsert_sql(packed_flags), inserts)
            db.executemany(
                "UPDATE folder SET names = ? WHERE id = ?",
                ((codec.pack(names), f) for f, names in touched.items()),
            )
            db.executemany("INSERT INTO tri(rowid, name) VALUES(?,?)", trows)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--percent", type=float, default=1.0)
    ap.add_argument("--new-permille", type=float, default=1.0)
    ap.add_argument("--db", default=None)
    ap.add_argument("--workdir", default="/var/tmp/index-layout-probe")
    ap.add_argument("--coding", default="front", choices=("front", "join"))
    ap.add_argument("--packed-flags", type=int, default=1)
    ap.add_argument("--optimize", type=int, default=0, help="FTS5 'optimize' after the build")
    ap.add_argument("--compare-codings", type=int, default=1)
    ap.add_argument("--fts-rowid", default="dense", choices=("dense", "shift"))
    ap.add_argument("--mtime-base", type=int, default=0)
    ap.add_argument("--queries", type=int, default=1)
    args = ap.parse_args()
    global FTS_ROWID, MTIME_BASE
    FTS_ROWID, MTIME_BASE = args.fts_rowid, args.mtime_base
    os.makedirs(args.workdir, exist_ok=True)
    dbpath = args.db or os.path.join(
        args.workdir,
        f"idx-{args.files}-{args.coding}-{args.packed_flags}-"
        f"{args.fts_rowid}-{args.mtime_base}-{args.optimize}.db",
    )
    for suffix in ("", "-journal", "-wal"):
        if os.path.exists(dbpath + suffix):
            os.remove(dbpath + suffix)
    print(
        f"sqlite {sqlite3.sqlite_version}; {args.files:,} files; db {dbpath}; "
        f"coding {args.coding}; "
        f"packed flags {args.packed_flags}"
    )
    rnd = random.Random(1)
    t = time.perf_counter()
    folders, _ = generate(args.files, rnd)
    print(f"generated in {time.perf_counter() - t:.1f} s: {len(folders):,} leaf folders")
    result = {"args": vars(args)}
    attr_rnd = random.Random(2)
    codec = Codec(args.coding)
    db = sqlite3.connect(dbpath)
    schema(db, args.packed_flags)
    model = build(db, folders, codec, args.packed_flags, attr_rnd)
    entries = model["entries"]
    print(
        f"built: {entries:,} entries ({model['nfolders']:,} folders), times "
        + ", ".join(f"{k} {v:.1f} s" for k, v in model["times"].items())
    )
    if args.compare_codings:
        res = compare_codings(list(model["child_names"].values()))
        print("\nname blobs, bytes per entry (all folders):")
        for k, v in res.items():
            print(f"  {k:<46} {v / entries:6.2f}")
        result["codings"] = {k: v / entries for k, v in res.items()}
    sz, free = sizes(db)
    first_total = print_sizes("first archive", sz, entries)
    result["first"] = {k: v / entries for k, v in sz.items()}
    result["first_total_per_entry"] = first_total / entries
    if args.optimize:
        t = time.perf_counter()
        with db:
            db.execute("INSERT INTO tri(tri) VALUES('optimize')")
        print(f"fts optimize {time.perf_counter() - t:.1f} s")
        sz2, free2 = sizes(db)
        print_sizes("first archive after FTS optimize", sz2, entries)
        print(f"  freelist {free2 / entries:.2f}")
    result["build_times"] = model["times"]
    result["entries"] = entries
    db.close()
    all_names = [n for fl in folders.values() for n, _ in fl]
    qrnd = random.Random(3)
    if args.queries:
        result["q_first"] = bench_queries(
            dbpath, codec, args.packed_flags, all_names, model["leaves"], [0], qrnd, "first archive"
        )
    if args.days:
        db = sqlite3.connect(dbpath)
        took = simulate_days(
            db,
            model,
            codec,
            args.packed_flags,
            args.days,
            args.percent,
            args.new_permille,
            random.Random(4),
        )
        sz, free = sizes(db)
        total = print_sizes(f"after {args.days} more days", sz, entries)
        print(f"  freelist pages: {free / 2**20:.2f} MiB = {free / entries:.2f} bytes per entry")
        print(
            f"  ratio to first archive: {total / first_total:.3f}x "
            f"(with freelist {(total + free) / first_total:.3f}x); days took {took:.1f} s"
        )
        db.close()
        result["days"] = {k: v / entries for k, v in sz.items()}
        result["ratio"] = total / first_total
        result["ratio_with_free"] = (total + free) / first_total
        result["q_days"] = bench_queries(
            dbpath,
            codec,
            args.packed_flags,
            all_names,
            model["leaves"],
            list(range(args.days + 1)),
            qrnd,
            f"after {args.days} days",
        )
    with open(dbpath + ".json", "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
