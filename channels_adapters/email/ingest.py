"""One entry for raw mail, whoever brings it (IMAP poller, MTA pipe, HTTP): check it reads as
an email, store it raw (deduplicated by Message-ID), then process it."""

from dataclasses import dataclass

from django.db import transaction

from channels_adapters.delivery import inbound_event_process, inbound_event_store
from channels_adapters.email.parsing import NotAnEmail, parse_email
from channels_adapters.models import InboundEvent

MAX_EMAIL_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Ingested:
    event: InboundEvent
    duplicate: bool


def ingest(inbox, raw: bytes, *, process_now: bool) -> Ingested:
    """Store `raw` for `inbox`. With `process_now` it is also processed in this process (the
    pipe command, the poller); otherwise a task does it. Raises NotAnEmail on unreadable input,
    before anything is stored."""
    if len(raw) > MAX_EMAIL_BYTES:
        raise NotAnEmail(f"larger than {MAX_EMAIL_BYTES // (1024 * 1024)} MB")
    parsed = parse_email(raw)
    with transaction.atomic():
        event, created = inbound_event_store(
            inbox=inbox,
            dedupe_key=parsed.message_id,
            payload=raw,
            headers={"subject": parsed.subject[:200], "from": parsed.from_address},
        )
    if process_now and event.status == InboundEvent.Status.PENDING:
        event = inbound_event_process(event.pk) or InboundEvent.objects.get(pk=event.pk)
    return Ingested(event=event, duplicate=not created)
