"""The core domain: customers and their addresses, inboxes, conversations and their messages.

State changes go through `conversations.services`; nothing here saves itself behind your back.
"""

import base64
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.encoding import force_str
from django.utils.translation import gettext_lazy as _


class Channel(models.TextChoices):
    """How a message travels. Inboxes have a channel; so do customer identities."""

    EMAIL = "email", _("Email")
    SMS = "sms", _("SMS")
    MESSENGER = "messenger", _("Messenger")
    WHATSAPP = "whatsapp", _("WhatsApp")
    WEBCHAT = "webchat", _("Web chat")
    API = "api", _("API")


def new_secret() -> str:
    # 32 bytes = 256 bits, well above the 128 the design asks of any token.
    return secrets.token_urlsafe(32)


def new_public_key() -> str:
    # 128 bits: names a widget or a visitor in URLs and tokens without being guessable.
    return secrets.token_hex(16)


def new_reply_token() -> str:
    # 160 bits in lower-case base32: survives mail systems that fold the case of local parts.
    return base64.b32encode(secrets.token_bytes(20)).decode().lower()


_choice_labels: dict = {}


class ChoiceLabels:
    """`get_FOO_display()` from a dict made once per field. Django rebuilds the dict on every
    call, translating each label to hash it: ~0.2 ms a call, 20 ms for a page of 50 rows."""

    def _get_FIELD_display(self, field):
        labels = _choice_labels.get(field)
        if labels is None:
            labels = _choice_labels[field] = dict(field.flatchoices)
        value = getattr(self, field.attname)
        return force_str(labels.get(value, value), strings_only=True)


class Customer(models.Model):
    name = models.CharField(max_length=200, blank=True)
    language = models.CharField(max_length=10, blank=True, help_text=_("BCP 47 code, e.g. pt-BR."))
    timezone = models.CharField(max_length=64, blank=True)
    attributes = models.JSONField(
        default=dict, blank=True, help_text=_("Free-form facts: plan, lifecycle stage, orders...")
    )
    notes = models.TextField(blank=True)
    # Set when an agent blocked the sender (spam, abuse): what they send later is kept as an
    # ignored inbound event and opens nothing, notifies nobody, gets no automatic reply.
    blocked_at = models.DateTimeField(null=True, blank=True)
    merged_into = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="merged_from",
        help_text=_("Set when this profile was merged into another; kept so old links resolve."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["name"], name="customer_name_idx")]

    def __str__(self):
        return self.name or f"Customer {self.pk}"

    def clean(self):
        if not isinstance(self.attributes, dict):  # routing rules read customer.<attribute>
            raise ValidationError(
                {"attributes": 'Attributes are a JSON object, such as {"plan": "enterprise"}.'}
            )


# Channels whose addresses are ids made by us or the provider, not something a person reads.
OPAQUE_ADDRESSES = (Channel.WEBCHAT, Channel.MESSENGER)
# An integrator's own ids: "42" in the shop is not "42" in the billing system. Such an address
# is stored as "<inbox id>:<id>" (see inbox_scoped_address) and shown without the prefix.
INBOX_SCOPED_ADDRESSES = (Channel.API,)


def inbox_scoped_address(inbox_id: int, address: str) -> str:
    return f"{inbox_id}:{address}"


def inbox_scope(address: str) -> tuple[int | None, str]:
    """(inbox id, address as the integration gave it) of an inbox-scoped address."""
    inbox_id, colon, given = address.partition(":")
    if colon and inbox_id.isascii() and inbox_id.isdigit():
        return int(inbox_id), given
    return None, address


