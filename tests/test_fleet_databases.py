"""Database sources of a fleet host (issue 15): dumped, restored and verified by that host's
agent only, which alone gets their passwords, in the answer that hands it the job. Real
agents, real borg, a real PostgreSQL server and real SQLite files."""

import json
import sqlite3
import subprocess

import psycopg
import pytest

from tests.backends import postgres_server
from tests.helpers import PASSPHRASE, cli, client_for, stop_process, write_files
from tests.test_fleet import BORG, a_repository, ended_job, start_agent

pytestmark = pytest.mark.django_db(transaction=True)
PG_CANARY = "pg-Canary-Secret-5d2e81"


def pg(dsn: dict, dbname: str = "postgres"):
    return psycopg.connect(**dsn, dbname=dbname, autocommit=True)


def archived_paths(repo, name: str) -> set[str]:
    from borgapp.models import Repository

    location = Repository.objects.get(name=repo).location
    listed = subprocess.run(
        [BORG, "list", "--json-lines", f"{location}::{name}"], capture_output=True, text=True,
        env={"BORG_PASSPHRASE": PASSPHRASE, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return {json.loads(line)["path"] for line in listed.stdout.splitlines()}


@pytest.fixture(scope="module")
def postgres():
    with postgres_server(PG_CANARY) as dsn:
        with pg(dsn) as conn:
            conn.execute("CREATE DATABASE shop")
        with pg(dsn, "shop") as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 300) g")
        yield dsn


def test_a_hosts_databases_are_dumped_restored_and_verified_by_its_agent(
    roots, tmp_path, web_server, postgres
):
    from borgapp import fleet, intake
    from borgapp.errors import InvalidInput
    from borgapp.models import Archive, DatabaseSource, Host, Job

    url, _ = web_server
    repo = a_repository(roots, tmp_path)
    hostroot = tmp_path / "hostroot"
    files = write_files(hostroot / "srv" / "app", {"conf/app.ini": "debug=0\n", "README": "hi\n",
                                                   "static/site.css": "body{}\n"})  # fmt: skip
    dbfile = hostroot / "var" / "app.sqlite"
    dbfile.parent.mkdir()
    with sqlite3.connect(dbfile) as conn:
        conn.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text)")
        conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"n{i}",) for i in range(50)])
    data = tmp_path / "agent"
    proc = start_agent(url, "db1", data, tmp_path / "agent.log",
                       options=["--inplace-root", str(hostroot)])  # fmt: skip
    try:
        host = Host.objects.get(name="db1")
        DatabaseSource.objects.create(name="app-lite", kind="sqlite", path=str(dbfile),
                                             host="", agent_host=host)  # fmt: skip
        shop = DatabaseSource(name="app-pg", kind="postgresql", port=postgres["port"],
                              username="admin", databases=["shop"], agent_host=host)  # fmt: skip
        shop.set_password(PG_CANARY)
        shop.save()

        # a source is reached only from its own machine: not the center, not another host
        with pytest.raises(InvalidInput, match="app-lite is on host db1"):
            intake.start("backup", repo, {"databases": ["app-lite"]}, trigger="cli")
        other, _ = fleet.add_host("web2")
        Host.objects.filter(pk=other.pk).update(state="active")
        other.refresh_from_db()
        with pytest.raises(InvalidInput, match="app-pg is on host db1, so a backup on host web2"):
            intake.start("backup", repo, {"sources": [str(files)], "databases": ["app-pg"]},
                         trigger="cli", host=other)  # fmt: skip
        center_copy = cli("borg_database", "test", "app-pg")
        assert center_copy.code != 0 and "only its agent reaches it" in center_copy.err

        asked = {"sources": [str(files)], "databases": ["app-lite", "app-pg"], "prefix": "db1"}
        made = ended_job(intake.start("backup", repo, asked, trigger="cli", host=host), 120)
        assert made.status == "succeeded", made.error_message
        assert made.worker_host == "agent:db1"
        assert made.result["databases"] == [
            {"source": "app-lite", "database": "main",
             "path": "opscenter-databases/sqlite/app-lite/main.sql"},
            {"source": "app-pg", "database": "shop",
             "path": "opscenter-databases/postgresql/app-pg/shop.pgdump"},
        ]  # fmt: skip
        paths = archived_paths("r", made.result["archive_name"])
        assert {d["path"] for d in made.result["databases"]} <= paths
        assert f"{files}/conf/app.ini".lstrip("/") in paths

        # the database password reached the agent's memory only: nothing on its disk or log
        for found in [*data.rglob("*"), tmp_path / "agent.log"]:
            if found.is_file():
                assert PG_CANARY.encode() not in found.read_bytes(), found

        # verify-restore on the host: the sample against the host's files as they are now,
        # each dump restored into a scratch database and counted beside its source
        (files / "conf" / "app.ini").write_text("debug=1\n")
        api = client_for("operator")
        answer = api.post(
            "/api/v1/repositories/r/verify-restore/",
            {"prefix": "db1", "sample_percent": 100, "host": "db1"},
            format="json",
        )
        assert answer.status_code == 202, answer.content
        verified = ended_job(Job.objects.get(pk=answer.json()["id"]), 120)
        assert verified.status == "failed" and verified.error_code == "verify_failed"
        assert verified.worker_host == "agent:db1"
        problems = verified.result["problems"]
        assert problems == [{"path": f"{files}/conf/app.ini".lstrip("/"),
                             "problem": "differs from the source as it is now"}]  # fmt: skip
        counted = {d["source"]: (d["tables"], d["rows"]) for d in verified.result["databases"]}
        assert counted == {"app-lite": (1, 50), "app-pg": (1, 300)}
        with pg(postgres) as conn:  # the scratch copy is gone again
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
            assert not [n for n in names if n.startswith("opscenter_verify_")]

        # the databases are damaged on the host; the agent restores each from the archive
        with sqlite3.connect(dbfile) as conn:
            conn.execute("DELETE FROM notes")
        archive = made.result["archive_name"]
        refused = cli("borg_restore_database", "r", archive, "app-lite/main")
        assert refused.code != 0 and "not empty" in refused.err  # no --force: nothing written
        restored = cli("borg_restore_database", "r", archive, "app-lite/main", "--force")
        assert restored.code == 0, restored.err
        with sqlite3.connect(dbfile) as conn:
            assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 50
        job = Job.objects.filter(kind="restore_database").latest("pk")
        assert job.worker_host == "agent:db1" and job.host_id == host.pk
        outside = cli("borg_restore_database", "r", archive, "app-lite/main",
                      "--into", str(tmp_path / "elsewhere.sqlite"))  # fmt: skip
        assert outside.code != 0 and "not under" in outside.err  # the agent's roots only
        admin = client_for("admin")
        archive_id = Archive.objects.get(repository__name="r", name=archive).pk
        answer = admin.post(
            f"/api/v1/archives/{archive_id}/restore-database/",
            {"database": "app-pg/shop", "into": "shop_copy"},
            format="json",
        )
        assert answer.status_code == 202, answer.content
        copied = ended_job(Job.objects.get(pk=answer.json()["id"]), 120)
        assert copied.status == "succeeded", copied.error_message
        assert copied.worker_host == "agent:db1"
        assert copied.result["restored_into"] == "shop_copy"
        with pg(postgres, "shop_copy") as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 300
    finally:
        stop_process(proc)


