"""Every change to customers, conversations and messages goes through here.

Channel adapters, views, the API, consumers and tasks call these functions; none of them saves a
conversation or a message itself. Each service validates its input (raising ValidationError with
a message fit for the user), records a ConversationEvent and publishes a real-time event once
the transaction commits.
"""

from __future__ import annotations

import codecs
import functools
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import reduce
from operator import or_

import nh3
import phonenumbers
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from channels_adapters import webhooks
from conversations.models import (
    IMAGE_TYPES,
    INBOX_SCOPED_ADDRESSES,
    Attachment,
    Channel,
    Conversation,
    ConversationEvent,
    Customer,
    Identity,
    Inbox,
    Message,
    Notification,
    Tag,
    Visitor,
    inbox_scoped_address,
)
from conversations.realtime import (
    publish_conversation_event,
    publish_conversations_erased,
    publish_customer_changed,
    publish_notifications,
)
from routing.models import TableCache
from routing.replies import auto_reply_due
from routing.sla import (
    sla_agent_replied,
    sla_customer_wrote,
    sla_merged,
    sla_retarget,
    sla_status_changed,
    sla_waiting_again,
)

log = logging.getLogger(__name__)

Status = Conversation.Status
# Where a conversation goes back to open when a person's reply in it fails: it was set aside
# waiting on the customer or on a date, or resolved. A closed one stays closed.
UNDELIVERED_REOPENS = (Status.PENDING, Status.SNOOZED, Status.RESOLVED)
# "Last seen" is for people; a minute's precision spares a write per message in a burst.
LAST_SEEN_PRECISION = timedelta(minutes=1)
# A customer writing into one of these continues it (and reopens it when it is not open).
CONTINUABLE = (Status.OPEN, Status.PENDING, Status.SNOOZED, Status.RESOLVED)
# Channels addressed by phone number: the same number on both is the same customer.
PHONE_CHANNELS = (Channel.SMS, Channel.WHATSAPP)
# What customers text to stop and restart messages (the carriers' and Twilio's keywords).
OPT_OUT_KEYWORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
OPT_IN_KEYWORDS = {"START", "UNSTOP", "YES", "OPTIN"}


# --- Channel-neutral inbound types: adapters parse provider payloads into these -------------


@dataclass(frozen=True)
class InboundAttachment:
    filename: str
    content_type: str
    content: bytes | File  # a File for large bodies the adapter spooled to disk
    content_id: str = ""

    @property
    def size(self) -> int:
        return len(self.content) if isinstance(self.content, bytes) else self.content.size


@dataclass(frozen=True)
class InboundMedia:
    """Provider media to fetch after the message is stored: a URL or a provider media id,
    resolved by the adapter of the message's channel."""

    source: str
    content_type: str = ""
    filename: str = ""


@dataclass(frozen=True)
class InboundMessage:
    channel: str  # the identity kind: Channel.EMAIL, Channel.SMS...
    address: str  # the customer's address on that channel
    text: str = ""
    html: str = ""
    name: str = ""
    subject: str = ""
    provider_id: str = ""
    client_id: str = ""
    language: str = ""
    # Set when the adapter has already threaded the message (email headers, widget state).
    conversation: Conversation | None = None
    # Set when the adapter decided the message must not continue any existing conversation.
    force_new_conversation: bool = False
    attachments: tuple[InboundAttachment, ...] = ()
    quoted: str = ""  # quoted history and signature, split off `text`
    cc: tuple[tuple[str, str], ...] = ()  # (name, address) of others on the thread
    media: tuple[InboundMedia, ...] = ()
    # True when the customer asked for no more messages on this address (SMS STOP), False
    # when they asked to get them again (START); None for an ordinary message.
    opt_out: bool | None = None
    # True for a message the business sent to `address` outside Threadline (a Messenger echo
    # of a reply typed in the Page inbox): stored as an outbound message.
    echo: bool = False
    # The Message-IDs a mail answers (In-Reply-To, References). One of a mail we sent to this
    # very address, which only that mailbox got (the reply token is the same for the whole
    # thread), confirms the address (Identity.verified) once the conversation accepts it.
    answers: tuple[str, ...] = ()
    # An automatic answer (an out-of-office reply): it joins the timeline of a conversation
    # it continues but reopens nothing, waits for nothing and tells nobody.
    asks_nothing: bool = False
    # Why agents should check who wrote, when the channel cannot vouch for the address (an
    # email's Reply-To): shown on a new conversation until the address is confirmed.
    check: str = ""
    # Why the sender's own domain says the message is not from the address (an email that
    # failed DMARC at the server that received it): flags the conversation, new or not.
    forged: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if (cleaned := without_nul(value)) != value:
                object.__setattr__(self, name, cleaned)
        object.__setattr__(self, "name", without_reordering(self.name))
        object.__setattr__(self, "subject", without_reordering(self.subject))
        if self.cc:
            cc = tuple((without_reordering(name), address) for name, address in self.cc)
            object.__setattr__(self, "cc", cc)
        for name in ("provider_id", "client_id"):  # they name things: refused, not changed
            if "\x00" in getattr(self, name):
                raise ValidationError(f"The {name.replace('_', ' ')} contains a NUL character.")


# What a channel brings that is stored as text or JSON (see without_nul). The address is
# refused with a NUL (normalize_address): "c\x001" made into "c1" would be someone else.
TEXT_FIELDS = ("text", "html", "name", "subject", "language", "quoted", "cc", "metadata")


# Invisible characters that reorder or hide text: in a name or a subject, "Bob\u202e" and the
# like let a sender pass for someone else on the agents' screens. Nobody's name needs them
# (right-to-left names read right without them); the joiners some scripts spell with stay.
REORDERING = dict.fromkeys(
    [0x061C, 0x200B, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2060, 0x206A), 0xFEFF]
)


def without_reordering(value: str) -> str:
    """A name, subject or file name without the characters of REORDERING."""
    return value.translate(REORDERING)


def attachment_filename(name: str) -> str:
    """A file name as stored: without REORDERING ("invoice\u202efdp.exe"), cut to fit."""
    return (without_reordering(name or "") or "attachment")[:255]


def without_nul(value):
    """`value` without NUL characters (U+0000), in strings, lists and dicts at any depth.
    PostgreSQL refuses them in text and JSON, so one in a customer's mail or chat line made
    the whole message fail to store, retried for ever; nobody means one. Dropped where input
    enters, on every database alike."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(without_nul(item) for item in value)
    return value


@dataclass(frozen=True)
class StatusUpdate:
    """A provider's word on one of our outbound messages: delivered, read, failed..."""

    channel: str
    provider_id: str
    status: str
    reason: str = ""
    # Our own id for the message, where the provider names it by ours (an API integration's
    # report on a reply): looked up by it, not by provider_id.
    message_id: int | None = None
    # A bounce for these only, copied on the message (not its customer, who has it): noted on
    # the message, whose status stays as it is.
    copies_missed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Received:
    message: Message
    created: bool  # False when the message was a duplicate of one already stored


# How senders hide a part of their mail (a preheader, a tracking block) from its reader. Not
# mso-hide: it hides from desktop Outlook only, and marks the very link (a button's) that
# every other reader shows.
HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def sanitize_html(html: str, attribute_filter=None, attributes=None) -> str:
    """Customer HTML reduced to what is safe to show: no scripts, styles, handlers or
    javascript: links; only http, https and mailto URLs survive, and cid: (a picture of the
    mail's own, which the timeline puts in place). `attributes`: those kept per tag (nh3's
    default set unless given); `attribute_filter(tag, name, value)`, as nh3 takes it, may
    change or drop (None) what is left of one.

    Of a style, only whether it hides the element survives, as `display:none`: no inline
    style applies under our Content-Security-Policy, so the inbox's stylesheet hides what
    carries exactly that, and a hidden preheader stays hidden as in the customer's mailbox."""
    if not html:
        return ""

    def keep(tag, name, value):
        if name == "style":
            return "display:none" if HIDDEN_STYLE.search(value) else None
        return attribute_filter(tag, name, value) if attribute_filter else value

    return nh3.clean(
        html,
        url_schemes={"http", "https", "mailto", "cid"},
        link_rel="noopener noreferrer",
        # On every tag: nh3's own two, and the two that say what the sender hid.
        attributes={
            **(attributes or nh3.ALLOWED_ATTRIBUTES),
            "*": {"lang", "title", "style", "hidden"},
        },
        attribute_filter=keep,
    )


def normalize_address(kind: str, address: str, *, typed: bool = False) -> str:
    """The one spelling of an address we store: lower-case email, E.164 phone numbers.
    `typed`: an agent wrote it, rather than a provider sending it (see phone_normalize)."""
    address = (address or "").strip()
    if len(address) > ADDRESS_MAX:
        raise ValidationError(f"An address has at most {ADDRESS_MAX} characters.")
    if "\x00" in address:
        raise ValidationError("An address cannot contain NUL characters.")
    if kind == Channel.EMAIL:
        address = address.lower()
    elif kind in PHONE_CHANNELS and address:
        address = phone_normalize(address, typed=typed)
    if not address:
        raise ValidationError("A customer address is required.")
    return address


ADDRESS_MAX = Identity._meta.get_field("address").max_length
PHONE_FORMAT = "{} is not a phone number: write it with its country code, e.g. +44 20 7946 0958."


def phone_normalize(number: str, *, typed: bool = False) -> str:
    """+E.164 for a number in international form ("+44 20 7946 0958", "0044...", WhatsApp's
    "447946..."), or ValidationError. A number an agent `typed` without its country code
    ("555-200-0077") is read as one of `PHONE_REGION` ("US"), else refused: taken as
    international it would be someone else's number (+55, Brazil, for that one)."""
    number = original = number.strip()
    region = None
    if number.startswith("00"):
        number = "+" + number[2:]
    elif not number.startswith("+"):
        if not typed:
            number = "+" + number  # WhatsApp ids are the number without its plus
        elif not (region := settings.PHONE_REGION.upper()):
            raise ValidationError(PHONE_FORMAT.format(repr(original)))
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError(PHONE_FORMAT.format(repr(original))) from exc
    if not phonenumbers.is_possible_number(parsed):
        raise ValidationError(PHONE_FORMAT.format(repr(original)))
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _event(conversation, kind, actor=None, **data) -> ConversationEvent:
    event = ConversationEvent.objects.create(
        conversation=conversation, kind=kind, actor=actor, data=data
    )
    webhooks.conversation_event_emit(event)  # a change of status, priority, team or assignee
    return event


# --- Customers -----------------------------------------------------------------------------


