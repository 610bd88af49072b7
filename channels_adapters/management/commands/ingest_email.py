import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from channels_adapters.email.ingest import MAX_EMAIL_BYTES, ingest
from channels_adapters.email.parsing import NotAnEmail
from channels_adapters.models import InboundEvent
from conversations.models import Channel, Inbox, Message


class Command(BaseCommand):
    help = (
        "Read one RFC 822 message on stdin and store it in an email inbox (for an MTA pipe, "
        'e.g. Postfix: `support: "|/path/to/.venv/bin/python /path/to/manage.py ingest_email '
        '--inbox support@example.com"`). Exits 0 once stored, also for a duplicate or a loop.'
    )

    def add_arguments(self, parser):
        parser.add_argument("--inbox", required=True, help="Inbox id or address.")

    def handle(self, *args, inbox, **options):
        lookup = Q(address__iexact=inbox) | (Q(pk=int(inbox)) if inbox.isdigit() else Q())
        found = Inbox.objects.filter(lookup, kind=Channel.EMAIL).first()
        if found is None:
            raise CommandError(f"no email inbox {inbox!r}")
        from helpdesk.celery import app

        # Without Redis no worker reads this process's queue, which dies with it: what the mail
        # sets off (an acknowledgement and its delivery) runs here, before we exit.
        eager = app.conf.task_always_eager
        app.conf.task_always_eager = eager or settings.CELERY_BROKER_URL.startswith("memory://")
        try:
            self._ingest(found)
        finally:
            app.conf.task_always_eager = eager  # called in a process that goes on (tests)

    def _ingest(self, found):
        raw = sys.stdin.buffer.read(MAX_EMAIL_BYTES + 1)
        try:
            result = ingest(found, raw, process_now=True)
        except NotAnEmail as exc:
            raise CommandError(f"unreadable input: {exc}") from exc
        event = result.event
        if result.duplicate:
            self.stderr.write(f"duplicate: already stored as event {event.pk}")
        elif event.status == InboundEvent.Status.FAILED:
            # Stored, so nothing is lost; an admin can reprocess it once fixed.
            self.stderr.write(f"stored as event {event.pk} but not processed: {event.error}")
        elif event.status == InboundEvent.Status.IGNORED:
            self.stderr.write(f"ignored: {event.error}")
        elif event.status == InboundEvent.Status.PENDING:
            # Stored; processing failed for now (a bug, the database away): the sweep retries.
            self.stderr.write(f"stored as event {event.pk}, to be processed later: {event.error}")
        elif event.message is None or event.message.direction == Message.Direction.OUTBOUND:
            self.stderr.write("delivery report applied to the message it concerns")
        else:
            automated = event.message.metadata.get("automated")
            note = f" (automated: {automated}; no automatic reply)" if automated else ""
            self.stderr.write(f"stored in conversation #{event.message.conversation_id}{note}")