def test_a_failed_dump_on_a_host_fails_its_backup_and_leaves_no_archive(
    roots, tmp_path, web_server
):
    from borgapp import intake
    from borgapp.models import Archive, DatabaseSource, Host

    url, _ = web_server
    repo = a_repository(roots, tmp_path)
    notadb = write_files(tmp_path / "host", {"var/broken.sqlite": "this is no database\n"})
    files = write_files(tmp_path / "host", {"etc/app.conf": "x=1\n"})
    proc = start_agent(url, "db2", tmp_path / "agent", tmp_path / "agent.log")
    try:
        host = Host.objects.get(name="db2")
        DatabaseSource.objects.create(name="broken", kind="sqlite", host="", agent_host=host,
                                      path=str(notadb / "var" / "broken.sqlite"))  # fmt: skip
        asked = {"sources": [str(files / "etc")], "databases": ["broken"], "prefix": "db2"}
        job = ended_job(intake.start("backup", repo, asked, trigger="cli", host=host), 120)
        assert job.status == "failed" and job.error_code == "dump_failed"
        assert "archive that held it was deleted" in job.error_message
        assert "broken/main" in job.error_message
        assert job.result["problems"] and job.result["databases"][0]["source"] == "broken"
        assert not Archive.objects.filter(repository=repo).exists()
        listed = cli("borg_sync", "r")
        assert listed.code == 0, listed.err
        assert not Archive.objects.filter(repository=repo).exists()  # borg holds none either
    finally:
        stop_process(proc)


