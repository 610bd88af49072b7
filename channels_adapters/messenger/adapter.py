"""Facebook Messenger: a Page's conversations through Meta's Send API and page webhooks.

Inbox (`kind="messenger"`), set in admin:

- `settings`: `page_id` (webhook entries for other Pages are skipped, and replies go to
  `/{page_id}/messages`; without it, to `/me/messages`), `api_base_url` (default
  `https://graph.facebook.com/v21.0`), `human_agent_tag` (default true: replies between 24 hours
  and 7 days after the customer last wrote go with Meta's HUMAN_AGENT tag).
- `credentials`: `page_access_token` (sends, profile look-ups), `app_secret` (checks
  `X-Hub-Signature-256`), `verify_token` (answers Meta's subscription check).

Webhook: `/channels/messenger/<inbox id>/webhook`, subscribed to `messages`,
`message_echoes`, `messaging_postbacks`, `message_deliveries` and `message_reads`.

The customer's address is their page-scoped id (PSID). Every message we send carries the
metadata `threadline:<message pk>`, which comes back in its echo, so our own sends are not
stored twice while replies an agent typed in the Page inbox are stored as agent messages.
Reactions are not stored: a thumbs-up on an old answer should not reopen a resolved ticket.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from django.utils import timezone

from channels_adapters import meta
from channels_adapters.base import (
    Capabilities,
    DeliveryError,
    PermanentError,
    SendResult,
    TransientError,
    customer_last_wrote,
)
from channels_adapters.http import media_fetch, provider_call
from conversations.models import Channel, Message
from conversations.services import InboundMedia, InboundMessage, StatusUpdate

log = logging.getLogger(__name__)

OUR_MARKER = "threadline:"
STANDARD_WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)
MAX_TEXT = 2000


def _obj(data: dict, key: str) -> dict:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _events(data: dict) -> list[tuple[dict, dict]]:
    return [
        (entry, event)
        for entry in meta.dicts(data.get("entry"))
        for event in meta.dicts(entry.get("messaging"))
    ]


def _attachment_kind(content_type: str) -> str:
    major = (content_type or "").split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "file"


class MessengerAdapter(meta.MetaAdapter):
    kind = Channel.MESSENGER
    capabilities = Capabilities(attachments=True, max_length=MAX_TEXT, window=True)
    fetches_profiles = True

    # --- Webhooks ---------------------------------------------------------------------------

    def webhook_key(self, inbox, body, content_type):
        """One event carrying a message id: that id, so Meta's retries and a replay with
        different whitespace land on one event. Batches and receipts: the body's hash."""
        events = _events(meta.decode_webhook(body, "page"))
        if len(events) == 1:
            event = events[0][1]
            mid = _obj(event, "message").get("mid") or _obj(event, "postback").get("mid")
            if isinstance(mid, str) and mid:
                return mid
        return meta.body_hash(body)

    # --- Inbound ----------------------------------------------------------------------------

    def parse_inbound(self, event):
        data = meta.decode_webhook(event.raw(), "page")
        page_id = str((event.inbox.settings or {}).get("page_id") or "")
        items: list[InboundMessage | StatusUpdate] = []
        for entry, item in _events(data):
            if page_id and str(entry.get("id")) != page_id:
                log.warning(
                    "messenger inbox %s got an event for page %s; skipped",
                    event.inbox.pk,
                    entry.get("id"),
                )
                continue
            items.extend(self._parse_event(event.inbox, item))
        return items

    def _parse_event(self, inbox, item: dict) -> list[InboundMessage | StatusUpdate]:
        sender = str(_obj(item, "sender").get("id") or "")
        recipient = str(_obj(item, "recipient").get("id") or "")
        if "message" in item:
            return self._message(_obj(item, "message"), sender, recipient)
        if "postback" in item:
            return self._postback(item, sender)
        if "delivery" in item:
            delivery = _obj(item, "delivery")
            mids = [mid for mid in delivery.get("mids") or [] if isinstance(mid, str) and mid]
            if mids:
                return [
                    StatusUpdate(Channel.MESSENGER, mid, Message.Status.DELIVERED) for mid in mids
                ]
            return self._up_to_watermark(inbox, sender, delivery.get("watermark"), "delivered")
        if "read" in item:
            return self._up_to_watermark(inbox, sender, _obj(item, "read").get("watermark"), "read")
        return []  # reactions, referrals, opt-ins...: nothing for the conversation

    def _message(self, message: dict, sender: str, recipient: str) -> list[InboundMessage]:
        echo = bool(message.get("is_echo"))
        if echo and str(message.get("metadata") or "").startswith(OUR_MARKER):
            return []  # our own send coming back: it is stored already
        address = recipient if echo else sender
        if not address:
            log.warning("messenger message %s names no customer; skipped", message.get("mid"))
            return []
        texts = [message["text"]] if isinstance(message.get("text"), str) else []
        media = []
        for attachment in meta.dicts(message.get("attachments")):
            payload = _obj(attachment, "payload")
            url = payload.get("url")
            kind = attachment.get("type")
            if kind == "location":
                texts.append(_location_text(attachment, payload))
            elif isinstance(url, str) and url and kind != "fallback":
                media.append(InboundMedia(source=url))
            else:  # a shared link or post: what Messenger shows of it
                link = attachment.get("url") or url or ""
                texts.append(" ".join(str(p) for p in (attachment.get("title"), link) if p))
        metadata = {}
        quick_reply = _obj(message, "quick_reply")
        if "payload" in quick_reply:
            metadata["quick_reply_payload"] = quick_reply["payload"]
        if _obj(message, "reply_to").get("mid"):
            metadata["reply_to"] = message["reply_to"]["mid"]
        text = "\n".join(t for t in texts if t)
        if not (text or media):
            text = "(A message Messenger does not let us show; ask them to send it another way.)"
        return [
            InboundMessage(
                channel=Channel.MESSENGER,
                address=address,
                text=text,
                provider_id=str(message.get("mid") or ""),
                media=tuple(media),
                echo=echo,
                metadata=metadata,
            )
        ]

    def _postback(self, item: dict, sender: str) -> list[InboundMessage]:
        postback = _obj(item, "postback")
        if not sender:
            return []
        # Older postbacks carry no mid; a hash of the event is as stable across Meta's retries.
        mid = postback.get("mid") or "postback:" + meta.body_hash(
            json.dumps(item, sort_keys=True).encode()
        )
        payload = postback.get("payload")
        return [
            InboundMessage(
                channel=Channel.MESSENGER,
                address=sender,
                text=str(postback.get("title") or payload or "(Button pressed)"),
                provider_id=str(mid),
                metadata={"postback_payload": payload},
            )
        ]

    def _up_to_watermark(self, inbox, psid: str, watermark, status: str) -> list[StatusUpdate]:
        """Messenger says "everything sent before this time was delivered/read" for a customer:
        each of our messages to them covered by it, not already that far along."""
        if not psid or not isinstance(watermark, int | float):
            return []
        until = datetime.fromtimestamp(watermark / 1000, tz=UTC)
        behind = [Message.Status.SENT]
        if status == Message.Status.READ:
            behind.append(Message.Status.DELIVERED)
        provider_ids = (
            Message.objects.filter(
                inbox=inbox,
                channel=Channel.MESSENGER,
                direction=Message.Direction.OUTBOUND,
                identity__kind=Channel.MESSENGER,
                identity__address=psid,
                status__in=behind,
                sent_at__lte=until,
            )
            .exclude(provider_id="")
            .values_list("provider_id", flat=True)
        )
        return [StatusUpdate(Channel.MESSENGER, pid, status) for pid in provider_ids]

    # --- Outbound ---------------------------------------------------------------------------

    def send_refusal(self, message):
        refusal = super().send_refusal(message)
        if refusal:
            return refusal
        if message.identity is None or message.identity.kind != Channel.MESSENGER:
            return "A Messenger reply needs the customer's Messenger address."
        return self._messaging_type(message)[1]

    def _messaging_type(self, message) -> tuple[dict, str]:
        """How Meta lets us write to this customer now, or why it does not (the policy:
        a free reply within 24 hours of their last message, a human agent's within 7 days)."""
        inbox = message.inbox
        last = customer_last_wrote(message.identity, inbox)
        age = timezone.now() - last if last else None
        if age is not None and age <= STANDARD_WINDOW:
            return {"messaging_type": "RESPONSE"}, ""
        tag_allowed = (inbox.settings or {}).get("human_agent_tag", True) is not False
        if age is not None and age <= HUMAN_AGENT_WINDOW and tag_allowed:
            return {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}, ""
        if last is None:
            return {}, (
                "This person has not written to this Page, and Messenger does not let a Page "
                "write first. They need to message the Page."
            )
        limit = "7 days" if tag_allowed else "24 hours"
        return {}, (
            f"The customer last wrote on Messenger on {last:%Y-%m-%d %H:%M} UTC, more than "
            f"{limit} ago, and Messenger only allows replies within {limit} of their last "
            "message. They need to write again first; try another channel meanwhile."
        )

    def send(self, message):
        inbox = message.inbox
        token = meta.credential(inbox, "page_access_token")
        if not token:
            raise PermanentError("This Messenger inbox has no page access token in its settings.")
        messaging, refusal = self._messaging_type(message)
        if refusal:
            raise PermanentError(refusal)
        page = (inbox.settings or {}).get("page_id") or "me"
        url = f"{meta.api_base(inbox)}/{quote(str(page), safe='')}/messages"
        recipient = {"id": message.identity.address}
        marker = f"{OUR_MARKER}{message.pk}"
        attachments = [a for a in message.attachments.all() if a.file]
        total = bool(message.text.strip()) + len(attachments)
        sent: list[str] = []
        try:
            if message.text.strip():
                body = {"recipient": recipient, **messaging}
                body["message"] = {"text": message.text, "metadata": marker}
                response = provider_call(
                    "POST", url, error=meta.graph_error, headers=meta.bearer(token), json=body
                )
                sent.append(_message_id(response))
            for attachment in attachments:
                form = {
                    "recipient": json.dumps(recipient),
                    **messaging,
                    "message": json.dumps(
                        {
                            "attachment": {
                                "type": _attachment_kind(attachment.content_type),
                                "payload": {"is_reusable": True},
                            },
                            "metadata": marker,
                        }
                    ),
                }
                with attachment.file.open("rb") as handle:
                    response = provider_call(
                        "POST",
                        url,
                        error=meta.graph_error,
                        headers=meta.bearer(token),
                        data=form,
                        files={"filedata": (attachment.filename, handle, attachment.content_type)},
                    )
                sent.append(_message_id(response))
        except DeliveryError as exc:
            raise meta.partial_failure(sent, total, exc) from exc
        if not sent:
            raise PermanentError("There is nothing to send: no text and no attachment.")
        return SendResult(provider_id=next((mid for mid in sent if mid), ""))

    # --- Media and profiles -----------------------------------------------------------------

    def fetch_media(self, inbox, source):
        return media_fetch(source)

    def profile_name(self, inbox, identity):
        token = meta.credential(inbox, "page_access_token")
        if not token:
            return ""
        try:
            response = provider_call(
                "GET",
                f"{meta.api_base(inbox)}/{quote(identity.address, safe='')}",
                error=meta.graph_error,
                headers=meta.bearer(token),
                params={"fields": "first_name,last_name"},
            )
            profile = response.json()
        except TransientError:
            raise
        except (DeliveryError, ValueError) as exc:
            # No permission or no such user: the name stays unknown rather than retried.
            log.warning("messenger profile of %s not available: %s", identity.pk, exc)
            return ""
        if not isinstance(profile, dict):
            return ""
        parts = (profile.get("first_name"), profile.get("last_name"))
        return " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())


def _message_id(response) -> str:
    """The id Meta gave the message; "" if its answer is unreadable (it was accepted all the
    same, so sending again would duplicate it)."""
    try:
        data = response.json()
    except ValueError:
        return ""
    return str(data.get("message_id") or "") if isinstance(data, dict) else ""


def _location_text(attachment: dict, payload: dict) -> str:
    coordinates = _obj(payload, "coordinates")
    lat, long = coordinates.get("lat"), coordinates.get("long")
    parts = ["📍 " + str(attachment.get("title") or "Location")]
    if lat is not None and long is not None:
        parts.append(f"({lat}, {long}) https://maps.google.com/?q={lat},{long}")
    return " ".join(parts)
