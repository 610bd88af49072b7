"""Message text is searched with accents aside too: "jose" finds "José" in what customers
wrote, as migration 0020 made it for names and subjects. On PostgreSQL the words go through a
text search configuration of our own, `threadline_folded`: the `simple` one with unaccent in
front for every kind of word that can carry a mark, and the full-text index of migration 0005
is rebuilt on it, concurrently: messages keep arriving while it builds. Run again after a build
was cut off, it starts over: dropping the configuration drops the invalid index built on it.
SQLite compares folded text (conversations.selectors.Folded)."""

from django.db import migrations

CONFIG = "threadline_folded"
# Token kinds of the default parser that may hold non-ASCII letters; ASCII words need nothing.
WORDS = "word, hword, hword_part, numword, numhword, hword_numpart"
INDEX = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON conversations_message "
    "USING gin (to_tsvector('{config}'::regconfig, COALESCE(text, '')))"
)


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public")
    schema_editor.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS public.{CONFIG} CASCADE")
    schema_editor.execute(f"CREATE TEXT SEARCH CONFIGURATION public.{CONFIG} (COPY = simple)")
    schema_editor.execute(
        f"ALTER TEXT SEARCH CONFIGURATION public.{CONFIG} "
        f"ALTER MAPPING FOR {WORDS} WITH public.unaccent, simple"
    )
    schema_editor.execute(INDEX.format(name="message_text_fold_idx", config=CONFIG))
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS message_text_search_idx")


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(INDEX.format(name="message_text_search_idx", config="simple"))
    schema_editor.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS public.{CONFIG} CASCADE")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("conversations", "0020_folded_search")]

    operations = [migrations.RunPython(forward, backward)]