def test_where_a_source_is_and_the_verify_restore_route_are_checked(repo, client, tmp_path):
    """The API names a source's fleet host by name; the verify-restore route checks what it
    is given and who asks; a schedule cannot dump another machine's database."""
    from django.urls import reverse

    from borgapp import fleet
    from borgapp.models import DatabaseSource, Host, Job, Schedule
    from tests.helpers import staff

    host, _ = fleet.add_host("db1")
    admin, operator, viewer = (client_for(role) for role in ("admin", "operator", "viewer"))
    source = {"name": "lite", "kind": "sqlite", "path": str(tmp_path / "x.sqlite")}
    unknown = admin.post("/api/v1/databases/", {**source, "fleet_host": "nobody"}, format="json")
    assert unknown.status_code == 400 and "fleet_host" in str(unknown.json()), unknown.json()
    made = admin.post("/api/v1/databases/", {**source, "fleet_host": "db1"}, format="json")
    assert made.status_code == 201, made.content
    assert viewer.get(f"/api/v1/databases/{made.json()['id']}/").json()["fleet_host"] == "db1"
    assert DatabaseSource.objects.get(name="lite").agent_host_id == host.pk

    route = "/api/v1/repositories/main/verify-restore/"
    assert viewer.post(route, {"prefix": "web"}, format="json").status_code == 403
    for body, words in (({}, "prefix"), ({"prefix": "web", "sample_percent": 101}, "100"),
                        ({"prefix": "web", "host": "nobody"}, "No host of that name"),
                        ({"prefix": "web", "host": "db1"}, "waiting for its agent")):  # fmt: skip
        refused = operator.post(route, body, format="json")
        assert refused.status_code == 400 and words in str(refused.json()), refused.json()
    assert not Job.objects.filter(kind="verify_restore").exists()  # a refusal queues nothing
    Host.objects.filter(pk=host.pk).update(state="active")
    queued = operator.post(route, {"prefix": "web", "host": "db1"}, format="json")
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    assert Job.objects.get(kind="verify_restore").host_id == host.pk  # its agent runs it

    # the admin's schedule form says where
    # a source is before it saves a schedule that could not reach it
    client.force_login(staff("admin"))
    form = {"name": "nightly", "repositories": [repo.pk], "operation": "backup",
            "cron": "0 2 * * *", "timezone": "UTC", "enabled": "on", "archive_prefix": "n",
            "source_paths": str(tmp_path), "compression": "lz4", "databases":
            [DatabaseSource.objects.get(name="lite").pk]}  # fmt: skip
    page = client.post(reverse("admin:borgapp_schedule_add"), form)
    assert page.status_code == 200 and not Schedule.objects.exists()
    assert "lite is on host db1: a schedule dumps only databases" in page.content.decode()
