"""The pipeline between the database and the providers, in both directions.

Inbound: store the raw event (idempotent), then process it in a task. Outbound: queued ->
sending -> sent, or back to queued with a backoff on a transient error, or failed with the
provider's reason. Every attempt is recorded. The sweep finds work whose task was lost.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import DataError, connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from channels_adapters.base import Ignore, InvalidPayload, PermanentError, TransientError
from channels_adapters.models import InboundEvent
from channels_adapters.registry import adapter_for
from conversations.models import (
    Attachment,
    Conversation,
    DeliveryAttempt,
    Identity,
    Inbox,
    Message,
)
from conversations.realtime import publish_conversation_event
from conversations.services import (
    SenderBlocked,
    StatusUpdate,
    attachment_filename,
    message_enqueue_delivery,
    message_failure_tell,
    message_receive,
    message_status_update,
    reply_retried,
    without_reordering,
)
from routing.models import TableCache

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
INBOUND_GIVE_UP = timedelta(days=1)
PAYLOAD_IN_ROW_MAX = 256 * 1024
# A status callback can overtake the answer that told us the provider's id for the message:
# such an event stays pending (the sweep tries it again) for this long before it is dropped.
STATUS_WAIT = timedelta(minutes=30)
NOT_YET = "Reports on a message whose provider id is not known yet; will retry."
# A message still "sending" this long after its attempt began lost its worker on the way. Where
# sending twice would reach the customer twice (SMS, Messenger) it fails, saying so, for the
# agent to check and retry; long enough that no live attempt, however slow, is still at it.
SENDING_ABANDONED = timedelta(minutes=15)
UNCERTAIN = (
    "The send was cut off (the worker stopped) before {channel} answered: the message may or "
    "may not have reached the customer. Check before you retry."
)


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: 0-10 s after the first failure, up to 0-30 min."""
    return random.uniform(0, min(10 * 2 ** (attempt - 1), 1800))


# --- Inbound --------------------------------------------------------------------------------


def inbound_event_store(
    *,
    inbox: Inbox,
    dedupe_key: str,
    payload: bytes,
    headers: dict | None = None,
    enqueue: bool = True,
) -> tuple[InboundEvent, bool]:
    """Store a provider payload before anything else happens. Returns (event, created); a
    replay returns the stored event and created=False. Processing is enqueued on commit
    unless the caller processes it itself (if it dies first, the sweep enqueues it)."""
    from channels_adapters.tasks import process_inbound_event

    event = InboundEvent(inbox=inbox, dedupe_key=dedupe_key[:255], headers=headers or {})
    if len(payload) > PAYLOAD_IN_ROW_MAX:
        # Written before the row: a crash or a replay leaves at worst an unused file.
        event.payload_file.save(uuid.uuid4().hex, ContentFile(payload), save=False)
    else:
        event.payload = payload
    event.pk = _insert_unless_stored(event)
    if event.pk is None:
        return InboundEvent.objects.get(inbox=inbox, dedupe_key=event.dedupe_key), False
    event._state.adding = False
    if enqueue:
        # With the broker down the event stays pending, for the sweep: stored is what the
        # sender needs to hear (robust: the failure is logged, not raised).
        transaction.on_commit(lambda: process_inbound_event.delay(event.pk), robust=True)
    return event, True


