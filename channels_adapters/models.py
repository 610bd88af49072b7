import secrets

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


class InboundEvent(models.Model):
    """A provider's payload exactly as it reached us, stored before anything else happens.

    Webhook views, the IMAP poller and the mail pipe store one of these and acknowledge; a
    Celery task then parses it. The unique key makes a replayed delivery a no-op, and the sweep
    re-enqueues any event whose task was lost.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting to be processed")
        PROCESSED = "processed", _("Processed")
        IGNORED = "ignored", _("Ignored")
        FAILED = "failed", _("Failed")

    inbox = models.ForeignKey(  # the unique key and inbound_event_inbox_time_idx lead with it
        "conversations.Inbox",
        on_delete=models.CASCADE,
        related_name="inbound_events",
        db_index=False,
    )
    # The provider's message id, or a hash of the payload when it has none.
    dedupe_key = models.CharField(max_length=255)
    # Small payloads live in the row; large ones (mail with attachments) in file storage, since
    # a database driver holds a blob in memory two or three times over while writing it.
    payload = models.BinaryField(blank=True)
    payload_file = models.FileField(upload_to="inbound/%Y/%m/", blank=True, max_length=200)
    headers = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    message = models.ForeignKey(
        "conversations.Message",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # When an admin last had it processed again: the day it is retried for counts from then.
    requeued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["inbox", "dedupe_key"], name="inbound_event_dedupe_unique"
            )
        ]
        indexes = [
            # Mailbox health (/healthz, admin): the last event and the last day's count per inbox.
            models.Index(fields=["inbox", "received_at"], name="inbound_event_inbox_time_idx"),
            models.Index(
                fields=["received_at"],
                name="inbound_event_pending_idx",
                condition=Q(status="pending"),
            ),
        ]

    def __str__(self):
        return f"{self.inbox} event {self.dedupe_key[:40]}"

    # Set by a caller that has just stored the payload and still holds it.
    payload_in_hand: bytes | None = None

    def raw(self) -> bytes:
        """The payload as it reached us, wherever it is kept."""
        if self.payload_in_hand is not None:
            return self.payload_in_hand
        if self.payload_file:
            with self.payload_file.open("rb") as handle:
                return handle.read()
        return bytes(self.payload)


class MailboxState(models.Model):
    """Where the IMAP poller of an email inbox stands, and how healthy it is."""

    inbox = models.OneToOneField(
        "conversations.Inbox", on_delete=models.CASCADE, related_name="mailbox_state"
    )
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    last_uid = models.BigIntegerField(default=0)
    # A lease, so that two workers never poll the same mailbox at once.
    poll_started_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # When admins were last told about a problem; cleared when the mailbox recovers.
    alerted_at = models.DateTimeField(null=True, blank=True)
    # Mail that could not be stored, left in the mailbox for a person to read: the last few,
    # as {"uid", "reason", "at"} (see health_of).
    unreadable = models.JSONField(default=list, blank=True)

    def __str__(self):
        return f"Mailbox of {self.inbox}"


# --- Outgoing webhooks ----------------------------------------------------------------------


def new_webhook_secret() -> str:
    """256 random bits; the prefix tells an integrator which of their secrets this is."""
    return f"whsec_{secrets.token_hex(32)}"


class WebhookEventType(models.TextChoices):
    CONVERSATION_CREATED = "conversation.created", "A conversation was opened"
    CONVERSATION_UPDATED = "conversation.updated", "Status, priority, team or assignee changed"
    MESSAGE_CREATED = "message.created", "A customer wrote, or a reply to them was written"
    NOTE_CREATED = "note.created", "An agent wrote an internal note (never sent to the customer)"
    MESSAGE_DELIVERED = "message.delivered", "The channel confirmed a reply was delivered"
    MESSAGE_FAILED = "message.failed", "A reply could not be delivered"
    # Sent only when an admin asks (the endpoints' "Send a test event"): nobody subscribes.
    PING = "ping", "A test event, sent from the admin"


SUBSCRIBABLE = [value for value in WebhookEventType.values if value != WebhookEventType.PING]


class WebhookEndpoint(models.Model):
    """An integrator's URL that hears of what happens in the helpdesk, signed with `secret`
    (see channels_adapters.webhooks). Turned off by itself after failing for a day."""

    url = models.URLField(
        "URL",
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="Where events are POSTed: an http(s) address.",
    )
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(
        default=list, help_text="The event types sent to it: see the README."
    )
    is_active = models.BooleanField("active", default=True)
    secret = models.CharField(max_length=80, default=new_webhook_secret, editable=False)
    # Since when every attempt has failed (None while it answers), and why we turned it off.
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_reason = models.CharField(max_length=500, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)  # moves TableCache's mark

    class Meta:
        verbose_name = "webhook endpoint"

    def __str__(self):
        return self.description or self.url

    def clean(self):
        unknown = sorted(set(self.event_types or []) - set(SUBSCRIBABLE))
        if not isinstance(self.event_types, list) or unknown:
            raise ValidationError({"event_types": f"Unknown event types: {', '.join(unknown)}."})
        if not self.event_types:
            raise ValidationError({"event_types": "Choose at least one event type."})


class WebhookDelivery(models.Model):
    """One event on its way to one endpoint: the outbox row, written in the transaction that
    made the change. Its task POSTs it; `next_attempt_at` is when it is next due (a claim
    pushes it past the request's timeout, so a worker that dies mid-request leaves it for the
    sweep). Every attempt carries the same `event_id`: receivers drop a second copy by it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(  # webhook_delivery_unique leads with it
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=40, choices=WebhookEventType.choices)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)
    # When an admin last sent it again: the day it is retried for counts from then.
    requeued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event_id"], name="webhook_delivery_unique")
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_delivery_due_idx",
                condition=Q(status="pending"),
            ),
        ]

    def __str__(self):
        return f"{self.event_type} {self.event_id} to {self.endpoint}"


class WebhookAttempt(models.Model):
    """One POST of a delivery and what came of it."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="tries")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.CharField(max_length=500, blank=True, help_text="The answer's first bytes.")
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self):
        return f"HTTP {self.status_code or '-'} at {self.started_at:%Y-%m-%d %H:%M:%S}"