def identity_get_or_create(*, kind: str, address: str, name: str = "") -> Identity:
    """The identity for (kind, address), creating it and a new customer if it is unknown."""
    address = normalize_address(kind, address)
    try:  # get(), not first(): the pair is unique, and ordering it costs the ORM a third more
        return Identity.objects.select_related("customer").get(kind=kind, address=address)
    except Identity.DoesNotExist:
        pass
    try:
        with transaction.atomic():
            customer = _customer_with_same_phone(kind, address) or Customer.objects.create(
                name=name[:200]
            )
            return Identity.objects.create(
                customer=customer,
                kind=kind,
                address=address,
                display_name=name[:200],
                last_seen_at=timezone.now(),
            )
    except IntegrityError:  # someone created it between our read and our insert
        return Identity.objects.select_related("customer").get(kind=kind, address=address)


def _customer_with_same_phone(kind: str, address: str) -> Customer | None:
    """A number that texted us and now writes on WhatsApp is the same customer."""
    if kind not in PHONE_CHANNELS:
        return None
    twin = (
        Identity.objects.filter(kind__in=PHONE_CHANNELS, address=address)
        .exclude(kind=kind)
        .select_related("customer")
        .first()
    )
    return twin.customer if twin else None


def customer_merge(*, source: Customer, target: Customer, actor=None) -> Customer:
    """Move everything `source` has (identities, conversations, attributes) onto `target`.

    `source` stays as an empty profile pointing at `target`, so links to it still resolve.
    """
    if source.pk == target.pk:
        raise ValidationError("A customer cannot be merged into itself.")
    with transaction.atomic():
        source, target = (
            Customer.objects.select_for_update(of=("self",)).get(pk=source.pk),
            Customer.objects.select_for_update(of=("self",)).get(pk=target.pk),
        )
        if source.merged_into_id or target.merged_into_id:
            raise ValidationError("One of these customers was already merged into another.")
        for attr in ("name", "language", "timezone"):
            if not getattr(target, attr):
                setattr(target, attr, getattr(source, attr))
        # The target's values win; the source's that differ are kept in the notes, not lost.
        differing = {
            key: value
            for key, value in source.attributes.items()
            if key in target.attributes and target.attributes[key] != value
        }
        target.attributes = {**source.attributes, **target.attributes}
        notes = [target.notes, source.notes]
        if differing:
            facts = ", ".join(f"{key}: {value}" for key, value in differing.items())
            notes.append(f"Merged from {source.name or f'customer {source.pk}'}, who had {facts}.")
        target.notes = "\n\n".join(note for note in notes if note).strip()
        target.full_clean()
        target.save()

        Identity.objects.filter(customer=source).update(customer=target)
        moved = list(Conversation.objects.filter(customer=source).select_related("inbox"))
        Conversation.objects.filter(customer=source).update(customer=target)
        Customer.objects.filter(pk=source.pk).update(merged_into=target, notes="", attributes={})
        for conversation in moved:
            _event(
                conversation,
                ConversationEvent.Kind.CUSTOMER_MERGED,
                actor,
                source=source.pk,
                target=target.pk,
            )
            publish_conversation_event(conversation, "customer_merged")
        # The target's own conversations show the profile it now is (its name, addresses).
        publish_customer_changed(target.pk)
    return target


CUSTOMER_EDITABLE = ("name", "language", "timezone", "notes", "attributes")
# Free attributes are for facts an agent reads at a glance, not a document store.
ATTRIBUTES_MAX_KEYS = 50
ATTRIBUTES_MAX_CHARS = 20_000
NOTES_MAX_CHARS = 20_000


def customer_clean(data: dict) -> dict:
    """The profile fields of `data` as they would be stored, or ValidationError with a
    message per field that is wrong (all of them, not the first)."""
    unknown = set(data) - set(CUSTOMER_EDITABLE)
    if unknown:
        raise ValueError(f"Not editable: {sorted(unknown)}")  # a caller's bug, not user input
    cleaned, errors = {}, {}
    for name, value in data.items():
        try:
            cleaned[name] = _CUSTOMER_CLEANERS[name](value)
        except ValidationError as exc:
            errors[name] = exc.messages
    if errors:
        raise ValidationError(errors)
    return cleaned


def customer_update(*, customer: Customer, data: dict, actor=None) -> Customer:
    """Change the profile fields of `customer` named in `data` (see CUSTOMER_EDITABLE).

    Every field is checked first; on any error nothing changes and ValidationError holds a
    message per field. The log names the fields that changed, never their values: profiles
    hold personal data."""
    cleaned = customer_clean(data)
    with transaction.atomic():
        customer = Customer.objects.select_for_update().get(pk=customer.pk)
        if customer.merged_into_id:
            raise ValidationError("This customer was merged into another; edit that profile.")
        changed = [name for name, value in cleaned.items() if getattr(customer, name) != value]
        for name in changed:
            setattr(customer, name, cleaned[name])
        customer.full_clean()
        if changed:
            customer.save(update_fields=[*changed, "updated_at"])
            publish_customer_changed(customer.pk)
    log.info("customer %s: %s changed by user %s", customer.pk, changed, getattr(actor, "pk", None))
    return customer


def customer_block(*, customer: Customer, actor, conversation: Conversation | None = None):
    """Stop taking messages from `customer` (spam, abuse). What they send later by email, SMS,
    Messenger, WhatsApp or the API is kept as an ignored inbound event, so nothing is lost, but
    it opens nothing, notifies nobody and gets no automatic reply; the chat widget refuses it
    and says so. `conversation`, where the agent did it, says so in its timeline and is closed
    (without automations). Reports leave blocked customers out."""
    with transaction.atomic():
        Customer.objects.filter(pk=customer.pk).update(blocked_at=timezone.now())
        publish_customer_changed(customer.pk)
        if conversation is not None:
            _event(conversation, ConversationEvent.Kind.BLOCKED, actor)
            if conversation.status != Status.CLOSED:
                # No automations: a "thank you" or a survey on closing must not go to a spammer.
                conversation_set_status(
                    conversation=conversation,
                    status=Status.CLOSED,
                    actor=actor,
                    automations=False,
                )
    log.info("customer %s blocked by user %s", customer.pk, getattr(actor, "pk", None))
    customer.refresh_from_db()
    return customer


ERASED_TEXT = "(erased at the request of the person who wrote it)"


def customer_erase(*, customer: Customer, actor) -> dict[str, int]:
    """Delete what Threadline holds about `customer`, for a request to be forgotten: the
    profile and every profile merged into it, their addresses and chat visitors, their
    conversations with every message, note, event, notification and SLA clock in them, the
    attachment files, and the raw provider payloads (mail, webhooks, delivery receipts) of
    those messages and of what was set aside while they were blocked. It cannot be undone;
    the views let admins only. An admin log entry records who erased which profile number
    and how much, with no personal data.

    What they wrote into someone else's conversation (replying as a CC'd participant) stays
    as a blanked message, so that conversation still reads in order: its text, HTML, quoted
    history, attachments and raw payload go. Returns counts for the confirmation."""
    from django.contrib.admin.models import DELETION, LogEntry
    from django.contrib.contenttypes.models import ContentType

    from channels_adapters.models import InboundEvent

    with transaction.atomic():
        customer = Customer.objects.select_for_update().get(pk=customer.pk)
        if customer.merged_into_id:
            raise ValidationError("This profile was merged into another one: erase that one.")
        profiles, merged = [customer.pk], [customer.pk]
        for _ in range(10):  # merges form short chains; the bound guards against a cycle
            merged = list(
                Customer.objects.filter(merged_into__in=merged).values_list("pk", flat=True)
            )
            if not merged:
                break
            profiles += merged
        conversations = Conversation.objects.filter(customer__in=profiles)
        elsewhere = Message.objects.filter(identity__customer__in=profiles).exclude(
            conversation__customer__in=profiles
        )
        messages = Message.objects.filter(
            Q(conversation__in=conversations) | Q(pk__in=elsewhere.values("pk"))
        )
        # What they sent that never became a message goes too: what was set aside while they
        # were blocked (any channel), and mail that was not taken (an auto-reply, a bounce),
        # since mail's stored headers name its sender.
        identities = list(
            Identity.objects.filter(customer__in=profiles).values_list("kind", "address")
        )
        payloads = InboundEvent.objects.filter(
            Q(message__in=messages)
            | Q(message=None, headers__blocked__in=[f"{k}:{a}" for k, a in identities])
            | Q(
                message=None,
                inbox__kind=Channel.EMAIL,
                headers__from__in=[a for k, a in identities if k == Channel.EMAIL],
            )
        )
        attachment_storage = Attachment._meta.get_field("file").storage
        payload_storage = InboundEvent._meta.get_field("payload_file").storage
        files = [
            *(
                (attachment_storage, name)
                for name in Attachment.objects.filter(message__in=messages)
                .exclude(file="")
                .values_list("file", flat=True)
            ),
            *(
                (payload_storage, name)
                for name in payloads.exclude(payload_file="").values_list("payload_file", flat=True)
            ),
        ]
        publish_conversations_erased(
            conversations.values("pk", "team_id", "assignee_id", "inbox__default_team_id")
        )
        payloads.delete()
        Attachment.objects.filter(message__in=elsewhere).delete()
        blanked = elsewhere.update(text=ERASED_TEXT, html="", quoted="", metadata={})
        # With their messages, attachments, events, notifications...; counted per model.
        _, deleted = conversations.delete()
        Customer.objects.filter(pk__in=profiles).delete()  # ...addresses and visitors
        counts = {
            "conversations": deleted.get(Conversation._meta.label, 0),
            "messages": deleted.get(Message._meta.label, 0),
            "blanked": blanked,
            "files": len(files),
        }
        LogEntry.objects.create(
            user_id=actor.pk,
            content_type=ContentType.objects.get_for_model(Customer),
            object_id=str(customer.pk),
            object_repr=f"Customer {customer.pk} (erased)",
            action_flag=DELETION,
            change_message=(
                f"Erased on request: {counts['conversations']} conversations, "
                f"{counts['messages']} messages, {counts['files']} files; {blanked} messages "
                "in others' conversations blanked."
            ),
        )
        # Files go once the rows are gone for good: a rollback must not leave rows without them.
        transaction.on_commit(
            lambda: [storage.delete(name) for storage, name in files], robust=True
        )
    log.info("customer %s erased by user %s", customer.pk, actor.pk)
    return counts


def customer_unblock(*, customer: Customer, actor) -> Customer:
    Customer.objects.filter(pk=customer.pk).update(blocked_at=None)
    publish_customer_changed(customer.pk)
    log.info("customer %s unblocked by user %s", customer.pk, getattr(actor, "pk", None))
    customer.refresh_from_db()
    return customer


def language_guess(text: str) -> str:
    """The language `text` is written in, when it says enough to tell; "" when unsure. For
    customers whose channel does not say (SMS, WhatsApp, most mail). py3langid, restricted to
    settings.CUSTOMER_LANGUAGES: a "Gracias" or an "ok" is too short to tell apart."""
    # A Chinese or Japanese character says about as much as a word's worth of Latin letters.
    letters = sum(3 if ord(ch) >= 0x2E80 else 1 for ch in text[:200] if ch.isalpha())
    if letters < LANGUAGE_GUESS_MIN_LETTERS:
        return ""
    try:
        language, confidence = _language_identifier().classify(text[:2000])
    except Exception:  # noqa: BLE001 - a guess must never cost the customer their message
        log.exception("could not guess the language of a message; check CUSTOMER_LANGUAGES")
        return ""
    return language if confidence >= LANGUAGE_GUESS_CONFIDENCE else ""


