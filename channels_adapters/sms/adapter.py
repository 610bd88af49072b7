"""SMS and MMS through Twilio.

Inbox: `kind="sms"`, `address` the Twilio number in E.164 (`+15550100`), `settings =
{"account_sid": "AC...", "messaging_service_sid": "MG..." (optional, sends through the service
instead of from the number), "api_base_url": "https://api.twilio.com" (tests point it at a fake)}`,
`credentials = {"auth_token": "...", "webhook_shared_key": "..." (only with Twilio's webhook
SharedKeys: its secret)}`.

Twilio calls `/channels/sms/<inbox id>/webhook` for incoming messages and, since we ask it to
with `StatusCallback`, for every status change of what we send. Both are signed with
`X-Twilio-Signature` over the URL Twilio called, which is `PUBLIC_URL` + path behind a proxy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, timedelta
from email.utils import parsedate_to_datetime

from django.conf import settings
from django.http import HttpResponse, QueryDict
from django.urls import reverse
from django.utils import timezone
from twilio.request_validator import RequestValidator, get_signature_algorithm

from channels_adapters.base import (
    Adapter,
    AnswerLost,
    Capabilities,
    DeliveryError,
    Ignore,
    InvalidPayload,
    PermanentError,
    SendResult,
)
from channels_adapters.http import media_fetch, provider_call, transient_or_permanent
from conversations.models import Channel, Identity, Message
from conversations.selectors import id_given
from conversations.services import (
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    InboundMedia,
    InboundMessage,
    StatusUpdate,
)

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.twilio.com"
# Twilio's message states, as ours. Queued/accepted/sending say nothing we don't know.
STATUSES = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}
UNSUBSCRIBED = "21610"  # Twilio's refusal to send to a number that opted out
# Error codes agents meet most, in words (Twilio's error dictionary has the rest).
ERRORS = {
    "21211": "The number is not a valid phone number.",
    "21408": "Sending to this region is not enabled on the Twilio account.",
    "21610": "The recipient replied STOP and has unsubscribed.",
    "21612": "Twilio cannot route messages between these two numbers.",
    "21614": "The number is not a mobile number.",
    "30003": "The handset is unreachable (switched off or out of coverage).",
    "30004": "The recipient has blocked messages.",
    "30005": "The number is unknown or no longer in service.",
    "30006": "The number is a landline or the carrier cannot be reached.",
    "30007": "The carrier filtered the message as spam.",
    "30008": "Unknown delivery error.",
}


def _describe(code: str, message: str = "") -> str:
    words = ERRORS.get(str(code), message or "Twilio reported an error.")
    return f"Twilio error {code}: {words}" if code else words


def _form(body: bytes) -> QueryDict:
    try:
        return QueryDict(body, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"Body is not UTF-8 form data: {exc}") from exc


class SmsAdapter(Adapter):
    kind = Channel.SMS
    # Twilio's MMS: ten media, 5 MB together (error 21623, 11751).
    capabilities = Capabilities(
        attachments=True,
        attachments_max=10,
        attachments_max_bytes=5 * 2**20,
        max_length=1600,
        segments=True,
    )

    # --- Inbound ---

    def verify(self, inbox, *, body, headers, url):
        # Signed with the Auth Token, or, where a webhook rule of the account names a
        # SharedKey, with that key's secret and the algorithm this header gives.
        shared = headers.get("X-Twilio-Webhooks-Signature-Settings")
        key = "webhook_shared_key" if shared else "auth_token"
        token = (inbox.credentials or {}).get(key, "")
        signature = headers.get("X-Twilio-Signature", "")
        if not token or not signature:
            return False
        algorithm = get_signature_algorithm(shared)
        try:
            params = _form(body)
        except InvalidPayload:
            return False
        return RequestValidator(token).validate(url, params, signature, algorithm=algorithm)

    def webhook_key(self, inbox, body, content_type):
        form = _form(body)
        sid = form.get("MessageSid") or form.get("SmsSid")
        if not sid:
            raise InvalidPayload("MessageSid is missing.")
        status = form.get("MessageStatus") or form.get("SmsStatus") or ""
        if status == "received":  # a customer's message: one event per message
            if not form.get("From"):
                raise InvalidPayload("From is missing.")
            return sid
        # A status callback: one event per state the message reaches.
        return f"{sid}:{status}"

    def webhook_answer(self):
        # Empty TwiML: we answer in our own time, through the API.
        return HttpResponse(
            '<?xml version="1.0" encoding="UTF-8"?><Response></Response>',
            content_type="text/xml",
        )

    def parse_inbound(self, event):
        form = _form(event.raw())
        sid = form.get("MessageSid") or form.get("SmsSid", "")
        status = form.get("MessageStatus") or form.get("SmsStatus") or ""
        if status != "received":
            ours = STATUSES.get(status)
            if ours is None:
                raise Ignore(f"Twilio status {status!r} needs nothing.")
            code = form.get("ErrorCode", "")
            reason = _describe(code, form.get("ErrorMessage", "")) if ours == "failed" else ""
            return [StatusUpdate(channel=Channel.SMS, provider_id=sid, status=ours, reason=reason)]
        text = form.get("Body", "")
        media = []
        for index in range(min(id_given(form.get("NumMedia")) or 0, 10)):
            url = form.get(f"MediaUrl{index}")
            if url:
                media.append(
                    InboundMedia(source=url, content_type=form.get(f"MediaContentType{index}", ""))
                )
        return [
            InboundMessage(
                channel=Channel.SMS,
                address=form.get("From", ""),
                text=text,
                provider_id=sid,
                media=tuple(media),
                opt_out=_consent(form.get("OptOutType", ""), text),
                metadata={"to": form.get("To", ""), "segments": form.get("NumSegments", "")},
            )
        ]

    def fetch_media(self, inbox, source):
        return media_fetch(source, auth=_auth(inbox))

    # --- Outbound ---

    def send(self, message):
        from channels_adapters.views import public_attachment_url

        inbox = message.inbox
        account = (inbox.settings or {}).get("account_sid", "")
        if not account:
            raise PermanentError(f'The inbox "{inbox}" has no Twilio account SID set.')
        form = {"To": message.identity.address, "Body": message.text}
        service = (inbox.settings or {}).get("messaging_service_sid", "")
        if service:
            form["MessagingServiceSid"] = service
        else:
            form["From"] = inbox.address
        if settings.PUBLIC_URL:
            form["StatusCallback"] = settings.PUBLIC_URL + reverse(
                "webhook", args=[Channel.SMS, inbox.pk]
            )
        media = [public_attachment_url(a) for a in message.attachments.all()]
        if media:
            form["MediaUrl"] = media
        messages = f"{_api(inbox)}/2010-04-01/Accounts/{account}/Messages.json"
        asked_at = timezone.now()
        try:
            response = provider_call("POST", messages, data=form, auth=_auth(inbox), error=_error)
        except AnswerLost:
            sid = _sent_anyway(inbox, messages, form, asked_at)
            if sid:
                return SendResult(provider_id=sid)
            raise  # not there: sent again on the next attempt
        except PermanentError as refused:
            if refused.reason.startswith(_describe(UNSUBSCRIBED)):
                # Twilio keeps an opt-out we never saw (a keyword we do not know, a STOP to
                # another number of the service): kept here too, the next reply is refused
                # before it is queued instead of failing in its turn.
                Identity.objects.filter(pk=message.identity_id, opted_out_at=None).update(
                    opted_out_at=timezone.now()
                )
            raise
        return SendResult(provider_id=response.json().get("sid", ""))


TRIAL_NOTICE = "Sent from your Twilio trial account - "


def _sent_anyway(inbox, messages: str, form: dict, asked_at) -> str:
    """The sid of the message Twilio made of a request whose answer we lost, or "". Twilio
    has no idempotency key for sending: its newest messages to the number are read back,
    and one from this inbox's number or service, with our text exactly (a trial account
    puts its notice before it) and as many pictures, made since we asked (a minute's leeway
    for clocks) and known to no other message of ours, is ours. A picture without text is
    not looked for: any other would match it."""
    if not form["Body"]:
        return ""
    query = {"To": form["To"], "PageSize": 20}
    if "From" in form:
        query["From"] = form["From"]
    try:
        listed = provider_call("GET", messages, params=query, auth=_auth(inbox), error=_error)
        found = listed.json().get("messages") or []
    except (DeliveryError, ValueError):
        return ""  # not known: the next attempt sends, as before
    since = asked_at - timedelta(minutes=1)
    for sent in found:
        try:
            made = parsedate_to_datetime(sent.get("date_created") or "")
        except (TypeError, ValueError):
            continue
        if made.tzinfo is None:  # "-0000": UTC, by RFC 5322
            made = made.replace(tzinfo=UTC)
        sid, body = sent.get("sid") or "", sent.get("body") or ""
        ours = (
            body in (form["Body"], TRIAL_NOTICE + form["Body"])
            and str(sent.get("num_media") or "0") == str(len(form.get("MediaUrl", [])))
            and (
                sent.get("messaging_service_sid") == form["MessagingServiceSid"]
                if "MessagingServiceSid" in form
                else sent.get("from") == form["From"]
            )
        )
        if made >= since and sid and ours:
            if not Message.objects.filter(provider_id=sid).exists():
                return sid
    return ""


def _consent(opt_out_type: str, text: str) -> bool | None:
    """STOP and its synonyms opt out, START opts back in (Twilio names them in OptOutType
    when Advanced Opt-Out is on; otherwise the keyword is the whole message)."""
    keyword = (opt_out_type or text).strip().upper()
    if keyword in OPT_OUT_KEYWORDS:
        return True
    if keyword in OPT_IN_KEYWORDS:
        return False
    return None


def _api(inbox) -> str:
    return ((inbox.settings or {}).get("api_base_url") or DEFAULT_API).rstrip("/")


def _auth(inbox) -> tuple[str, str]:
    return (
        (inbox.settings or {}).get("account_sid", ""),
        (inbox.credentials or {}).get("auth_token", ""),
    )


def _error(response):
    try:
        data = response.json()
    except ValueError:
        data = {}
    code = str(data.get("code") or "")
    reason = _describe(code, data.get("message", "")) if code else f"HTTP {response.status_code}"
    return transient_or_permanent(response, reason)


# --- The composer's counter ------------------------------------------------------------------

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")  # two septets each: an escape, then the character


@dataclass(frozen=True)
class Segments:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    per_segment: int  # what one segment holds when the message is split


def sms_segments(text: str) -> Segments:
    """How many SMS a text costs: 160 GSM-7 characters fit in one message, 153 per part once
    split (the rest is the concatenation header); 70 and 67 in UCS-2, which one character
    outside the GSM alphabet (an emoji, "ç", Japanese) switches the whole message to. An
    escaped character or a surrogate pair is never cut across two parts."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text):
        encoding, single, split = "GSM-7", 160, 153
        costs = [2 if c in GSM7_EXTENDED else 1 for c in text]
    else:
        encoding, single, split = "UCS-2", 70, 67
        costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
    units = sum(costs)
    if units <= single:
        return Segments(encoding, units, 1 if text else 0, single)
    segments, used = 1, 0
    for cost in costs:
        if used + cost > split:
            segments, used = segments + 1, 0
        used += cost
    return Segments(encoding, units, segments, split)
