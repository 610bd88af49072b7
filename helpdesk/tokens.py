"""Personal API tokens: made, revoked, and checked on each REST API request.

A token is 32 random bytes (256 bits) behind a recognisable `tl_` prefix, so that secret
scanners and people can tell what it is. Only its SHA-256 is stored: with that much randomness
a slow password hash buys nothing, and the look-up by digest stays one indexed query."""

import hashlib
import logging
import secrets
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, throttling
from rest_framework.settings import api_settings

from helpdesk.models import ApiToken, User

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "tl_"  # noqa: S105 - a marker, not a secret
# last_used_at is written at most this often per token: not one UPDATE per API call.
LAST_USED_PRECISION = timedelta(minutes=1)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def api_token_create(*, user: User, name: str) -> tuple[ApiToken, str]:
    """A new token for `user`: the stored row, and the token itself, which is not kept and
    must be shown to them now."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Name the token after what will use it."})
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    api_token = ApiToken(user=user, name=name, prefix=token[:8], digest=_digest(token))
    api_token.full_clean()
    api_token.save()
    return api_token, token


def api_token_revoke(*, api_token: ApiToken) -> ApiToken:
    """The token stops working at once; its row stays, saying when it was last used."""
    if api_token.revoked_at is None:
        api_token.revoked_at = timezone.now()
        api_token.save(update_fields=["revoked_at"])
    return api_token


def api_token_user(token: str) -> tuple[User, ApiToken] | None:
    """Who `token` stands for, if it is live and its owner may still work, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    # Found by digest, so no comparison of the secret itself happens here to time.
    api_token = (
        ApiToken.objects.select_related("user")
        .filter(digest=_digest(token), revoked_at=None)
        .first()
    )
    if api_token is None or not api_token.user.is_active:
        return None
    now = timezone.now()
    if api_token.last_used_at is None or api_token.last_used_at < now - LAST_USED_PRECISION:
        ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=now)
        api_token.last_used_at = now
    return api_token.user, api_token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <token>` (or `Token <token>`, as DRF's own scheme is spelled).
    A request without the header is left to the next class (the browser's session); one with
    a wrong, revoked or deactivated agent's token is refused, never let through as anonymous."""

    keywords = ("bearer", "token")

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        keyword, _, token = header.strip().partition(" ")
        if keyword.lower() not in self.keywords:
            return None
        token = token.strip()
        if not token or " " in token:
            raise exceptions.AuthenticationFailed("Give the token after “Bearer ”, alone.")
        found = api_token_user(token)
        if found is None:
            raise exceptions.AuthenticationFailed("This token is not valid, or was revoked.")
        return found

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes BearerTokenAuthentication."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal API token (inbox → API tokens), also accepted after "
            "the keyword `Token`.",
        }


class UserRateThrottle(throttling.UserRateThrottle):
    """DRF's per-user throttle, counting in the default cache (Redis when there is one). With
    the cache down the request goes through, logged: an unreachable counter must not turn
    every API call into a 500, and the database still guards what matters."""

    def get_rate(self):
        # Read when asked, not when DRF's class was defined: settings can change (tests do).
        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]

    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except Exception:
            logger.warning(
                "API throttle: the cache cannot be reached; not throttling", exc_info=True
            )
            return True