LANGUAGE_GUESS_MIN_LETTERS, LANGUAGE_GUESS_CONFIDENCE = 12, 0.8


def _language_identifier():
    # Loading the model takes a second of CPU: under a lock, or every thread of a busy
    # process's first burst of messages loads its own copy at once.
    with _LANGUAGE_LOCK:
        return _language_identifier_load()


_LANGUAGE_LOCK = threading.Lock()


@functools.cache
def _language_identifier_load():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(settings.CUSTOMER_LANGUAGES)
    return identifier


def language_normalize(tag: str) -> str:
    """A BCP 47 tag as far as customers need one, in its usual case: "pt_br" -> "pt-BR",
    "zh-hant-tw" -> "zh-Hant-TW", "es-419"; ValidationError for anything else."""
    import re

    match = re.fullmatch(
        r"([a-z]{2,3})(?:-([a-z]{4}))?(?:-([a-z]{2}|[0-9]{3}))?",
        tag.strip().replace("_", "-"),
        flags=re.IGNORECASE,
    )
    if not match:
        raise ValidationError(f"{tag!r} is not a language code such as en, pt-BR or es-419.")
    language, script, region = match.groups()
    parts = (language.lower(), script and script.title(), region and region.upper())
    return "-".join(part for part in parts if part)


def in_language(by_language: dict, language: str):
    """What `by_language` (keyed by lower-case language tags) holds for `language`: under its
    own tag, else its base ("pt" for "pt-BR"), else another of that base ("pt-BR" for
    "pt-PT"); None when nothing is in that language."""
    tag = (language or "").strip().lower()
    base = tag.split("-")[0]
    if not base:
        return None
    for candidate in (tag, base):
        if candidate in by_language:
            return by_language[candidate]
    return next((held for key, held in by_language.items() if key.split("-")[0] == base), None)


def _timezone_clean(value) -> str:
    from helpdesk.middleware import zone_names

    value = str(value or "").strip()
    if value and value not in zone_names():
        raise ValidationError(f"{value!r} is not a time zone such as Europe/Lisbon.")
    return value


def _notes_clean(value) -> str:
    value = str(value or "").strip()
    if len(value) > NOTES_MAX_CHARS:
        raise ValidationError(f"Notes are limited to {NOTES_MAX_CHARS} characters.")
    return value


def _attributes_clean(value) -> dict:
    import json

    if not isinstance(value, dict):
        raise ValidationError("Attributes must be names with values.")
    if len(value) > ATTRIBUTES_MAX_KEYS:
        raise ValidationError(f"A customer has at most {ATTRIBUTES_MAX_KEYS} attributes.")
    cleaned = {}
    for key, item in value.items():
        key = str(key).strip()
        if not key or len(key) > 100:
            raise ValidationError("Each attribute needs a name of at most 100 characters.")
        cleaned[key] = item
    try:
        size = len(json.dumps(cleaned))
    except (TypeError, ValueError):
        raise ValidationError("Attribute values must be text, numbers, lists or objects.") from None
    if size > ATTRIBUTES_MAX_CHARS:
        raise ValidationError(f"Attributes are limited to {ATTRIBUTES_MAX_CHARS} characters.")
    return cleaned


_CUSTOMER_CLEANERS = {
    "name": lambda value: str(value or "").strip(),  # full_clean() checks the length
    "language": lambda value: language_normalize(value) if str(value or "").strip() else "",
    "timezone": _timezone_clean,
    "notes": _notes_clean,
    "attributes": _attributes_clean,
}


class AddressTaken(ValidationError):
    """The address is another customer's. If they are the same person, merge the two."""

    def __init__(self, owner: Customer):
        super().__init__("This address belongs to another customer.")
        self.owner = owner


def identity_add(*, customer: Customer, kind: str, address: str, actor=None) -> Identity:
    """Give `customer` an email address or phone number an agent learnt. An address is one
    customer's only (a phone number on SMS and WhatsApp alike): AddressTaken otherwise."""
    if kind not in (Channel.EMAIL, *PHONE_CHANNELS):
        raise ValidationError("Only email addresses and phone numbers can be added here.")
    address = normalize_address(kind, address, typed=True)
    if kind == Channel.EMAIL:
        validate_email(address)
    kinds = PHONE_CHANNELS if kind in PHONE_CHANNELS else (kind,)
    with transaction.atomic():
        customer = Customer.objects.select_for_update().get(pk=customer.pk)
        if customer.merged_into_id:
            raise ValidationError("This customer was merged into another; use that profile.")
        taken = Identity.objects.filter(kind__in=kinds, address=address).select_related("customer")
        if other := taken.exclude(customer=customer).first():
            raise AddressTaken(other.customer)
        if taken.filter(kind=kind).exists():
            raise ValidationError("This customer already has this address.")
        try:
            with transaction.atomic():
                identity = Identity.objects.create(customer=customer, kind=kind, address=address)
        except IntegrityError:  # added elsewhere between our check and our insert
            raise AddressTaken(Identity.objects.get(kind=kind, address=address).customer) from None
        publish_customer_changed(customer.pk)
    # The address itself is personal data: the log says which profile, not what.
    actor_id = getattr(actor, "pk", None)
    log.info(
        "identity %s (%s) added to customer %s by user %s", identity.pk, kind, customer.pk, actor_id
    )
    return identity


# --- Opening ----------------------------------------------------------------------------


def conversation_open(
    *, inbox: Inbox, customer: Customer, subject: str = "", actor=None, **event_data
) -> Conversation:
    """A new conversation with `customer` in `inbox`, routed to the inbox's team."""
    conversation = _conversation_create(
        inbox=inbox, customer=customer, subject=subject, actor=actor, **event_data
    )
    # An agent's start, or an admin's: integrators hear of it as of one a customer opened.
    webhooks.conversation_created(conversation)
    publish_conversation_event(conversation, "created")
    return conversation


class StartedAlready(ValidationError):
    """The agent sent this very text to this customer a moment ago (a double click, or Back
    after sending): starting again would send it twice. `again=True` means it."""

    def __init__(self, earlier: Message):
        super().__init__(
            f"Not sent: you sent this same message to this customer at "
            f"{timezone.localtime(earlier.created_at):%H:%M}, in #{earlier.conversation_id}. "
            "Press Send again only to start another conversation with it."
        )
        self.earlier = earlier


STARTED_ALREADY_WITHIN = timedelta(minutes=30)


def conversation_start(
    *,
    customer: Customer,
    identity: Identity,
    author,
    text: str,
    subject: str = "",
    again: bool = False,
    template: str = "",
) -> Conversation:
    """An agent writes first: a new conversation with `customer` on the channel of `identity`,
    in the inbox that channel sends from (as for a reply), assigned to `author`, with `text`
    queued as its first message. All or nothing: when the channel refuses the message (opted
    out, Messenger's or WhatsApp's window closed), nothing is stored and ValidationError says
    why; StartedAlready when the agent sent the same text to the customer within
    STARTED_ALREADY_WITHIN, unless `again`. `template`: an approved template (WhatsApp),
    sent instead of `text`."""
    if identity.customer_id != customer.pk:
        raise ValidationError("That address is not this customer's.")
    if not (text.strip() or template):
        raise ValidationError("A message needs text.")
    with transaction.atomic():
        # One start at a time per customer, so that a double click's second finds the first.
        Customer.objects.select_for_update().filter(pk=customer.pk).first()
        if not again:
            earlier = (
                Message.objects.filter(
                    conversation__customer=customer,
                    author=author,
                    direction=Message.Direction.OUTBOUND,
                    text=text,
                    created_at__gte=timezone.now() - STARTED_ALREADY_WITHIN,
                )
                .exclude(status=Message.Status.FAILED)  # sending a failed one again is meant
                .order_by("-pk")
                .first()
            )
            if earlier is not None:
                raise StartedAlready(earlier)
        inbox = inbox_for_message(identity, author=author)
        conversation = conversation_open(
            inbox=inbox, customer=customer, subject=subject, actor=author, channel=identity.kind
        )
        conversation = conversation_assign(conversation=conversation, assignee=author, actor=author)
        reply_send(
            conversation=conversation,
            author=author,
            text=text,
            identity=identity,
            template=template,
        )
    return conversation


def _conversation_create(*, inbox, customer, subject="", actor=None, **event_data):
    conversation, created = _conversation_insert(inbox, customer, subject, actor, **event_data)
    created.save()
    return conversation


def _conversation_insert(
    inbox, customer, subject, actor=None, **event_data
) -> tuple[Conversation, ConversationEvent]:
    """The new conversation, stored, and its "created" event, not yet: message_receive writes
    it with the other events of the message, in one INSERT."""
    if customer.merged_into_id:
        raise ValidationError("This customer was merged into another; use that profile.")
    conversation = Conversation.objects.create(
        inbox=inbox,
        customer=customer,
        # On one line: a subject becomes an email header, where a line break is refused.
        subject=" ".join(subject.split())[:300],
        team=inbox.default_team,
        last_activity_at=timezone.now(),
    )
    created = ConversationEvent(
        conversation=conversation, kind=ConversationEvent.Kind.CREATED, actor=actor, data=event_data
    )
    return conversation, created


# --- Inbound ---------------------------------------------------------------------------------


def _conversation_to_continue(
    inbox: Inbox, customer: Customer, identity: Identity
) -> Conversation | None:
    """The conversation this address last took part in, wherever it started (an agent who
    answered an email customer by SMS gets the SMS reply there), else the customer's latest
    one in this inbox."""
    continuable = Conversation.objects.select_for_update(of=("self",)).filter(
        customer=customer, status__in=CONTINUABLE, merged_into=None
    )
    last_used = (
        Message.objects.filter(identity=identity)
        .exclude(direction=Message.Direction.NOTE)
        .order_by("-id")
        .values_list("conversation_id", flat=True)[:1]
    )
    return (
        continuable.filter(pk__in=last_used).first()
        or continuable.filter(inbox=inbox).order_by("-last_activity_at").first()
    )


class SenderBlocked(ValidationError):
    """The customer was blocked (customer_block): their message is not taken."""

    def __init__(self, identity: Identity):
        super().__init__("This sender is blocked: the message was not taken.")
        # Read now: the identity may have been made for this message, and go with its rollback.
        self.identity_id = identity.pk
        self.marker = f"{identity.kind}:{identity.address}"  # what erasing them looks for


