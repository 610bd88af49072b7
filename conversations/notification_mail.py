"""Notifications by email, for an agent away from the inbox.

Every sweep (helpdesk.celery's beat) mails each agent one message listing what concerns them
and they have not seen: notifications still unread a while after they were made
(NOTIFICATION_EMAIL_DELAY_SECONDS, so an agent working in the inbox, who reads them at once,
gets no mail), of the kinds they chose on their profile page (User.email_notifications), about
conversations they may still see, to active agents only. Older than a day, nothing goes out:
the first sweep after an outage does not flood anyone with old news (nor after the upgrade
that brought this: its migration marks what was unread then as handled).

Each notification is claimed with a conditional UPDATE of `emailed_at` before the mail goes, so
two sweeps at once (beat's and a late one, two workers) never both mail it. A mail the server
refuses gives its notifications back for the next sweep; one that went out is never sent
again. A worker killed between the claim and the server's answer loses that one mail rather
than risk sending it twice: a notification is news, and the bell still has it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db.models import Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import Truncator

from conversations.models import Notification
from conversations.selectors import notifications_for
from helpdesk.models import User

log = logging.getLogger(__name__)

LOOKBACK = timedelta(days=1)
MOST_PER_MAIL = 50  # more wait for the next sweep's mail
SUBJECT_ITEMS = 2  # named in the subject; the rest are "…"


@dataclass(frozen=True)
class Item:
    """One line of the mail: what happened, in which conversation, and where to read it."""

    number: int
    subject: str
    customer: str
    what: str
    excerpt: str
    url: str


def _short(kind: str) -> str:
    """A few words for the subject line."""
    return {
        Notification.Kind.ASSIGNED: "assigned to you",
        Notification.Kind.MENTIONED: "you were mentioned",
        Notification.Kind.CUSTOMER_REPLIED: "customer replied",
        Notification.Kind.SLA_WARNING: "SLA due soon",
        Notification.Kind.SLA_BREACHED: "SLA breached",
        Notification.Kind.AUTOMATION: "automation",
        Notification.Kind.FAILED: "reply not delivered",
        Notification.Kind.SNOOZE_ENDED: "back from snooze",
        Notification.Kind.WROTE_AGAIN: "customer wrote again",
        Notification.Kind.FOLLOWED: "followed conversation",
    }.get(kind, kind)


def _link(path: str) -> str:
    """An absolute link, where we know our public address; none otherwise (a relative one
    leads nowhere from a mail program)."""
    return settings.PUBLIC_URL + path if settings.PUBLIC_URL else ""


def notifications_email_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Mail each agent their notifications due by email (see the module's docstring). Returns
    how many mails and notifications went out, and how many mails failed (retried next
    sweep)."""
    now = now or timezone.now()
    delay = timedelta(seconds=settings.NOTIFICATION_EMAIL_DELAY_SECONDS)
    due = Q(
        read_at__isnull=True,
        emailed_at__isnull=True,
        created_at__lt=now - delay,
        created_at__gte=now - LOOKBACK,
    )
    recipients = set(
        Notification.objects.filter(due, recipient__is_active=True)
        .values_list("recipient_id", flat=True)
        .distinct()
    )
    result = {"mails": 0, "notifications": 0, "failed": 0}
    for agent in User.objects.filter(pk__in=recipients, is_active=True).order_by("pk"):
        kinds = [k for k in agent.email_notifications or [] if k in Notification.Kind.values]
        if not kinds:
            continue
        sent = _agent_mail(agent, due & Q(kind__in=kinds), now)
        if sent is None:
            result["failed"] += 1
        elif sent:
            result["mails"] += 1
            result["notifications"] += sent
    return result


def _agent_mail(agent: User, due: Q, now: datetime) -> int | None:
    """Claim and mail `agent`'s due notifications; how many went out (0: none were due or
    another sweep claimed them), None when the mail failed and they wait for the next."""
    # Visible ones only, decided now: a conversation moved to another team is not news of
    # theirs any more (notifications_for is what the bell counts).
    candidates = list(
        notifications_for(agent)
        .filter(due)
        .select_related("conversation__customer", "actor", "message")
        .order_by("id")[:MOST_PER_MAIL]
    )
    claimed = []
    for n in candidates:
        # One conditional UPDATE each: of two sweeps, one gets it; read meanwhile, nobody.
        mine = Notification.objects.filter(
            pk=n.pk, emailed_at__isnull=True, read_at__isnull=True
        ).update(emailed_at=now)
        if mine:
            claimed.append(n)
    if not claimed:
        return 0
    try:
        _send(agent, claimed)
    except Exception:  # noqa: BLE001 - any failure: given back, for the next sweep
        log.exception("notification mail to agent %s failed; the next sweep tries again", agent.pk)
        Notification.objects.filter(pk__in=[n.pk for n in claimed], emailed_at=now).update(
            emailed_at=None
        )
        return None
    return len(claimed)


def _send(agent: User, notifications: list[Notification]) -> None:
    from channels_adapters.email.adapter import agent_mail_loop_marker

    items = [
        Item(
            number=n.conversation_id,
            subject=n.conversation.subject,
            customer=n.conversation.customer.name,
            what=" ".join(n.said()),
            excerpt=Truncator(n.message.text).chars(200) if n.message_id and n.message else "",
            url=_link(
                reverse("inbox:conversation", args=[n.conversation_id])
                + (f"#m{n.message_id}" if n.message_id else "")
            ),
        )
        for n in notifications
    ]
    named = ", ".join(f"#{n.conversation_id} {_short(n.kind)}" for n in notifications[:2])
    more = "" if len(notifications) <= SUBJECT_ITEMS else ", …"
    count = len(notifications)
    subject = f"[Threadline] {count} update{'s' if count != 1 else ''}: {named}{more}"
    context = {"agent": agent, "items": items, "profile_url": _link(reverse("profile"))}
    mail = EmailMultiAlternatives(
        # Only numbers and our words in the subject; one line, whatever a template does.
        subject=" ".join(subject.split()),
        body=render_to_string("email/notifications.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[agent.email],
        headers={
            # RFC 3834: no robot answers it; forwarded into one of our inboxes, it is known
            # as our own and set aside (channels_adapters.email): a conversation opened by it
            # would notify an agent, who would be mailed again.
            "Auto-Submitted": "auto-generated",
            "X-Loop": agent_mail_loop_marker(),
        },
    )
    mail.attach_alternative(render_to_string("email/notifications.html", context), "text/html")
    mail.send()
