#!/usr/bin/env python
"""Which borg command is the cheapest source for "what changed between two archives"?

Builds a tree of --files small files (4-6 folders deep, plus a few awkward names), makes a
real repository (borg init --encryption=none), archives a1, changes --change-percent of the
files (half modified, a quarter deleted, a quarter added), archives a2, and then times:

  (a)  borg list --json-lines REPO::a2
  (b)  borg list --json-lines --format '{type}{mode}...{healthy}' REPO::a2
  (c)  borg diff --json-lines REPO::a1 a2
  (d)  borg diff --json-lines --content-only REPO::a1 a2
  (e)  borg create --list --filter=AM --log-json REPO::a3 after another change,
       against a plain borg create of the same a3 (repository and cache restored before each)
  (f)  json.loads of every line of (a), in this process
  (g)  borg list --format '{bpath}{NUL}' REPO::a2 (text, for comparison)

Each borg command runs --repeat times (default 2); the table shows the smallest wall and
user-CPU figures and flags the ones whose runs differ by more than 20 %. It then shows the
JSON shapes and how non-UTF-8 names, newline names, symlinks and hardlinks come out.

Usage: .venv/bin/python bench/index_sources.py [--files 200000] [--change-percent 1]
                                               [--workdir /tmp/idxbench]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BORG = HERE.parent / ".venv" / "bin" / "borg"

# The awkward names, as bytes (relative to the source root).
AWK = b"awkward"
NON_UTF8 = AWK + b"/caf\xe9.txt"
NEWLINE = AWK + b"/new\nline.txt"
LONG = AWK + b"/" + b"L" * 196 + b".txt"  # a 200-character name
SYMLINK = AWK + b"/link-to-caf\xe9"
HARD_A = AWK + b"/hard-a.txt"
HARD_B = AWK + b"/hard-b.txt"
GONE = AWK + b"/gone\xff.txt"  # deleted in change 1
# Added in change 1:
NEW_NON_UTF8 = AWK + b"/na\xefve-new.txt"
NEW_NEWLINE = AWK + b"/added\nnewline.txt"
NEW_HARD_A = AWK + b"/new-hard-a.txt"
NEW_HARD_B = AWK + b"/new-hard-b.txt"

FORMAT_B = "{type}{mode}{user}{group}{size}{mtime}{path}{linktarget}{healthy}"


# ---------------------------------------------------------------- the source tree


def content(rnd: random.Random) -> bytes:
    """A few bytes to a few KB of random bytes (mean about 1 KB)."""
    size = min(8192, max(3, int(rnd.expovariate(1 / 1024))))
    return rnd.randbytes(size)


def write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def leaf_dir(k: int) -> bytes:
    """The k-th leaf folder: 4 to 6 folders deep below the source root."""
    parts = [
        f"a{k % 5}",
        f"b{(k // 5) % 6}",
        f"c{(k // 30) % 7}",
        f"d{(k // 210) % 4}",
        f"e{k % 3}",
    ]
    depth = 4 + k % 3  # folders, the leaf included
    return os.fsencode("/".join(parts[: depth - 1] + [f"leaf{k:05d}"]))


def generate(src: bytes, n: int, rnd: random.Random) -> tuple[list[bytes], list[bytes]]:
    """Write n regular files into src; return (files, leaf folders) as bytes paths."""
    files: list[bytes] = []
    leaves: list[bytes] = []
    k = 0
    while len(files) < n:
        d = os.path.join(src, leaf_dir(k))
        os.makedirs(d, exist_ok=True)
        leaves.append(d)
        for i in range(min(rnd.randint(100, 300), n - len(files))):
            p = os.path.join(d, b"f%04d.dat" % i)
            write(p, content(rnd))
            files.append(p)
        k += 1
    awk = os.path.join(src, AWK)
    os.makedirs(awk, exist_ok=True)
    for name in (NON_UTF8, NEWLINE, LONG, HARD_A, GONE):
        write(os.path.join(src, name), content(rnd))
    os.link(os.path.join(src, HARD_A), os.path.join(src, HARD_B))
    os.symlink(os.path.basename(NON_UTF8), os.path.join(src, SYMLINK))
    return files, leaves


def change(
    src: bytes,
    files: list[bytes],
    leaves: list[bytes],
    percent: float,
    rnd: random.Random,
    tag: str,
    awkward: bool,
) -> dict:
    """Change percent % of files in place: 1/2 modified, 1/4 deleted, 1/4 new."""
    k = max(4, round(len(files) * percent / 100))
    n_mod, n_del = k // 2, k // 4
    n_add = k - n_mod - n_del
    picked = rnd.sample(range(len(files)), n_mod + n_del)
    now = time.time()
    for idx in picked[:n_mod]:
        p = files[idx]
        old = os.stat(p)
        data = content(rnd)
        while len(data) == old.st_size:
            data = content(rnd)
        write(p, data)
        os.utime(p, (now, max(now, old.st_mtime + 1)))
    dead = set(picked[n_mod:])
    for idx in dead:
        os.unlink(files[idx])
    files[:] = [p for i, p in enumerate(files) if i not in dead]
    for i in range(n_add):
        p = os.path.join(rnd.choice(leaves), b"new-%s-%06d.dat" % (tag.encode(), i))
        write(p, content(rnd))
        files.append(p)
    if awkward:
        for name in (NON_UTF8, NEWLINE, HARD_A):  # HARD_A also changes HARD_B (same inode)
            write(os.path.join(src, name), content(rnd))
        os.unlink(os.path.join(src, GONE))
        for name in (NEW_NON_UTF8, NEW_NEWLINE, NEW_HARD_A):
            write(os.path.join(src, name), content(rnd))
        os.link(os.path.join(src, NEW_HARD_A), os.path.join(src, NEW_HARD_B))
    return {"modified": n_mod, "deleted": n_del, "added": n_add}


# ---------------------------------------------------------------- running borg


class Runner:
    def __init__(self, borg: str, env: dict, outdir: Path):
        self.borg = borg
        self.env = env
        self.outdir = outdir

    def run(
        self,
        args: list[str],
        *,
        stream: str = "stdout",
        save: str | None = None,
        cwd: str | None = None,
        sep: bytes = b"\n",
    ) -> dict:
        """Run borg; count the lines of `stream` (the other one is kept if small).

        Returns wall, user and sys CPU seconds of the child and the line count."""
        out_pipe = subprocess.PIPE
        other = open(self.outdir / "other.log", "wb")
        kw = (
            {"stdout": out_pipe, "stderr": other}
            if stream == "stdout"
            else {"stdout": other, "stderr": out_pipe}
        )
        sink = open(self.outdir / save, "wb") if save else None
        t0 = time.perf_counter()
        proc = subprocess.Popen([self.borg, *args], env=self.env, cwd=cwd, **kw)
        pipe = proc.stdout if stream == "stdout" else proc.stderr
        lines = 0
        while True:
            block = pipe.read1(1 << 20)
            if not block:
                break
            lines += block.count(sep)
            if sink:
                sink.write(block)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        other.close()
        if sink:
            sink.close()
        rc = proc.returncode
        if rc not in (0, 1):  # 1 = warnings
            sys.stderr.write((self.outdir / "other.log").read_text(errors="replace")[-3000:])
            raise SystemExit(f"borg {' '.join(args)} failed with rc {rc}")
        return {
            "wall": wall,
            "user": usage.ru_utime,
            "sys": usage.ru_stime,
            "lines": lines,
            "rc": rc,
        }


def best(runs: list[dict]) -> dict:
    b = {k: min(r[k] for r in runs) for k in ("wall", "user", "sys")}
    b["lines"] = runs[0]["lines"]
    b["walls"] = [r["wall"] for r in runs]
    b["users"] = [r["user"] for r in runs]
    b["noisy"] = max(b["walls"]) > 1.2 * min(b["walls"]) or max(b["users"]) > 1.2 * min(b["users"])
    return b


# ---------------------------------------------------------------- reporting helpers


def has_surrogates(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def show_line(raw: bytes, label: str = "") -> None:
    print(f"  {label}raw: {raw!r}")
    try:
        obj = json.loads(raw)
    except ValueError as e:
        print(f"    json.loads failed: {e}")
        return
    path = obj.get("path") if isinstance(obj, dict) else None
    if isinstance(path, str):
        print(f"    json.loads path={path!r} lone surrogates={has_surrogates(path)}")


def awkward_lines(data: bytes) -> list[bytes]:
    keys = (b"awkward/",)
    return [ln for ln in data.split(b"\n") if any(k in ln for k in keys)]


def diff_shapes(data: bytes) -> dict:
    """One example line per distinct set of change types."""
    shapes: dict = {}
    for ln in data.split(b"\n"):
        if not ln:
            continue
        obj = json.loads(ln)
        key = tuple(sorted(c["type"] for c in obj["changes"]))
        shapes.setdefault(key, [0, ln])
        shapes[key][0] += 1
    return shapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=200000)
    ap.add_argument("--change-percent", type=float, default=1.0)
    ap.add_argument("--workdir", default="/tmp/idxbench")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--borg", default=str(DEFAULT_BORG))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src, repo, base, snap, outdir = (work / n for n in ("src", "repo", "base", "snap", "out"))
    for p in (src, repo, base, snap, outdir):  # only what this script makes
        if p.exists():
            shutil.rmtree(p)
    base.mkdir()
    outdir.mkdir()
    env = dict(
        os.environ,
        BORG_BASE_DIR=str(base),
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        BORG_PASSPHRASE="",
        BORG_EXIT_CODES="legacy",
    )
    env.pop("BORG_REPO", None)
    r = Runner(args.borg, env, outdir)
    rnd = random.Random(args.seed)
    bsrc = os.fsencode(str(src))
    R = str(repo)
    version = subprocess.run(
        [args.borg, "--version"], capture_output=True, text=True
    ).stdout.strip()
    print(f"borg: {version}; load average at start: {os.getloadavg()}")

    # 1. the tree
    t0 = time.perf_counter()
    os.makedirs(bsrc)
    files, leaves = generate(bsrc, args.files, rnd)
    print(
        f"generated {len(files)} files in {len(leaves)} leaf folders (+ awkward/) "
        f"in {time.perf_counter() - t0:.1f} s"
    )

    # 2. repository and a1; borg create runs in src so archive paths are relative
    r.run(["init", "--encryption=none", R])
    setup = {}
    setup["create a1"] = r.run(["create", "--compression", "lz4", f"{R}::a1", "."], cwd=str(src))
    # 3. change 1 and a2
    c1 = change(bsrc, files, leaves, args.change_percent, rnd, "c1", awkward=True)
    print(f"change 1: {c1} (+ awkward: 3 modified, 1 deleted, 3 added)")
    setup["create a2"] = r.run(["create", "--compression", "lz4", f"{R}::a2", "."], cwd=str(src))
    for k, v in setup.items():
        print(f"{k}: wall {v['wall']:.1f} s, user {v['user']:.1f} s (single run)")

    # 4. the timings
    cmds = {
        "(a) list --json-lines a2": (["list", "--json-lines", f"{R}::a2"], "stdout"),
        "(b) list --json-lines --format a2": (
            ["list", "--json-lines", "--format", FORMAT_B, f"{R}::a2"],
            "stdout",
        ),
        "(c) diff --json-lines a1 a2": (["diff", "--json-lines", f"{R}::a1", "a2"], "stdout"),
        "(d) diff --json-lines --content-only": (
            ["diff", "--json-lines", "--content-only", f"{R}::a1", "a2"],
            "stdout",
        ),
        "(b2) list --json-lines --format {path}": (
            ["list", "--json-lines", "--format", "{path}", f"{R}::a2"],
            "stdout",
        ),
        "(g) list --format {bpath}{NUL} a2": (
            ["list", "--format", "{bpath}{NUL}", f"{R}::a2"],
            "stdout",
        ),
    }
    results: dict = {}
    for rep in range(args.repeat):
        for name, (argv, stream) in cmds.items():
            save = name[1 : name.index(")")] + ".out" if rep == 0 else None
            sep = b"\0" if "{NUL}" in name else b"\n"
            results.setdefault(name, []).append(r.run(argv, stream=stream, save=save, sep=sep))
    table = {name: best(runs) for name, runs in results.items()}

    # (e): another change, then a3 with --list --filter=AM --log-json vs plain, from the same state
    c2 = change(bsrc, files, leaves, args.change_percent, rnd, "c2", awkward=False)
    print(f"change 2: {c2}")
    shutil.copytree(repo, snap / "repo", symlinks=True)
    shutil.copytree(base, snap / "base", symlinks=True)

    def restore() -> None:
        shutil.rmtree(repo)
        shutil.rmtree(base)
        shutil.copytree(snap / "repo", repo, symlinks=True)
        shutil.copytree(snap / "base", base, symlinks=True)

    e_list = [
        "create",
        "--compression",
        "lz4",
        "--list",
        "--filter=AM",
        "--log-json",
        f"{R}::a3",
        ".",
    ]
    e_plain = ["create", "--compression", "lz4", f"{R}::a3", "."]
    e_runs: dict = {"(e) create a3 --list --filter=AM --log-json": [], "(e') create a3 plain": []}
    for rep in range(args.repeat):
        restore()
        e_runs["(e) create a3 --list --filter=AM --log-json"].append(
            r.run(e_list, stream="stderr", save="e.out" if rep == 0 else None, cwd=str(src))
        )
        restore()
        e_runs["(e') create a3 plain"].append(r.run(e_plain, stream="stderr", cwd=str(src)))
    for name, runs in e_runs.items():
        table[name] = best(runs)

    # (f) json.loads of every line of (a)
    a_lines = (outdir / "a.out").read_bytes().splitlines()
    times = []
    for _ in range(args.repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        for ln in a_lines:
            json.loads(ln)
        times.append((time.process_time() - c0, time.perf_counter() - w0))
    table["(f) json.loads of (a) lines"] = {
        "wall": min(t[1] for t in times),
        "user": min(t[0] for t in times),
        "sys": 0.0,
        "lines": len(a_lines),
        "walls": [t[1] for t in times],
        "users": [t[0] for t in times],
        "noisy": max(t[1] for t in times) > 1.2 * min(t[1] for t in times),
    }

    # 6. the table
    items = table["(a) list --json-lines a2"]["lines"]
    print(
        f"\nload average at end: {os.getloadavg()}; a2 holds {items} items; "
        f"min of {args.repeat} runs; * = runs differ by > 20 %"
    )
    hdr = (
        f"{'command':44} {'wall s':>7} {'user s':>7} {'sys s':>6} {'lines':>8} "
        f"{'us/line':>9} {'us/item':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, b in table.items():
        per_line = b["wall"] / b["lines"] * 1e6 if b["lines"] else float("nan")
        per_item = b["wall"] / items * 1e6
        flag = "*" if b["noisy"] else " "
        print(
            f"{name:44} {b['wall']:7.2f} {b['user']:7.2f} {b['sys']:6.2f} {b['lines']:8d} "
            f"{per_line:9.1f} {per_item:8.1f}{flag}"
        )
    print("runs (wall / user):")
    for name, b in table.items():
        print(
            f"  {name:44} "
            + ", ".join(f"{w:.2f}/{u:.2f}" for w, u in zip(b["walls"], b["users"], strict=True))
        )

    # shapes
    a_first, b_first = (
        json.loads(a_lines[0]),
        json.loads((outdir / "b.out").read_bytes().splitlines()[0]),
    )
    print(f"\n(a) keys: {sorted(a_first)}")
    print(f"(b) keys: {sorted(b_first)}")
    print(f"(b2) keys: {sorted(json.loads((outdir / 'b2.out').read_bytes().splitlines()[0]))}")
    print(f"(a) regular file line: {next(ln for ln in a_lines if b'.dat' in ln)!r}")
    b_lines = (outdir / "b.out").read_bytes().splitlines()
    print(f"(b) regular file line: {next(ln for ln in b_lines if b'.dat' in ln)!r}")
    for tag in ("c", "d"):
        print(f"\n({tag}) diff shapes (count, example):")
        for key, (count, ln) in diff_shapes((outdir / f"{tag}.out").read_bytes()).items():
            print(f"  {list(key)} x{count}: {ln!r}")
    e_data = (outdir / "e.out").read_bytes().splitlines()
    fs = [ln for ln in e_data if b'"file_status"' in ln]
    print(
        f"\n(e) stderr lines {len(e_data)}, file_status lines {len(fs)}; statuses: "
        f"{sorted({json.loads(ln)['status'] for ln in fs})}"
    )
    for st in (b'"M"', b'"A"'):
        for ln in [ln for ln in fs if b'"status": ' + st in ln][:1]:
            print(f"  {ln!r}")
    others = [ln for ln in e_data if b'"file_status"' not in ln]
    for ln in others[:3]:
        print(f"  other: {ln[:200]!r}")

    # 5. awkward names
    print("\nawkward names in (a) borg list --json-lines a2:")
    for ln in awkward_lines((outdir / "a.out").read_bytes()):
        show_line(ln)
    print("awkward names in (c) borg diff --json-lines a1 a2:")
    for ln in awkward_lines((outdir / "c.out").read_bytes()):
        show_line(ln)
    print("awkward names in (e) create --list --log-json a3 (none changed in change 2):")
    for ln in awkward_lines((outdir / "e.out").read_bytes()):
        show_line(ln)
    print("awkward names in (g) list --format {bpath}{NUL} a2:")
    for rec in (outdir / "g.out").read_bytes().split(b"\0"):
        if rec.startswith(b"awkward/"):
            print(f"  raw: {rec!r}")


if __name__ == "__main__":
    main()