def message_receive(*, inbox: Inbox, inbound: InboundMessage) -> Received:
    """Store a customer's message: find or create the customer by identity, drop duplicates,
    continue (and reopen) their conversation or open a new one. SenderBlocked when an agent
    blocked the customer."""
    if not (inbound.text or inbound.html or inbound.attachments or inbound.media):
        raise ValidationError("An inbound message needs text, HTML or an attachment.")
    try:
        # One look at the configuration tables (rules, automations, SLA policies, automatic
        # replies) for the whole message: see TableCache.
        with transaction.atomic(), TableCache.snapshot():
            return _message_receive(inbox, inbound)
    except SenderBlocked as blocked:
        if inbound.opt_out is not None:  # an opt-out (SMS STOP) counts, whoever sends it
            # As for anyone else: only a change of mind is written (a second STOP keeps the date).
            Identity.objects.filter(
                pk=blocked.identity_id, opted_out_at__isnull=inbound.opt_out
            ).update(opted_out_at=timezone.now() if inbound.opt_out else None)
        raise
    except IntegrityError:
        # A concurrent delivery of the same provider/client id won the race: it is stored.
        duplicate = _find_duplicate(inbox, inbound)
        if duplicate is None:
            raise
        return Received(duplicate, created=False)


def _find_duplicate(inbox: Inbox, inbound: InboundMessage) -> Message | None:
    if inbound.provider_id:
        return Message.objects.filter(inbox=inbox, provider_id=inbound.provider_id).first()
    if inbound.client_id and inbound.conversation:
        return Message.objects.filter(
            conversation=inbound.conversation, client_id=inbound.client_id
        ).first()
    return None


def _message_receive(inbox: Inbox, inbound: InboundMessage) -> Received:
    # No duplicate look-up first: the unique provider and client ids refuse a second copy,
    # and message_receive then returns the stored one. Replays are rare; reads are not.
    address = inbound.address
    if inbound.channel in INBOX_SCOPED_ADDRESSES:
        address = inbox_scoped_address(inbox.pk, address)
    identity = identity_get_or_create(kind=inbound.channel, address=address, name=inbound.name)
    customer = identity.customer
    if customer.merged_into_id:  # identities move on merge; this is belt and braces
        customer = customer.merged_into
    if customer.blocked_at and not inbound.echo:
        raise SenderBlocked(identity)
    now = timezone.now()

    conversation, flag_reason, opened, reopened = None, "", False, False
    if inbound.conversation is not None:
        conversation = _follow_merges(inbound.conversation)
        if not conversation_accepts_sender(conversation, identity):
            # A forged From with a valid reference must not append to someone else's
            # conversation: it opens a new one that an agent is asked to look at.
            flag_reason = (
                f"{identity.address} is not part of conversation #{conversation.pk}, which "
                "this message referred to, so it was opened separately."
            )
            conversation = None
        elif conversation.status == Status.CLOSED:
            conversation = None
    elif not inbound.force_new_conversation:
        conversation = _conversation_to_continue(inbox, customer, identity)
    if inbound.answers and conversation is not None and not (identity.verified or inbound.forged):
        ours_to_them = conversation.messages.filter(
            direction=Message.Direction.OUTBOUND, identity=identity, provider_id__in=inbound.answers
        )
        if ours_to_them.exists():
            Identity.objects.filter(pk=identity.pk).update(verified=True)
            identity.verified = True

    # The message's events, written together once the conversation is saved.
    events: list[ConversationEvent] = []
    if conversation is None:
        conversation, created = _conversation_insert(
            inbox, customer, inbound.subject, channel=inbound.channel
        )
        events.append(created)
        opened = True
        flag_reason = flag_reason or inbound.forged
        flag_reason = flag_reason or ("" if identity.verified else inbound.check)
        flag_reason = flag_reason or _typed_in_chat(identity)
        if flag_reason:
            conversation.flag_reason = flag_reason[:300]
    elif inbound.forged and not conversation.flag_reason:
        conversation.flag_reason = flag_reason = inbound.forged[:300]
    if not (customer.name or flag_reason or inbound.echo) and inbound.name.strip():
        # A profile begun without a name (a chat visitor who gave only an email) takes the
        # one their mail signs with; a name an agent or the customer set is never replaced,
        # nor taken from a message whose sender agents are asked to check.
        customer.name = inbound.name.strip()[:200]
        Customer.objects.filter(pk=customer.pk, name="").update(name=customer.name)
    previous_status, was_waiting = conversation.status, conversation.waiting_since is not None
    # An out-of-office reply to ours joins the timeline and asks nothing of anyone.
    quiet = inbound.echo or (not opened and inbound.asks_nothing)
    if not opened and conversation.status != Status.OPEN and not quiet:
        events.append(
            ConversationEvent(
                conversation=conversation,
                kind=ConversationEvent.Kind.REOPENED,
                data={"previous": conversation.status, "reason": "customer_replied"},
            )
        )
        conversation.status = Status.OPEN
        conversation.snoozed_until = None
        conversation.resolved_at = None
        reopened = True

    message = Message.objects.create(
        conversation=conversation,
        direction=Message.Direction.OUTBOUND if inbound.echo else Message.Direction.INBOUND,
        channel=inbound.channel if inbound.channel in Channel.values else inbox.kind,
        inbox=inbox,
        identity=identity,
        text=inbound.text,
        html=sanitize_html(inbound.html),
        quoted=inbound.quoted,
        provider_id=inbound.provider_id[:255],
        client_id=inbound.client_id[:64],
        status=Message.Status.SENT if inbound.echo else Message.Status.RECEIVED,
        sent_at=now if inbound.echo else None,
        metadata={**inbound.metadata, "echo": True} if inbound.echo else inbound.metadata,
    )
    attachments_store(message, inbound.attachments)
    _media_fetch_later(message, inbound.media)
    _participants_add(conversation, inbox, identity, inbound.cc)

    conversation.last_activity_at = now
    if inbound.echo:  # the business answered, outside Threadline
        conversation.waiting_since = None
        conversation.first_response_at = conversation.first_response_at or now
        sla_agent_replied(conversation=conversation, now=now)
    else:
        conversation.last_inbound_at = now
        if not quiet:
            conversation.waiting_since = conversation.waiting_since or now
    if not customer.language and not inbound.echo and not inbound.metadata.get("automated"):
        # Routing rules and automatic replies read it. The channel's word (a widget's browser,
        # Content-Language) when it has one, else what the text reads like.
        customer.language = inbound.language[:10] or language_guess(inbound.text)
        if customer.language:
            Customer.objects.filter(pk=customer.pk).update(language=customer.language)
    if opened and not inbound.echo:
        # Routing rules and auto-assignment, in this transaction and before agents hear of
        # the conversation, so that nobody sees it unrouted. They set team, priority and
        # assignee on `conversation`, which is saved just below, and return their events.
        from routing.services import conversation_route

        events += conversation_route(conversation=conversation, message=message)
    if not quiet:
        sla_customer_wrote(
            conversation=conversation,
            message=message,
            opened=opened,
            was_waiting=was_waiting,
            previous_status=previous_status,
            now=now,
        )
    conversation.save()
    seen = {}
    if not inbound.echo and (
        identity.last_seen_at is None or now - identity.last_seen_at > LAST_SEEN_PRECISION
    ):
        seen["last_seen_at"] = now
    if inbound.opt_out is not None and bool(identity.opted_out_at) != inbound.opt_out:
        seen["opted_out_at"] = now if inbound.opt_out else None
        events.append(
            ConversationEvent(
                conversation=conversation,
                kind=ConversationEvent.Kind.CONSENT,
                data={"address": identity.address, "opted_out": inbound.opt_out},
            )
        )
    ConversationEvent.objects.bulk_create(events)
    if seen:
        Identity.objects.filter(pk=identity.pk).update(**seen)
    # For integrators, once the conversation is routed: a new one says where it went in its
    # own event; a reopened one is a change of status.
    if opened:
        webhooks.conversation_created(conversation)
    elif reopened:
        webhooks.conversation_event_emit(events[0])
    webhooks.message_created(message)

    if conversation.assignee_id and not opened and not quiet:
        _notify(
            [conversation.assignee_id], Notification.Kind.CUSTOMER_REPLIED, conversation, message
        )
    if not opened and not quiet:  # a new conversation has no followers yet
        _followers_tell(conversation, Notification.Kind.CUSTOMER_REPLIED, message)
    if opened and not (quiet or inbound.asks_nothing or flag_reason):
        _others_assignees_tell(conversation, message)

    if (
        not inbound.echo
        and inbound.opt_out is None
        and auto_reply_due(inbox=inbox, message=message)
    ):
        from routing.tasks import auto_reply

        # Marked due in this transaction: should the task be lost (the broker down at commit,
        # a worker killed), the sweep finds it (routing.replies.replies_sweep).
        Message.objects.filter(pk=message.pk).update(auto_reply_due_at=timezone.now())
        transaction.on_commit(lambda: auto_reply.delay(message.pk, opened), robust=True)

    # One notification: "created" for a new conversation, else "message".
    publish_conversation_event(
        conversation,
        "created" if opened else "message",
        message=message.pk,
        customer_event={"event": "message", "conversation": conversation.pk, "message": message.pk},
    )
    if not quiet:
        if opened:  # after routing, which may have assigned it already
            events = ["created", "assigned"] if conversation.assignee_id else ["created"]
        else:
            events = ["customer_replied", "status_changed"] if reopened else ["customer_replied"]
        _automations_run(conversation, events)
    return Received(message, created=True)


def _others_assignees_tell(conversation: Conversation, message: Message) -> None:
    """A customer who writes anew (by SMS while their email is open, a new email thread) opens
    another conversation: the agents who have their open ones hear of it, to answer in one
    place or merge. Only active agents who may see it: one of another team could neither
    answer nor merge, and the news would show them a conversation outside their teams."""
    from conversations.selectors import can_see

    assignees = (
        Conversation.objects.filter(
            customer_id=conversation.customer_id, status__in=Conversation.WORKING, merged_into=None
        )
        .exclude(pk=conversation.pk)
        .exclude(assignee=None)
        .values("assignee_id")
    )
    agents = get_user_model().objects.filter(pk__in=assignees, is_active=True)
    _notify(
        [
            agent.pk
            for agent in agents
            if agent.pk != conversation.assignee_id and can_see(agent, conversation)
        ],
        Notification.Kind.WROTE_AGAIN,
        conversation,
        message,
        text=message.get_channel_display(),
    )


def _typed_in_chat(identity: Identity) -> str:
    """Why agents should check who wrote, when a new conversation comes from an email address
    that a chat visitor typed and nobody confirmed, else "". Anyone can type anyone's address:
    the owner's mail then joins the visitor's profile, next to the visitor's chats."""
    if identity.kind != Channel.EMAIL or identity.verified:
        return ""
    # A visitor of this customer who came before the address did: it joined the profile by
    # being typed (an address that wrote first is the customer's own, typed again or not).
    typed = Visitor.objects.filter(
        email=identity.address,
        identity__customer=identity.customer_id,
        created_at__lte=identity.created_at,
    )
    if not typed.exists():
        return ""
    return (
        f"{identity.address} was typed into the web chat and never confirmed: this mail may "
        "come from someone other than the visitor. Check before sharing anything from the chat."
    )


