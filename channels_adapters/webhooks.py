"""Outgoing webhooks: what happens in the helpdesk, POSTed to the endpoints admins configured.

The services call `webhook_emit` inside the transaction that makes the change: it writes one
WebhookDelivery (the outbox) per listening endpoint, and enqueues their tasks on commit. A
rolled-back change sends nothing; a lost task or a broker that was down is found by the sweep.
Each delivery is POSTed, signed, until the endpoint answers 2xx, says no for good (a 4xx), or
a day has passed; every attempt is recorded. With no endpoint listening, emitting asks the
database nothing on the receive path (TableCache, read in the message's snapshot).
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from datetime import timedelta

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from channels_adapters.base import PermanentError, TransientError
from channels_adapters.http import public_client
from channels_adapters.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    new_webhook_secret,
)
from routing.models import TableCache

log = logging.getLogger(__name__)

EventType = WebhookEventType
# Tried for a day (an outage on their side is over by then), then failed for an admin to see.
GIVE_UP = timedelta(days=1)
# An endpoint failing every attempt this long is turned off and the admins told.
DISABLE_AFTER = timedelta(days=1)
# Past the request's timeout: a delivery claimed this long ago lost its worker.
CLAIM_SECONDS = 60
BACKOFF_CAP_SECONDS = 1800  # under the Redis broker's visibility timeout (settings)
RETRY_STATUSES = {408, 425, 429}
ANSWER_KEPT = 500  # bytes of an endpoint's answer kept on the attempt (WebhookAttempt.response)


def backoff_seconds(attempt: int) -> float:
    """Exponential, with jitter so that endpoints coming back are not hit all at once:
    15-30 s after the first failure, doubling up to 15-30 min."""
    ceiling = min(30 * 2 ** (attempt - 1), BACKOFF_CAP_SECONDS)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - spreading load, not a secret


# --- Emitting -------------------------------------------------------------------------------


def _listening_build() -> tuple[tuple[int, frozenset[str]], ...]:
    return tuple(
        (pk, frozenset(types or ()))
        for pk, types in WebhookEndpoint.objects.filter(is_active=True).values_list(
            "pk", "event_types"
        )
    )


_listening = TableCache(WebhookEndpoint, _listening_build)


def webhook_emit(event_type: str, build) -> list[int]:
    """Record `event_type` for every active endpoint that listens to it, in the caller's
    transaction; `build()` makes the event's data, only when someone listens. Returns the
    deliveries' ids."""
    endpoints = [pk for pk, types in _listening.get() if event_type in types]
    return _deliveries_create(event_type, endpoints, build) if endpoints else []


def webhook_test_send(endpoint: WebhookEndpoint) -> int:
    """A `ping` event for `endpoint` alone, asked for from the admin: the way an integrator
    checks their URL and signature check before real events come. It is delivered, retried
    and recorded as any event. Returns the delivery's id."""
    (delivery_id,) = _deliveries_create(
        EventType.PING,
        [endpoint.pk],
        lambda: {
            "endpoint": {"id": endpoint.pk, "url": endpoint.url},
            "note": "A test event, sent from the admin: nothing happened in the helpdesk.",
        },
    )
    return delivery_id


def _deliveries_create(event_type: str, endpoints: list[int], build) -> list[int]:
    now = timezone.now()
    event_id = uuid.uuid4()
    payload = {
        "id": str(event_id),
        "type": event_type,
        "occurred_at": now.isoformat().replace("+00:00", "Z"),
        # Through JSON and back: dates become strings, and the row holds what is sent.
        "data": json.loads(json.dumps(build(), cls=DjangoJSONEncoder)),
    }
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            endpoint_id=pk,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            next_attempt_at=now,
            created_at=now,
        )
        for pk in endpoints
    )
    ids = [delivery.pk for delivery in deliveries]
    if None in ids:  # a database that returns no ids from a bulk insert
        ids = list(WebhookDelivery.objects.filter(event_id=event_id).values_list("pk", flat=True))
    for pk in ids:
        _enqueue_on_commit(pk)
    return ids


def _enqueue_on_commit(delivery_id: int) -> None:
    from channels_adapters.tasks import send_webhook

    # With the broker down the delivery stays pending, for the sweep (robust: logged).
    transaction.on_commit(lambda: send_webhook.delay(delivery_id), robust=True)


