from celery import shared_task

from conversations.notification_mail import notifications_email_sweep
from conversations.services import snoozed_wake_due


@shared_task(acks_late=True)
def wake_snoozed():
    return snoozed_wake_due()


@shared_task(acks_late=True)
def email_notifications():
    return notifications_email_sweep()