def _follow_merges(conversation: Conversation) -> Conversation:
    conversation = Conversation.objects.select_for_update(of=("self",)).get(pk=conversation.pk)
    for _ in range(10):  # merges form a short chain; the bound guards against a cycle
        if not conversation.merged_into_id:
            break
        conversation = Conversation.objects.select_for_update(of=("self",)).get(
            pk=conversation.merged_into_id
        )
    return conversation


def conversation_accepts_sender(conversation: Conversation, identity: Identity) -> bool:
    """May `identity` write into `conversation`? Its customer, or someone already on its thread
    (CC'd). Adapters thread with it; message_receive checks it again."""
    return (
        conversation.customer_id == identity.customer_id
        or conversation.participants.filter(pk=identity.pk).exists()
    )


# Asked of every mail, and of every address it copies: kept per process until an inbox changes.
_our_addresses = TableCache(
    Inbox,
    lambda: frozenset(
        address.strip().lower()
        for address in Inbox.objects.exclude(address="").values_list("address", flat=True)
    ),
)


def our_addresses() -> frozenset[str]:
    """The email addresses our inboxes write from (see ours)."""
    return _our_addresses.get()


def ours(address: str, own: frozenset[str]) -> bool:
    """Is `address` one of our inboxes' `own`, or one with a tag: support+<token>@ is the
    Reply-To of every reply, and a customer's answer copies it in To."""
    local, _, domain = address.strip().lower().partition("@")
    for mine in own:
        mine_local, _, mine_domain = mine.partition("@")
        if domain == mine_domain and (local == mine_local or local.startswith(mine_local + "+")):
            return True
    return False


def _participants_add(conversation, inbox, sender, cc) -> None:
    own, copied = our_addresses(), {}
    for name, address in cc:
        address = (address or "").strip().lower()
        if address and address != sender.address and not ours(address, own):
            copied.setdefault(address, name)
    if not copied:  # most mail copies nobody but us
        return
    # One an agent stopped copying stays off, whoever copies them again (a reply to all),
    # until an agent copies them again.
    uncopied = _uncopied(conversation)
    for address, name in copied.items():
        if address in uncopied:
            continue
        try:
            identity = identity_get_or_create(kind=Channel.EMAIL, address=address, name=name)
        except ValidationError:  # one unusable address copied loses no mail
            continue
        if identity.customer_id != conversation.customer_id:
            conversation.participants.add(identity)


def _uncopied(conversation: Conversation) -> set[str]:
    """The addresses an agent stopped copying on `conversation` and did not copy again."""
    copying = {}
    events = conversation.events.filter(
        kind__in=(ConversationEvent.Kind.UNCOPIED, ConversationEvent.Kind.COPIED)
    )
    for kind, address in events.order_by("id").values_list("kind", "data__address"):
        copying[address] = kind == ConversationEvent.Kind.COPIED
    return {address for address, copied in copying.items() if not copied}


COPIED_MAX = 20  # people copied on one conversation, at most


def conversation_copy(*, conversation: Conversation, address: str, actor=None) -> Identity:
    """Copy someone on the conversation's email replies (Cc), as if the customer's mail had:
    a colleague of theirs, or one an agent stopped copying by mistake. Their mail then joins
    the conversation. ValidationError on an address we cannot or need not copy."""
    address = normalize_address(Channel.EMAIL, address)
    validate_email(address)  # ASCII before the @ too: we cannot send SMTPUTF8 yet
    if ours(address, our_addresses()):
        raise ValidationError(f"{address} is one of our own addresses.")
    with transaction.atomic():
        conversation = _locked(conversation)
        _refuse_if_merged(conversation)
        identity = identity_get_or_create(kind=Channel.EMAIL, address=address)
        if identity.customer_id == conversation.customer_id:
            raise ValidationError(f"{address} is the customer's: they get every reply.")
        if conversation.participants.filter(pk=identity.pk).exists():
            return identity
        if conversation.participants.count() >= COPIED_MAX:
            raise ValidationError(f"A conversation copies at most {COPIED_MAX} people.")
        conversation.participants.add(identity)
        _event(conversation, ConversationEvent.Kind.COPIED, actor, address=address)
        publish_conversation_event(conversation, "copied")
    return identity


def conversation_uncopy(*, conversation: Conversation, identity_id: int, actor=None) -> None:
    """Stop copying someone on the conversation's email replies: the customer's mail copied
    them (Cc), and an agent judged they should not read the rest. Their own mail no longer
    joins the conversation for that. Nothing happens if they were not copied."""
    with transaction.atomic():
        conversation = _locked(conversation)
        identity = conversation.participants.filter(pk=identity_id).first()
        if identity is None:
            return
        conversation.participants.remove(identity)
        _event(conversation, ConversationEvent.Kind.UNCOPIED, actor, address=identity.address)
        publish_conversation_event(conversation, "uncopied")


def message_status_update(update: StatusUpdate, *, inbox: Inbox | None = None) -> Message | None:
    """Apply a provider's status callback to our outbound message. Callbacks come late, out of
    order and more than once: a status only ever moves forward, and "failed" cannot undo a
    delivery the provider already confirmed. Returns the message, or None if it is unknown.

    A callback signed with `inbox`'s secret speaks of that inbox's messages only. Not so a
    bounce: it goes to the envelope sender, which may be routed to any of our mailboxes, and
    anyone may write one anyway."""
    if update.status not in STATUS_RANK:
        raise ValidationError(f"Unknown delivery status {update.status!r}.")
    ours = Message.objects.filter(channel=update.channel, direction=Message.Direction.OUTBOUND)
    if update.message_id is not None:
        ours = ours.filter(pk=update.message_id)
    else:
        ours = ours.filter(provider_id=update.provider_id)
    if inbox is not None and update.channel != Channel.EMAIL:
        ours = ours.filter(inbox=inbox)
    with transaction.atomic():
        message = ours.select_for_update(of=("self",)).select_related("conversation").first()
        if message is None:
            return None
        if update.copies_missed:
            missed = message.metadata.get("undelivered_to", {})
            missed.update({address: update.reason[:500] for address in update.copies_missed})
            message.metadata = {**message.metadata, "undelivered_to": missed}
            message.save(update_fields=["metadata"])
            publish_conversation_event(message.conversation, "delivery", message=message.pk)
            return message
        current = STATUS_RANK.get(message.status, -1)
        if update.status == Message.Status.FAILED:
            if message.status in (
                Message.Status.DELIVERED,
                Message.Status.READ,
                Message.Status.FAILED,
            ):
                return message
            message.failure_reason = update.reason or "The provider reported a failure."
        elif STATUS_RANK[update.status] <= current:
            return message
        now = timezone.now()
        previously_delivered = message.delivered_at
        message.status = update.status
        if update.status == Message.Status.DELIVERED:
            message.delivered_at = message.delivered_at or now
        if update.status == Message.Status.READ:
            message.read_at = message.read_at or now
            message.delivered_at = message.delivered_at or now
        message.save()
        publish_conversation_event(
            message.conversation, "delivery", message=message.pk, status=message.status
        )
        if message.status == Message.Status.FAILED:
            message_failure_tell(message)
        elif message.delivered_at and previously_delivered is None:
            webhooks.message_delivered(message)  # once: a "read" after it says nothing new
    return message


STATUS_RANK = {
    Message.Status.QUEUED: 0,
    Message.Status.SENDING: 1,
    Message.Status.SENT: 2,
    # A failure the provider reported stands against a "sent" that comes after it (Twilio's
    # callbacks cross, and one that came before our send's answer waits for the sweep): only
    # a confirmed delivery moves it on.
    Message.Status.FAILED: 2,
    Message.Status.DELIVERED: 3,
    Message.Status.READ: 4,
}


def attachment_store(
    *,
    message: Message,
    filename: str,
    content: bytes | File,
    content_type: str,
    content_id: str = "",
) -> Attachment:
    if not isinstance(content, File):
        content = ContentFile(content)
    attachment = Attachment(
        message=message,
        filename=attachment_filename(filename),
        content_type=(content_type or "application/octet-stream")[:127],
        size=content.size,
        content_id=content_id[:255],
    )
    attachment.file.save(attachment.filename, content, save=False)
    attachment.save()
    return attachment


def attachments_store(message: Message, attachments: tuple[InboundAttachment, ...]) -> None:
    for item in attachments:
        attachment_store(
            message=message,
            filename=item.filename,
            content=item.content,
            content_type=item.content_type,
            content_id=item.content_id,
        )


# What agents and chat visitors may upload, by the file's first bytes. Images show inline in
# the widget; anything else is a download. Never SVG or HTML.
UPLOAD_TYPES = IMAGE_TYPES + ("application/pdf", "text/plain", "text/csv")
UPLOAD_MAX_BYTES = 10 * 1024 * 1024
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)


def sniffed_type(upload) -> str | None:
    """The type of an uploaded file from its first bytes, not from what the browser claims;
    None for anything we do not take (HTML, SVG, executables...)."""
    head = upload.read(2048)
    upload.seek(0)
    for magic, content_type in MAGIC:
        if head.startswith(magic):
            return content_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    try:  # the 2,048 bytes may end inside a character: decoded as a stream, not as a whole
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if "\x00" in text or "<" in text.lstrip()[:1]:
        return None  # markup is never taken as text: a browser might render it
    return "text/csv" if (upload.name or "").lower().endswith(".csv") else "text/plain"


ATTACHMENTS_MAX = 10  # files on one reply or note


class FileRefused(ValidationError):
    """One of the files cannot go (`upload`): the others may be attached again."""

    def __init__(self, message: str, upload):
        super().__init__(message)
        self.upload = upload


def uploads_check(files) -> tuple[InboundAttachment, ...]:
    """Files an agent attaches to a reply or note (the inbox's composer, the API), checked as
    the widget checks a visitor's: by their first bytes (images, PDF, plain text, CSV), never
    by what the client claims."""
    if len(files) > ATTACHMENTS_MAX:
        raise ValidationError(f"Attach at most {ATTACHMENTS_MAX} files to one message.")
    attachments = []
    for upload in files:
        name = (upload.name or "file")[:255]
        if upload.size > UPLOAD_MAX_BYTES:
            raise FileRefused(f"{name} is over {UPLOAD_MAX_BYTES // 2**20} MB.", upload)
        content_type = sniffed_type(upload)
        if content_type is None:
            raise FileRefused(
                f"{name} cannot be attached: images, PDF, plain text and CSV files can.", upload
            )
        attachments.append(
            InboundAttachment(filename=name, content_type=content_type, content=upload)
        )
    return tuple(attachments)


