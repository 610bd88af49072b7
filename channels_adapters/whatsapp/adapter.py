"""WhatsApp through Meta's Cloud API.

Inbox (`kind="whatsapp"`), set in admin:

- `settings`: `phone_number_id` (the business number's id: replies are sent from it, and
  webhook changes for other numbers are skipped), `api_base_url` (default
  `https://graph.facebook.com/v21.0`), `templates`: the approved message templates agents may
  pick, e.g. `[{"name": "order_update", "language": "en_US", "body": "Your order shipped."}]`
  (`body` is what the agent sees; `language` defaults to `en_US`).
- `credentials`: `access_token` (a system user token), `app_secret` (checks
  `X-Hub-Signature-256`), `verify_token` (answers Meta's subscription check).

Webhook: `/channels/whatsapp/<inbox id>/webhook`, subscribed to the `messages` field.

The customer's address is their number in E.164; the same number on SMS is the same customer.
WhatsApp delivers free-form text and media only within 24 hours of the customer's last
message; outside it only a template goes. A reply naming a template sends the template alone
(the approved text is what the customer gets). Templates with parameters (`{{1}}`) are refused,
since nothing in a reply says what to fill them with yet. Reactions are not stored: a thumbs-up
on an old answer should not reopen a resolved ticket.
"""

from __future__ import annotations

import logging
import mimetypes
import re
from datetime import timedelta
from urllib.parse import quote

from django.utils import timezone

from channels_adapters import meta
from channels_adapters.base import (
    Capabilities,
    DeliveryError,
    FetchedMedia,
    PermanentError,
    SendResult,
    customer_last_wrote,
)
from channels_adapters.http import media_fetch, provider_call
from conversations.models import Channel
from conversations.services import InboundMedia, InboundMessage, StatusUpdate

log = logging.getLogger(__name__)

SERVICE_WINDOW = timedelta(hours=24)
MAX_TEXT = 4096
IMAGE_MAX_BYTES = 5 * 2**20  # the Cloud API's limit for images; documents may be 100 MB
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
STATUSES = {"sent", "delivered", "read", "failed"}
PARAMETER = re.compile(r"\{\{\s*\w+\s*\}\}")
# What the Cloud API accepts as each media type; anything else goes as a document.
SEND_AS = {
    "image/jpeg": "image",
    "image/png": "image",
    "video/mp4": "video",
    "video/3gpp": "video",
    "audio/aac": "audio",
    "audio/mp4": "audio",
    "audio/mpeg": "audio",
    "audio/amr": "audio",
    "audio/ogg": "audio",
}


def _obj(data: dict, key: str) -> dict:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _values(data: dict) -> list[dict]:
    """The `value` of each `messages` change, in order."""
    return [
        _obj(change, "value")
        for entry in meta.dicts(data.get("entry"))
        for change in meta.dicts(entry.get("changes"))
        if change.get("field") == "messages"
    ]


def _filename(kind: str, mime_type: str, given) -> str:
    if isinstance(given, str) and given.strip():
        return given.strip()
    extension = mimetypes.guess_extension(mime_type.split(";")[0].strip()) or ""
    return f"{kind}{extension}"


