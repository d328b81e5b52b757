"""Paths packed per folder (borgapp.models.IndexSpan) instead of a row per name and a row
per path: 104 bytes an entry down to 8, the whole index from 170 to about 75
(bench/index_layout_probe.py, bench/file_index.py). A version's node is a path's number.
SQLite's trigram index of names holds no copy of them (FTS5, contentless); PostgreSQL's
reads a table of names by number (pg_trgm, GIN).

The index is what borg's archives hold, read again at any time: this empties it, and the
index jobs fill it again, archive by archive, as after a first installation (until then
each archive's page says that it is not indexed yet). Going back empties it too."""

from django.db import DatabaseError, migrations, models, transaction

VERSIONS = "borgapp_indexversion"
OLD_TRIGRAMS = "borgapp_indexname_trigram"
OLD_VIEW = "borgapp_indexname_numbered"
OLD_PG_INDEX = "indexname_name_trigram"
TRIGRAMS = "borgapp_indexspan_trigram"
PG_INDEX = "indexsearchname_trigram"
VERSION_COLUMNS = (
    '"first" integer NOT NULL, "last" integer NULL, "type" varchar(1) NOT NULL, '
    '"mode" integer NOT NULL, "size" bigint NULL, "mtime" bigint NULL, "target" text NOT NULL, '
    '"healthy" bool NOT NULL, '
    '"chain_id" bigint NOT NULL REFERENCES "borgapp_indexchain" ("id") DEFERRABLE INITIALLY '
    "DEFERRED, "
    '"owner_id" bigint NOT NULL REFERENCES "borgapp_indexowner" ("id") DEFERRABLE INITIALLY '
    'DEFERRED, "content" bigint NULL, '
)
OLD_NODE = ('"node_id" bigint NOT NULL REFERENCES "borgapp_indexnode" ("id") DEFERRABLE '
            "INITIALLY DEFERRED")  # fmt: skip
EMPTIED = ("borgapp_indexedarchive", VERSIONS, "borgapp_indexchain")


def _empty(cursor, vendor: str, tables) -> None:
    if vendor == "postgresql":  # one TRUNCATE: no deferred checks left pending
        cursor.execute(f"TRUNCATE {', '.join(tables)}")
    else:
        for table in tables:
            cursor.execute(f"DELETE FROM {table}")


def _versions_table(cursor, node: str) -> None:
    """SQLite: the versions table made again (empty), keyed by (node, chain, first) as its
    own tree (WITHOUT ROWID, which Django's own remake would drop)."""
    cursor.execute(f"DROP TABLE {VERSIONS}")
    cursor.execute(f"CREATE TABLE {VERSIONS} ({VERSION_COLUMNS}{node}, "
                   'PRIMARY KEY ("node_id", "chain_id", "first")) WITHOUT ROWID')  # fmt: skip


def forward(apps, schema_editor):
    """The index emptied; its versions' nodes become numbers, with no reference to the
    tables of names and paths that go below."""
    vendor = schema_editor.connection.vendor
    with schema_editor.connection.cursor() as cursor:
        _empty(cursor, vendor, [*EMPTIED, "borgapp_indexnode", "borgapp_indexname"])
        if vendor == "sqlite":
            cursor.execute(f"DROP TABLE IF EXISTS {OLD_TRIGRAMS}")
            cursor.execute(f"DROP VIEW IF EXISTS {OLD_VIEW}")
            _versions_table(cursor, '"node_id" bigint NOT NULL')
        else:
            cursor.execute(f"DROP INDEX IF EXISTS {OLD_PG_INDEX}")
            cursor.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass "
                "AND confrelid = %s::regclass",
                [VERSIONS, "borgapp_indexnode"],
            )
            for (name,) in cursor.fetchall():
                cursor.execute(f'ALTER TABLE {VERSIONS} DROP CONSTRAINT "{name}"')


