"""Sessions read from the cache (Redis) with the database behind them, that keep working while
the cache is down.

Django's cached_db already reads the database when the cache does not answer, but then puts
what it read back into the cache unguarded: with Redis stopped, every signed-in page was a 500,
and agents could not read or answer the conversations the database still held. Signing in
(a new session key, checked against the cache first) was a 500 too. Deleting stays
Django's: a session ended (sign-out) while its cached copy cannot be removed must fail, or the
copy would let the ended session in again once Redis is back.
"""

import logging

from django.contrib.sessions.backends import cached_db

log = logging.getLogger(__name__)


class SessionStore(cached_db.SessionStore):
    def exists(self, session_key):
        """Whether a session key is taken (asked when signing in makes a new one): the cache
        first, and the database, which holds every session, while the cache is down."""
        try:
            if (self.cache_key_prefix + session_key) in self._cache:
                return True
        except Exception:  # noqa: BLE001 - the cache is down: the database is the record
            log.warning("session cache unavailable; checking session keys in the database")
        return super(cached_db.SessionStore, self).exists(session_key)

    def load(self):
        try:
            data = self._cache.get(self.cache_key)
        except Exception:  # noqa: BLE001 - the cache is down: the database is the record
            data = None
        if data is not None:
            return data
        stored = self._get_session_from_db()
        if stored is None:
            return {}
        data = self.decode(stored.session_data)
        try:
            self._cache.set(self.cache_key, data, self.get_expiry_age(expiry=stored.expire_date))
        except Exception:  # noqa: BLE001 - the next request tries again
            log.warning("session cache unavailable; reading sessions from the database")
        return data