class Identity(ChoiceLabels, models.Model):
    """One address a customer is reached at: an email, a phone number, a Messenger id..."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="identities")
    kind = models.CharField(max_length=20, choices=Channel.choices)
    address = models.CharField(max_length=320)
    display_name = models.CharField(max_length=200, blank=True)
    verified = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Set when the customer asked for no more messages here (SMS "STOP"); nothing is sent to
    # the address until they opt in again ("START").
    opted_out_at = models.DateTimeField(null=True, blank=True)
    # When the provider's profile (Messenger name) was looked up, so it is asked for once.
    profile_fetched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "identities"
        ordering = ["kind", "address"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "address"], name="identity_kind_address_unique")
        ]
        indexes = [models.Index(fields=["address"], name="identity_address_idx")]

    def __str__(self):
        return f"{self.get_kind_display()}: {self.address}"

    def clean(self):
        # As every channel stores it (lower-case email, E.164 numbers), or "JEAN@EXAMPLE.FR"
        # would be a second jean@example.fr that no mail ever reaches.
        from conversations.services import normalize_address

        if self.kind in (Channel.EMAIL, Channel.SMS, Channel.WHATSAPP):
            try:
                self.address = normalize_address(self.kind, self.address, typed=True)
            except ValidationError as exc:
                raise ValidationError({"address": exc.messages}) from None

    @property
    def shown_address(self) -> str:
        """The address as agents see it: a chat visitor's or a Messenger user's is an opaque
        id that means nothing to a person, so it is not shown."""
        if self.kind in OPAQUE_ADDRESSES:
            return ""
        if self.kind in INBOX_SCOPED_ADDRESSES:
            return inbox_scope(self.address)[1] or self.address
        return self.address


EXPECTED_REPLY_MAX = 60 * 24 * 30  # minutes: see Inbox.expected_reply_minutes


class Inbox(ChoiceLabels, models.Model):
    """One configured channel instance: "support@acme.com", "+1 555 0100", "Website chat"."""

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Channel.choices)
    address = models.CharField(
        max_length=320, blank=True, help_text=_("The address customers write to, if any.")
    )
    default_team = models.ForeignKey(
        "routing.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="inboxes"
    )
    business_hours = models.ForeignKey(
        "routing.BusinessHours",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="inboxes",
        help_text=_(
            "When this inbox is answered. The inbox's own schedule wins over its team's; none "
            "(here and on the team) means always open."
        ),
    )
    expected_reply_minutes = models.PositiveIntegerField(
        _("expected reply time (minutes)"),
        null=True,
        blank=True,
        # More than a month is a typo (a promise that long is none), and overflowed the
        # business-hours arithmetic of every acknowledgement.
        validators=[
            MaxValueValidator(EXPECTED_REPLY_MAX, _("At most %(limit_value)s minutes (30 days)."))
        ],
        help_text=_(
            "What customers are told about how soon we answer. Empty: worked out from the "
            "inbox's first replies of the last two weeks, in business hours (until there are "
            "enough of them, its SLA policy's first-response target)."
        ),
    )
    signature = models.TextField(
        _("email signature"),
        max_length=1000,
        blank=True,
        help_text=_(
            "Plain text that ends every email an agent sends from this inbox, after the usual "
            "“-- ” line. {agent} is the agent's name, {inbox} this inbox's name."
        ),
    )
    settings = models.JSONField(default=dict, blank=True, help_text=_("Channel settings."))
    # Provider credentials (API keys, passwords). Never shown back in admin: see InboxAdmin.
    credentials = models.JSONField(default=dict, blank=True)
    # Shared secret for inbound webhooks and the widget's identity HMAC.
    secret = models.CharField(max_length=64, default=new_secret)
    # Public: the web-chat widget's snippet names its inbox by this (data-inbox).
    widget_key = models.CharField(max_length=32, unique=True, default=new_public_key)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)  # for TableCache (our_addresses)

    class Meta:
        verbose_name_plural = "inboxes"
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        # A misspelt {agnet} would end every reply as written.
        placeholders_check(self.signature, ("agent", "inbox"), r"{([^{}]*)}", "signature")

    def signature_for(self, agent_name: str) -> str:
        """The email signature with its placeholders filled ("" when none is set)."""
        return self.signature.replace("{agent}", agent_name).replace("{inbox}", self.name).strip()


class Visitor(models.Model):
    """A browser that opened the chat widget. Its signed token names this row by `key`; its
    web-chat identity ties it to a customer (another one once the site identifies them)."""

    inbox = models.ForeignKey(Inbox, on_delete=models.CASCADE, related_name="visitors")
    identity = models.OneToOneField(Identity, on_delete=models.CASCADE, related_name="visitor")
    key = models.CharField(max_length=32, unique=True, default=new_public_key)
    # True once the site vouched for who this is (a valid identity HMAC): the browser then
    # holds that customer's history, and a page without the identity must not reuse it.
    identified = models.BooleanField(default=False)
    # Where agent replies follow the visitor once they left the chat. Given by the visitor and
    # not verified, so it never links them to the customer who owns that address.
    email = models.EmailField(blank=True)
    page_url = models.URLField(max_length=2000, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    # Sockets open now, and the last time one was (refreshed while open). A crashed server
    # leaves the count high; `last_seen_at` going stale tells the truth then.
    open_sockets = models.PositiveIntegerField(default=0)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # Was this address typed in the widget? Asked of new mail (services._typed_in_chat).
            models.Index(fields=["email"], name="visitor_email_idx", condition=~Q(email="")),
        ]

    def __str__(self):
        return f"Visitor {self.key[:8]}"


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)
    color = models.CharField(max_length=7, default="#6b7280")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Conversation(ChoiceLabels, models.Model):
    """The ticket. Holds messages from any channel; its number is its primary key."""

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        PENDING = "pending", _("Pending")
        SNOOZED = "snoozed", _("Snoozed")
        RESOLVED = "resolved", _("Resolved")
        CLOSED = "closed", _("Closed")

    # Still being worked on (a chat in it is live), and over.
    WORKING = (Status.OPEN, Status.PENDING, Status.SNOOZED)
    ENDED = (Status.RESOLVED, Status.CLOSED)

    class Priority(models.IntegerChoices):
        LOW = 0, _("Low")
        NORMAL = 1, _("Normal")
        HIGH = 2, _("High")
        URGENT = 3, _("Urgent")

    # The foreign keys lead the indexes in Meta, which serve their look-ups too: no index of
    # their own to write on every message (db_index=False, here and on other busy tables).
    inbox = models.ForeignKey(
        Inbox, on_delete=models.PROTECT, related_name="conversations", db_index=False
    )
    customer = models.ForeignKey(
        Customer, on_delete=models.PROTECT, related_name="conversations", db_index=False
    )
    subject = models.CharField(max_length=300, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    priority = models.SmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    team = models.ForeignKey(
        "routing.Team",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversations",
        db_index=False,
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_conversations",
        db_index=False,
    )
    tags = models.ManyToManyField(Tag, blank=True, related_name="conversations")
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_from"
    )
    # Other people on the thread (CC'd on email); they may write into it too.
    participants = models.ManyToManyField(Identity, blank=True, related_name="participating_in")
    # Agents who asked to hear of it without holding it: the customer's replies, others'
    # answers, status changes (services.followers_tell).
    followers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="followed_conversations"
    )
    # The capability in our Reply-To address (support+<token>@...): replies thread by it.
    reply_token = models.CharField(max_length=40, unique=True, default=new_reply_token)
    # Why an agent should look twice, e.g. an email that claimed to continue someone else's
    # conversation. Empty for ordinary conversations.
    flag_reason = models.CharField(max_length=300, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_activity_at = models.DateTimeField(db_index=True)
    last_inbound_at = models.DateTimeField(null=True, blank=True)
    # Set while the customer waits on us (their message is unanswered); SLA clocks read it.
    waiting_since = models.DateTimeField(null=True, blank=True)
    first_response_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    snoozed_until = models.DateTimeField(null=True, blank=True)
    # When the earliest running SLA target runs out (see routing.sla): what the inbox counts
    # down and sorts by. None when no clock runs (none set, all met, or paused on the customer).
    sla_due_at = models.DateTimeField(null=True, blank=True)
    # The customer's rating of the conversation (1-5) and comment, from the chat widget.
    rating = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    rating_comment = models.TextField(blank=True)
    # Set when it was resolved and its inbox sends a satisfaction survey, cleared once the
    # survey went or was found not due: what the sweep finds when the task was lost.
    survey_due_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_activity_at"]
        indexes = [
            models.Index(
                fields=["survey_due_at"],
                name="conv_survey_due_idx",
                condition=Q(survey_due_at__isnull=False),
            ),
            models.Index(fields=["status", "-last_activity_at"], name="conv_status_activity_idx"),
            models.Index(
                fields=["assignee", "status", "-last_activity_at"], name="conv_assignee_idx"
            ),
            models.Index(fields=["team", "status", "-last_activity_at"], name="conv_team_idx"),
            models.Index(fields=["inbox", "status", "-last_activity_at"], name="conv_inbox_idx"),
            models.Index(fields=["customer", "-last_activity_at"], name="conv_customer_idx"),
            models.Index(
                fields=["waiting_since"],
                name="conv_waiting_idx",
                condition=Q(waiting_since__isnull=False),
            ),
            models.Index(
                fields=["sla_due_at"],
                name="conv_sla_due_idx",
                condition=Q(sla_due_at__isnull=False),
            ),
            models.Index(
                fields=["snoozed_until"],
                name="conv_snoozed_idx",
                condition=Q(status="snoozed"),
            ),
            # The inbox's view counts read only this (an index-only scan): no table pages.
            models.Index(
                fields=["inbox", "team", "assignee"],
                name="conv_active_idx",
                condition=Q(status__in=["open", "pending"]),
            ),
            # The list filtered by channel or inbox, newest first: a small inbox's active
            # conversations in order, instead of walking every conversation's activity.
            models.Index(
                fields=["inbox", "-last_activity_at"],
                name="conv_active_inbox_idx",
                condition=Q(status__in=["open", "pending"]),
            ),
        ]

    def __str__(self):
        return f"#{self.number} {self.subject or ''}".strip()

    @property
    def number(self) -> int:
        return self.pk


SENT_LATE = timedelta(minutes=2)  # see Message.sent_late


class Message(ChoiceLabels, models.Model):
    class Direction(models.TextChoices):
        INBOUND = "inbound", _("From the customer")
        OUTBOUND = "outbound", _("To the customer")
        NOTE = "note", _("Internal note")
        SYSTEM = "system", _("System")

    class Status(models.TextChoices):
        RECEIVED = "received", _("Received")
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        DELIVERED = "delivered", _("Delivered")
        READ = "read", _("Read")
        FAILED = "failed", _("Failed")

    conversation = models.ForeignKey(  # message_timeline_idx leads with it
        Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    direction = models.CharField(max_length=10, choices=Direction.choices)
    # The channel and inbox this message travelled through; may differ from the
    # conversation's inbox when an agent answers on another channel.
    channel = models.CharField(max_length=20, choices=Channel.choices)
    inbox = models.ForeignKey(Inbox, on_delete=models.PROTECT, related_name="messages")
    # The customer's address it came from (inbound) or goes to (outbound).
    identity = models.ForeignKey(
        Identity, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    text = models.TextField(blank=True)
    html = models.TextField(blank=True, help_text=_("Sanitised HTML, safe to show."))
    quoted = models.TextField(blank=True, help_text=_("Quoted history and signature."))
    provider_id = models.CharField(max_length=255, blank=True)
    client_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, blank=True)
    failure_reason = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # While a transient failure backs off, no delivery runs before this time.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    # A customer message whose automatic reply (routing.replies) is still to be decided: set
    # with the task's enqueueing, cleared by the task; the sweep finds those whose task was lost.
    auto_reply_due_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["inbox", "provider_id"],
                condition=~Q(provider_id=""),
                name="message_provider_id_unique",
            ),
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=~Q(client_id=""),
                name="message_client_id_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "id"], name="message_timeline_idx"),
            # Email threading looks our Message-IDs up across inboxes.
            models.Index(fields=["provider_id"], name="message_provider_id_idx"),
            models.Index(
                fields=["status", "updated_at"],
                name="message_undelivered_idx",
                condition=Q(status__in=["queued", "sending"]),
            ),
            models.Index(
                fields=["auto_reply_due_at"],
                name="message_auto_reply_due_idx",
                condition=Q(auto_reply_due_at__isnull=False),
            ),
            # Chat replies the visitor has not read: emailed to them once they left.
            models.Index(
                fields=["created_at"],
                name="message_chat_unread_idx",
                condition=Q(channel="webchat", direction="outbound", read_at__isnull=True),
            ),
        ]

    def __str__(self):
        return f"{self.get_direction_display()} message {self.pk}"

    @property
    def sent_late(self) -> bool:
        """Sent well after it was written (retried after a failure): the timeline, in the
        order things were written, must say when the customer got it."""
        return bool(self.sent_at and self.sent_at - self.created_at > SENT_LATE)

    @property
    def is_customer_visible(self) -> bool:
        return self.direction in (self.Direction.INBOUND, self.Direction.OUTBOUND)


class DeliveryAttempt(models.Model):
    """One try at handing an outbound message to its channel: the audit trail of delivery."""

    class Outcome(models.TextChoices):
        SENT = "sent", _("Sent")
        RETRY = "retry", _("Temporary failure, will retry")
        FAILED = "failed", _("Permanent failure")

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempts_log")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    detail = models.TextField(blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["started_at"]

    def __str__(self):
        return f"{self.get_outcome_display()} at {self.started_at:%Y-%m-%d %H:%M:%S}"


def attachment_path(instance, filename):
    # The stored name is random: a customer's file name never becomes a path.
    return f"attachments/{secrets.token_hex(16)}"


# Pictures shown in place (the widget, the agent's timeline): raster formats only, never SVG,
# which can carry script.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


class Attachment(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachments")
    # Empty while provider media waits to be fetched from `source`.
    file = models.FileField(upload_to=attachment_path, max_length=200, blank=True)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=127, default="application/octet-stream")
    size = models.PositiveBigIntegerField(default=0)
    content_id = models.CharField(max_length=255, blank=True, help_text=_("For inline images."))
    # Where provider media comes from (a URL, or the provider's media id), and why fetching it
    # failed, if it did. The file is fetched by a task after the message is stored.
    source = models.CharField(max_length=2000, blank=True)
    fetch_error = models.CharField(max_length=500, blank=True)
    # When its fetch was last tried: one pending long after that lost its task (the sweep).
    fetch_tried_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"],
                name="attachment_fetch_pending_idx",
                condition=Q(file="", fetch_error="") & ~Q(source=""),
            ),
        ]

    def __str__(self):
        return self.filename

    @property
    def is_pending(self) -> bool:
        return not self.file and bool(self.source) and not self.fetch_error

    @property
    def is_image(self) -> bool:
        return bool(self.file) and self.content_type in IMAGE_TYPES


class ConversationEvent(ChoiceLabels, models.Model):
    """Who changed what on a conversation, and when: the timeline's audit trail."""

    class Kind(models.TextChoices):
        CREATED = "created", _("Opened")
        REOPENED = "reopened", _("Reopened")
        STATUS = "status", _("Status changed")
        PRIORITY = "priority", _("Priority changed")
        ASSIGNED = "assigned", _("Assigned")
        TEAM = "team", _("Team changed")
        TAGS = "tags", _("Tags changed")
        MERGED = "merged", _("Merged")
        CUSTOMER_MERGED = "customer_merged", _("Customer merged")
        CHANNEL = "channel", _("Channel switched")
        CONSENT = "consent", _("Opted out or in")
        CHAT = "chat", _("Live chat")  # data.state: "async", "ended" or "transcript"
        RATED = "rated", _("Rated")
        SLA = "sla", _("SLA")  # data: target, state ("warning" or "breached"), due_at
        AUTO_REPLY = "auto_reply", _("Automatic reply")  # data: reply (its kind), message, until
        # data: automation (id), name, trigger, done and skipped (what it did, what it could
        # not and why), or stopped (why it did not act at all).
        AUTOMATION = "automation", _("Automation")
        MACRO = "macro", _("Macro applied")  # data: macro (id), name, done, skipped
        BLOCKED = "blocked", _("Sender blocked")
        UNCOPIED = "uncopied", _("No longer copied")  # data: address
        COPIED = "copied", _("Copied")  # data: address (by an agent; a mail's Cc adds no event)

    conversation = models.ForeignKey(  # event_timeline_idx leads with it
        Conversation, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("Empty when the customer or the system did it."),
    )
    data = models.JSONField(default=dict, blank=True)
    # When the event was made, not written: message_receive writes a message's events together
    # after the message, and "opened" must still come before it in the timeline.
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["conversation", "id"], name="event_timeline_idx")]

    def __str__(self):
        return f"{self.get_kind_display()} on #{self.conversation_id}"


