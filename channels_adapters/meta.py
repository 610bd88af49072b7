"""What Messenger and WhatsApp share: both are Meta's Graph API, with the same webhook
signature, the same subscription handshake and the same error shape.

Both inboxes keep `app_secret` (signs the webhooks) and `verify_token` (our answer to Meta's
subscription check) in `credentials`, and may set `settings["api_base_url"]` (a pinned Graph
version, or a test double); the default is DEFAULT_API_BASE_URL.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import httpx
from django.http import HttpResponse

from channels_adapters.base import (
    Adapter,
    DeliveryError,
    InvalidPayload,
    PermanentError,
    TransientError,
    json_object,
)

DEFAULT_API_BASE_URL = "https://graph.facebook.com/v21.0"
SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")

# Graph codes that mean "later": unknown/service errors, rate limits and throttling
# (https://developers.facebook.com/docs/graph-api/guides/error-handling,
# https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes), and the Send
# API's 1200, "temporary send message failure".
TRANSIENT_CODES = {1, 2, 4, 17, 32, 613, 1200, 80007, 130429, 131056}
# What the agent can do about the refusals they will meet most often.
HINTS = {
    (10, 2018278): "The customer has not written in the last 24 hours (7 days with the human "
    "agent tag); Messenger only delivers when they write again.",
    131047: "More than 24 hours have passed since the customer last wrote; send an approved "
    "template instead.",
    131026: "WhatsApp could not deliver to this number (no WhatsApp account, or an outdated app).",
}


def api_base(inbox) -> str:
    return ((inbox.settings or {}).get("api_base_url") or DEFAULT_API_BASE_URL).rstrip("/")


def credential(inbox, name: str) -> str:
    value = (inbox.credentials or {}).get(name)
    return value if isinstance(value, str) else ""


class MetaAdapter(Adapter):
    """The webhook side both Meta channels share: the signature, the subscription check and
    the acknowledgement Meta expects."""

    def verify(self, inbox, *, body, headers, url):
        """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with the app
        secret>`. The HMAC covers the bytes as sent: Meta escapes non-ASCII (`\\u00e9`) in
        some payloads and not in others, so the body is never decoded or re-encoded first."""
        secret = credential(inbox, "app_secret")
        match = SIGNATURE.fullmatch((headers.get("X-Hub-Signature-256") or "").strip())
        if not secret or not match:
            return False
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), match.group(1).lower().encode())

    def handshake(self, inbox, params):
        """Meta's subscription check: `hub.mode=subscribe` and our verify token get
        `hub.challenge` back; anything else is refused."""
        expected = credential(inbox, "verify_token")
        given = params.get("hub.verify_token") or ""
        challenge = params.get("hub.challenge") or ""
        if (
            params.get("hub.mode") == "subscribe"
            and expected
            and hmac.compare_digest(expected.encode(), given.encode())
            and challenge
        ):
            return HttpResponse(challenge[:200], content_type="text/plain; charset=utf-8")
        return HttpResponse("Verification failed.", status=403, content_type="text/plain")

    def webhook_answer(self):
        return HttpResponse("EVENT_RECEIVED", content_type="text/plain")


def decode_webhook(body: bytes, expected_object: str) -> dict:
    """The webhook's JSON object, or InvalidPayload saying what is wrong with it."""
    data = json_object(body)
    if data.get("object") != expected_object:
        raise InvalidPayload(f"Expected object {expected_object!r}, got {data.get('object')!r}.")
    if not isinstance(data.get("entry", []), list):
        raise InvalidPayload("'entry' must be a list.")
    return data


def dicts(value) -> list[dict]:
    """The objects in a list from a payload, skipping anything that is not one: a field Meta
    adds or changes must not make us drop the rest of a batch."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def graph_error(response: httpx.Response) -> DeliveryError:
    """Sort a failed Graph call into "retry" or "give up", with a reason an agent can read:
    the provider's message and code, WhatsApp's details, and a hint for the usual refusals."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    code, subcode = error.get("code"), error.get("error_subcode")
    message = str(error.get("message") or f"HTTP {response.status_code}")
    details = (error.get("error_data") or {}) if isinstance(error.get("error_data"), dict) else {}
    reason = f"{message} (code {code}{f'/{subcode}' if subcode else ''})"
    if details.get("details") and details["details"] not in message:
        reason += f": {details['details']}"
    hint = HINTS.get((code, subcode)) or HINTS.get(code)
    if hint:
        reason += f" {hint}"
    if (
        response.status_code == 429
        or response.status_code >= 500
        or error.get("is_transient") is True
        or code in TRANSIENT_CODES
    ):
        return TransientError(reason)
    return PermanentError(reason)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def partial_failure(sent: list[str], total: int, exc: DeliveryError) -> DeliveryError:
    """A message in several parts (text, then each attachment) that failed after some parts
    reached the customer. Trying again would send those parts twice, so it is given up on,
    saying what went out."""
    if not sent:
        return exc
    return PermanentError(
        f"Only {len(sent)} of {total} parts were sent (the rest failed: {exc.reason}). "
        "Send the missing part again rather than retrying, or the customer gets the rest twice."
    )
