"""Database sources: dumped straight into a backup's archive and restored from one.

A backup that includes databases makes one named pipe per database in a private scratch
folder, starts each dump tool writing into its pipe, and hands borg the folder with
`--read-special` (borg reads a pipe like a file) and the slashdot form `SCRATCH/./PATH`, so
each dump lands in the archive at `opscenter-databases/KIND/SOURCE/DATABASE.EXT` whatever the
scratch folder's name. Nothing is written to disk but the pipes: the bytes go from the dump
tool through the kernel to borg.

- consistent as of its start: `pg_dump` (one snapshot), `mariadb-dump --single-transaction`,
  SQLite's `.dump` (one read transaction);
- passwords reach the tools through a 0600 file in the scratch folder (`PGPASSFILE`, MariaDB's
  `--defaults-extra-file`), never argv or the environment;
- a dump that fails fails the backup, and the archive that holds it is deleted.

The processes themselves start in borg.py (the one place that starts processes). This module
imports no Django: a host's agent runs the same dumps, restores and verifies with the sources
its job hands it (`Source`), and the center makes a `Source` from its `DatabaseSource` rows.
"""

import os
import stat
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from borgapp import borg, validation
from borgapp.errors import OperationError

POSTGRESQL, MARIADB, SQLITE = "postgresql", "mariadb", "sqlite"  # DatabaseSource.Kind values
ARCHIVE_ROOT = "opscenter-databases"
EXTENSIONS = {
    POSTGRESQL: "pgdump",  # pg_dump's custom format (pg_restore)
    MARIADB: "sql",
    SQLITE: "sql",
}
DEFAULT_PORTS = {POSTGRESQL: 5432, MARIADB: 3306}
SYSTEM_DATABASES = {
    POSTGRESQL: {"template0", "template1"},
    MARIADB: {"information_schema", "performance_schema", "sys", "mysql"},
}
SQLITE_NAME = "main"  # an SQLite source is one database
LIST_TIMEOUT = 60


@dataclass(frozen=True)
class Source:
    """One database source as the tools need it, its password in clear: made on the center
    from a DatabaseSource (`DatabaseSource.spec`), or by an agent from its job's handout."""

    name: str
    kind: str
    host: str = ""
    port: int | None = None
    username: str = ""
    databases: tuple = ()
    path: str = ""
    password: str = field(default="", repr=False)

    def handout(self) -> dict:
        """For the job handed to the agent of the source's host (the one place it travels)."""
        return {**asdict(self), "databases": list(self.databases)}

    @classmethod
    def from_handout(cls, data) -> "Source":
        """A source as a job handed it over, checked like any input."""
        if not isinstance(data, dict) or data.get("kind") not in EXTENSIONS:
            raise validation.InvalidInput("The job names a database source of no known kind.")
        port = data.get("port")
        if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
            raise validation.InvalidInput("The job names a database source with a bad port.")
        names = data.get("databases") or []
        if not isinstance(names, list):
            raise validation.InvalidInput("The job's database names are not a list.")
        text = {key: data.get(key) or "" for key in ("host", "username", "path", "password")}
        if not all(isinstance(value, str) for value in text.values()):
            raise validation.InvalidInput("The job names a database source with bad fields.")
        if data["kind"] == SQLITE:
            validation.validate_source_path(text["path"])
        return cls(
            name=validation.validate_name(data.get("name"), "Database source"),
            kind=data["kind"], port=port,
            databases=tuple(validation.validate_database_name(n) for n in names), **text,
        )  # fmt: skip


def archive_path(source: Source, database: str) -> str:
    """Where a database's dump is in an archive (documented in the README)."""
    return f"{ARCHIVE_ROOT}/{source.kind}/{source.name}/{database}.{EXTENSIONS[source.kind]}"


def parse_archive_path(path: str) -> tuple[str, str, str]:
    """(kind, source name, database) of an archive path made by archive_path."""
    parts = path.strip("/").split("/")
    if len(parts) != 4 or parts[0] != ARCHIVE_ROOT or "." not in parts[3]:
        raise validation.InvalidInput(f"{path!r} is not a database dump's path in an archive.")
    return parts[1], parts[2], parts[3].rsplit(".", 1)[0]