def _media_fetch_later(message: Message, media: tuple[InboundMedia, ...]) -> None:
    """Placeholders for provider media, filled by a task once the message is committed: the
    webhook's task stays fast, and a slow or failing media server delays nothing else."""
    if not media:
        return
    from channels_adapters.tasks import fetch_attachment

    for item in media:
        attachment = Attachment.objects.create(
            message=message,
            filename=attachment_filename(item.filename),
            content_type=(item.content_type or "application/octet-stream")[:127],
            source=item.source[:2000],
        )
        transaction.on_commit(lambda pk=attachment.pk: fetch_attachment.delay(pk), robust=True)


# --- Outbound and notes ------------------------------------------------------------------


def identity_for_reply(conversation: Conversation) -> Identity | None:
    """Where the customer last wrote from, else any address on the conversation's channel."""
    last_inbound = (
        conversation.messages.filter(direction=Message.Direction.INBOUND, identity__isnull=False)
        .select_related("identity")
        .order_by("-id")
        .first()
    )
    if last_inbound and last_inbound.identity.customer_id == conversation.customer_id:
        return last_inbound.identity
    return conversation.customer.identities.filter(kind=conversation.inbox.kind).first()


def inbox_for_message(identity: Identity, *, conversation: Conversation | None = None, author=None):
    """The inbox a message to `identity` goes from. For email, `conversation`'s own: the
    customer expects the address they wrote to, whatever else they wrote to since. Else the
    one this address last used (a Messenger id only works with its own Page; a WhatsApp
    number's 24 hours run per number; a text to our other number continued this conversation,
    see _conversation_to_continue); else `conversation`'s; else one of its team; for a
    conversation `author` starts, one of the author's teams."""
    if conversation is not None:
        return _inbox_for_address(
            identity,
            current=conversation.inbox,
            same_team=Q(default_team_id=conversation.inbox.default_team_id),
        )
    return _inbox_for_address(
        identity, current=None, same_team=Q(default_team__memberships__user=author)
    )


def _inbox_for_address(identity: Identity, *, current: Inbox | None, same_team: Q) -> Inbox:
    kind = identity.kind
    own = current is not None and current.kind == kind and current.is_active
    if own and kind == Channel.EMAIL:
        return current
    inboxes = Inbox.objects.filter(kind=kind, is_active=True)
    last_used = (
        Message.objects.filter(identity=identity)
        .exclude(direction=Message.Direction.NOTE)
        .order_by("-id")
        .values_list("inbox_id", flat=True)[:1]
    )
    inbox = inboxes.filter(pk__in=last_used).first()
    if inbox:
        return inbox
    if own:
        return current
    # Prefer an inbox of the same team, so the reply comes from the address they expect.
    inbox = inboxes.filter(same_team).first() or inboxes.first()
    if inbox is None:
        raise ValidationError(f"There is no active {Channel(kind).label} inbox to send from.")
    return inbox


def reply_send(
    *,
    conversation: Conversation,
    author,
    text: str,
    html: str = "",
    identity: Identity | None = None,
    client_id: str = "",
    attachments: tuple[InboundAttachment, ...] = (),
    template: str = "",
    automatic: str = "",
) -> Message:
    """Queue an agent's reply to the customer on the channel of `identity` (default: where the
    customer last wrote). The message is stored as queued and handed to the delivery pipeline
    once the transaction commits. `template` names an approved message template (WhatsApp,
    outside its 24-hour window). A reply the channel would refuse (opted out, window closed)
    is refused here, with the reason, before anything is stored.

    `automatic` names what sent a message no agent wrote (e.g. "acknowledgement"): it is
    marked so (email sends it as Auto-Submitted) and does not count as a response."""
    from channels_adapters.registry import adapter_for

    if not (text.strip() or attachments or template):
        raise ValidationError("A reply needs text or an attachment.")
    identity = identity or identity_for_reply(conversation)
    if identity is None:
        raise ValidationError("This customer has no address to reply to.")
    if identity.customer_id != conversation.customer_id:
        raise ValidationError("That address belongs to another customer.")
    adapter = adapter_for(identity.kind)
    if adapter is None:
        raise ValidationError(f"Replies cannot be sent on {Channel(identity.kind).label} yet.")
    inbox = inbox_for_message(identity, conversation=conversation)
    if template and not adapter.capabilities.templates:
        raise ValidationError(f"{Channel(identity.kind).label} has no message templates.")
    if template:  # the template alone goes: stored as the customer reads it
        chosen = (t for t in adapter.reply_templates(inbox) if template in (t["ref"], t["name"]))
        text = next((t["body"] for t in chosen), text)
    draft = Message(
        conversation=conversation,
        direction=Message.Direction.OUTBOUND,
        channel=identity.kind,
        inbox=inbox,
        identity=identity,
        author=author,
        text=text,
        html=sanitize_html(html),
        client_id=client_id[:64],
        status=Message.Status.QUEUED,
        metadata={
            **({"template": template} if template else {}),
            **({"automatic": automatic} if automatic else {}),
        },
    )
    files = [(item.filename, item.content_type, item.size) for item in attachments]
    refusal = adapter.send_refusal(draft) or adapter.attachments_refusal(draft, files)
    if refusal:
        raise ValidationError(refusal)

    with transaction.atomic():
        conversation = Conversation.objects.select_for_update(of=("self",)).get(pk=conversation.pk)
        if client_id:
            existing = conversation.messages.filter(client_id=client_id).first()
            if existing:
                return existing
        _refuse_if_merged(conversation)
        previous_channel = (
            conversation.messages.filter(
                direction__in=(Message.Direction.INBOUND, Message.Direction.OUTBOUND)
            )
            .exclude(metadata__has_key="follow_up_of")  # an emailed copy of chat replies
            .order_by("-id")
            .values_list("channel", flat=True)
            .first()
        )
        # A chat's follow-up by email switches nothing: the timeline says the visitor left and
        # where replies go now.
        if previous_channel and previous_channel != identity.kind and automatic != "follow_up":
            # Before the message, so that the timeline shows it ahead of the reply it concerns.
            _event(
                conversation,
                ConversationEvent.Kind.CHANNEL,
                None if automatic else author,  # an automatic message: nobody chose to switch
                previous=previous_channel,
                channel=identity.kind,
            )
        draft.conversation = conversation
        draft.save()
        message = draft
        attachments_store(message, attachments)
        webhooks.message_created(message)
        now = timezone.now()
        conversation.last_activity_at = now
        if not automatic and author is not None:
            # An automatic reply (an acknowledgement, an automation's canned reply) answers
            # nobody: the customer still waits, and SLA clocks keep counting.
            _answered(conversation, now)
        conversation.save()
        if not automatic and author is not None and conversation.assignee_id is None:
            # Whoever answers an unassigned conversation has taken it: teammates and routing
            # see it is in hand, and a chat visitor is no longer told they wait in line.
            conversation_assign(
                conversation=conversation, assignee=author, actor=author, reason="reply"
            )
        if not automatic and author is not None:
            _followers_tell(
                conversation, Notification.Kind.FOLLOWED, message, actor=author, text="answered"
            )
        # A customer with the chat widget open sees replies on every channel there: a chat
        # reply is announced by the widget's own adapter once sent, any other now.
        told = {"event": "message", "conversation": conversation.pk, "message": message.pk}
        publish_conversation_event(
            conversation,
            "message",
            message=message.pk,
            customer_event=None if message.channel == Channel.WEBCHAT else told,
        )
        message_enqueue_delivery(message)
    return message


def _answered(conversation: Conversation, now) -> None:
    """An agent's reply is on its way: nobody waits on us any more. Not saved."""
    conversation.waiting_since = None
    if conversation.first_response_at is None:
        conversation.first_response_at = now
    sla_agent_replied(conversation=conversation, now=now)


def reply_retried(message: Message) -> None:
    """An agent sends a failed reply again: it answers the customer again (its failure had
    put them back in "waiting on us", see message_failure_tell)."""
    if message.author_id is None or message.metadata.get("automatic"):
        return
    # It answers what came before it, not the customer's newer question.
    if _asking(message.conversation).filter(pk__gt=message.pk).exists():
        return
    with transaction.atomic():
        conversation = _locked(message.conversation)
        _answered(conversation, timezone.now())
        conversation.save(
            update_fields=["waiting_since", "first_response_at", "sla_due_at", "updated_at"]
        )


def message_enqueue_delivery(message: Message) -> None:
    """Hand a queued message to the delivery task once the current transaction commits. With
    the broker down the message stays queued, for the sweep to enqueue: the change is made and
    the agent is not shown an error for it (robust: the failure is logged)."""
    from channels_adapters.tasks import deliver_message

    transaction.on_commit(lambda: deliver_message.delay(message.pk), robust=True)


def note_add(
    *,
    conversation: Conversation,
    author,
    text: str,
    attachments: tuple[InboundAttachment, ...] = (),
    automation: str = "",
    client_id: str = "",
) -> Message:
    """An internal note: visible to agents only, never sent to the customer. `automation`
    names the automation that wrote it, when no agent did. A second note with the same
    `client_id` (the form sent twice) is the first one."""
    if not (text.strip() or attachments):
        raise ValidationError("A note needs text or an attachment.")
    with transaction.atomic():
        _refuse_if_merged(_locked(conversation))
        if client_id and (same := conversation.messages.filter(client_id=client_id).first()):
            same.mentions_missed = []
            return same
        message = Message.objects.create(
            conversation=conversation,
            direction=Message.Direction.NOTE,
            channel=conversation.inbox.kind,
            inbox=conversation.inbox,
            author=author,
            text=text,
            client_id=client_id[:64],
            metadata={"automation": automation} if automation else {},
        )
        attachments_store(message, attachments)
        webhooks.message_created(message)  # as note.created: never a message.created
        now = timezone.now()
        # updated_at too: an API client syncing by `updated_after` must hear of the note.
        Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=now, updated_at=now)
        publish_conversation_event(conversation, "note", message=message.pk)
        # The mentions that reached nobody, kept on the message for the caller to say so.
        agents, message.mentions_missed = mentions_resolve(conversation, text)
        _notify(
            [user.pk for user in agents],
            Notification.Kind.MENTIONED,
            conversation,
            message,
            actor=author,
        )
        if author is not None:
            _followers_tell(
                conversation,
                Notification.Kind.FOLLOWED,
                message,
                actor=author,
                text="wrote a note",
                besides={user.pk for user in agents},  # told they were mentioned
            )
        # Asked in, they hear how it goes on, as followers (until they stop following).
        asked = [user for user in agents if user.pk != conversation.assignee_id]
        conversation.followers.add(*asked)
    return message


# "@dana" or "@dana.silva": the part of an agent's email before the @. Not inside an address.
MENTION = re.compile(r"(?<![\w.@])@([a-z0-9](?:[\w.+-]*[a-z0-9])?)", re.IGNORECASE)


