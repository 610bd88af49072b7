"""The contract every channel adapter fulfils.

An adapter is the only code that knows a provider's wire format. Inbound, a view (or poller)
calls `verify` on the raw request, stores the raw payload as an `InboundEvent`, and a task later
calls `parse_inbound` to turn it into channel-neutral `InboundMessage`s for
`conversations.services.message_receive`. Outbound, the delivery pipeline calls `send` with a
queued `Message` and reads the outcome from its return value or the exception it raises.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from django.http import HttpResponse

if TYPE_CHECKING:
    from channels_adapters.models import InboundEvent
    from conversations.models import Identity, Inbox, Message
    from conversations.services import InboundMessage, StatusUpdate


def bearer_secret_matches(inbox: Inbox, authorization: str) -> bool:
    """`Authorization: Bearer <inbox secret>`, compared in constant time; anything missing or
    malformed is refused."""
    scheme, _, token = (authorization or "").partition(" ")
    return (
        scheme.lower() == "bearer"
        and bool(token)
        and hmac.compare_digest(token.encode(), inbox.secret.encode())
    )


def json_object(body: bytes) -> dict:
    """The JSON object a provider or integrator posted, or InvalidPayload saying why not."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidPayload(f"Body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidPayload("Body must be a JSON object.")
    return data


