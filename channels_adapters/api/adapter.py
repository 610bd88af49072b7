"""The generic API channel: an integration (an app's own chat, a bot, a shop) brings its
users' messages in and takes agents' replies out.

In: `POST /channels/api/<inbox id>/messages` with `Authorization: Bearer <inbox secret>` and
`{"id": "...", "from": "...", "name": "...", "text": "...", "subject": "..."}`.

Out: with `settings = {"webhook_url": "https://app.example.com/threadline"}` each reply is
POSTed there as JSON (`webhook_payload`), signed in `X-Threadline-Signature: t=<unix time>,
v1=<hex HMAC-SHA256 of "<t>.<body>" under the inbox secret>`. A 2xx answer means sent; 429
and 5xx are tried again later, with the same `id` (the integration drops one it has seen);
any other answer fails the reply with what it said. Without a webhook URL agents cannot
reply here, and are told so before they write.

Statuses: `POST /channels/api/<inbox id>/statuses` with the same bearer secret and
`{"id": "<a reply's id>", "status": "delivered" | "read" | "failed", "reason": "..."}` tells
agents that their user got, read, or never got a reply. A status only moves forward.
"""

import hashlib
import hmac
import json
import re
import time

from channels_adapters.base import (
    Adapter,
    Capabilities,
    InvalidPayload,
    PermanentError,
    SendResult,
    bearer_secret_matches,
    json_object,
)
from channels_adapters.http import provider_call, public_client, transient_or_permanent
from conversations.models import Channel, Inbox, inbox_scope
from conversations.services import InboundMessage, StatusUpdate

# What an integration may say of a reply, as Message.Status values.
REPORTED = ("delivered", "read", "failed")
REPLY_ID = re.compile(r"[0-9]{1,18}")


def webhook_url(inbox) -> str:
    url = (inbox.settings or {}).get("webhook_url", "")
    return url.strip() if isinstance(url, str) else ""


def webhook_signature(secret: str, body: bytes, at: int) -> str:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def webhook_payload(message) -> dict:
    """What an integration receives for one reply."""
    from channels_adapters.views import public_attachment_url

    conversation = message.conversation
    return {
        "id": str(message.pk),
        "type": "message",
        "conversation": {"id": conversation.pk, "subject": conversation.subject},
        "to": message.identity.shown_address,
        "author": message.author.name if message.author else "",
        "text": message.text,
        "attachments": [
            {
                "name": item.filename,
                "content_type": item.content_type,
                "size": item.size,
                "url": public_attachment_url(item),
            }
            for item in message.attachments.all()
        ],
        "created_at": message.created_at.isoformat(),
    }


class ApiAdapter(Adapter):
    kind = Channel.API
    capabilities = Capabilities(
        subject=True,
        max_length=65536,
        attachments=True,
        attachments_max=10,
        attachments_max_bytes=25 * 2**20,
        idempotent_send=True,  # the payload's id: the integration drops a second copy
    )

    def verify(self, inbox, *, body, headers, url):
        return bearer_secret_matches(inbox, headers.get("authorization", ""))

    @staticmethod
    def decode(body: bytes) -> dict:
        """The JSON object of a request, or InvalidPayload saying what is wrong with it."""
        data = json_object(body)
        for key in ("id", "from", "text"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise InvalidPayload(f"Field {key!r} is required and must be a string.")
        for key in ("name", "subject"):
            if not isinstance(data.get(key, ""), str):
                raise InvalidPayload(f"Field {key!r} must be a string.")
        for key in ("id", "from"):  # they name things: not cleaned, refused
            if "\x00" in data[key]:
                raise InvalidPayload(f"Field {key!r} cannot contain NUL characters.")
        if len(data["id"]) > 255:
            raise InvalidPayload("Field 'id' has at most 255 characters.")
        if len(data["from"]) > 300:  # stored after this inbox's id (Identity.address)
            raise InvalidPayload("Field 'from' has at most 300 characters.")
        return data

    @staticmethod
    def decode_status(body: bytes) -> dict:
        data = json_object(body)
        if not isinstance(data.get("id"), str) or not REPLY_ID.fullmatch(data["id"]):
            raise InvalidPayload("Field 'id' is required: a reply's id, as its webhook gave it.")
        if data.get("status") not in REPORTED:
            raise InvalidPayload(f"Field 'status' must be one of: {', '.join(REPORTED)}.")
        if not isinstance(data.get("reason", ""), str):
            raise InvalidPayload("Field 'reason' must be a string.")
        return data

    def parse_inbound(self, event):
        if event.headers.get("type") == "status":
            data = self.decode_status(event.raw())
            reason = data.get("reason", "").replace("\x00", "").strip()[:500]
            if data["status"] == "failed":
                reason = f"The integration reported: {reason or 'not delivered'}"
            update = StatusUpdate(
                channel=Channel.API,
                provider_id=data["id"],
                message_id=int(data["id"]),
                status=data["status"],
                reason=reason,
            )
            return [update]
        data = self.decode(event.raw())
        return [
            InboundMessage(
                channel=Channel.API,
                address=data["from"],
                name=data.get("name", ""),
                subject=data.get("subject", ""),
                text=data["text"],
                provider_id=data["id"],
            )
        ]

    def replies_from(self, inbox):
        return bool(webhook_url(inbox))

    def send_refusal(self, message):
        # The composer asks without an inbox: an API user's is the one their address names.
        inbox = message.inbox if message.inbox_id else _inbox_of(message.identity)
        if inbox is not None and not self.replies_from(inbox):
            return (
                f"Replies on “{inbox}” need its webhook URL: an admin sets "
                '{"webhook_url": "https://…"} in the inbox\'s settings.'
            )
        # Another integration's inbox (theirs deactivated, reply_send picked another) would
        # hand the reply to an app that does not know this user.
        identity = message.identity
        if inbox is not None and inbox_scope(identity.address)[0] != inbox.pk:
            return f"{identity.shown_address} is not a user of “{inbox}”."
        return super().send_refusal(message)

    def send(self, message):
        if refusal := self.send_refusal(message):
            raise PermanentError(refusal)
        inbox = message.inbox
        url = webhook_url(inbox)
        body = json.dumps(webhook_payload(message)).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Threadline-Signature": webhook_signature(inbox.secret, body, int(time.time())),
        }
        provider_call(
            "POST",
            url,
            content=body,
            headers=headers,
            via=public_client(),
            error=lambda answer: transient_or_permanent(
                answer,
                f"The integration's webhook answered HTTP {answer.status_code}: "
                f"{answer.text[:200]}".rstrip(": "),
            ),
        )
        # Nothing of the answer is kept: an id of theirs could be one of their users' messages'.
        return SendResult()


def _inbox_of(identity) -> Inbox | None:
    inbox_id, _ = inbox_scope(identity.address)
    return Inbox.objects.filter(pk=inbox_id).first() if inbox_id else None