def conversation_created(conversation) -> None:
    webhook_emit(
        EventType.CONVERSATION_CREATED, lambda: {"conversation": _conversation(conversation)}
    )


def message_created(message) -> None:
    """A customer's message or a reply to them (message.created), or an internal note
    (note.created: its own type, so that an integration never relays one by mistake).
    System messages are the timeline's, not news."""
    from conversations.models import Message

    kinds = {
        Message.Direction.INBOUND: EventType.MESSAGE_CREATED,
        Message.Direction.OUTBOUND: EventType.MESSAGE_CREATED,
        Message.Direction.NOTE: EventType.NOTE_CREATED,
    }
    if message.direction in kinds:
        webhook_emit(kinds[message.direction], lambda: _message_event(message))


def message_delivered(message) -> None:
    webhook_emit(EventType.MESSAGE_DELIVERED, lambda: _message_event(message))


def message_failed(message) -> None:
    """Told while the failure is being written: the row says failed, `message` may not yet."""

    def build():
        data = _message_event(message)
        data["message"]["status"] = "failed"
        return data

    webhook_emit(EventType.MESSAGE_FAILED, build)


def conversation_updated(conversation, changes: dict, actor=None) -> None:
    """`changes`: {field: {"from": ..., "to": ...}} for status, priority, team, assignee."""
    webhook_emit(
        EventType.CONVERSATION_UPDATED,
        lambda: {
            "conversation": _conversation(conversation),
            "changes": changes,
            "actor": _user(actor),
        },
    )


# What a ConversationEvent says changed, as conversation.updated's `changes`.
_CHANGED_BY_EVENT = {
    "status": ("status", "previous", "status"),
    "reopened": ("status", "previous", None),
    "priority": ("priority", "previous", "priority"),
    "team": ("team", "previous", "team"),
    "assigned": ("assignee", "previous", "assignee"),
}


def conversation_event_emit(event) -> None:
    """conversation.updated for a timeline event that changed one of the conversation's
    fields (the services' _event); other events are not sent."""
    if event.kind not in _CHANGED_BY_EVENT:
        return
    field, before, after = _CHANGED_BY_EVENT[event.kind]
    data = event.data or {}
    change = {"from": data.get(before), "to": data.get(after) if after else "open"}
    if field == "priority":
        change = {key: _priority_name(value) for key, value in change.items()}
    actor = event.actor if event.actor_id else None
    conversation_updated(event.conversation, {field: change}, actor)


# --- Payloads: ids, numbers and what a person wrote; never tokens or internal secrets -------


def _priority_name(value) -> str | None:
    from conversations.models import Conversation

    if value is None:
        return None
    return Conversation.Priority(value).name.lower()


def _user(user) -> dict | None:
    if user is None:
        return None
    return {"id": user.pk, "name": user.name, "email": user.email}


def _conversation(conversation) -> dict:
    customer, inbox, team = conversation.customer, conversation.inbox, conversation.team
    return {
        "id": conversation.pk,
        "number": conversation.number,
        "subject": conversation.subject,
        "status": conversation.status,
        "priority": _priority_name(conversation.priority),
        "inbox": {"id": inbox.pk, "name": inbox.name, "channel": inbox.kind},
        "team": {"id": team.pk, "name": team.name} if team else None,
        "assignee": _user(conversation.assignee),
        "customer": {"id": customer.pk, "name": customer.name, "language": customer.language},
        "created_at": conversation.created_at,
    }


def _message_event(message) -> dict:
    identity = message.identity
    return {
        "conversation": _conversation(message.conversation),
        "message": {
            "id": message.pk,
            "direction": message.direction,
            "channel": message.channel,
            "status": message.status,
            "text": message.text,
            # The customer's address it came from or goes to, as agents see it.
            "address": identity.shown_address if identity else "",
            "author": _user(message.author),
            "attachments": [
                {"name": item.filename, "content_type": item.content_type, "size": item.size}
                for item in message.attachments.all()
            ],
            "failure_reason": message.failure_reason,
            "created_at": message.created_at,
        },
    }


# --- Delivering -----------------------------------------------------------------------------