def mentions_resolve(conversation: Conversation, text: str) -> tuple[list, list[str]]:
    """The active agents @-mentioned in `text` who may see `conversation` (a mention must not
    show a conversation to someone outside it), and the handles that named none of them."""
    from conversations.selectors import can_see

    handles = {handle.lower() for handle in MENTION.findall(text)}
    if not handles:
        return [], []
    candidates = get_user_model().objects.filter(
        reduce(or_, (Q(email__istartswith=f"{handle}@") for handle in handles)), is_active=True
    )
    agents = [
        user
        for user in candidates
        if user.email.split("@")[0].lower() in handles and can_see(user, conversation)
    ]
    found = {user.email.split("@")[0].lower() for user in agents}
    return agents, sorted(handles - found)


def message_failure_tell(message: Message) -> None:
    """An outbound message that will not reach the customer (refused, given up on, bounced):
    its author and the conversation's assignee hear it with the provider's reason, wherever
    they are, rather than finding out when the customer complains. An author who has since
    left the conversation's team is not told what they may no longer read."""
    from conversations.selectors import can_see

    webhooks.message_failed(message)
    told = {message.author_id, message.conversation.assignee_id} - {None}
    agents = get_user_model().objects.filter(pk__in=told, is_active=True)
    _notify(
        [agent.pk for agent in agents if can_see(agent, message.conversation)],
        Notification.Kind.FAILED,
        message.conversation,
        message,
        text=message.failure_reason,
    )
    if not message.author_id:  # an automatic message's failure reopens nothing
        return
    # Resolved or set aside on the strength of a reply the customer never got (a macro that
    # replies and resolves, a bounce a day later): back in the team's open work, where the
    # failure is seen. Read as it is now: it may have changed while the send was on its way.
    with transaction.atomic():
        conversation = _locked(message.conversation)
        if conversation.merged_into_id:
            return
        if conversation.status in UNDELIVERED_REOPENS:
            conversation = conversation_set_status(
                conversation=conversation, status=Status.OPEN, reason="undelivered"
            )
        # Nor was it an answer: the customer waits on us as before it, the first response is
        # the first one that was not lost, and the SLA clock it stopped goes on.
        fields = ("first_response_at", "waiting_since", "sla_due_at")
        before = [getattr(conversation, field) for field in fields]
        answers = _answers(conversation)
        first = answers.order_by("pk").values_list("created_at", flat=True).first()
        if first is None or (conversation.first_response_at or first) < first:
            conversation.first_response_at = first
        if conversation.status not in Conversation.ENDED:
            _waiting_again(conversation, answers=answers, undelivered=True)
        if [getattr(conversation, field) for field in fields] != before:
            conversation.save(update_fields=[*fields, "updated_at"])
            publish_conversation_event(conversation, "waiting")


def _answers(conversation: Conversation):
    """What answered the customer, as `reply_send` counts it: agents' replies that were not
    lost on the way, and those written in the business's own app (echoes)."""
    return (
        conversation.messages.filter(direction=Message.Direction.OUTBOUND)
        .filter(Q(author__isnull=False) | Q(metadata__has_key="echo"))
        .exclude(status=Message.Status.FAILED)
        .exclude(metadata__has_key="automatic")
    )


def _asking(conversation: Conversation):
    """The customer's messages that ask something of us (not their auto-replies)."""
    return conversation.messages.filter(direction=Message.Direction.INBOUND).exclude(
        metadata__has_key="automated"
    )


def _waiting_again(conversation: Conversation, *, answers=None, undelivered=False) -> None:
    """Read from the timeline since when the customer has waited on us (their first message
    after our last answer), and let their response clock go on (`undelivered`: the time it
    stood still counts, see sla_waiting_again). Not saved."""
    answers = _answers(conversation) if answers is None else answers
    last = answers.order_by("-pk").values_list("pk", flat=True).first()
    since = (
        _asking(conversation)
        .filter(pk__gt=last or 0)
        .order_by("pk")
        .values_list("created_at", flat=True)
        .first()
    )
    if since is None:
        return
    if conversation.waiting_since is None or since < conversation.waiting_since:
        conversation.waiting_since = since
    sla_waiting_again(
        conversation=conversation, since=since, now=timezone.now(), stood_still_counts=undelivered
    )


def _notify(recipient_ids, kind, conversation, message=None, *, actor=None, text="") -> None:
    """Tell agents something concerns them: stored, then pushed to their sockets on commit.
    Nobody is told about what they did themselves. `text`: what an automation says."""
    recipient_ids = sorted(set(recipient_ids) - {actor.pk if actor else None})
    if not recipient_ids:
        return
    text = text[:300]
    Notification.objects.bulk_create(
        Notification(
            recipient_id=pk,
            kind=kind,
            conversation=conversation,
            message=message,
            actor=actor,
            text=text,
        )
        for pk in recipient_ids
    )
    if actor:
        who = actor.name
    elif kind == Notification.Kind.ASSIGNED:  # automatic: an automation's, or routing's
        who = f"Automation “{text}”" if text else "Routing"
    else:
        who = conversation.customer.name or "The customer"
    text = {
        Notification.Kind.ASSIGNED: f"{who} assigned #{conversation.pk} to you",
        Notification.Kind.MENTIONED: f"{who} mentioned you in #{conversation.pk}",
        Notification.Kind.CUSTOMER_REPLIED: f"{who} replied in #{conversation.pk}",
        Notification.Kind.AUTOMATION: f"#{conversation.pk}: {text}",
        Notification.Kind.FAILED: f"A reply in #{conversation.pk} was not delivered: {text}",
        Notification.Kind.SNOOZE_ENDED: f"#{conversation.pk} is back from snooze",
        Notification.Kind.WROTE_AGAIN: f"{who} wrote again, by {text}, in #{conversation.pk}",
        Notification.Kind.FOLLOWED: (
            f"{actor.name if actor else 'It'} {text} (#{conversation.pk}, which you follow)"
        ),
    }.get(kind, text)  # SLA alerts come worded
    publish_notifications(recipient_ids, kind=kind, conversation=conversation.pk, text=text)


def conversation_follow(*, conversation: Conversation, user, follow: bool = True) -> None:
    """`user` hears of `conversation` without holding it: the customer's replies, others'
    answers, its status changes (or no longer, with follow=False)."""
    if not follow:
        conversation.followers.remove(user)
        return
    _refuse_if_merged(conversation)
    conversation.followers.add(user)


def _followers_tell(
    conversation, kind, message=None, *, actor=None, text="", besides=frozenset()
) -> None:
    """The conversation's followers hear of a change, but not its assignee (told as such, or
    the one who made it), those `besides` (told otherwise) nor anyone who may no longer see
    it, decided now: an agent who left the team follows nothing of it any more."""
    from conversations.selectors import can_see

    followers = [
        user.pk
        for user in conversation.followers.filter(is_active=True)
        if user.pk != conversation.assignee_id
        and user.pk not in besides
        and can_see(user, conversation)
    ]
    if followers:
        _notify(followers, kind, conversation, message, actor=actor, text=text)


def notifications_mark_read(user, conversation: Conversation | None = None) -> int:
    """The agent has read their notifications: all of them, or those of the conversation on
    their screen (opening it is reading what it notified about)."""
    unread = Notification.objects.filter(recipient=user, read_at__isnull=True)
    if conversation is not None:
        unread = unread.filter(conversation=conversation)
    return unread.update(read_at=timezone.now())


# --- Conversation state ----------------------------------------------------------------------


def _refuse_if_merged(conversation: Conversation) -> None:
    """Nothing is written into a merged conversation, nor is it assigned, moved, prioritised
    or tagged: its messages moved to the other one, and the customer and the work follow
    that one."""
    if conversation.merged_into_id:
        raise ValidationError(
            f"This conversation was merged into #{conversation.merged_into_id}; write there."
        )


def _locked(conversation: Conversation) -> Conversation:
    return (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("inbox")
        .get(pk=conversation.pk)
    )


def conversation_assign(
    *, conversation: Conversation, assignee, actor=None, reason: str = "", automation: str = ""
) -> Conversation:
    """Assign to an agent, or unassign with `assignee=None`. `reason` says why, when it was not
    an agent's choice ("routing", "queue", "offline", "reply", "transfer"); `automation` names
    the automation that did it, which the new assignee is told."""
    reason = reason or ("automation" if automation else "")
    if assignee is not None and not assignee.is_active:
        raise ValidationError("Inactive users cannot be assigned conversations.")
    with transaction.atomic():
        conversation = _locked(conversation)
        _refuse_if_merged(conversation)
        previous = conversation.assignee_id
        new = assignee.pk if assignee else None
        if previous == new:
            return conversation
        conversation.assignee = assignee
        conversation.save(update_fields=["assignee", "updated_at"])
        _event(
            conversation,
            ConversationEvent.Kind.ASSIGNED,
            actor,
            previous=previous,
            assignee=new,
            assignee_name=assignee.name if assignee else "",
            **({"reason": reason} if reason else {}),
        )
        # A visitor waiting in the chat hears who joined (by first name, as agents sign).
        joined = assignee and conversation.inbox.kind == Channel.WEBCHAT
        publish_conversation_event(
            conversation,
            "assigned",
            assignee=new,
            previous=previous,
            customer_event={
                "event": "joined",
                "conversation": conversation.pk,
                "agent": assignee.name.split(" ")[0],
            }
            if joined
            else None,
        )
        if new:
            _notify([new], Notification.Kind.ASSIGNED, conversation, actor=actor, text=automation)
        if previous:  # the previous assignee may no longer see it: tell them to drop it
            transaction.on_commit(lambda: _notify_agent_removed(previous, conversation.pk))
            _queue_moves(conversation)  # a place freed, or the conversation waits again
        if new:
            _automations_run(conversation, ["assigned"])
    return conversation


def agent_assign(conversation, *, assignee, actor):
    """An agent's assignment (one, or in bulk): to someone who can see the conversation
    already, an admin or a member of its team, as the Assignee field offers. Handing it to
    another team's agent is a transfer to their team first."""
    from conversations.selectors import can_see

    if (
        assignee is not None
        and not assignee.is_admin
        and assignee.pk != conversation.assignee_id
        and not can_see(assignee, conversation)
    ):
        raise ValidationError(
            f"{assignee.name} is not in this conversation's team: transfer it to their team first."
        )
    return conversation_assign(conversation=conversation, assignee=assignee, actor=actor)


def _notify_agent_removed(user_id: int, conversation_id: int) -> None:
    from conversations.realtime import agent_group, conversation_payload, send_to_groups

    send_to_groups([agent_group(user_id)], conversation_payload(conversation_id, "unassigned"))


def _automations_run(conversation: Conversation, events: list[str]) -> None:
    """Automations for what just happened, in this transaction (see routing.automations)."""
    from routing.automations import automations_run

    automations_run(conversation=conversation, event=events)


def _queue_moves(conversation: Conversation) -> None:
    """Routing assigns the team's waiting conversations after commit (see routing.services)."""
    from routing.services import queue_nudge

    queue_nudge(conversation.team_id)


