"""One entry for raw mail, whoever brings it (IMAP poller, MTA pipe, HTTP): check it reads as
an email, store it raw (deduplicated by Message-ID and body: see collision_key), then
process it."""

import logging
from dataclasses import dataclass

from django.db import transaction

from channels_adapters.delivery import (
    inbound_event_apply,
    inbound_event_process,
    inbound_event_store,
)
from channels_adapters.email.parsing import NotAnEmail, collision_key, read_envelope
from channels_adapters.models import InboundEvent

MAX_EMAIL_BYTES = 50 * 1024 * 1024

log = logging.getLogger(__name__)


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
    envelope = read_envelope(raw)  # headers only: the body is parsed once, when processed
    headers = {
        "subject": envelope.subject[:200],
        "from": envelope.from_address,
        "digest": envelope.body_digest,
    }
    with transaction.atomic():
        event, created = inbound_event_store(
            inbox=inbox,
            dedupe_key=envelope.message_id,
            payload=raw,
            headers=headers,
            enqueue=not process_now,
        )
        if not created and event.headers.get("digest", envelope.body_digest) != headers["digest"]:
            # Another mail under a Message-ID stored already (mailers that reuse them exist,
            # and anyone can write one): kept too, under its own key, which its own copies
            # share. Only the same mail, whatever path brought it, is a duplicate.
            event, created = inbound_event_store(
                inbox=inbox,
                dedupe_key=collision_key(envelope.message_id, envelope.body_digest),
                payload=raw,
                headers=headers,
                enqueue=not process_now,
            )
        if process_now and event.status == InboundEvent.Status.PENDING:
            # One commit for storing and processing. Processing runs in its own savepoint, so
            # a failure we did not foresee still commits the raw mail, pending for the sweep.
            try:
                if created:  # this transaction's own row: no need to read it back and lock it
                    event.payload_in_hand = raw
                    with transaction.atomic():
                        event = inbound_event_apply(event)
                else:  # stored earlier and still pending: locked first, as the sweep does
                    event = inbound_event_process(event.pk) or event
            except Exception:
                log.exception("processing inbound event %s failed; the sweep will retry", event.pk)
    return Ingested(event=event, duplicate=not created)