def webhook_deliver(delivery_id: int) -> float | None:
    """One attempt at a due delivery. Returns in how many seconds to try again, or None
    (delivered, failed for good, or nothing to do: not due, done, claimed by another)."""
    now = timezone.now()
    # Claimed in one conditional UPDATE (SQLite has no row locks): of two tasks for it, one
    # wins, and nobody else sends it while this request runs; should this worker die, the
    # sweep finds it due again once the claim runs out.
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
    ).update(attempts=F("attempts") + 1, next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
    if not claimed:
        return None  # not due, done, or another task's
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    if not endpoint.is_active:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.FAILED,
            attempts=F("attempts") - 1,  # nothing was sent
            next_attempt_at=now,
            last_error="The endpoint was turned off before this could be sent.",
        )
        return None

    attempt = WebhookAttempt(delivery=delivery, started_at=now)
    started = time.monotonic()
    retry = _post(endpoint, delivery, attempt)
    attempt.duration_ms = int((time.monotonic() - started) * 1000)
    return _attempt_record(delivery, attempt, retry)


def _post(endpoint: WebhookEndpoint, delivery: WebhookDelivery, attempt: WebhookAttempt):
    """POST the delivery; fills `attempt`. Returns None when delivered, else whether to retry
    (True, or the seconds a 429's Retry-After asks for) or not (False)."""
    # The API inbox's scheme, which integrators verify already (imported here: that adapter
    # imports the services, which emit through this module).
    from channels_adapters.api.adapter import webhook_signature

    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        # Its answer's first bytes are kept as they come (_answer_start): not compressed.
        "Accept-Encoding": "identity",
        "X-Threadline-Event": delivery.event_type,
        "X-Threadline-Event-Id": str(delivery.event_id),
        "X-Threadline-Signature": webhook_signature(endpoint.secret, body, int(time.time())),
    }
    try:
        # Streamed, and only its first bytes read: an answer that never ends (a hostile
        # endpoint, a proxy streaming a file) must hold neither the worker nor its memory.
        with public_client().stream(
            "POST",
            endpoint.url,
            content=body,
            headers=headers,
            timeout=settings.PROVIDER_TIMEOUT_SECONDS,
        ) as response:
            attempt.response = _answer_start(response)
    except PermanentError as exc:  # a private address, refused
        attempt.error = exc.reason[:500]
        return False
    except TransientError as exc:  # the name did not resolve
        attempt.error = exc.reason[:500]
        return True
    except httpx.TimeoutException as exc:
        attempt.error = (
            f"No answer in {settings.PROVIDER_TIMEOUT_SECONDS:g} s ({type(exc).__name__})."
        )
        return True
    except httpx.HTTPError as exc:
        attempt.error = f"Could not reach the endpoint: {type(exc).__name__}: {exc}"[:500]
        return True
    attempt.status_code = response.status_code
    if response.is_success:
        return None
    if response.status_code in RETRY_STATUSES or response.status_code >= 500:
        after = response.headers.get("retry-after", "")
        return min(int(after), BACKOFF_CAP_SECONDS) if after.isdigit() else True
    if response.is_redirect:
        attempt.error = "Redirects are not followed: configure the address it points to."
    else:
        attempt.error = f"Refused with HTTP {response.status_code}: not tried again."
    return False


def _answer_start(response: httpx.Response) -> str:
    """The answer's first characters, for the attempt's record. Its status is what counts: a
    body that breaks off after a 2xx does not undo the delivery."""
    start = b""
    try:
        for chunk in response.iter_raw():
            start += chunk
            if len(start) >= ANSWER_KEPT:
                break
    except httpx.HTTPError:
        pass
    # Without NULs, which PostgreSQL cannot store: the attempt would never be recorded.
    return start[:ANSWER_KEPT].decode(errors="replace").replace("\x00", "")


