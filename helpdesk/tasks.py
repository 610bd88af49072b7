"""Housekeeping, every hour: what is worth keeping only for a while goes.

- Chat visitors who opened the widget and never wrote (channels_adapters.webchat).
- Expired sign-in sessions: the database keeps every session behind the cache
  (helpdesk.sessions), and Django removes expired ones only when asked.
- Webhook deliveries, with their attempts, once delivered or given up on and older than
  WEBHOOK_DELIVERIES_KEPT_DAYS: enough to look into what an integration missed last month.
- Notifications older than NOTIFICATIONS_KEPT_DAYS, read or not: the bell is for news.

Deletes go in batches, each its own short transaction, so a large backlog (the first run on a
busy install) never holds a lock for long. Running it twice, or two at once, deletes nothing
twice.
"""

import smtplib
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.mail import EmailMultiAlternatives
from django.utils import timezone

BATCH = 1_000


def delete_in_batches(queryset) -> int:
    """Delete what `queryset` selects, BATCH rows at a time; how many went."""
    deleted = 0
    while ids := list(queryset.values_list("pk", flat=True)[:BATCH]):
        # Through `queryset` again: a row that changed meanwhile (a delivery sent again) stays.
        queryset.filter(pk__in=ids).delete()
        deleted += len(ids)
    return deleted


@shared_task(acks_late=True)
def housekeeping() -> dict[str, int]:
    from channels_adapters.models import WebhookDelivery
    from channels_adapters.webchat.adapter import silent_visitors_prune
    from conversations.models import Notification

    now = timezone.now()
    deliveries_kept = now - timedelta(days=settings.WEBHOOK_DELIVERIES_KEPT_DAYS)
    notifications_kept = now - timedelta(days=settings.NOTIFICATIONS_KEPT_DAYS)
    return {
        "silent_visitors": silent_visitors_prune(),
        "sessions": delete_in_batches(Session.objects.filter(expire_date__lt=now)),
        "webhook_deliveries": delete_in_batches(
            WebhookDelivery.objects.filter(created_at__lt=deliveries_kept).exclude(
                status=WebhookDelivery.Status.PENDING
            )
        ),
        "notifications": delete_in_batches(
            Notification.objects.filter(created_at__lt=notifications_kept)
        ),
    }


@shared_task(acks_late=True)
def password_reset_mail(email: str, options: dict) -> None:
    """The reset link for the accounts of `email`, asked for on the sign-in page (see
    helpdesk.forms.PasswordResetForm): none, inactive or without a password, nothing goes."""
    from helpdesk.forms import PasswordResetForm

    form = PasswordResetForm({"email": email})
    if form.is_valid():
        form.mails_send(**options)


@shared_task(bind=True, acks_late=True, max_retries=6)
def mail_send(self, subject: str, body: str, html: str, to: list[str]) -> None:
    """A mail made in a request (a password reset link), sent here: the request does not wait
    on the mail server. A server that is down or refuses for now is tried again after 1, 2,
    4... minutes."""
    mail = EmailMultiAlternatives(subject, body, settings.DEFAULT_FROM_EMAIL, to)
    mail.attach_alternative(html, "text/html")
    try:
        mail.send()
    except (OSError, smtplib.SMTPException) as exc:  # SMTP errors, refused connections
        raise self.retry(exc=exc, countdown=60 * 2**self.request.retries) from exc