class DeliveryError(Exception):
    """Base for send failures; `reason` is shown to the agent as is."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TransientError(DeliveryError):
    """Worth trying again later: timeouts, rate limits, 4xx SMTP, provider 5xx."""


class AnswerLost(TransientError):
    """The request went out but its answer never came back (a read timeout, a dropped
    connection): the provider may have acted on it. Retrying as is may send twice."""


class PermanentError(DeliveryError):
    """Will never work as is: invalid recipient, blocked, opted out. The message fails."""


class InvalidPayload(Exception):
    """The stored inbound payload cannot be understood; the event is marked failed."""


class Ignore(Exception):  # noqa: N818 - it is an instruction, not an error
    """The payload is understood and needs no message (our own mail come back, a receipt for
    nothing we know). The event is marked ignored with this reason."""


@dataclass(frozen=True)
class Capabilities:
    html: bool = False
    subject: bool = False
    attachments: bool = False
    # What the provider takes on one message: files, and their bytes all together.
    attachments_max: int | None = None
    attachments_max_bytes: int | None = None
    max_length: int | None = None
    # True when sending the same message twice cannot reach the customer twice, so a message
    # left "sending" by a dead worker may simply be sent again.
    idempotent_send: bool = False
    # Approved message templates the agent may pick (WhatsApp outside its 24-hour window).
    templates: bool = False
    # Free text goes only within a messaging window after the customer's last message
    # (Messenger's, WhatsApp's): the composer says so before a word is written.
    window: bool = False
    # SMS: the composer counts GSM-7/UCS-2 segments.
    segments: bool = False


@dataclass(frozen=True)
class FetchedMedia:
    content: bytes
    content_type: str
    filename: str = ""


@dataclass(frozen=True)
class SendResult:
    provider_id: str = ""


class Adapter:
    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()

    def verify(self, inbox: Inbox, *, body: bytes, headers: dict[str, str], url: str) -> bool:
        """True when an inbound request really comes from the provider (signature, secret).
        Must compare secrets in constant time and refuse when anything is missing."""
        raise NotImplementedError

    def parse_inbound(self, event: InboundEvent) -> list[InboundMessage | StatusUpdate]:
        """The customer messages and delivery reports in a stored payload (a webhook may batch
        several). Raises InvalidPayload when it cannot be read, Ignore when it needs nothing."""
        raise NotImplementedError

    def new_provider_id(self, message: Message) -> str:
        """An id to fix before the first send attempt, so that every retry reuses it (email's
        Message-ID). Empty when the provider assigns ids itself."""
        return ""

    def send(self, message: Message) -> SendResult:
        """Hand one outbound message to the provider. Raises TransientError or PermanentError;
        any other exception counts as transient."""
        raise PermanentError(f"Sending is not supported on {self.kind}.")

    def replies_from(self, inbox: Inbox) -> bool:
        """Whether agents can reply from `inbox` at all (an API inbox needs its webhook)."""
        return True

    def send_refusal(self, message: Message) -> str:
        """Why `message` (saved or not) must not be sent now, or "" when it may go. Asked
        before a reply is queued, so the agent sees the reason at once, and again before every
        attempt, since a customer may opt out or a window close while it waits."""
        limit = self.capabilities.max_length
        if limit and len(message.text) > limit:
            return (
                f"{message.get_channel_display()} messages are at most {limit} characters; "
                f"this one has {len(message.text)}."
            )
        identity = message.identity
        if identity is not None and identity.opted_out_at:
            return (
                f"{identity.address} opted out of messages here on "
                f"{identity.opted_out_at:%Y-%m-%d}; nothing can be sent until they write "
                "START again."
            )
        return ""

    def reply_templates(self, inbox: Inbox) -> list[dict]:
        """The approved templates an agent may send from `inbox` instead of free text (which
        a closed messaging window refuses), as {"ref", "name", "language", "body"}: `ref`
        is what the picker sends back to name one; none on most channels."""
        return []

    def attachments_refusal(self, message: Message, files: list[tuple[str, str, int]]) -> str:
        """Why the files (name, content type, size) cannot go with `message` on this channel,
        or "". Asked before a reply is stored: the provider would fail it later, after the
        agent has moved on."""
        if not files:
            return ""
        channel = message.get_channel_display()
        caps = self.capabilities
        if not caps.attachments:
            return f"{channel} messages cannot carry files; send them on another channel."
        if caps.attachments_max and len(files) > caps.attachments_max:
            return f"{channel} takes at most {caps.attachments_max} files on one message."
        total = sum(size for _name, _type, size in files)
        if caps.attachments_max_bytes and total > caps.attachments_max_bytes:
            return (
                f"{channel} takes at most {_megabytes(caps.attachments_max_bytes)} of files on "
                f"one message; these are {_megabytes(total)}."
            )
        return ""

    def attachments_hint(self) -> str:
        """What the composer says when files are chosen for this channel."""
        caps = self.capabilities
        if not caps.attachments:
            return "Files cannot be sent on this channel."
        limits = [
            f"at most {caps.attachments_max} files" if caps.attachments_max else "",
            f"{_megabytes(caps.attachments_max_bytes)} in all"
            if caps.attachments_max_bytes
            else "",
        ]
        return ", ".join(part for part in limits if part)

    # True when the provider can tell us the customer's name (Messenger): looked up once.
    fetches_profiles: ClassVar[bool] = False

    def profile_name(self, inbox: Inbox, identity: Identity) -> str:
        """The customer's name as the provider knows it, or "" (TransientError to retry)."""
        return ""

    def fetch_media(self, inbox: Inbox, source: str) -> FetchedMedia:
        """Download customer media an inbound message pointed to (see InboundMedia)."""
        raise PermanentError(f"{self.kind} has no media to fetch.")

    # --- Webhooks (channels_adapters.views.webhook) ---

    webhook_max_bytes: ClassVar[int] = 1024 * 1024

    def webhook_key(self, inbox: Inbox, body: bytes, content_type: str) -> str:
        """Check a verified webhook body is readable (InvalidPayload if not: 400, nothing
        stored) and return its dedupe key: the provider's message id, or a hash of the body
        for a batch. The same delivery twice must give the same key."""
        return hashlib.sha256(body).hexdigest()

    def webhook_answer(self) -> HttpResponse:
        """What the provider expects back once the event is stored."""
        return HttpResponse(status=200)

    def handshake(self, inbox: Inbox, params) -> HttpResponse:
        """A GET on the webhook: Meta's subscription check; nothing for others."""
        return HttpResponse("Use POST.", status=405, content_type="text/plain")


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f}".removesuffix(".0") + " MB"


def customer_last_wrote(identity: Identity, inbox: Inbox) -> datetime | None:
    """When the customer last wrote from `identity` to `inbox`: the start of messaging windows
    (Messenger's and WhatsApp's 24 hours)."""
    from conversations.models import Message

    return (
        Message.objects.filter(identity=identity, inbox=inbox, direction=Message.Direction.INBOUND)
        .order_by("-id")
        .values_list("created_at", flat=True)
        .first()
    )
