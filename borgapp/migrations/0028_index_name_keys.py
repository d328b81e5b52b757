"""The file index's names get ids that grow as names are added, and their hash as `key`,
instead of the hash as their id (borgapp.models.IndexName): a first archive's names, and
its paths' index of names, are then written one after another, not at random places all
over the database (1,000,000 names, paths and versions in SQLite alone: 7.9 s instead of
13.9). SQLite's trigram index of names is keyed by the ids themselves, so the numbers that
migration 0024 gave the names, and their view, go.

The index is what borg's archives hold, read again at any time: this empties it, and the
index jobs fill it again, archive by archive, as after a first installation (until then
each archive's page says that it is not indexed yet)."""

import importlib

from django.db import migrations, models

TABLE = "borgapp_indexname_trigram"
VIEW = "borgapp_indexname_numbered"
CREATE = (
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5(name, content='borgapp_indexname', "
    "content_rowid='id', tokenize='trigram', detail='none', columnsize=0)"
)
# in the order that leaves no reference behind
EMPTIED = ("borgapp_indexedarchive", "borgapp_indexversion", "borgapp_indexnode",
           "borgapp_indexname", "borgapp_indexchain")  # fmt: skip


def empty(apps, schema_editor):
    """The index emptied; where SQLite has the trigram index (0023 made it where FTS5 has
    trigrams), it is made again over the names' ids (an FTS5 table names its content
    table, it does not hold on to it: the names table may be remade after)."""
    with schema_editor.connection.cursor() as cursor:
        trigrams = False
        if schema_editor.connection.vendor == "sqlite":
            cursor.execute("SELECT 1 FROM sqlite_master WHERE name = %s", [TABLE])
            trigrams = cursor.fetchone() is not None
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
            cursor.execute(f"DROP VIEW IF EXISTS {VIEW}")
        if schema_editor.connection.vendor == "postgresql":
            # one TRUNCATE: DELETE would leave the deferred foreign-key checks of every row
            # pending, and PostgreSQL then refuses to alter the names table below
            cursor.execute(f"TRUNCATE {', '.join(EMPTIED)}")
        else:
            for table in EMPTIED:
                cursor.execute(f"DELETE FROM {table}")
        if trigrams:
            cursor.execute(CREATE)


def empty_back(apps, schema_editor):
    """Back to 0027: the names numbered, and the trigram index read through their view."""
    with schema_editor.connection.cursor() as cursor:
        for table in EMPTIED:
            cursor.execute(f"DELETE FROM {table}")
    importlib.import_module("borgapp.migrations.0024_index_name_numbers").renumber(
        apps, schema_editor
    )


class Migration(migrations.Migration):
    dependencies = [("borgapp", "0027_index_version_content")]

    operations = [
        migrations.RunPython(empty, empty_back),
        migrations.RemoveConstraint(model_name="indexname", name="indexname_num"),
        migrations.RemoveField(model_name="indexname", name="num"),
        migrations.AddField(
            model_name="indexname",
            name="key",
            field=models.BigIntegerField(default=0, unique=True),
            preserve_default=False,
        ),
    ]
