"""SQLite's trigram index of names keyed by small numbers, not by the names' 64-bit hashes:
FTS5 stores each trigram's rows as the gaps between their keys, so a hash takes eight bytes
per trigram where a number takes one or two (measured on 200,000 generated names: 27 bytes
of trigram index per name instead of 152, plus 17 for the numbers' own index). The names get
their numbers here (existing installations) and from the index job as it adds names
(borgapp.fileindex.add_trigrams); the trigram table reads them through a view of the
numbered names."""

from django.db import migrations, models

TABLE = "borgapp_indexname_trigram"
NAMES = "borgapp_indexname"
VIEW = "borgapp_indexname_numbered"
NUMBER = (
    f"UPDATE {NAMES} SET num = r.n FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS n "
    f"FROM {NAMES}) AS r WHERE r.id = {NAMES}.id"
)
CREATE = [
    f"DROP TABLE IF EXISTS {TABLE}",
    f"CREATE VIEW {VIEW} AS SELECT num, name FROM {NAMES} WHERE num IS NOT NULL",
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5(name, content='{VIEW}', content_rowid='num', "
    "tokenize='trigram', detail='none', columnsize=0)",
    NUMBER,
    f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')",
]


def _trigram_cursor(schema_editor):
    """A cursor where the trigram index exists (SQLite with FTS5 trigrams, 0023), or None."""
    connection = schema_editor.connection
    if connection.vendor != "sqlite":
        return None
    cursor = connection.cursor()
    cursor.execute("SELECT 1 FROM sqlite_master WHERE name = %s", [TABLE])
    if cursor.fetchone() is None:
        cursor.close()
        return None
    return cursor


def renumber(apps, schema_editor):
    cursor = _trigram_cursor(schema_editor)
    if cursor is None:
        return
    with cursor:
        for statement in CREATE:
            cursor.execute(statement)


def back(apps, schema_editor):
    cursor = _trigram_cursor(schema_editor)
    if cursor is None:
        return
    with cursor:
        cursor.execute(f"DROP TABLE {TABLE}")
        cursor.execute(f"DROP VIEW IF EXISTS {VIEW}")
        cursor.execute(f"CREATE VIRTUAL TABLE {TABLE} USING fts5(name, content='{NAMES}', "
                       "content_rowid='id', tokenize='trigram', detail='none')")  # fmt: skip
        cursor.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")


class Migration(migrations.Migration):
    dependencies = [
        ("borgapp", "0023_index_name_trigrams"),
    ]

    operations = [
        migrations.AddField(
            model_name="indexname",
            name="num",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddConstraint(
            model_name="indexname",
            constraint=models.UniqueConstraint(
                condition=models.Q(("num__isnull", False)), fields=("num",), name="indexname_num"
            ),
        ),
        migrations.RunPython(renumber, back),
    ]
