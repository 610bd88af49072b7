import functools
import re

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_out
from django.db.backends.signals import connection_created


class HelpdeskConfig(AppConfig):
    name = "helpdesk"

    def ready(self):
        connection_created.connect(_sqlite_like_for_every_script)
        user_logged_out.connect(_not_seen_since_sign_out)


def _not_seen_since_sign_out(sender, request, user, **kwargs):
    """An agent who signs out is no longer "online" to customers: the chat widget said so for
    the three minutes their last sign of life lasted. An inbox still open on another device
    brings them back with its next ping (conversations.consumers)."""
    if user is not None and user.last_seen_at is not None:
        user.last_seen_at = None
        user.save(update_fields=["last_seen_at"])  # a save: the widget's cache hears it


def _sqlite_like_for_every_script(sender, connection, **kwargs):
    """SQLite's LIKE (Django's icontains there) folds only ASCII letters, so a search for
    "PROBLÈME" or "JOÃO" missed "problème" and "João". Replaced, on SQLite, by one that folds
    case in every script, as PostgreSQL's ILIKE does (lower(), not casefold(): "straße" stays
    unlike "strasse" on both). Slower per row, on the databases of a demo or a small team.
    And the search's threadline_fold, which PostgreSQL has from a migration."""
    if connection.vendor != "sqlite":
        return
    from conversations.selectors import fold

    raw = connection.connection
    raw.create_function("like", 2, _like, deterministic=True)
    raw.create_function("like", 3, _like, deterministic=True)
    # conversations.selectors.Folded, which PostgreSQL has from migration 0020.
    raw.create_function(
        "threadline_fold",
        1,
        lambda value: None if value is None else fold(str(value)),
        deterministic=True,
    )


def _like(pattern, value, escape=None):
    if pattern is None or value is None:
        return None
    return _like_pattern(pattern, escape).fullmatch(str(value).lower()) is not None


@functools.lru_cache(maxsize=256)
def _like_pattern(pattern: str, escape: str | None) -> re.Pattern:
    parts, escaped = [], False
    for char in pattern:
        if escaped or char not in (escape, "%", "_"):
            parts.append(re.escape(char.lower()))
            escaped = False
        elif char == escape:
            escaped = True
        else:
            parts.append(".*" if char == "%" else ".")
    return re.compile("".join(parts), re.DOTALL)