def conversation_set_team(
    *, conversation: Conversation, team, actor=None, unassign_outsider: bool = False
) -> Conversation:
    """Move the conversation to `team`. With `unassign_outsider` (an agent's transfer), an
    assignee who is not in the team lets go of a conversation still being worked on, and the
    team's queue takes it; automations and macros keep what their own actions set."""
    with transaction.atomic():
        conversation = _locked(conversation)
        _refuse_if_merged(conversation)
        previous = conversation.team_id
        new = team.pk if team else None
        if previous == new:
            return conversation
        conversation.team = team
        sla_retarget(conversation=conversation, now=timezone.now())
        conversation.save(update_fields=["team", "sla_due_at", "updated_at"])
        _event(conversation, ConversationEvent.Kind.TEAM, actor, previous=previous, team=new)
        publish_conversation_event(conversation, "team", team=new, previous=previous)
        if (
            unassign_outsider
            and conversation.assignee_id
            and conversation.status in Conversation.WORKING
            and new
            and not team.memberships.filter(user_id=conversation.assignee_id)
        ):
            # Handed to a team its agent is not in: the team takes it from its queue, or it
            # would stay with someone who may no longer even see it.
            return conversation_assign(
                conversation=conversation, assignee=None, actor=actor, reason="transfer"
            )
        if conversation.assignee_id is None:
            _queue_moves(conversation)
    return conversation


def conversation_set_status(
    *,
    conversation: Conversation,
    status: str,
    actor=None,
    snoozed_until: datetime | None = None,
    automations: bool = True,
    reason: str = "",
) -> Conversation:
    """`reason`: why the change was made for nobody's hand ("undelivered": a reply failed)."""
    if status not in Status.values:
        raise ValidationError(f"Unknown status {status!r}.")
    now = timezone.now()
    if status == Status.SNOOZED and (snoozed_until is None or snoozed_until <= now):
        raise ValidationError("Snoozing needs a time in the future.")
    with transaction.atomic():
        conversation = _locked(conversation)
        if conversation.merged_into_id and status != Status.CLOSED:
            raise ValidationError("This conversation was merged; work in the one it went into.")
        previous = conversation.status
        if previous == status and conversation.snoozed_until == snoozed_until:
            return conversation
        conversation.status = status
        conversation.snoozed_until = snoozed_until if status == Status.SNOOZED else None
        if status in Conversation.ENDED:
            conversation.resolved_at = conversation.resolved_at or now
            conversation.waiting_since = None
        else:
            conversation.resolved_at = None
        sla_status_changed(conversation=conversation, previous=previous, now=now)
        if previous in Conversation.ENDED and status not in Conversation.ENDED:
            # Resolved unanswered: it is in "waiting on us" again.
            _waiting_again(conversation, undelivered=reason == "undelivered")
        conversation.save()
        _event(
            conversation,
            ConversationEvent.Kind.STATUS,
            actor,
            previous=previous,
            status=status,
            snoozed_until=snoozed_until.isoformat() if snoozed_until else None,
            **({"reason": reason} if reason else {}),
        )
        told, ended = None, status in Conversation.ENDED
        if conversation.inbox.kind == Channel.WEBCHAT and (previous in Conversation.ENDED) != ended:
            # The visitor's widget ends the chat (a rating, the transcript, a new conversation
            # for what they write next), or takes messages in it again.
            told = {"event": "ended" if ended else "reopened", "conversation": conversation.pk}
        publish_conversation_event(
            conversation, "status", status=status, previous=previous, customer_event=told
        )
        if Status.OPEN in (previous, status):
            _queue_moves(conversation)
        if status == Status.RESOLVED and previous != status:
            _survey_later(conversation)
        if previous != status:
            label = Status(status).label.lower()
            _followers_tell(
                conversation,
                Notification.Kind.FOLLOWED,
                actor=actor,
                text=f"set it to {label}" if actor else f"is {label} now",
            )
        if previous != status and automations:
            _automations_run(conversation, ["status_changed"])
    return conversation


def _survey_later(conversation: Conversation) -> None:
    """The inbox's satisfaction survey, if it has one, once this commits (routing.replies)."""
    from routing.models import AutoReply
    from routing.replies import inboxes_with
    from routing.tasks import satisfaction_survey

    if conversation.inbox_id in inboxes_with(AutoReply.Kind.SATISFACTION):
        # Due from now until the task decides: the sweep finds it should the task be lost.
        Conversation.objects.filter(pk=conversation.pk).update(survey_due_at=timezone.now())
        transaction.on_commit(lambda: satisfaction_survey.delay(conversation.pk), robust=True)


def conversation_set_priority(*, conversation: Conversation, priority: int, actor=None):
    if priority not in Conversation.Priority.values:
        raise ValidationError(f"Unknown priority {priority!r}.")
    with transaction.atomic():
        conversation = _locked(conversation)
        _refuse_if_merged(conversation)
        previous = conversation.priority
        if previous == priority:
            return conversation
        conversation.priority = priority
        sla_retarget(conversation=conversation, now=timezone.now())
        conversation.save(update_fields=["priority", "sla_due_at", "updated_at"])
        _event(
            conversation,
            ConversationEvent.Kind.PRIORITY,
            actor,
            previous=previous,
            priority=priority,
        )
        publish_conversation_event(conversation, "priority", priority=priority)
    return conversation


def conversation_tag(*, conversation: Conversation, add=(), remove=(), actor=None) -> Conversation:
    """Add and remove tags by name; unknown names become new tags."""
    add = {name.strip().lower()[:50] for name in add if name.strip()}
    remove = {name.strip().lower() for name in remove if name.strip()} - add
    with transaction.atomic():
        conversation = _locked(conversation)
        _refuse_if_merged(conversation)
        current = set(conversation.tags.values_list("name", flat=True))
        added, removed = add - current, remove & current
        if not (added or removed):
            return conversation
        for name in sorted(added):
            tag, _ = Tag.objects.get_or_create(name=name)
            conversation.tags.add(tag)
        if removed:
            conversation.tags.remove(*Tag.objects.filter(name__in=removed))
        _event(
            conversation,
            ConversationEvent.Kind.TAGS,
            actor,
            added=sorted(added),
            removed=sorted(removed),
        )
        publish_conversation_event(conversation, "tags")
    return conversation


def conversation_merge(*, source: Conversation, target: Conversation, actor=None) -> Conversation:
    """Fold `source` into `target`: its messages move over, its tags join, and `source` closes
    with a pointer to `target`. Both must belong to the same customer (merge them first)."""
    if source.pk == target.pk:
        raise ValidationError("A conversation cannot be merged into itself.")
    with transaction.atomic():
        first, second = sorted([source.pk, target.pk])  # lock in one order: no deadlock
        locked = {
            c.pk: c
            for c in Conversation.objects.select_for_update(of=("self",)).filter(
                pk__in=[first, second]
            )
        }
        source, target = locked[source.pk], locked[target.pk]
        if source.customer_id != target.customer_id:
            raise ValidationError(
                "These conversations belong to different customers; merge the customers first."
            )
        if source.merged_into_id or target.merged_into_id:
            raise ValidationError("One of these conversations was already merged.")

        moved = source.messages.count()
        # Client ids dedupe resends inside one conversation; they may clash across two.
        source.messages.filter(
            client_id__in=target.messages.exclude(client_id="").values("client_id")
        ).update(client_id="")
        source.messages.update(conversation=target)
        target.tags.add(*source.tags.all())
        target.followers.add(*source.followers.all())
        for attr in ("first_response_at", "waiting_since", "last_inbound_at"):
            values = [v for v in (getattr(source, attr), getattr(target, attr)) if v]
            setattr(target, attr, min(values) if values else None)
        target.last_activity_at = max(source.last_activity_at, target.last_activity_at)
        # Our email replies thread under the subject the customer wrote, not a chat's words.
        target.subject = target.subject or source.subject
        if source.status == Status.OPEN and target.status != Status.OPEN:
            # Work still to do goes on in the target, in the queues and measured, not in a
            # resolved or snoozed conversation where nobody sees the customer waiting.
            previous = target.status
            target.status, target.snoozed_until, target.resolved_at = Status.OPEN, None, None
            # After the change: integrators hear of it with the conversation as it is now.
            _event(
                target, ConversationEvent.Kind.REOPENED, actor, previous=previous, reason="merged"
            )
        if source.priority > target.priority:  # what was urgent stays urgent
            previous, target.priority = target.priority, source.priority
            _event(
                target,
                ConversationEvent.Kind.PRIORITY,
                actor,
                previous=previous,
                priority=source.priority,
            )
        sla_merged(source=source, target=target, now=timezone.now())
        target.save()
        source_status, source.status = source.status, Status.CLOSED
        source.merged_into = target
        source.resolved_at = source.resolved_at or timezone.now()
        source.waiting_since = None
        source.sla_due_at = None
        source.save()
        # Its MERGED event is the timeline's; integrators hear it closed, and where it went.
        webhooks.conversation_updated(
            source,
            {
                "status": {"from": source_status, "to": Status.CLOSED},
                "merged_into": {"from": None, "to": target.pk},
            },
            actor,
        )
        _event(target, ConversationEvent.Kind.MERGED, actor, source=source.pk, messages=moved)
        _event(source, ConversationEvent.Kind.MERGED, actor, target=target.pk, messages=moved)
        publish_conversation_event(source, "merged", target=target.pk)
        publish_conversation_event(target, "merged", source=source.pk)
    return target


def _snooze_owner(conversation: Conversation) -> int | None:
    """Who hears a snoozed conversation is back: its assignee, else whoever snoozed it while
    they may still see it (nobody else set it aside)."""
    from conversations.selectors import can_see

    if conversation.assignee_id:
        return conversation.assignee_id
    snoozed = (
        conversation.events.filter(kind=ConversationEvent.Kind.STATUS, data__status=Status.SNOOZED)
        .select_related("actor")
        .order_by("-pk")
        .first()
    )
    agent = snoozed.actor if snoozed else None
    if can_see(agent, conversation):
        return agent.pk
    return None


def snoozed_wake_due() -> int:
    """Reopen snoozed conversations whose time has come. Returns how many woke up."""
    due = Conversation.objects.filter(status=Status.SNOOZED, snoozed_until__lte=timezone.now())
    woken = 0
    for conversation in due.only("pk"):
        with transaction.atomic():
            locked = _locked(conversation)
            if locked.status != Status.SNOOZED or locked.snoozed_until > timezone.now():
                continue  # a customer reply or an agent got there first
            locked.status = Status.OPEN
            locked.snoozed_until = None
            locked.save(update_fields=["status", "snoozed_until", "updated_at"])
            _event(
                locked,
                ConversationEvent.Kind.REOPENED,
                previous=Status.SNOOZED,
                reason="snooze_ended",
            )
            publish_conversation_event(locked, "reopened")
            _queue_moves(locked)  # nobody's: the team's queue hands it out now
            _notify([_snooze_owner(locked)], Notification.Kind.SNOOZE_ENDED, locked)
            _automations_run(locked, ["status_changed"])
            woken += 1
    return woken
