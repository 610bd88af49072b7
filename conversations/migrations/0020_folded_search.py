"""Search ignores accents as well as case (conversations.selectors.Folded): "jose" finds
"José". On PostgreSQL threadline_fold is upper(unaccent(text)), declared immutable so that it
can be indexed (unaccent itself is only stable: its dictionary could change), and the name
and subject searches get trigram indexes on it instead of the UPPER(...) ones of migration
0007, built concurrently so that mail and chats keep arriving meanwhile. SQLite registers the
same function on each connection (helpdesk.apps)."""

from django.db import migrations

FOLD = """
CREATE OR REPLACE FUNCTION threadline_fold(text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT upper(public.unaccent('public.unaccent'::regdictionary, $1)) $$
"""
INDEXES = {
    # the index each replaces: (the new one, its table and column)
    "customer_name_trgm_idx": ("customer_name_fold_trgm_idx", "conversations_customer", "name"),
    "conv_subject_trgm_idx": (
        "conv_subject_fold_trgm_idx",
        "conversations_conversation",
        "subject",
    ),
}


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public")
    schema_editor.execute(FOLD)
    for old, (new, table, column) in INDEXES.items():
        # A build cut off on an earlier run (a timeout, a killed deploy) leaves an invalid
        # index of that name, which IF NOT EXISTS would keep: built again, and the old one
        # dropped only once the new one is whole.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [new]
            )
            if (row := cursor.fetchone()) and not row[0]:
                cursor.execute(f"DROP INDEX CONCURRENTLY {new}")
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {new} ON {table} "
            f"USING gin (threadline_fold({column}::text) gin_trgm_ops)"
        )
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {old}")


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for old, (new, table, column) in INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {old} ON {table} "
            f"USING gin (UPPER({column}::text) gin_trgm_ops)"
        )
        schema_editor.execute(f"DROP INDEX IF EXISTS {new}")
    schema_editor.execute("DROP FUNCTION IF EXISTS threadline_fold(text)")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("conversations", "0019_drop_own_tagged_participants")]

    operations = [migrations.RunPython(forward, backward)]
