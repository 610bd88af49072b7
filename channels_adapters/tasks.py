"""Thin tasks: ids in, a delivery service call, a retry policy. All safe to run twice."""

from celery import shared_task

from channels_adapters import delivery
from channels_adapters.base import TransientError


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
    return {"messages": result.messages, "events": result.events}


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


@shared_task(acks_late=True)
def webchat_prune():
    from channels_adapters.webchat.adapter import silent_visitors_prune

    return silent_visitors_prune()


@shared_task(bind=True, acks_late=True, max_retries=5)
def send_transcript(self, event_id: int):
    from channels_adapters.webchat.adapter import transcript_send

    try:
        return transcript_send(event_id)
    except OSError as exc:  # the mail server is down or refused: try again later
        raise self.retry(countdown=delivery.backoff_seconds(self.request.retries + 1)) from exc