def placeholders_check(
    body: str, known: tuple[str, ...], pattern: str, field: str = "body"
) -> None:
    """ValidationError on the `field` of a template whose placeholders (`pattern`'s group)
    are not all `known`, naming those that are not and those that are; or that writes one
    {{as other template languages do}}, which would reach the customer in braces."""
    if "{{" in (body or "") or "}}" in (body or ""):
        raise ValidationError(
            {field: _("A placeholder takes one pair of braces: {name}, not {{name}}.")}
        )
    unknown = sorted(set(re.findall(pattern, body or "")) - set(known))
    if unknown:
        raise ValidationError(
            {
                field: _("Unknown placeholder %(names)s; use %(known)s.")
                % {
                    "names": ", ".join(f"{{{name}}}" for name in unknown),
                    "known": ", ".join(f"{{{name}}}" for name in known),
                }
            }
        )


class CannedResponse(models.Model):
    """A saved reply an agent inserts by typing `/shortcut` in the composer. Its placeholders
    are filled by `conversations.canned.canned_render`, never by a template engine."""

    title = models.CharField(max_length=120)
    shortcut = models.SlugField(
        max_length=50, help_text=_("Typed after '/' in the composer, e.g. refund-policy.")
    )
    body = models.TextField(
        help_text=_(
            "Plain text. Placeholders: {customer.name}, {customer.first_name}, {agent.name}, "
            "{agent.first_name}, {conversation.number}, {conversation.subject}. After a '|', "
            "what to write when there is none: {customer.first_name|there}; with nothing "
            "after it, the word is left out."
        )
    )
    team = models.ForeignKey(
        "routing.Team",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="canned_responses",
        help_text=_("Empty: available to everyone."),
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # What `conversations.canned.placeholder_values` fills in.
    PLACEHOLDERS = (
        "customer.name",
        "customer.first_name",
        "agent.name",
        "agent.first_name",
        "conversation.number",
        "conversation.subject",
    )

    class Meta:
        ordering = ["shortcut"]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "shortcut"],
                name="canned_team_shortcut_unique",
                violation_error_message=_("This team has a canned response with this shortcut."),
            ),
            # NULLs are distinct in a unique constraint: the global ones need their own.
            models.UniqueConstraint(
                fields=["shortcut"],
                condition=Q(team__isnull=True),
                name="canned_global_shortcut_unique",
                violation_error_message=_(
                    "A canned response for everyone has this shortcut already."
                ),
            ),
        ]

    def __str__(self):
        return f"/{self.shortcut} {self.title}"

    def clean(self):
        # An unknown placeholder would reach the customer as typed when an automation replies.
        placeholders_check(self.body, self.PLACEHOLDERS, r"\{([\w.]+)(?:\|[^}]*)?\}")
        # A fallback the filling cannot read would reach the customer as typed, braces and all.
        bad = [
            match.group(0)
            for match in re.finditer(r"\{[\w.]+\|([^}]*)\}", self.body or "")
            if len(match.group(1)) > 60 or re.search(r"[{|\n]", match.group(1))
        ]
        if bad:
            raise ValidationError(
                {
                    "body": _(
                        "A fallback is up to 60 characters on one line, without { | or }: %(bad)s"
                    )
                    % {"bad": ", ".join(bad)}
                }
            )
        # One "/shortcut" per agent's menu: a team's may not shadow everyone's, nor the reverse.
        same = CannedResponse.objects.filter(shortcut=self.shortcut).exclude(pk=self.pk)
        clash = same.filter(team=None) if self.team_id else same.exclude(team=None)
        if self.shortcut and (other := clash.select_related("team").first()) is not None:
            whose = f"the team {other.team}" if other.team_id else "everyone"
            raise ValidationError({"shortcut": f"/{self.shortcut} is already {whose}'s."})


