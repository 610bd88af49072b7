"""Is each email inbox receiving mail? Shown in admin and /healthz; admins get an email when a
poller keeps failing or an inbox has been silent too long, once per incident."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from channels_adapters.models import MailboxState
from conversations.models import Channel, Inbox
from helpdesk.models import User

FAILURES_BEFORE_ALERT = 3
UNREADABLE_SHOWN = timedelta(days=7)  # how long a mail that could not be stored is reported


def with_mail_counts(inboxes):
    """Inboxes annotated with what health_of reads: mail in the last day, last mail."""
    day_ago = timezone.now() - timedelta(days=1)
    return inboxes.select_related("mailbox_state").annotate(
        messages_last_day=Count(
            "inbound_events", filter=Q(inbound_events__received_at__gte=day_ago)
        ),
        last_received_at=Max("inbound_events__received_at"),
    )


def email_inboxes_with_health():
    return with_mail_counts(Inbox.objects.filter(kind=Channel.EMAIL, is_active=True)).order_by("pk")


def health_of(inbox) -> str:
    """ "ok", or what is wrong, in a sentence an admin can act on."""
    config = inbox.settings or {}
    state = getattr(inbox, "mailbox_state", None)
    if config.get("imap_host"):
        if state is None or state.last_success_at is None and not state.last_error:
            return "not polled yet"
        if state.consecutive_failures >= FAILURES_BEFORE_ALERT:
            return (
                f"failing: {state.consecutive_failures} polls in a row, last error "
                f"{state.last_error}"
            )
        if state.consecutive_failures:  # not "ok": it did not work; admins hear at the third
            return f"retrying: the last poll failed ({state.last_error})"
        since = timezone.now() - UNREADABLE_SHOWN
        if unread := [u for u in state.unreadable if datetime.fromisoformat(u["at"]) > since]:
            return (
                f"unreadable mail: {len(unread)} in the last {UNREADABLE_SHOWN.days} days could "
                "not be stored and waits unread in the mailbox for someone to read it there "
                f"(the last, UID {unread[-1]['uid']}: {unread[-1]['reason']})"
            )
    silent_hours = float(config.get("silent_after_hours", 24 if config.get("imap_host") else 0))
    if silent_hours:
        since = inbox.last_received_at or inbox.created_at
        if timezone.now() - since > timedelta(hours=silent_hours):
            return f"silent: no mail since {since:%Y-%m-%d %H:%M} UTC"
    return "ok"


def mailboxes_alert() -> int:
    """Email the admins about inboxes that went wrong since the last check. Returns how many
    alerts went out."""
    sent = 0
    admins = list(
        User.objects.filter(
            Q(is_superuser=True) | Q(role=User.Role.ADMIN), is_active=True
        ).values_list("email", flat=True)
    )
    for inbox in email_inboxes_with_health():
        state, _ = MailboxState.objects.get_or_create(inbox=inbox)
        health = health_of(inbox)
        if health in ("ok", "not polled yet"):
            if state.alerted_at:
                MailboxState.objects.filter(pk=state.pk).update(alerted_at=None)
            continue
        if health.startswith("retrying") or state.alerted_at or not admins:
            continue
        with transaction.atomic():
            # Two checks at once (beat's and a late one, or a retried task) alert once: the
            # second skips the row the first holds, and a worker dying before the commit
            # leaves the alert to the next check.
            state = (
                MailboxState.objects.select_for_update(skip_locked=True)
                .filter(pk=state.pk, alerted_at=None)
                .first()
            )
            if state is None:
                continue
            _alert_send(inbox, health, admins)
            MailboxState.objects.filter(pk=state.pk).update(alerted_at=timezone.now())
        sent += 1
    return sent


def _alert_send(inbox, health: str, admins: list[str]) -> None:
    advice = (
        "Read it in the mailbox, where it stays unread, and forward it to the support "
        "address if a customer wrote it."
        if health.startswith("unreadable")
        else "Check its IMAP settings and credentials in the admin."
    )
    send_mail(
        subject=f"[Threadline] Inbox {inbox.name} needs attention",
        message=f"The email inbox {inbox.name} ({inbox.address}) is {health}.\n\n{advice}",
        from_email=None,
        recipient_list=admins,
    )
