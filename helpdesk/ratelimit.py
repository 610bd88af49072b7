"""Counters for rate limits (sign-in failures, new chat visitors and sockets, uploads) that
keep counting while the cache is down.

They live in the cache, shared by every process when there is Redis. With Redis down a limit
that raised would refuse everyone (sign-in answered 500, and no visitor could start a chat),
and one that let everyone through would leave guessing unlimited: this process counts on its
own instead, so each process still holds every client to the limit (N web processes allow N
times as much, for as long as the outage lasts).
"""

import logging

from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Bounded: made-up keys (an address per request) cannot grow it without limit while it counts.
_local = LocMemCache("threadline-rate-limits", {"OPTIONS": {"MAX_ENTRIES": 10000}})


def _counting(action):
    try:
        return action(cache)
    except (RedisError, OSError) as exc:
        log.warning("rate limits counted per process: the cache is down (%s)", exc)
        return action(_local)


def hits(key: str) -> int:
    """How many times `key` was counted in its window."""
    return _counting(lambda store: store.get(key) or 0)


def hit(key: str, seconds: int) -> int:
    """Count one more for `key`, whose window (from its first count) lasts `seconds`; returns
    the count."""

    def count(store):
        store.add(key, 0, seconds)
        try:
            return store.incr(key)
        except ValueError:  # expired between the two calls: a new window
            store.add(key, 0, seconds)
            return store.incr(key)

    return _counting(count)