def _attempt_record(delivery: WebhookDelivery, attempt: WebhookAttempt, retry) -> float | None:
    now = timezone.now()
    retry_in = None
    update: dict = {}
    if retry is None:
        update = {
            "status": WebhookDelivery.Status.DELIVERED,
            "delivered_at": now,
            "last_error": "",
            "next_attempt_at": now,  # no claim left standing in the admin's list
        }
    else:
        reason = attempt.error or f"HTTP {attempt.status_code}: {attempt.response[:200]}"
        given_up = now - (delivery.requeued_at or delivery.created_at) > GIVE_UP
        if retry is False or given_up:
            if retry is not False:
                reason = f"Gave up after {delivery.attempts} attempts over a day: {reason}"
            update = {
                "status": WebhookDelivery.Status.FAILED,
                "last_error": reason[:500],
                "next_attempt_at": now,
            }
        else:
            retry_in = backoff_seconds(delivery.attempts)
            if retry is not True:  # the endpoint said when
                retry_in = max(retry_in, float(retry))
            update = {
                "last_error": reason[:500],
                "next_attempt_at": now + timedelta(seconds=retry_in),
            }
    with transaction.atomic():
        attempt.save()
        # Only while our claim stands: a request that outlived it (the sweep's task claimed
        # the delivery meanwhile, and may have delivered it) says nothing of how it ended.
        mine = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=WebhookDelivery.Status.PENDING, attempts=delivery.attempts
        )
        if not mine.update(**update):
            return None
        _endpoint_health(delivery.endpoint, ok=retry is None, now=now)
    return retry_in


def _endpoint_health(endpoint: WebhookEndpoint, *, ok: bool, now) -> None:
    """Remember since when an endpoint fails; after DISABLE_AFTER of nothing but failures,
    turn it off and tell the admins by email (as a broken mailbox is told)."""
    endpoints = WebhookEndpoint.objects.filter(pk=endpoint.pk)
    if ok:
        endpoints.exclude(failing_since=None).update(failing_since=None)
        return
    endpoints.filter(failing_since=None).update(failing_since=now)
    since = endpoints.values_list("failing_since", flat=True).first()
    if since is None or now - since < DISABLE_AFTER:
        return
    reason = (
        f"Turned off on {now:%Y-%m-%d %H:%M} UTC: every attempt failed since "
        f"{since:%Y-%m-%d %H:%M} UTC."
    )
    # updated_at moves too: every process's TableCache stops emitting to it.
    if endpoints.filter(is_active=True).update(
        is_active=False, disabled_reason=reason, updated_at=now
    ):
        transaction.on_commit(lambda: _disabled_tell(endpoint, reason), robust=True)


def _disabled_tell(endpoint: WebhookEndpoint, reason: str) -> None:
    User = get_user_model()  # noqa: N806
    admins = list(
        User.objects.filter(
            Q(is_superuser=True) | Q(role=User.Role.ADMIN), is_active=True
        ).values_list("email", flat=True)
    )
    if admins:
        send_mail(
            subject=f"[Threadline] Webhook endpoint {endpoint.url} was turned off",
            message=(
                f"The webhook endpoint {endpoint.url} ({endpoint.description or 'no description'}) "
                f"failed every delivery for a day. {reason}\n\nFix it, turn it on again in the "
                "admin (Webhook endpoints), and send its failed deliveries again from "
                "Webhook deliveries."
            ),
            from_email=None,
            recipient_list=admins,
        )


# --- The sweep and the admin's actions ------------------------------------------------------


def webhooks_sweep() -> int:
    """Enqueue deliveries that are due but whose task was lost (broker down at commit, a
    worker killed mid-request, a restart). A live task skips what another one claimed."""
    from channels_adapters.tasks import send_webhook

    cutoff = timezone.now() - timedelta(seconds=settings.SWEEP_STUCK_AFTER_SECONDS)
    due = list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lt=cutoff
        ).values_list("pk", flat=True)[:1000]
    )
    for pk in due:
        send_webhook.delay(pk)
    if due:
        log.warning("webhook sweep re-enqueued %d deliveries", len(due))
    return len(due)


def webhook_deliveries_requeue(deliveries) -> int:
    """Send failed deliveries again (an admin fixed the endpoint), for another day."""
    now = timezone.now()
    ids = list(deliveries.filter(status=WebhookDelivery.Status.FAILED).values_list("pk", flat=True))
    with transaction.atomic():
        WebhookDelivery.objects.filter(pk__in=ids).update(
            status=WebhookDelivery.Status.PENDING, next_attempt_at=now, requeued_at=now
        )
        for pk in ids:
            _enqueue_on_commit(pk)
    return len(ids)


def webhook_secret_rotate(endpoint: WebhookEndpoint) -> str:
    """A new secret, used from the next attempt on (retries of older events included)."""
    endpoint.secret = new_webhook_secret()
    endpoint.save(update_fields=["secret", "updated_at"])
    return endpoint.secret