class WhatsAppAdapter(meta.MetaAdapter):
    kind = Channel.WHATSAPP
    capabilities = Capabilities(attachments=True, max_length=MAX_TEXT, templates=True, window=True)

    # --- Webhooks ---------------------------------------------------------------------------

    def webhook_key(self, inbox, body, content_type):
        """One message: its wamid; one status: wamid and status (a message is sent, then
        delivered, then read: three events); anything else: the body's hash."""
        values = _values(meta.decode_webhook(body, "whatsapp_business_account"))
        messages = [m for v in values for m in meta.dicts(v.get("messages"))]
        statuses = [s for v in values for s in meta.dicts(v.get("statuses"))]
        if len(messages) == 1 and not statuses and isinstance(messages[0].get("id"), str):
            return messages[0]["id"]
        if len(statuses) == 1 and not messages and isinstance(statuses[0].get("id"), str):
            return f"{statuses[0]['id']}:{statuses[0].get('status')}"
        return meta.body_hash(body)

    # --- Inbound ----------------------------------------------------------------------------

    def parse_inbound(self, event):
        data = meta.decode_webhook(event.raw(), "whatsapp_business_account")
        number_id = str((event.inbox.settings or {}).get("phone_number_id") or "")
        items: list[InboundMessage | StatusUpdate] = []
        for value in _values(data):
            their_number = str(_obj(value, "metadata").get("phone_number_id") or "")
            if number_id and their_number != number_id:
                log.warning(
                    "whatsapp inbox %s got a change for number %s; skipped",
                    event.inbox.pk,
                    their_number,
                )
                continue
            names = {
                str(contact.get("wa_id")): str(_obj(contact, "profile").get("name") or "")
                for contact in meta.dicts(value.get("contacts"))
            }
            for message in meta.dicts(value.get("messages")):
                inbound = self._message(message, names)
                if inbound is not None:
                    items.append(inbound)
            for status in meta.dicts(value.get("statuses")):
                if status.get("status") in STATUSES and status.get("id"):
                    items.append(
                        StatusUpdate(
                            Channel.WHATSAPP,
                            str(status["id"]),
                            status["status"],
                            _failure_reason(status) if status["status"] == "failed" else "",
                        )
                    )
        return items

    def _message(self, message: dict, names: dict[str, str]) -> InboundMessage | None:
        kind, sender = message.get("type"), str(message.get("from") or "")
        if not sender or kind == "reaction":
            return None
        body = _obj(message, kind) if isinstance(kind, str) else {}
        text, media, metadata = "", (), {}
        if _obj(message, "context").get("id"):
            metadata["reply_to"] = message["context"]["id"]
        if kind == "text":
            text = str(body.get("body") or "")
        elif kind in MEDIA_TYPES:
            mime_type = str(body.get("mime_type") or "")
            text = str(body.get("caption") or "")
            if body.get("id"):
                media = (
                    InboundMedia(
                        source=str(body["id"]),
                        content_type=mime_type.split(";")[0].strip(),
                        filename=_filename(kind, mime_type, body.get("filename")),
                    ),
                )
        elif kind == "location":
            text = _location_text(body)
            metadata["location"] = body
        elif kind == "contacts":
            contacts = meta.dicts(message.get("contacts"))
            text = "\n".join(_contact_text(contact) for contact in contacts)
            metadata["contacts"] = contacts
        elif kind == "interactive":
            reply = _obj(body, "button_reply") or _obj(body, "list_reply")
            text = str(reply.get("title") or "")
            metadata["reply_id"] = reply.get("id")
        elif kind == "button":  # a template's quick-reply button
            text = str(body.get("text") or "")
            metadata["button_payload"] = body.get("payload")
        elif kind == "system":
            text = str(body.get("body") or "")
        if not (text or media):
            text = f"(A WhatsApp {kind or 'message'} that cannot be shown here; ask the " + (
                "customer to send it another way.)"
            )
            metadata["unsupported"] = message.get("errors") or kind
        return InboundMessage(
            channel=Channel.WHATSAPP,
            address=sender,
            name=names.get(sender) or (next(iter(names.values())) if len(names) == 1 else ""),
            text=text,
            provider_id=str(message.get("id") or ""),
            media=media,
            metadata=metadata,
        )

    # --- Outbound ---------------------------------------------------------------------------

    def attachments_refusal(self, message, files):
        if files and (message.metadata or {}).get("template"):
            return "A WhatsApp template cannot carry attachments; send them separately."
        for name, content_type, size in files:
            if SEND_AS.get(content_type) == "image" and size > IMAGE_MAX_BYTES:
                return f"WhatsApp takes images of at most 5 MB; {name} is larger."
        return super().attachments_refusal(message, files)

    def send_refusal(self, message):
        refusal = super().send_refusal(message)
        if refusal:
            return refusal
        if message.identity is None or message.identity.kind != Channel.WHATSAPP:
            return "A WhatsApp reply needs the customer's WhatsApp number."
        name = (message.metadata or {}).get("template")
        if name:
            template = self.template(message.inbox, name)
            if template is None:
                known = ", ".join(sorted(self.template_names(message.inbox))) or "none"
                return (
                    f"There is no WhatsApp template named {name!r} in this inbox's settings "
                    f"(known: {known})."
                )
            if PARAMETER.search(str(template.get("body") or "")):
                return (
                    f"Template {name!r} has parameters to fill in, which replies cannot do "
                    "yet; pick a template without them."
                )
            if message.pk and message.attachments.exists():
                return "A WhatsApp template cannot carry attachments; send them separately."
            return ""
        last = customer_last_wrote(message.identity, message.inbox)
        if last is None or timezone.now() - last > SERVICE_WINDOW:
            # In the agent's zone when an agent is sending (the request's), else UTC.
            when = "has not written yet"
            if last:
                local = timezone.localtime(last)
                when = f"last wrote on {local:%Y-%m-%d %H:%M} {local.tzname()}"
            then = (
                "Pick an approved template instead."
                if self.reply_templates(message.inbox)
                else "This inbox has no approved template to send instead: an admin adds them "
                '(the inbox\'s settings, "templates"), or answer on another channel.'
            )
            return (
                f"The customer {when}, and WhatsApp only delivers free-form messages within 24 "
                f"hours of the customer's last message. {then}"
            )
        return ""

    def reply_templates(self, inbox):
        # Those a reply can send: one with parameters to fill in cannot be yet. One name may
        # stand for a template in several languages: "name|language" picks one (template()).
        return [
            {"ref": f"{t['name']}|{lang}", "name": t["name"], "language": lang, "body": body}
            for t in self._templates(inbox)
            if t.get("name") and not PARAMETER.search(body := str(t.get("body") or ""))
            for lang in [str(t.get("language") or "")]
        ]

    @staticmethod
    def _templates(inbox) -> list[dict]:
        """The templates in the inbox's settings, as the admin wrote them."""
        return meta.dicts((inbox.settings or {}).get("templates"))

    @classmethod
    def template_names(cls, inbox) -> list[str]:
        return [t["name"] for t in cls._templates(inbox) if t.get("name")]

    @classmethod
    def template(cls, inbox, ref: str) -> dict | None:
        """The template `ref` names: "name", or "name|language" for one of its languages."""
        name, _, language = ref.partition("|")
        for template in cls._templates(inbox):
            if template.get("name") == name and language in ("", template.get("language")):
                return template
        return None

    def send(self, message):
        inbox = message.inbox
        token = meta.credential(inbox, "access_token")
        number_id = str((inbox.settings or {}).get("phone_number_id") or "")
        if not (token and number_id):
            raise PermanentError(
                "This WhatsApp inbox needs an access token and a phone number id in its settings."
            )
        base = f"{meta.api_base(inbox)}/{quote(number_id, safe='')}"
        common = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.identity.address.lstrip("+"),
        }
        name = (message.metadata or {}).get("template")
        if name:
            template = self.template(inbox, name)
            if template is None:  # removed from settings since the refusal check
                raise PermanentError(f"There is no WhatsApp template named {name!r} any more.")
            language = {"code": str(template.get("language") or "en_US")}
            parts = [
                {"type": "template", "template": {"name": template["name"], "language": language}}
            ]
        else:
            parts = (
                [{"type": "text", "text": {"body": message.text}}] if message.text.strip() else []
            )
            # Uploads reach nobody, so one failing here retries cleanly; the sends come after.
            for attachment in message.attachments.all():
                if attachment.file:
                    kind = SEND_AS.get(attachment.content_type, "document")
                    media: dict = {"id": self._upload(base, token, attachment)}
                    if kind == "document":
                        media["filename"] = attachment.filename
                    parts.append({"type": kind, kind: media})
        if not parts:
            raise PermanentError("There is nothing to send: no text and no attachment.")
        sent: list[str] = []
        try:
            for part in parts:
                response = provider_call(
                    "POST",
                    f"{base}/messages",
                    error=meta.graph_error,
                    headers=meta.bearer(token),
                    json={**common, **part},
                )
                sent.append(_wamid(response))
        except DeliveryError as exc:
            raise meta.partial_failure(sent, len(parts), exc) from exc
        return SendResult(provider_id=next((wamid for wamid in sent if wamid), ""))

    @staticmethod
    def _upload(base: str, token: str, attachment) -> str:
        with attachment.file.open("rb") as handle:
            response = provider_call(
                "POST",
                f"{base}/media",
                error=meta.graph_error,
                headers=meta.bearer(token),
                data={"messaging_product": "whatsapp", "type": attachment.content_type},
                files={"file": (attachment.filename, handle, attachment.content_type)},
            )
        try:
            media_id = response.json().get("id")
        except (ValueError, AttributeError):
            media_id = None
        if not media_id:
            raise PermanentError(f"WhatsApp did not give an id for {attachment.filename}.")
        return str(media_id)

    # --- Media ------------------------------------------------------------------------------

    def fetch_media(self, inbox, source):
        """A media id resolves to a short-lived URL, downloaded with the same token."""
        token = meta.credential(inbox, "access_token")
        if not token:
            raise PermanentError("This WhatsApp inbox has no access token to fetch media with.")
        response = provider_call(
            "GET",
            f"{meta.api_base(inbox)}/{quote(source, safe='')}",
            error=meta.graph_error,
            headers=meta.bearer(token),
        )
        try:
            info = response.json()
            url = info.get("url")
        except (ValueError, AttributeError):
            info, url = {}, None
        if not isinstance(url, str) or not url:
            raise PermanentError("WhatsApp gave no download URL for this media.")
        media = media_fetch(url, headers=meta.bearer(token))
        content_type = media.content_type or str(info.get("mime_type") or "")
        return FetchedMedia(media.content, content_type)


