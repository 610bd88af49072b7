"""Thin tasks: ids in, a delivery service call, a retry policy. All safe to run twice."""

import logging
import os
import threading
import time

from celery import shared_task

from channels_adapters import delivery
from channels_adapters.base import TransientError

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver_message(self, message_id: int):
    outcome = delivery.message_deliver(message_id)
    if outcome and outcome.retry_in is not None:
        # A little past the backoff, so the retry never lands before next_attempt_at.
        raise self.retry(countdown=outcome.retry_in + 0.5)
    return outcome.status if outcome else None


@shared_task(acks_late=True)
def process_inbound_event(event_id: int):
    event = delivery.inbound_event_process(event_id)
    return event.status if event else None


@shared_task(acks_late=True)
def process_inbound_events(event_ids: list[int]):
    """Several stored events in turn (see InboundHandoff). One that raises stays pending, for
    the sweep to try again, and does not hold back the others."""
    statuses = []
    for event_id in event_ids:
        try:
            event = delivery.inbound_event_process(event_id)
        except Exception:  # noqa: BLE001 - logged; the event stays pending for the sweep
            log.exception("inbound event %s: processing raised; the sweep will try again", event_id)
            statuses.append("error")
        else:
            statuses.append(event.status if event else None)
    return statuses


class InboundHandoff:
    """Stored events on their way from a web process to the worker. One thread publishes them,
    at most PER_SECOND task messages a second, each carrying every id that came in since the
    last: when quiet, an event goes at once; under load, one broker write serves many webhooks
    (a Celery publish costs a web process as much CPU as storing the event). The ids wait in
    memory only, so should the process die first, the events stay pending and the sweep
    enqueues them."""

    BATCH, PER_SECOND = 20, 50  # small enough to spread a burst over several workers

    def __init__(self):
        self._ids: list[int] = []
        self._ready = threading.Condition()
        self._thread = None

    def add(self, event_id: int) -> None:
        with self._ready:
            self._ids.append(event_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._publish_forever, name="inbound-handoff", daemon=True
                )
                self._thread.start()
            self._ready.notify()

    def _publish_forever(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._ids)
                batch, self._ids = self._ids[: self.BATCH], self._ids[self.BATCH :]
            try:
                process_inbound_events.delay(batch)
            except Exception:  # noqa: BLE001 - the broker is down: the sweep enqueues them later
                log.exception("could not enqueue inbound events %s; the sweep will", batch)
            time.sleep(1 / self.PER_SECOND)  # let the next ones gather


inbound_handoff = InboundHandoff()
# A forked child (a prefork worker) starts with no thread and must not share the parent's lock.
os.register_at_fork(after_in_child=inbound_handoff.__init__)


@shared_task(bind=True, acks_late=True, max_retries=6)
def fetch_attachment(self, attachment_id: int):
    try:
        return delivery.attachment_fetch(attachment_id)
    except TransientError as exc:
        if self.request.retries >= self.max_retries:
            delivery.attachment_give_up(attachment_id, exc.reason)
            return "failed"
        raise self.retry(countdown=delivery.backoff_seconds(self.request.retries + 1)) from exc


@shared_task(bind=True, acks_late=True, max_retries=3)
def fetch_identity_profile(self, identity_id: int):
    try:
        return delivery.identity_profile_fetch(identity_id)
    except TransientError as exc:
        raise self.retry(countdown=delivery.backoff_seconds(self.request.retries + 1)) from exc


@shared_task(acks_late=True)
def sweep_stuck():
    result = delivery.sweep_stuck()
    return {
        "messages": result.messages,
        "events": result.events,
        "attachments": result.attachments,
        "transcripts": result.transcripts,
    }


@shared_task(acks_late=True)
def poll_mailboxes():
    from conversations.models import Channel, Inbox

    for inbox in Inbox.objects.filter(kind=Channel.EMAIL, is_active=True).only("pk", "settings"):
        if (inbox.settings or {}).get("imap_host"):
            poll_mailbox.delay(inbox.pk)


@shared_task(acks_late=True)
def poll_mailbox(inbox_id: int):
    from channels_adapters.email.imap import mailbox_poll
    from conversations.models import Inbox

    inbox = Inbox.objects.filter(pk=inbox_id, is_active=True).first()
    if inbox is None:
        return None
    try:
        result = mailbox_poll(inbox)
    except Exception:  # noqa: BLE001 - recorded on the mailbox's health; the next poll retries
        return "failed"
    return {"stored": result.stored, "duplicates": result.duplicates, "skipped": result.skipped}


@shared_task(acks_late=True)
def check_mailbox_health():
    from channels_adapters.email.health import mailboxes_alert

    return mailboxes_alert()


@shared_task(acks_late=True)
def webchat_follow_up(conversation_id: int):
    from channels_adapters.webchat.adapter import follow_up

    message = follow_up(conversation_id)
    return message.pk if message else None


@shared_task(acks_late=True)
def webchat_follow_ups_due():
    from channels_adapters.webchat.adapter import follow_ups_due

    return follow_ups_due()


@shared_task(bind=True, acks_late=True, max_retries=5)
def send_transcript(self, event_id: int):
    from channels_adapters.webchat.adapter import transcript_send

    try:
        return transcript_send(event_id)
    except OSError as exc:  # the mail server is down or refused: try again later
        raise self.retry(countdown=delivery.backoff_seconds(self.request.retries + 1)) from exc


@shared_task(bind=True, acks_late=True, max_retries=None)
def send_webhook(self, delivery_id: int):
    from channels_adapters.webhooks import webhook_deliver

    retry_in = webhook_deliver(delivery_id)
    if retry_in is not None:
        # A little past the backoff, so the retry never lands before next_attempt_at.
        raise self.retry(countdown=retry_in + 0.5)


@shared_task(acks_late=True)
def sweep_webhooks():
    from channels_adapters.webhooks import webhooks_sweep

    return webhooks_sweep()