# --- talking to a server: credentials, environment, argv ---------------------------------


class Access:
    """How the tools reach one source: a private folder holding its credentials file."""

    def __init__(self, source: Source, folder: Path):
        self.source = source
        self.folder = folder
        self.kind = source.kind
        self.port = str(source.port or DEFAULT_PORTS.get(source.kind, ""))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(folder),
        }
        password = source.password
        if self.kind == POSTGRESQL:
            passfile = _private_file(folder / "pgpass", _pgpass_line(source, self.port, password))
            self.env.update(PGPASSFILE=str(passfile), PGCONNECT_TIMEOUT="10")
        elif self.kind == MARIADB:
            cnf = _mariadb_cnf(source, self.port, password)
            self.cnf = _private_file(folder / "client.cnf", cnf)

    def server_args(self) -> list[str]:
        if self.kind == POSTGRESQL:
            args = [f"--host={self.source.host}", f"--port={self.port}", "--no-password"]
            return args + ([f"--username={self.source.username}"] if self.source.username else [])
        return [f"--defaults-extra-file={self.cnf}"]  # MariaDB: must come first

    def dump_argv(self, database: str, output: str) -> list[str]:
        if self.kind == POSTGRESQL:
            return ["pg_dump", *self.server_args(), "--format=custom", "--no-sync",
                    f"--file={output}", "--", database]  # fmt: skip
        if self.kind == MARIADB:
            return ["mariadb-dump", *self.server_args(), "--single-transaction", "--routines",
                    "--events", "--triggers", f"--result-file={output}",
                    "--", database]  # fmt: skip
        # the first statement fails (and -bail stops) on a file that is no database: .dump
        # itself writes such errors into its output and exits 0
        return ["sqlite3", "-bail", "-readonly", self.source.path,
                "SELECT count(*) FROM sqlite_schema;", _sqlite_output(output), ".dump"]  # fmt: skip

    def query_argv(self, sql: str, database: str = "") -> list[str]:
        """A query whose rows come back one per line (no headers)."""
        if self.kind == POSTGRESQL:
            return ["psql", *self.server_args(), "--no-psqlrc", "--tuples-only", "--no-align",
                    "--quiet", "--set=ON_ERROR_STOP=1", f"--command={sql}",
                    "--", database or "postgres"]  # fmt: skip
        return ["mariadb", *self.server_args(), "--batch", "--skip-column-names",
                f"--execute={sql}", *([database] if database else [])]  # fmt: skip

    def query(self, sql: str, database: str = "") -> list[str]:
        ran = borg.run_program(
            self.query_argv(sql, database), env=self.env, timeout=LIST_TIMEOUT, keep_lines=100_000
        )
        if ran.rc != 0:
            raise OperationError(
                f"{self.source.name}: {_tool_problem(ran)}", "database_unreachable"
            )
        return [line.strip() for line in ran.tail if line.strip()]

    def databases(self) -> list[str]:
        """The databases to dump: those listed on the source, else every one on the server."""
        if self.kind == SQLITE:
            return [SQLITE_NAME]
        if self.source.databases:
            return list(self.source.databases)
        if self.kind == POSTGRESQL:
            names = self.query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")
        else:
            names = self.query("SHOW DATABASES")
        names = [n for n in names if n not in SYSTEM_DATABASES[self.kind]]
        for name in names:
            validation.validate_database_name(name)
        return names


def _private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _pgpass_line(source: Source, port: str, password: str) -> str:
    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    fields = [source.host, port, "*", source.username or "*", password]
    return ":".join(escaped(f) if f != "*" else f for f in fields) + "\n"


def _mariadb_cnf(source: Source, port: str, password: str) -> str:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[client]", f"host={quoted(source.host)}", f"port={port}"]
    if source.username:
        lines.append(f"user={quoted(source.username)}")
    if password:
        lines.append(f"password={quoted(password)}")
    return "\n".join(lines) + "\n"


def _sqlite_output(path: str) -> str:
    if "'" in path:
        raise OperationError(f"The scratch path {path!r} cannot be given to sqlite3.")
    return f".output '{path}'"


