"""On PostgreSQL, a trigram index of the file index's names (pg_trgm, GIN): a name-fragment
search (`UPPER(name) LIKE UPPER('%invoice%')`, Django's icontains) reads it instead of every
name. pg_trgm ships with Debian's PostgreSQL and is a trusted extension (13 and later): the
database's owner may create it. Where it is missing or not allowed, nothing changes and the
search reads the names themselves (slower, still right)."""

from django.db import DatabaseError, migrations, transaction

INDEX = "indexname_name_trigram"
CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"CREATE INDEX IF NOT EXISTS {INDEX} ON borgapp_indexname USING gin (UPPER(name) "
    "gin_trgm_ops)",
]


def create(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            for statement in CREATE:
                cursor.execute(statement)
    except DatabaseError:  # no pg_trgm, or this role may not create it: no index
        return


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("borgapp", "0024_index_name_numbers")]
    operations = [migrations.RunPython(create, drop)]
