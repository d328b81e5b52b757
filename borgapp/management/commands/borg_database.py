import getpass
import json
import sys
import tempfile
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from borgapp import audit, dumps
from borgapp.errors import InvalidInput, OperationError
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.models import DatabaseSource, Host


def fail(message: str):
    raise CommandError(message, returncode=EXIT_FAILED)


def source_row(source: DatabaseSource) -> dict:
    """Never the password: only whether one is stored."""
    return {
        "name": source.name,
        "kind": source.kind,
        "host": source.host if source.kind != DatabaseSource.Kind.SQLITE else None,
        "port": source.port,
        "username": source.username or None,
        "password_stored": bool(source.password_encrypted),
        "databases": source.databases or "all",
        "path": source.path or None,
        "fleet_host": source.agent_host.name if source.agent_host_id else None,
    }


class Command(BaseCommand):
    help = "Database sources a backup dumps into its archive: add, list, remove, test."
    requires_system_checks = []

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a database source")
        add.add_argument("source", metavar="NAME")
        add.add_argument("--kind", required=True, choices=DatabaseSource.Kind.values)
        add.add_argument("--host", default="127.0.0.1")
        add.add_argument("--port", type=int)
        add.add_argument("--user", default="", dest="username")
        add.add_argument("--database", action="append", default=[], dest="databases",
                         help="a database to dump (repeatable); none: all of them")  # fmt: skip
        add.add_argument("--path", default="", help="SQLite: the database file")
        add.add_argument(
            "--fleet-host", metavar="HOST", help="the fleet host whose agent dumps it (the "
            "server address and file path are as that host sees them); default: this machine",
        )  # fmt: skip
        add.add_argument(
            "--password-file",
            help="read the password from this file (else a prompt on a terminal, else none)",
        )
        own = sub.add_parser(
            "add-self", help="the ops center's own database, to back it up like any other"
        )
        own.add_argument("source", metavar="NAME", nargs="?", default="opscenter-self")
        listing = sub.add_parser("list", help="the sources (never their passwords)")
        listing.add_argument("--json", action="store_true")
        sub.add_parser("remove").add_argument("source", metavar="NAME")
        test = sub.add_parser("test", help="sign in and list what a backup would dump")
        test.add_argument("source", metavar="NAME")
        test.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        getattr(self, "do_" + options["action"].replace("-", "_"))(options)

    def source(self, name: str) -> DatabaseSource:
        source = DatabaseSource.objects.filter(name=name).first()
        if source is None:
            fail(f"No database source named {name!r}.")
        return source

    def do_add(self, o):
        source = DatabaseSource(
            name=o["source"], kind=o["kind"], host=o["host"], port=o["port"],
            username=o["username"], databases=o["databases"], path=o["path"],
        )  # fmt: skip
        if o["fleet_host"]:
            source.agent_host = Host.objects.filter(name=o["fleet_host"]).first()
            if source.agent_host is None:
                fail(f"No host named {o['fleet_host']!r}.")
        if o["kind"] != DatabaseSource.Kind.SQLITE:
            source.set_password(read_password(o))
        self.save(source)
        self.stdout.write(f"Added {source.name} ({source.get_kind_display()}).")

    def do_add_self(self, o):
        try:
            source = DatabaseSource.for_connection(connection.settings_dict, o["source"])
        except InvalidInput as exc:
            fail(str(exc))
        self.save(source)
        where = source.path or f"{source.host}/{source.databases[0]}"
        self.stdout.write(
            f"Added {source.name}: this ops center's own database ({where}). Back it up with "
            f"borg_backup REPOSITORY --database {source.name}."
        )

    def save(self, source: DatabaseSource) -> None:
        try:
            source.full_clean()
        except ValidationError as exc:
            fail("Invalid database source: " + "; ".join(
                f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items()
            ))  # fmt: skip
        source.save()
        audit.record("databasesource.created", source.name, outcome="success",
                     params={"kind": source.kind, "host": source.host})  # fmt: skip

    def do_list(self, o):
        rows = [source_row(s) for s in DatabaseSource.objects.select_related("agent_host")]
        if o["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for row in rows:
            where = row["path"] or f"{row['host']}:{row['port'] or 'default'}"
            names = row["databases"] if row["databases"] == "all" else ",".join(row["databases"])
            self.stdout.write(f"{row['name']:<24} {row['kind']:<11} {where:<30} {names}")

    def do_remove(self, o):
        source = self.source(o["source"])
        if source.schedules.exists():
            names = ", ".join(s.name for s in source.schedules.all())
            fail(f"{source.name} is dumped by schedule(s) {names}: remove it there first.")
        source.delete()
        audit.record("databasesource.deleted", source.name, outcome="success")
        self.stdout.write(f"Removed {source.name}.")

    def do_test(self, o):
        source = self.source(o["source"])
        if source.agent_host_id:
            fail(
                f"{source.name} is on host {source.agent_host.name}: only its agent reaches "
                "it (a backup of that host with this source tests it)."
            )
        with tempfile.TemporaryDirectory(prefix="opscenter-") as scratch:
            try:
                found = dumps.test_connection(source.spec(), Path(scratch))
            except OperationError as exc:
                fail(str(exc))
        if o["json"]:
            self.stdout.write(json.dumps({"source": source.name, "databases": found}))
        else:
            self.stdout.write(
                f"{source.name}: signed in; would dump {', '.join(found) or 'nothing'}"
            )


def read_password(o) -> str:
    if o.get("password_file"):
        try:
            return Path(o["password_file"]).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            fail(f"Cannot read the password file: {exc.strerror}.")
    if sys.stdin.isatty():
        return getpass.getpass("Database password (empty for none): ")
    return ""