def reason_in(lines, fallback: str) -> str:
    """The line of a tool's output that says what went wrong: the last one that names an
    error (psql and pg_dump end with hints such as where the password came from)."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in ("FATAL", "ERROR", "error:", "Error", "failed")):
            return line
    return lines[-1] if lines else fallback


def _tool_problem(ran) -> str:
    if ran.not_started:
        return f"the tool could not start ({ran.not_started}); is it installed?"
    if ran.timed_out:
        return "no answer within the timeout"
    return reason_in(ran.tail, f"exit {ran.rc}")


# --- a backup's dumps -------------------------------------------------------------------------


@dataclass
class Dump:
    source: Source
    database: str
    pipe: Path
    path: str  # in the archive
    access: Access | None = None
    process: borg.Background | None = None
    rc: int | None = None


@dataclass
class Dumps:
    """The dumps of one backup, in `scratch` (a private folder the caller removes)."""

    sources: list[Source]
    scratch: Path
    items: list[Dump] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)
    _opener: threading.Thread | None = None

    @property
    def borg_source(self) -> str:
        return f"{self.scratch}/./{ARCHIVE_ROOT}"

    def prepare(self) -> None:
        """Credentials, the list of databases and one named pipe each (nothing runs yet)."""
        for source in self.sources:
            folder = self.scratch / "access" / source.name
            folder.mkdir(parents=True, mode=0o700)
            access = Access(source, folder)
            for database in access.databases():
                path = archive_path(source, database)
                pipe = self.scratch / path
                pipe.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.mkfifo(pipe, 0o600)
                self.items.append(Dump(source, database, pipe, path, access))

    def start(self) -> None:
        for item in self.items:
            try:
                item.process = borg.Background(
                    item.access.dump_argv(item.database, str(item.pipe)), env=item.access.env
                )
            except borg.BorgError as exc:  # the tool is missing: stop those already waiting
                for started in self.items:
                    if started.process is not None:
                        started.process.stop()
                raise OperationError(
                    f"{item.source.name}/{item.database}: {exc} Is it installed on this server?",
                    "dump_failed",
                ) from None
        self._opener = threading.Thread(target=self._release_ended, daemon=True)
        self._opener.start()

    def _release_ended(self) -> None:
        """A tool that ended (done, or failed before it opened its pipe) must not leave borg
        waiting on that pipe: its pipe is opened and closed for writing whenever borg holds
        it open for reading, which borg reads as the end of the file."""
        while not self._done.wait(0.1):
            for item in self.items:
                if item.process is not None and not item.process.running():
                    try:
                        os.close(os.open(item.pipe, os.O_WRONLY | os.O_NONBLOCK))
                    except OSError:
                        pass  # no reader now

    def finish(self, borg_ended_ok: bool) -> list[str]:
        """After borg: wait for the tools (stop them if borg did not read), and say what
        failed, one line per dump."""
        self._done.set()
        problems = []
        for item in self.items:
            if item.process is None:
                continue
            item.rc = item.process.wait(timeout=30 if borg_ended_ok else 0.5)
            if item.rc is None:
                item.process.stop()
                item.rc = item.process.proc.returncode
                problems.append(f"{item.path}: the dump tool did not finish and was stopped")
            elif item.rc != 0:
                reason = reason_in(item.process.tail, f"exit {item.rc}")
                problems.append(f"{item.source.name}/{item.database}: {reason}")
        if self._opener is not None:
            self._opener.join(timeout=5)
        return problems

    def result(self) -> list[dict]:
        return [{"source": d.source.name, "database": d.database, "path": d.path}
                for d in self.items]  # fmt: skip


def special_files(sources: list[str]) -> list[str]:
    """Devices and named pipes under the source paths: with `--read-special` borg would read
    them as files (a /dev/zero forever, a pipe until someone writes), so they are excluded."""
    found = []
    for source in sources:
        if not os.path.lexists(source):
            continue
        if _special(os.lstat(source).st_mode):
            found.append(source)
            continue
        for folder, dirs, files in os.walk(source):
            for name in files + dirs:
                path = os.path.join(folder, name)
                try:
                    if _special(os.lstat(path).st_mode):
                        found.append(path)
                except OSError:
                    continue
    return found


def _special(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)


# --- restoring one dump -----------------------------------------------------------------------


def restore(source: Source, database: str, scratch: Path, *, into: str, force: bool,
            feed) -> dict:  # fmt: skip
    """Stream a dump from borg (`feed(fd)` runs `borg extract --stdout` into fd) into the
    server's restore tool. Refuses a target that holds tables unless `force`. Returns what
    was restored where."""
    folder = scratch / "access"
    folder.mkdir(mode=0o700)
    access = Access(source, folder)
    if source.kind == SQLITE:
        return _restore_sqlite(access, into or source.path, force, feed)
    target = into or database
    validation.validate_database_name(target)
    _prepare_server_target(access, target, force)
    if source.kind == POSTGRESQL:
        argv = ["pg_restore", *access.server_args(), "--no-owner", "--no-privileges",
                "--exit-on-error", f"--dbname={target}"]  # fmt: skip
        if force:
            argv += ["--clean", "--if-exists"]
    else:
        argv = ["mariadb", *access.server_args(), "--", target]
    _pipe_into(argv, access.env, feed)
    return {"restored_into": target, "source": source.name, "database": database}


def _prepare_server_target(access: Access, target: str, force: bool) -> None:
    """The target database exists afterwards; it must hold no table unless `force`. The name
    is safe inside quotes: validate_database_name allows no quote of any kind."""
    if access.kind == POSTGRESQL:
        exists = access.query(f"SELECT 1 FROM pg_database WHERE datname = '{target}'")
        if not exists:
            access.query(f'CREATE DATABASE "{target}"')
            return
        tables = access.query(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname NOT IN "
            "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
            target,
        )
    else:
        access.query(f"CREATE DATABASE IF NOT EXISTS `{target}`")
        tables = access.query(
            f"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{target}'"
        )
    if int(tables[0]) and not force:
        raise OperationError(
            f"Database {target} on {access.source.name} is not empty ({tables[0]} tables): "
            "restore into a new name, or force it to replace what is there.",
            "target_not_empty",
        )


def _restore_sqlite(access: Access, target: str, force: bool, feed) -> dict:
    validation.validate_source_path(target)
    if os.path.exists(target) and os.path.getsize(target) and not force:
        raise OperationError(
            f"{target} exists and is not empty: restore into another file, or force it to "
            "replace the file.",
            "target_not_empty",
        )
    fresh = f"{target}.opscenter-restore"
    if os.path.lexists(fresh):
        os.unlink(fresh)  # what an interrupted restore left
    try:
        _pipe_into(["sqlite3", "-bail", fresh], access.env, feed)
        os.replace(fresh, target)  # the whole database at once, never half of it
    finally:
        if os.path.lexists(fresh):
            os.unlink(fresh)
    return {"restored_into": target, "source": access.source.name, "database": SQLITE_NAME}


def _pipe_into(argv: list[str], env: dict, feed) -> None:
    read_end, write_end = os.pipe()
    try:
        tool = borg.Background(argv, env=env, stdin=read_end)
    finally:
        os.close(read_end)
    try:
        feed(write_end)
    except borg.BorgError:
        os.close(write_end)
        write_end = None
        if tool.wait(timeout=30) not in (0, None):  # the tool gave up first: its reason
            raise OperationError(_tool_line(tool, argv[0]), "restore_failed") from None
        tool.stop()
        raise
    finally:
        if write_end is not None:
            os.close(write_end)
    if tool.wait() != 0:
        raise OperationError(_tool_line(tool, argv[0]), "restore_failed")


def _tool_line(tool: borg.Background, name: str) -> str:
    return f"{name} failed: {reason_in(tool.tail, f'exit {tool.proc.returncode}')}"


def test_connection(source: Source, scratch: Path) -> list[str]:
    """Sign in as a backup would and list what it would dump (raises OperationError with the
    server's own words when it cannot)."""
    folder = scratch / "access"
    folder.mkdir(mode=0o700)
    access = Access(source, folder)
    if source.kind == SQLITE:
        ran = borg.run_program(
            ["sqlite3", "-bail", "-readonly", source.path, "PRAGMA quick_check;"],
            env=access.env, timeout=LIST_TIMEOUT,
        )  # fmt: skip
        if ran.rc != 0 or ran.tail[-1:] != ["ok"]:
            raise OperationError(f"{source.name}: {_tool_problem(ran)}", "database_unreachable")
        return [SQLITE_NAME]
    found = access.databases()
    for database in found:  # each one opens (a listed name may not exist)
        access.query("SELECT 1", database)
    return found


# --- verify-restore of a dump -------------------------------------------------------------------


def table_counts(access: Access, database: str, path: str = "") -> dict[str, int]:
    """Rows per table (`schema.table` on PostgreSQL). Identifiers are quoted by the server
    (format %I) or doubled here, whatever their names."""
    if access.kind == POSTGRESQL:
        rows = access.query(
            "SELECT table_schema || '.' || table_name || '|' || (xpath('/row/c/text()', "
            "query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), "
            "false, true, '')))[1]::text FROM information_schema.tables WHERE table_type = "
            "'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
            database,
        )
        return {name: int(count) for name, count in (row.rsplit("|", 1) for row in rows)}
    if access.kind == MARIADB:
        names = access.query(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            f"AND table_schema = '{database}'"
        )
        quoted = [name.replace("`", "``") for name in names]
        return {
            name: int(access.query(f"SELECT COUNT(*) FROM `{database}`.`{q}`")[0])
            for name, q in zip(names, quoted, strict=True)
        }
    names = _sqlite_rows(access, path, "SELECT name FROM sqlite_schema WHERE type = 'table' "
                         "AND name NOT LIKE 'sqlite_%' ORDER BY 1")  # fmt: skip
    counts = {}
    for name in names:
        quoted = name.replace('"', '""')
        counts[name] = int(_sqlite_rows(access, path, f'SELECT count(*) FROM "{quoted}"')[0])
    return counts


def _sqlite_rows(access: Access, path: str, sql: str) -> list[str]:
    ran = borg.run_program(["sqlite3", "-bail", "-readonly", path, sql], env=access.env,
                           timeout=LIST_TIMEOUT, keep_lines=100_000)  # fmt: skip
    if ran.rc != 0:
        raise OperationError(f"{access.source.name}: {_tool_problem(ran)}", "database_unreachable")
    return [line for line in ran.tail if line]


def verify(source: Source, database: str, scratch: Path, *, tag: str, feed) -> dict:
    """Restore a dump into a scratch database (a file for SQLite), count each table's rows
    there and in the source as it is now, then drop the scratch copy. A table of the source
    missing from the copy is a problem; counts that differ are reported (a live database
    changes after its dump)."""
    folder = scratch / "verify"
    folder.mkdir(mode=0o700)
    access = Access(source, folder)
    if source.kind == SQLITE:
        copy = str(scratch / "verify.sqlite")
        _pipe_into(["sqlite3", "-bail", copy], access.env, feed)
        restored, now = table_counts(access, "", copy), table_counts(access, "", source.path)
    else:
        copy = f"opscenter_verify_{tag}"
        _prepare_server_target(access, copy, force=False)
        try:
            if source.kind == POSTGRESQL:
                argv = ["pg_restore", *access.server_args(), "--no-owner", "--no-privileges",
                        "--exit-on-error", f"--dbname={copy}"]  # fmt: skip
            else:
                argv = ["mariadb", *access.server_args(), "--", copy]
            _pipe_into(argv, access.env, feed)
            restored, now = table_counts(access, copy), table_counts(access, database)
        finally:
            drop = f'DROP DATABASE IF EXISTS "{copy}"'
            if source.kind == MARIADB:
                drop = f"DROP DATABASE IF EXISTS `{copy}`"
            access.query(drop)
    missing = sorted(set(now) - set(restored))
    changed = {t: {"dump": restored[t], "now": now[t]}
               for t in sorted(set(now) & set(restored)) if restored[t] != now[t]}  # fmt: skip
    return {
        "source": source.name, "database": database, "tables": len(restored),
        "rows": sum(restored.values()), "missing_tables": missing, "changed_since": changed,
    }  # fmt: skip
