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