def _wamid(response) -> str:
    try:
        messages = response.json().get("messages") or []
        return str(messages[0].get("id") or "")
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""  # accepted all the same: sending again would duplicate it


def _failure_reason(status: dict) -> str:
    reasons = []
    for error in meta.dicts(status.get("errors")):
        details = _obj(error, "error_data").get("details") or error.get("message") or ""
        title = error.get("title") or "Failed"
        reason = f"{title} (code {error.get('code')})"
        if details and details != title:
            reason += f": {details}"
        hint = meta.HINTS.get(error.get("code"))
        reasons.append(f"{reason} {hint}" if hint else reason)
    return "; ".join(reasons) or "WhatsApp reported a failure without a reason."


def _location_text(location: dict) -> str:
    lat, long = location.get("latitude"), location.get("longitude")
    label = ", ".join(str(location[k]) for k in ("name", "address") if location.get(k))
    text = "📍 " + (label or "Location")
    if lat is not None and long is not None:
        text += f" ({lat}, {long}) https://maps.google.com/?q={lat},{long}"
    return text


def _contact_text(contact: dict) -> str:
    name = _obj(contact, "name").get("formatted_name") or "(no name)"
    phones = [p.get("phone") for p in meta.dicts(contact.get("phones")) if p.get("phone")]
    emails = [e.get("email") for e in meta.dicts(contact.get("emails")) if e.get("email")]
    return "👤 Shared contact: " + ", ".join(str(x) for x in (name, *phones, *emails))
