"""Database sources end to end: real servers (PostgreSQL from Debian's packages, started here
on loopback with a private data directory and a random port), real SQLite files, real borg.
Dumps stream into the archive under write load; restores bring back every committed row."""

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from borgapp.models import DatabaseSource, Job
from tests.backends import free_port, postgres_server
from tests.helpers import cli, write_files

pytestmark = pytest.mark.django_db
PG_PASSWORD = "pg-secret-Ωmega:with\\colon"  # pgpass escaping is exercised too


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own: password sign-in on 127.0.0.1 only."""
    with postgres_server(PG_PASSWORD) as dsn:
        yield {"port": dsn["port"], "dsn": dsn}


def pg(dsn: dict, dbname: str = "postgres"):
    return psycopg.connect(**dsn, dbname=dbname, autocommit=True)


def add_pg_source(postgres, tmp_path, name="app-db", databases=("shop",), password=PG_PASSWORD):
    passfile = tmp_path / f"{name}.pw"
    passfile.write_text(password + "\n")
    args = ["borg_database", "add", name, "--kind", "postgresql", "--port", postgres["port"],
            "--user", "admin", "--password-file", passfile]  # fmt: skip
    for database in databases:
        args += ["--database", database]
    return cli(*args)


class Writer(threading.Thread):
    """Commits one row at a time until stopped; remembers what was committed when."""

    def __init__(self, insert):
        super().__init__(daemon=True)
        self.insert = insert
        self.stop = threading.Event()
        self.committed: list[tuple[float, int]] = []

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            self.insert(n)
            self.committed.append((time.time(), n))

    def before(self, moment: float) -> int:
        return max((n for at, n in self.committed if at < moment), default=0)


def test_postgresql_dumped_under_write_load_restores_every_committed_row(repo, postgres, tmp_path):
    with pg(postgres["dsn"]) as conn:
        conn.execute("CREATE DATABASE shop")
    with pg(postgres["dsn"], "shop") as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL)")
        conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 5000) g")
        conn.execute(
            "INSERT INTO orders SELECT g, repeat('x', 200) FROM generate_series(-20000, 0) g"
        )
    assert add_pg_source(postgres, tmp_path).code == 0
    src = write_files(tmp_path / "src", {"etc/app.conf": "x=1"})

    writing = pg(postgres["dsn"], "shop")
    writer = Writer(lambda n: writing.execute("INSERT INTO orders VALUES (%s, 'live')", (n,)))
    writer.start()
    time.sleep(0.5)
    started = time.time()
    backed = cli("borg_backup", "main", "--source", src, "--database", "app-db", "--json")
    time.sleep(0.3)
    writer.stop.set()
    writer.join()
    writing.close()
    assert backed.code == 0, backed.err
    result = json.loads(backed.out)["result"]
    dump_path = "opscenter-databases/postgresql/app-db/shop.pgdump"
    assert result["databases"] == [{"source": "app-db", "database": "shop", "path": dump_path}]
    listed = cli("borg_contents", "main", result["archive_name"], "--json")
    paths = {row["path"] for row in json.loads(listed.out)}
    assert dump_path in paths
    assert any(p.endswith("etc/app.conf") for p in paths)  # the files beside it

    # the database is lost; the restore brings back every row committed before the dump
    with pg(postgres["dsn"]) as conn:
        conn.execute("DROP DATABASE shop WITH (FORCE)")
    restored = cli("borg_restore_database", "main", result["archive_name"], "app-db/shop")
    assert restored.code == 0, restored.err
    with pg(postgres["dsn"], "shop") as conn:
        live = conn.execute("SELECT count(*) FROM orders WHERE id > 0").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 5000
        assert conn.execute("SELECT count(*) FROM orders WHERE id <= 0").fetchone()[0] == 20001
        ids = [r[0] for r in conn.execute("SELECT id FROM orders WHERE id > 0 ORDER BY id")]
        # consistent: a prefix of the live inserts, with no gap, at least all before the start
        assert ids == list(range(1, live + 1)) and live >= writer.before(started)
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        conn.execute("SELECT bt_index_check(c.oid) FROM pg_index i JOIN pg_class c "
                     "ON c.oid = i.indexrelid WHERE c.relam = 403 AND c.relnamespace = "
                     "'public'::regnamespace")  # the server's own consistency check  # fmt: skip

    # a non-empty target is refused and left alone; another name works
    again = cli("borg_restore_database", "main", result["archive_name"], "app-db/shop")
    assert again.code == 2 and "not empty" in again.err
    copy = cli("borg_restore_database", "main", result["archive_name"], "app-db/shop",
               "--into", "shop_copy")  # fmt: skip
    assert copy.code == 0, copy.err
    with pg(postgres["dsn"], "shop_copy") as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 5000


def test_no_database_password_in_argv_environment_or_the_job(repo, postgres, tmp_path):
    with pg(postgres["dsn"]) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname='quiet'").fetchone():
            conn.execute("CREATE DATABASE quiet")
    assert add_pg_source(postgres, tmp_path, "quiet-db", ("quiet",)).code == 0
    source = DatabaseSource.objects.get(name="quiet-db")
    assert PG_PASSWORD not in source.password_encrypted
    seen = []
    stop = threading.Event()

    def spy():  # every process of this machine while the backup runs
        while not stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        seen.append(
                            (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
                        )
                    except OSError:
                        pass
            time.sleep(0.01)

    watcher = threading.Thread(target=spy, daemon=True)
    watcher.start()
    backed = cli("borg_backup", "main", "--database", "quiet-db", "--json")
    stop.set()
    watcher.join()
    assert backed.code == 0, backed.err
    assert any(b"pg_dump" in blob for blob in seen)  # the spy did see the dump tool
    assert not any(PG_PASSWORD.encode() in blob for blob in seen)
    job = Job.objects.filter(kind="backup").latest("pk")
    stored = json.dumps([job.params, job.result, job.error_message, job.log_tail])
    assert PG_PASSWORD not in stored
    listed = cli("borg_database", "list", "--json").out
    assert PG_PASSWORD not in listed and '"password_stored": true' in listed


def test_bad_database_input_is_refused_with_the_reason(repo, postgres, tmp_path):
    src = write_files(tmp_path / "src", {"a.txt": "a"})
    unknown = cli("borg_backup", "main", "--source", src, "--database", "nope")
    assert unknown.code == 2 and "No database source named 'nope'" in unknown.err
    assert not Job.objects.filter(kind="backup").exists()

    assert add_pg_source(postgres, tmp_path, "wrong-pw", password="not-it").code == 0
    tested = cli("borg_database", "test", "wrong-pw")
    assert tested.code == 2 and "password authentication failed" in tested.err
    wrong = cli("borg_backup", "main", "--source", src, "--database", "wrong-pw", "--json")
    assert wrong.code == 2
    job = Job.objects.filter(kind="backup").latest("pk")
    assert job.status == "failed" and "password authentication failed" in job.error_message
    assert cli("borg_list", "main", "--json").out.strip() == "[]"  # no archive counts as good

    cli("borg_database", "add", "down", "--kind", "postgresql", "--port", free_port(),
        "--database", "x")  # fmt: skip
    down = cli("borg_database", "test", "down")
    assert down.code == 2 and "Connection refused" in down.err

    typo = cli("borg_database", "add", "bad", "--kind", "postgresql", "--database=-rf")
    assert typo.code == 2 and "must be 1-63 letters" in typo.err

    missing_db = add_pg_source(postgres, tmp_path, "ghost", ("does_not_exist",))
    assert missing_db.code == 0
    ghost = cli("borg_backup", "main", "--source", src, "--database", "ghost")
    assert ghost.code == 2 and "does_not_exist" in ghost.err
    assert "the archive that held it was deleted" in ghost.err
    assert cli("borg_list", "main", "--json").out.strip() == "[]"


def test_sqlite_dumped_under_write_load_and_restored(repo, tmp_path):
    db = tmp_path / "live" / "app.sqlite"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        conn.executemany("INSERT INTO notes VALUES (?, ?)", [(-i, "old") for i in range(3000)])
    added = cli("borg_database", "add", "notes", "--kind", "sqlite", "--path", db)
    assert added.code == 0, added.err
    assert cli("borg_database", "test", "notes").code == 0

    writing = sqlite3.connect(db, check_same_thread=False, isolation_level=None, timeout=30)
    writer = Writer(lambda n: writing.execute("INSERT INTO notes VALUES (?, 'live')", (n,)))
    writer.start()
    time.sleep(0.3)
    started = time.time()
    backed = cli("borg_backup", "main", "--database", "notes", "--json")
    writer.stop.set()
    writer.join()
    writing.close()
    assert backed.code == 0, backed.err
    name = json.loads(backed.out)["result"]["archive_name"]

    target = tmp_path / "restored" / "app.sqlite"
    target.parent.mkdir()
    restored = cli("borg_restore_database", "main", name, "notes/main", "--into", target)
    assert restored.code == 0, restored.err
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM notes WHERE id <= 0").fetchone()[0] == 3000
        ids = [r[0] for r in conn.execute("SELECT id FROM notes WHERE id > 0 ORDER BY id")]
        assert ids == list(range(1, len(ids) + 1)) and len(ids) >= writer.before(started)
    refused = cli("borg_restore_database", "main", name, "notes/main", "--into", target)
    assert refused.code == 2 and "not empty" in refused.err
    assert not os.path.exists(f"{target}.opscenter-restore")


def test_a_failing_dump_tool_never_leaves_borg_waiting(repo, tmp_path):
    """A dump tool that dies before it opens its pipe would leave borg blocked on it."""
    db = tmp_path / "broken.sqlite"
    db.write_bytes(b"this is not a database file" * 100)
    assert cli("borg_database", "add", "broken", "--kind", "sqlite", "--path", db).code == 0
    src = write_files(tmp_path / "src", {"a.txt": "a"})
    started = time.monotonic()
    result = cli("borg_backup", "main", "--source", src, "--database", "broken")
    assert time.monotonic() - started < 60
    assert result.code == 2 and "broken/main" in result.err
    assert cli("borg_list", "main", "--json").out.strip() == "[]"


# --- MariaDB ---------------------------------------------------------------------------------

MARIADB_PASSWORD = 'maria "quoted" \\ secret'


@pytest.fixture(scope="module")
def mariadb():
    """A MariaDB server of our own on 127.0.0.1, a random port and a private data directory."""
    if not shutil.which("mariadbd") and not os.path.exists("/usr/sbin/mariadbd"):
        pytest.fail("MariaDB's server is missing: `make test` installs it")
    base = Path(tempfile.mkdtemp(prefix="opscenter-mariadb-"))
    shutil.chown(base, "mysql", "mysql")
    data, sock, port = base / "data", base / "sock", free_port()
    subprocess.run(["mariadb-install-db", f"--datadir={data}", "--user=mysql",
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True)  # fmt: skip
    server = subprocess.Popen(
        ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", "--user=mysql",
         f"--port={port}", "--bind-address=127.0.0.1", f"--socket={sock}",
         f"--pid-file={base / 'pid'}", "--innodb-flush-log-at-trx-commit=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    quoted = MARIADB_PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    root = ["mariadb", "--no-defaults", f"--socket={sock}", "-uroot"]
    subprocess.run([*root, "-e", f"CREATE USER 'admin'@'127.0.0.1' IDENTIFIED BY '{quoted}'; "
                    "GRANT ALL ON *.* TO 'admin'@'127.0.0.1'"], check=True)  # fmt: skip
    try:
        yield {"port": port, "sql": lambda text, db="": subprocess.run(
            [*root, "--batch", "--skip-column-names", "-e", text, *([db] if db else [])],
            check=True, capture_output=True, text=True).stdout.split()}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_mariadb_dumped_under_write_load_restores_every_committed_row(repo, mariadb, tmp_path):
    sql = mariadb["sql"]
    sql("CREATE DATABASE shop")
    sql("CREATE TABLE orders (id INT PRIMARY KEY, note TEXT NOT NULL) ENGINE=InnoDB", "shop")
    sql("INSERT INTO orders SELECT -seq, REPEAT('x', 100) FROM seq_0_to_9999", "shop")
    passfile = tmp_path / "maria.pw"
    passfile.write_text(MARIADB_PASSWORD + "\n")
    added = cli("borg_database", "add", "maria", "--kind", "mariadb", "--port", mariadb["port"],
                "--user", "admin", "--password-file", passfile)  # fmt: skip
    assert added.code == 0, added.err
    tested = cli("borg_database", "test", "maria", "--json")
    assert tested.code == 0 and json.loads(tested.out)["databases"] == ["shop"]  # all: one

    writer = Writer(lambda n: sql(f"INSERT INTO orders VALUES ({n}, 'live')", "shop"))
    writer.start()
    time.sleep(0.5)
    started = time.time()
    backed = cli("borg_backup", "main", "--database", "maria", "--json")
    writer.stop.set()
    writer.join()
    assert backed.code == 0, backed.err
    result = json.loads(backed.out)["result"]
    assert result["databases"][0]["path"] == "opscenter-databases/mariadb/maria/shop.sql"

    sql("DROP DATABASE shop")
    restored = cli("borg_restore_database", "main", result["archive_name"], "maria/shop")
    assert restored.code == 0, restored.err
    assert sql("SELECT COUNT(*) FROM orders WHERE id <= 0", "shop") == ["10000"]
    ids = [int(i) for i in sql("SELECT id FROM orders WHERE id > 0 ORDER BY id", "shop")]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= writer.before(started)
    assert sql("CHECK TABLE orders", "shop")[-1] == "OK"  # the server's own check
    again = cli("borg_restore_database", "main", result["archive_name"], "maria/shop")
    assert again.code == 2 and "not empty" in again.err
    forced = cli("borg_restore_database", "main", result["archive_name"], "maria/shop",
                 "--into", "shop_copy")  # fmt: skip
    assert forced.code == 0, forced.err
    assert sql("SELECT COUNT(*) FROM orders WHERE id <= 0", "shop_copy") == ["10000"]


# --- who sees and writes database sources ------------------------------------------------------


def test_the_api_and_the_admin_never_show_a_database_password(repo, client, tmp_path):
    from tests.helpers import client_for, staff

    admin_api, viewer_api, operator_api = (client_for(r) for r in ("admin", "viewer", "operator"))
    made = admin_api.post("/api/v1/databases/", {
        "name": "crm", "kind": "postgresql", "host": "127.0.0.1", "port": 5999,
        "username": "crm", "password": "crm-password-xyz", "databases": ["crm"],
    }, format="json")  # fmt: skip
    assert made.status_code == 201, made.content
    assert "crm-password-xyz" not in made.content.decode() and made.json()["password_stored"]
    source = DatabaseSource.objects.get(name="crm")
    assert source.get_password() == "crm-password-xyz"
    for client in (admin_api, viewer_api):
        listed = client.get("/api/v1/databases/").content.decode()
        assert "crm-password-xyz" not in listed and '"crm"' in listed
    kept = admin_api.patch(f"/api/v1/databases/{source.pk}/", {"port": 6000}, format="json")
    assert (
        kept.status_code == 200
        and DatabaseSource.objects.get().get_password() == "crm-password-xyz"
    )
    for client in (viewer_api, operator_api):
        refused = client.patch(
            f"/api/v1/databases/{source.pk}/", {"host": "10.0.0.1"}, format="json"
        )
        assert refused.status_code == 403
    bad = admin_api.post("/api/v1/databases/", {"name": "x", "kind": "sqlite", "path": "rel"},
                         format="json")  # fmt: skip
    assert bad.status_code == 400 and "absolute" in bad.content.decode()
    audit_rows = json.dumps(list(
        __import__("borgapp.models", fromlist=["AuditEvent"]).AuditEvent.objects.values()
    ), default=str)  # fmt: skip
    assert "crm-password-xyz" not in audit_rows

    # the admin: a viewer reads the source, never its password; an admin's form keeps it
    client.force_login(staff("viewer"))
    page = client.get(f"/admin/borgapp/databasesource/{source.pk}/change/")
    assert page.status_code == 200 and "crm-password-xyz" not in page.content.decode()
    assert client.get("/admin/borgapp/databasesource/").status_code == 200
    client.force_login(staff("admin"))
    page = client.get(f"/admin/borgapp/databasesource/{source.pk}/change/").content.decode()
    assert "crm-password-xyz" not in page and 'type="password"' in page
    saved = client.post(f"/admin/borgapp/databasesource/{source.pk}/change/", {
        "name": "crm", "kind": "postgresql", "host": "127.0.0.1", "port": 6001, "username": "crm",
        "password": "", "databases": "crm\nsales", "path": "",
    })  # fmt: skip
    assert saved.status_code == 302, saved.content.decode()[-1500:]
    source.refresh_from_db()
    assert source.databases == ["crm", "sales"] and source.get_password() == "crm-password-xyz"
    # an archive's restore page is the admin's: an operator is refused
    client.force_login(staff("operator"))
    from borgapp.models import Archive

    archive = Archive.objects.create(repository=repo, name="a1", borg_id="a" * 64)
    assert client.get(f"/admin/borgapp/archive/{archive.pk}/restore-database/").status_code == 403
    denied = operator_api.post(f"/api/v1/archives/{archive.pk}/restore-database/",
                               {"database": "crm/crm"}, format="json")  # fmt: skip
    assert denied.status_code == 403


def test_a_database_backed_up_through_the_api_is_restored_from_the_admin(
    repo, client, tmp_path, roots
):
    from tests.helpers import client_for, staff, worker_runs

    db = tmp_path / "crm.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
        conn.execute("INSERT INTO people VALUES ('ada'), ('grace')")
    DatabaseSource.objects.create(name="crm-file", kind="sqlite", path=str(db))
    queued = client_for("operator").post(
        "/api/v1/repositories/main/backup/", {"databases": ["crm-file"], "prefix": "crm"},
        format="json",
    )  # fmt: skip
    assert queued.status_code == 202, queued.content
    job = worker_runs(queued.json()["id"])
    assert job.status == "succeeded", job.error_message
    archive = repo.archives.get(name=job.result["archive_name"])

    client.force_login(staff("admin"))
    url = f"/admin/borgapp/archive/{archive.pk}/restore-database/"
    page = client.get(url).content.decode()
    assert '<option value="crm-file/main">' in page
    # from the admin and the API an SQLite file is written only under a restore root
    admin_api = client_for("admin")
    api_url = f"/api/v1/archives/{archive.pk}/restore-database/"
    for outside in (tmp_path / "elsewhere.sqlite", db):  # the original is outside too
        refused = admin_api.post(api_url, {"database": "crm-file/main", "into": str(outside)},
                                 format="json")  # fmt: skip
        assert refused.status_code == 400, refused.content
        assert "not under an allowed root" in refused.content.decode()
    assert not Job.objects.filter(kind="restore_database").exists()
    target = roots.restore / "crm.sqlite"
    posted = client.post(url, {"database": "crm-file/main", "into": str(target)})
    assert posted.status_code == 302
    restore = worker_runs(Job.objects.filter(kind="restore_database").latest("pk").pk)
    assert restore.status == "succeeded", restore.error_message
    with sqlite3.connect(target) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM people ORDER BY 1")] == [
            "ada",
            "grace",
        ]
    job_page = client.get(f"/admin/borgapp/job/{restore.pk}/change/").content.decode()
    assert "Restored crm-file/main" in job_page


def test_verify_restore_restores_each_dump_into_a_scratch_database(repo, postgres, tmp_path):
    with pg(postgres["dsn"]) as conn:
        conn.execute("CREATE DATABASE ledger")
    with pg(postgres["dsn"], "ledger") as conn:
        conn.execute('CREATE TABLE "Entries ""2026""" (id int)')  # a name that needs quoting
        conn.execute('INSERT INTO "Entries ""2026""" SELECT generate_series(1, 1234)')
        conn.execute("CREATE TABLE empty_one (id int)")
    assert add_pg_source(postgres, tmp_path, "ledger-db", ("ledger",)).code == 0
    db = tmp_path / "notes.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.executemany("INSERT INTO notes VALUES (?)", [("n",)] * 42)
    DatabaseSource.objects.create(name="notes-file", kind="sqlite", path=str(db))
    src = write_files(tmp_path / "src", {"docs/a.txt": "alpha", "docs/b.txt": "beta"})
    backed = cli("borg_backup", "main", "--source", src, "--prefix", "set",
                 "--database", "ledger-db", "--database", "notes-file")  # fmt: skip
    assert backed.code == 0, backed.err
    with pg(postgres["dsn"], "ledger") as conn:  # a live database moves on after its dump
        conn.execute('INSERT INTO "Entries ""2026""" VALUES (0)')

    verified = cli("borg_verify_restore", "main", "--prefix", "set", "--json")
    assert verified.code == 0, verified.err
    result = json.loads(verified.out)["result"]
    assert result["sampled"] == 2 and result["problems"] == []  # the dumps are not "files"
    by_source = {d["source"]: d for d in result["databases"]}
    ledger = by_source["ledger-db"]
    assert ledger["tables"] == 2 and ledger["rows"] == 1234 and ledger["missing_tables"] == []
    assert ledger["changed_since"] == {'public.Entries "2026"': {"dump": 1234, "now": 1235}}
    assert by_source["notes-file"]["rows"] == 42
    with pg(postgres["dsn"]) as conn:  # the scratch copy is gone
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'opscenter_%'")
        assert left.fetchall() == []

    # a table the dump lacks is a problem: the source gained one since
    with pg(postgres["dsn"], "ledger") as conn:
        conn.execute("CREATE TABLE added_later (id int)")
    failed = cli("borg_verify_restore", "main", "--prefix", "set")
    assert failed.code == 2 and "tables missing from the dump: public.added_later" in failed.err


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="restores the suite's own SQLite file with sqlite3"
)
def test_the_ops_center_backs_up_its_own_database_and_it_restores(repo, tmp_path):
    """Its own database is a source like any other (here the suite's SQLite file), and the
    dump restores with plain borg and sqlite3 when the ops center itself is gone."""
    added = cli("borg_database", "add-self")
    assert added.code == 0, added.err
    own = DatabaseSource.objects.get(name="opscenter-self")
    assert own.kind == "sqlite" and own.path == str(connection.settings_dict["NAME"])
    backed = cli("borg_backup", "main", "--database", "opscenter-self", "--json")
    assert backed.code == 0, backed.err
    name = json.loads(backed.out)["result"]["archive_name"]

    out = tmp_path / "recovered.sqlite3"  # by hand, as the README tells: borg | sqlite3
    env = {**os.environ, "BORG_PASSPHRASE": repo.get_passphrase(),
           "BORG_BASE_DIR": str(tmp_path / "borgbase")}  # fmt: skip
    from borgapp.operations import borg_config

    borg_bin = borg_config().binary
    extract = subprocess.Popen(
        [borg_bin, "extract", "--stdout", f"{repo.location}::{name}",
         "opscenter-databases/sqlite/opscenter-self/main.sql"],
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    subprocess.run(["sqlite3", "-bail", str(out)], stdin=extract.stdout, check=True)
    assert extract.wait() == 0
    with sqlite3.connect(out) as conn:  # (this test's own rows are not committed yet)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        applied = conn.execute("SELECT name FROM django_migrations WHERE app = 'borgapp'")
        assert ("0018_database_sources",) in applied.fetchall()

    pg_like = DatabaseSource.for_connection(
        {"ENGINE": "django.db.backends.postgresql", "NAME": "ops", "HOST": "db", "PORT": "5433",
         "USER": "ops", "PASSWORD": "own-s3cret!"}, "own",
    )  # fmt: skip
    assert (pg_like.kind, pg_like.host, pg_like.port, pg_like.databases) == (
        "postgresql", "db", 5433, ["ops"])  # fmt: skip
    secret = "own-s3cret!"  # "!" is outside the token's alphabet: no chance match
    assert pg_like.get_password() == secret and secret not in pg_like.password_encrypted


def test_a_schedule_dumps_its_databases(repo, tmp_path):
    db = tmp_path / "s.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert cli("borg_database", "add", "sched-db", "--kind", "sqlite", "--path", db).code == 0
    missing = cli("borg_schedule", "add", "n", "--repository", "main", "--operation", "backup",
                  "--cron", "0 2 * * *", "--source", tmp_path, "--database", "nope")  # fmt: skip
    assert missing.code == 2 and "No database source named 'nope'" in missing.err
    added = cli("borg_schedule", "add", "n", "--repository", "main", "--operation", "backup",
                "--cron", "0 2 * * *", "--source", db, "--database", "sched-db")  # fmt: skip
    assert added.code == 0, added.err
    assert cli("borg_schedule", "run", "n").code == 0
    job = Job.objects.filter(kind="backup").latest("pk")
    assert job.params["databases"] == ["sched-db"]
    assert job.result["databases"][0]["path"] == "opscenter-databases/sqlite/sched-db/main.sql"
    removed = cli("borg_database", "remove", "sched-db")
    assert removed.code == 2 and "dumped by schedule(s) n" in removed.err


def test_a_missing_dump_tool_is_named_and_nothing_is_left_running(repo, tmp_path, monkeypatch):
    db = tmp_path / "x.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert cli("borg_database", "add", "lite", "--kind", "sqlite", "--path", db).code == 0
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sqlite3 on it
    tested = cli("borg_database", "test", "lite")
    assert tested.code == 2 and "could not start" in tested.err and "installed" in tested.err
    src = write_files(tmp_path / "src", {"a.txt": "a"})
    result = cli("borg_backup", "main", "--source", src, "--database", "lite")
    assert result.code == 2 and "Could not start sqlite3" in result.err
    assert cli("borg_list", "main", "--json").out.strip() == "[]"