def backward(apps, schema_editor):
    """Back to 0029: emptied again, the versions' nodes referencing the paths' table."""
    vendor = schema_editor.connection.vendor
    with schema_editor.connection.cursor() as cursor:
        _empty(cursor, vendor, EMPTIED)
        if vendor == "sqlite":
            _versions_table(cursor, OLD_NODE)
        else:
            cursor.execute(f"ALTER TABLE {VERSIONS} ADD CONSTRAINT indexversion_node_fk "
                           'FOREIGN KEY ("node_id") REFERENCES "borgapp_indexnode" ("id") '
                           "DEFERRABLE INITIALLY DEFERRED")  # fmt: skip


def trigram_tokenizer(cursor) -> bool:
    """Whether this SQLite's FTS5 has the trigram tokenizer (3.34 and later)."""
    try:
        cursor.execute("CREATE VIRTUAL TABLE temp.opscenter_probe USING fts5(x, "
                       "tokenize='trigram')")  # fmt: skip
        cursor.execute("DROP TABLE temp.opscenter_probe")
    except Exception:  # noqa: BLE001 (no FTS5 or no trigram tokenizer)
        return False
    return True


def search_index(apps, schema_editor):
    """The names' trigram index: SQLite's FTS5 (contentless: the names are in the spans,
    a match is checked against them), PostgreSQL's pg_trgm over the names' table. Where
    neither is there, a search reads every name (slower, still right)."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            if trigram_tokenizer(cursor):
                cursor.execute(f"CREATE VIRTUAL TABLE {TRIGRAMS} USING fts5(name, content='', "
                               "tokenize='trigram', detail='none', columnsize=0)")  # fmt: skip
            return
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            cursor.execute(f"CREATE INDEX IF NOT EXISTS {PG_INDEX} ON "
                           "borgapp_indexsearchname USING gin (UPPER(name) gin_trgm_ops)")  # fmt: skip
    except DatabaseError:  # no pg_trgm, or this role may not create it: no index
        return


def drop_search_index(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if schema_editor.connection.vendor == "sqlite":
            cursor.execute(f"DROP TABLE IF EXISTS {TRIGRAMS}")
        else:
            cursor.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")


def old_search_index(apps, schema_editor):
    """Back to 0029's trigram index of names (made as 0028 made it)."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            if trigram_tokenizer(cursor):
                cursor.execute(
                    f"CREATE VIRTUAL TABLE {OLD_TRIGRAMS} USING fts5(name, "
                    "content='borgapp_indexname', content_rowid='id', tokenize='trigram', "
                    "detail='none', columnsize=0)"
                )
            return
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(f"CREATE INDEX IF NOT EXISTS {OLD_PG_INDEX} ON borgapp_indexname "
                           "USING gin (UPPER(name) gin_trgm_ops)")  # fmt: skip
    except DatabaseError:
        return


class Migration(migrations.Migration):
    dependencies = [("borgapp", "0029_index_version_key")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, backward)],
            state_operations=[
                migrations.RemoveField(model_name="indexversion", name="pk"),
                migrations.RemoveField(model_name="indexversion", name="node"),
                migrations.AddField(
                    model_name="indexversion",
                    name="node_id",
                    field=models.BigIntegerField(default=0),
                    preserve_default=False,
                ),
                migrations.AddField(
                    model_name="indexversion",
                    name="pk",
                    field=models.CompositePrimaryKey(
                        "node_id", "chain", "first", blank=True, editable=False,
                        primary_key=True, serialize=False,
                    ),  # fmt: skip
                ),
            ],
        ),
        migrations.RunPython(migrations.RunPython.noop, old_search_index),
        migrations.DeleteModel(name="IndexNode"),
        migrations.DeleteModel(name="IndexName"),
        migrations.CreateModel(
            name="IndexSpan",
            fields=[
                ("start", models.BigIntegerField(primary_key=True, serialize=False)),
                ("folder", models.BigIntegerField()),
                ("count", models.IntegerField()),
                ("names", models.BinaryField()),
            ],
            options={
                "indexes": [models.Index(fields=["folder", "start"], name="indexspan_folder")],
            },
        ),
        migrations.CreateModel(
            name="IndexSearchName",
            fields=[
                ("num", models.BigIntegerField(primary_key=True, serialize=False)),
                ("name", models.TextField()),
            ],
        ),
        migrations.RunPython(search_index, drop_search_index),
    ]