def _insert_unless_stored(event: InboundEvent) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id (PostgreSQL and SQLite both speak it):
    the new row's id, or None when the provider's key is stored already. One statement, so a
    replay, or ten concurrent deliveries of one webhook, need no savepoint and raise nothing;
    a webhook spends a third of the CPU that save() and its IntegrityError would."""
    connection = connections[router.db_for_write(InboundEvent)]
    meta, quote = InboundEvent._meta, connection.ops.quote_name
    fields = [field for field in meta.concrete_fields if not field.primary_key]
    values = [field.get_db_prep_save(field.pre_save(event, True), connection) for field in fields]
    # Names come from the model, values go as parameters.
    sql = "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}, {}) DO NOTHING RETURNING {}".format(  # noqa: S608
        quote(meta.db_table),
        ", ".join(quote(field.column) for field in fields),
        ", ".join(["%s"] * len(fields)),
        quote(meta.get_field("inbox").column),
        quote(meta.get_field("dedupe_key").column),
        quote(meta.pk.column),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()
    return row[0] if row else None


def inbound_event_process(event_id: int) -> InboundEvent | None:
    """Turn a stored event into messages. Runs in one transaction with the event locked, so a
    worker dying half way leaves it pending for the sweep, and a second run does nothing."""
    with transaction.atomic():
        # The payload is read by the adapter through event.raw(), not with the row.
        events = (
            InboundEvent.objects.select_for_update(of=("self",))
            .select_related("inbox")
            .defer("payload")
        )
        event = events.filter(pk=event_id, status=InboundEvent.Status.PENDING).first()
        if event is None:
            return None  # already processed, or never stored
        return inbound_event_apply(event)


def inbound_event_apply(event: InboundEvent) -> InboundEvent:
    """inbound_event_process's work on a pending `event` that the caller's transaction holds:
    locked, or stored by it (nobody else can see that row before the commit)."""
    event.attempts += 1
    adapter = adapter_for(event.inbox.kind)
    waiting = False
    try:
        if adapter is None:
            raise InvalidPayload(f"No adapter handles {event.inbox.kind} inboxes.")
        # One look at the configuration tables for parsing and receiving (TableCache).
        with transaction.atomic(), TableCache.snapshot():
            received, updated, unknown, blocked, refused = [], [], [], "", []
            items = list(adapter.parse_inbound(event))
            # Replayed for the statuses it waited for: only those. The others were applied,
            # and a message may have moved on since (an agent's Retry of a failed reply).
            waited = event.headers.get("waiting_for")
            for item in items:
                if isinstance(item, StatusUpdate):
                    if waited is not None and item.provider_id not in waited:
                        continue
                    updated.append(message_status_update(item, inbox=event.inbox))
                    if updated[-1] is None:
                        unknown.append(item)
                    continue
                try:
                    received.append(message_receive(inbox=event.inbox, inbound=item))
                except SenderBlocked as exc:  # one sender of a batch: the others go on
                    blocked = exc.messages[0]
                    # Who it was, so that erasing them finds what was set aside: their
                    # address as stored (an API id is kept with its inbox's, say).
                    event.headers["blocked"] = exc.marker
                    continue
                except (ValidationError, DataError) as exc:
                    if len(items) == 1:
                        raise
                    # One message of a batch that cannot be taken (message_receive undid
                    # its part) must not keep the others from the agents: they go in, and
                    # the event fails, naming it. A replay takes nothing twice.
                    reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else exc
                    refused.append(f"{item.provider_id or 'a message'}: {reason}")
                    continue
                _profile_fetch_later(adapter, received[-1])
            # A report on a message whose provider id is not known yet (the answer to our
            # send is still on its way) is tried again, until STATUS_WAIT: the whole event,
            # since a replay changes nothing already applied. What the rest of the event
            # brought is kept now. Beside known ones, only a failure waits: a receipt naming
            # a part of a message that we never stored an id for (its attachments) is
            # nothing to wait for, and a lost delivery receipt loses no reply.
            fresh = timezone.now() - event.received_at < STATUS_WAIT
            if fresh and unknown and len(unknown) == len(updated) and not received:
                raise _NotYet
            if refused and not (received or any(updated)):
                raise ValidationError(refused)
            failures = [u.provider_id for u in unknown if u.status == Message.Status.FAILED]
            if fresh and failures:
                waiting = True
                event.headers["waiting_for"] = failures
    except _NotYet:
        event.error = NOT_YET
    except Ignore as exc:
        event.status, event.error = InboundEvent.Status.IGNORED, str(exc)
    except (InvalidPayload, ValidationError) as exc:
        log.warning("inbound event %s failed: %s", event.pk, exc)
        event.status = InboundEvent.Status.FAILED
        event.error = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
    except DataError as exc:  # a value the database refuses: every retry would fail the same
        log.exception("inbound event %s cannot be stored", event.pk)
        event.status = InboundEvent.Status.FAILED
        event.error = f"The database refused it: {str(exc).strip()[:500]}"
    except Exception as exc:  # noqa: BLE001 - a bug or a hiccup: said, and left to the sweep
        log.exception("inbound event %s failed; the sweep will retry", event.pk)
        event.error = f"Failed, will be tried again: {type(exc).__name__}: {exc}"[:1000]
        # Still failing a day on (an outage is over by then): a bug, failed for an admin to
        # look at and retry once fixed, rather than tried every minute for ever. A day from
        # the admin's retry, for one they retried: a hiccup then is tried again too.
        if timezone.now() - (event.requeued_at or event.received_at) > INBOUND_GIVE_UP:
            event.status = InboundEvent.Status.FAILED
            reason = f"{type(exc).__name__}: {exc}"
            event.error = f"Gave up after {event.attempts} attempts over a day: {reason}"[:1000]
    else:
        handled = bool(received) or any(updated)
        event.status = InboundEvent.Status.PROCESSED if handled else InboundEvent.Status.IGNORED
        # The message it brought, or the one a status callback was about: erasing a
        # conversation finds its payloads through it.
        event.message = received[0].message if received else next(filter(None, updated), None)
        event.error = blocked or ("" if handled else "nothing in it for us")
        if refused:
            event.status = InboundEvent.Status.FAILED
            event.error = (
                f"{len(refused)} of {len(received) + len(refused)} messages not taken: "
                + "; ".join(refused)
            )[:1000]
        if waiting:  # pending again, for the sweep; what it refused fails it when it is done
            event.status = InboundEvent.Status.PENDING
            event.error = f"{NOT_YET} {event.error}".strip()[:1000]
    event.processed_at = timezone.now()
    # Never write the payload back: it can be megabytes, and it is the record. The headers
    # change only when a blocked sender's message was set aside, or statuses wait.
    fields = ["status", "error", "message", "attempts", "processed_at"]
    event.save(
        update_fields=fields + ["headers"] * bool({"blocked", "waiting_for"} & event.headers.keys())
    )
    return event


class _NotYet(Exception):  # noqa: N818 - control flow inside inbound_event_process
    pass


def _profile_fetch_later(adapter, received) -> None:
    from channels_adapters.tasks import fetch_identity_profile

    identity = received.message.identity
    if adapter.fetches_profiles and identity and identity.profile_fetched_at is None:
        transaction.on_commit(lambda: fetch_identity_profile.delay(identity.pk), robust=True)


def identity_profile_fetch(identity_id: int) -> bool:
    """Fill a customer's name from the provider's profile (Messenger), once per identity."""
    identity = Identity.objects.select_related("customer").filter(pk=identity_id).first()
    if identity is None or identity.profile_fetched_at is not None:
        return False
    last = (
        Message.objects.filter(identity=identity, direction=Message.Direction.INBOUND)
        .select_related("inbox")
        .order_by("-id")
        .first()
    )
    adapter = adapter_for(identity.kind)
    if last is None or adapter is None:
        return False
    name = adapter.profile_name(last.inbox, identity)  # TransientError: the task retries
    name = without_reordering(name).strip()
    with transaction.atomic():
        if not Identity.objects.filter(pk=identity.pk, profile_fetched_at=None).update(
            profile_fetched_at=timezone.now(),
            display_name=identity.display_name or name[:200],
        ):
            return False
        if name and not identity.customer.name:
            type(identity.customer).objects.filter(pk=identity.customer_id, name="").update(
                name=name[:200]
            )
    return bool(name)


def attachment_fetch(attachment_id: int) -> str:
    """Download provider media into a placeholder attachment. Returns "fetched", "failed"
    (the reason is kept on the attachment, for the agent) or "done" when there was nothing
    to do. A TransientError propagates, for the task to retry; running twice is harmless."""
    attachment = (
        Attachment.objects.select_related("message__inbox", "message__conversation")
        .filter(pk=attachment_id)
        .first()
    )
    if attachment is None or not attachment.is_pending:
        return "done"
    # A retry comes within FETCH_RETRY_GAP of this; a pending one left longer lost its task.
    Attachment.objects.filter(pk=attachment.pk).update(fetch_tried_at=timezone.now())
    message = attachment.message
    adapter = adapter_for(message.channel)
    try:
        if adapter is None:
            raise PermanentError(f"No adapter fetches media on {message.channel}.")
        media = adapter.fetch_media(message.inbox, attachment.source)
    except PermanentError as exc:
        attachment_give_up(attachment.pk, exc.reason)
        return "failed"
    else:
        with transaction.atomic():
            locked = Attachment.objects.select_for_update().filter(pk=attachment.pk).first()
            if locked is None or not locked.is_pending:
                return "done"
            locked.content_type = (media.content_type or locked.content_type)[:127]
            if media.filename and locked.filename == "attachment":
                locked.filename = attachment_filename(media.filename)
            locked.size = len(media.content)
            locked.file.save(locked.filename, ContentFile(media.content), save=False)
            locked.save()
    publish_conversation_event(message.conversation, "attachment", message=message.pk)
    return "fetched"


def attachment_give_up(attachment_id: int, reason: str) -> None:
    """Keep why media could not be fetched on its placeholder, where the agent sees it."""
    attachment = Attachment.objects.select_related("message__conversation").get(pk=attachment_id)
    if Attachment.objects.filter(pk=attachment_id, file="", fetch_error="").update(
        fetch_error=reason[:500]
    ):
        publish_conversation_event(
            attachment.message.conversation, "attachment", message=attachment.message_id
        )


def inbound_events_requeue(events) -> int:
    """Process failed events again (an admin fixed an inbox, or a bug was fixed)."""
    from channels_adapters.tasks import process_inbound_event

    ids = list(events.filter(status=InboundEvent.Status.FAILED).values_list("pk", flat=True))
    with transaction.atomic():
        InboundEvent.objects.filter(pk__in=ids).update(
            status=InboundEvent.Status.PENDING, error="", requeued_at=timezone.now()
        )
        for pk in ids:
            transaction.on_commit(lambda pk=pk: process_inbound_event.delay(pk), robust=True)
    return len(ids)


# --- Outbound -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOutcome:
    status: str
    retry_in: float | None = None


def message_deliver(message_id: int) -> DeliveryOutcome | None:
    """One delivery attempt. Returns None when there is nothing to do (already sent, failed,
    being sent by another worker, or backing off), else the outcome and when to retry."""
    now = timezone.now()
    with transaction.atomic():
        message = (
            Message.objects.select_for_update(of=("self",))
            .select_related("conversation", "identity", "inbox")
            .filter(pk=message_id, status=Message.Status.QUEUED)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .first()
        )
        if message is None:
            return None
        adapter = adapter_for(message.channel)
        refusal = adapter.send_refusal(message) if adapter else ""
        message.status = Message.Status.SENDING
        message.attempts += 1
        if adapter and not message.provider_id:
            message.provider_id = adapter.new_provider_id(message)[:255]
        message.save(update_fields=["status", "attempts", "provider_id", "updated_at"])

    update: dict = {}
    try:
        if adapter is None:
            raise PermanentError(f"No adapter can send on {message.channel}.")
        if refusal:
            raise PermanentError(refusal)
        result = adapter.send(message)
    except PermanentError as exc:
        outcome, detail = DeliveryAttempt.Outcome.FAILED, exc.reason
    except Exception as exc:  # noqa: BLE001 - unknown errors are retried, then given up on
        detail = exc.reason if isinstance(exc, TransientError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TransientError):
            log.exception("unexpected error sending message %s", message.pk)
        outcome = DeliveryAttempt.Outcome.RETRY
        if message.attempts >= MAX_ATTEMPTS:
            outcome, detail = (
                DeliveryAttempt.Outcome.FAILED,
                f"Gave up after {message.attempts} attempts: {detail}",
            )
    else:
        outcome, detail = DeliveryAttempt.Outcome.SENT, ""
        if result.provider_id:
            update["provider_id"] = result.provider_id[:255]

    retry_in = None
    if outcome == DeliveryAttempt.Outcome.SENT:
        update.update(
            status=Message.Status.SENT,
            # When the attempt began: the provider stamps the message while we wait for its
            # answer, and Messenger's read and delivery watermarks are that stamp.
            sent_at=now,
            failure_reason="",
            next_attempt_at=None,
        )
    elif outcome == DeliveryAttempt.Outcome.RETRY:
        retry_in = backoff_seconds(message.attempts)
        update.update(
            status=Message.Status.QUEUED,
            failure_reason=detail,
            next_attempt_at=timezone.now() + timedelta(seconds=retry_in),
        )
    else:
        update.update(status=Message.Status.FAILED, failure_reason=detail, next_attempt_at=None)

    with transaction.atomic():
        DeliveryAttempt.objects.create(
            message=message, outcome=outcome, detail=detail, started_at=now
        )
        # Only move on from "sending": a status callback may already have said "delivered".
        # Or from the sweep's "cut off" failure, if this attempt was only slow: it knows.
        cut_off = Q(
            status=Message.Status.FAILED,
            failure_reason=UNCERTAIN.format(channel=message.get_channel_display()),
        )
        moved = (
            Message.objects.filter(pk=message.pk)
            .filter(Q(status=Message.Status.SENDING) | cut_off)
            .update(updated_at=timezone.now(), **update)
        )
        publish_conversation_event(
            message.conversation, "delivery", message=message.pk, status=update["status"]
        )
        if moved and update["status"] == Message.Status.FAILED:
            message.failure_reason = detail
            message_failure_tell(message)
        if moved and update["status"] != Message.Status.QUEUED:
            _survey_if_held(message.conversation_id)
    return DeliveryOutcome(status=update["status"], retry_in=retry_in)


def _survey_if_held(conversation_id: int) -> None:
    """A satisfaction survey held back until the conversation's replies are settled
    (routing.replies.satisfaction_survey_send) is asked again now, not at the next sweep."""
    from routing.tasks import satisfaction_survey

    if Conversation.objects.filter(pk=conversation_id, survey_due_at__isnull=False).exists():
        transaction.on_commit(lambda: satisfaction_survey.delay(conversation_id), robust=True)


def message_retry(*, message: Message) -> Message:
    """An agent asks to try a failed message again."""
    with transaction.atomic():
        updated = Message.objects.filter(pk=message.pk, status=Message.Status.FAILED).update(
            status=Message.Status.QUEUED,
            attempts=0,
            next_attempt_at=None,
            updated_at=timezone.now(),
        )
        if not updated:
            raise ValidationError("Only a failed message can be retried.")
        message.refresh_from_db()
        reply_retried(message)
        message_enqueue_delivery(message)
        publish_conversation_event(
            message.conversation, "delivery", message=message.pk, status=message.status
        )
    return message


# --- The sweep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    messages: int
    events: int
    attachments: int = 0
    transcripts: int = 0


# The longest fetch_attachment waits between its tries (backoff_seconds at its sixth and last
# retry): media still pending this long after a try lost its task.
FETCH_RETRY_GAP = timedelta(seconds=10 * 2**5)
# The longest send_transcript's five retries take together.
TRANSCRIPT_RETRIES_TAKE = timedelta(seconds=sum(10 * 2**n for n in range(5)))


def sweep_stuck() -> SweepResult:
    """Enqueue again whatever lost its task: queued messages and pending inbound events older
    than SWEEP_STUCK_AFTER_SECONDS, and messages left "sending" by a dead worker on channels
    where sending twice is harmless; on the others such a message fails after
    SENDING_ABANDONED (see there). Running it twice, or beside a live task, is safe: the
    tasks themselves skip work that is already done."""
    from channels_adapters.tasks import deliver_message, process_inbound_event

    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.SWEEP_STUCK_AFTER_SECONDS)
    queued = list(
        Message.objects.filter(status=Message.Status.QUEUED, updated_at__lt=cutoff)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .values_list("pk", flat=True)[:1000]
    )
    sending = Message.objects.filter(status=Message.Status.SENDING)
    idempotent = [
        kind
        for kind in sending.values_list("channel", flat=True).distinct()
        if (adapter := adapter_for(kind)) and adapter.capabilities.idempotent_send
    ]
    abandoned = list(
        sending.filter(channel__in=idempotent, updated_at__lt=cutoff).values_list("pk", flat=True)[
            :1000
        ]
    )
    if abandoned:
        sending.filter(pk__in=abandoned).update(status=Message.Status.QUEUED, updated_at=now)
    uncertain = sending.exclude(channel__in=idempotent).filter(
        updated_at__lt=now - SENDING_ABANDONED
    )
    for message in uncertain.select_related("conversation")[:1000]:
        message.failure_reason = UNCERTAIN.format(channel=message.get_channel_display())
        with transaction.atomic():
            if sending.filter(pk=message.pk).update(
                status=Message.Status.FAILED, failure_reason=message.failure_reason, updated_at=now
            ):
                DeliveryAttempt.objects.create(
                    message=message,
                    outcome=DeliveryAttempt.Outcome.FAILED,
                    detail=message.failure_reason,
                    started_at=message.updated_at,
                )
                publish_conversation_event(
                    message.conversation, "delivery", message=message.pk, status="failed"
                )
                message_failure_tell(message)
    events = list(
        InboundEvent.objects.filter(
            status=InboundEvent.Status.PENDING, received_at__lt=cutoff
        ).values_list("pk", flat=True)[:1000]
    )
    for pk in queued + abandoned:
        deliver_message.delay(pk)
    for pk in events:
        process_inbound_event.delay(pk)
    attachments = _fetches_stuck(now, cutoff)
    transcripts = _transcripts_stuck(now, cutoff)
    if queued or abandoned or events or attachments or transcripts:
        log.warning(
            "sweep re-enqueued %d messages, %d inbound events, %d media fetches and %d transcripts",
            len(queued) + len(abandoned),
            len(events),
            attachments,
            transcripts,
        )
    return SweepResult(
        messages=len(queued) + len(abandoned),
        events=len(events),
        attachments=attachments,
        transcripts=transcripts,
    )


def _fetches_stuck(now, cutoff) -> int:
    """Provider media still to fetch, from the last SWEEP_LOOKBACK_HOURS, whose task was lost:
    never tried, or not tried again within a retry's wait. The fetch takes a pending
    placeholder only, under its row lock, so one fetched meanwhile is not fetched twice."""
    from channels_adapters.tasks import fetch_attachment

    pending = Attachment.objects.filter(
        file="",
        fetch_error="",
        created_at__gte=now - timedelta(hours=settings.SWEEP_LOOKBACK_HOURS),
        created_at__lt=cutoff,
    ).exclude(source="")
    lost = pending.filter(
        Q(fetch_tried_at__isnull=True) | Q(fetch_tried_at__lt=cutoff - FETCH_RETRY_GAP)
    )
    ids = list(lost.order_by("created_at").values_list("pk", flat=True)[:1000])
    for pk in ids:
        fetch_attachment.delay(pk)
    return len(ids)


def _transcripts_stuck(now, cutoff) -> int:
    """Chat transcripts asked for and not sent, whose task was lost, while the visitor may still
    expect them (webchat TRANSCRIPT_TRYING, after which they may ask again). The task sends
    under the event's row lock and marks it sent, so it sends once. Marked `swept_at` here: the
    task's own retries need their time before the sweep starts another."""
    from channels_adapters.tasks import send_transcript
    from channels_adapters.webchat.chat import TRANSCRIPT_TRYING
    from conversations.models import ConversationEvent

    since = now - min(TRANSCRIPT_TRYING, timedelta(hours=settings.SWEEP_LOOKBACK_HOURS))
    asked = ConversationEvent.objects.filter(
        kind=ConversationEvent.Kind.CHAT,
        data__state="transcript",
        created_at__gte=since,
        created_at__lt=cutoff,
    )
    lost = []
    for event in asked.order_by("created_at")[:1000]:
        swept = event.data.get("swept_at")
        if event.data.get("sent_at") or (
            swept and now - datetime.fromisoformat(swept) < TRANSCRIPT_RETRIES_TAKE
        ):
            continue
        with transaction.atomic():
            locked = ConversationEvent.objects.select_for_update().filter(pk=event.pk).first()
            if locked is None or locked.data.get("sent_at"):
                continue
            locked.data = {**locked.data, "swept_at": now.isoformat()}
            locked.save(update_fields=["data"])
        lost.append(event.pk)
    for pk in lost:
        send_transcript.delay(pk)
    return len(lost)