class Notification(ChoiceLabels, models.Model):
    """Something an agent should know about: assigned to them, mentioned in a note, their
    customer replied. Listed in the inbox with an unread count, and pushed to their sockets."""

    class Kind(models.TextChoices):
        ASSIGNED = "assigned", _("Assigned to you")
        MENTIONED = "mentioned", _("Mentioned you")
        CUSTOMER_REPLIED = "customer_replied", _("Customer replied")
        SLA_WARNING = "sla_warning", _("SLA target due soon")
        SLA_BREACHED = "sla_breached", _("SLA target breached")
        AUTOMATION = "automation", _("Automation")
        FAILED = "failed", _("Reply not delivered")
        SNOOZE_ENDED = "snooze_ended", _("Back from snooze")
        WROTE_AGAIN = "wrote_again", _("Your customer wrote again")
        FOLLOWED = "followed", _("In a conversation you follow")

    recipient = models.ForeignKey(  # notification_list_idx leads with it
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="notifications",
        db_index=False,
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="notifications"
    )
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # What an automation has to say (its name, and the text its notify action gives).
    text = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)
    # When it went out by email (conversations.notification_mail), or was claimed to.
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["recipient", "conversation"],
                name="notification_unread_idx",
                condition=Q(read_at__isnull=True),
            ),
            # The email sweep's look-up, every minute: only what may still go out.
            models.Index(
                fields=["created_at"],
                name="notification_to_email_idx",
                condition=Q(read_at__isnull=True, emailed_at__isnull=True),
            ),
            models.Index(fields=["recipient", "-id"], name="notification_list_idx"),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} (#{self.conversation_id}) for {self.recipient}"

    def said(self) -> tuple[str, str]:
        """The notification in words, as the bell and the agent's mail say it: who (a name,
        set apart) and what. Plain text, for templates to escape."""
        kind, actor = self.Kind, self.actor.name if self.actor else ""
        customer = self.conversation.customer.name
        if self.kind == kind.AUTOMATION:
            return actor or "Automation", self.text
        if self.kind == kind.ASSIGNED:
            automatic = f"Automation “{self.text}”" if self.text else "Routing"
            return actor or automatic, "assigned it to you"
        if self.kind == kind.FAILED:
            return "Not delivered:", self.text
        if self.kind == kind.SNOOZE_ENDED:
            return "Back from snooze:", self.conversation.subject or "no subject"
        if self.kind == kind.WROTE_AGAIN:
            return (
                customer or "Your customer",
                f"wrote again, by {self.text}, in a new conversation",
            )
        if self.kind == kind.FOLLOWED:
            return actor or "It", f"{self.text} (you follow it)"
        if self.text:  # SLA alerts come worded
            return "SLA", self.text
        what = {kind.CUSTOMER_REPLIED: "replied", kind.MENTIONED: "mentioned you"}.get(self.kind)
        return actor or customer or "The customer", what or self.get_kind_display().lower()


class SavedView(models.Model):
    """An agent's named list filters ("My urgent SMS"), shown in their inbox sidebar."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_views"
    )
    name = models.CharField(max_length=60)
    # The list's query string, reduced to the known filters when saved.
    query = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="saved_view_name_unique")
        ]

    def __str__(self):
        return self.name
