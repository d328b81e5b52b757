"""On SQLite, a trigram index of the file index's names (FTS5, `tokenize='trigram'`): a
name-fragment search reads it instead of every name (borgapp.filesearch). The index job adds
its new names in bulk at its end (borgapp.fileindex.add_trigrams): row by row, FTS5 keeps
one small segment per transaction, several times the size. Other databases read the names
themselves; an SQLite without FTS5's trigram tokenizer (before 3.34) gets no index."""

from django.db import migrations

TABLE = "borgapp_indexname_trigram"
CREATE = [
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5(name, content='borgapp_indexname', "
    "content_rowid='id', tokenize='trigram', detail='none')",
    f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')",
]
DROP = [f"DROP TABLE IF EXISTS {TABLE}"]


def create(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        try:
            cursor.execute("CREATE VIRTUAL TABLE temp.opscenter_probe USING fts5(x, "
                           "tokenize='trigram')")  # fmt: skip
            cursor.execute("DROP TABLE temp.opscenter_probe")
        except Exception:  # noqa: BLE001 (no FTS5 or no trigram tokenizer: no index)
            return
        for statement in CREATE:
            cursor.execute(statement)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        with schema_editor.connection.cursor() as cursor:
            for statement in DROP:
                cursor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("borgapp", "0022_file_index")]
    operations = [migrations.RunPython(create, drop)]
