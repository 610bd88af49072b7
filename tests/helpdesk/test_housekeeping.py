"""Housekeeping (helpdesk.tasks): what is kept only for a while goes, and nothing else."""

from datetime import timedelta

import time_machine
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from channels_adapters.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from conversations import services
from conversations.models import Notification
from helpdesk.tasks import housekeeping
from tests.conftest import receive


def delivery(endpoint, status, age: timedelta) -> WebhookDelivery:
    at = timezone.now() - age
    made = WebhookDelivery.objects.create(
        endpoint=endpoint,
        event_id=f"00000000-0000-4000-8000-{WebhookDelivery.objects.count():012d}",
        event_type="message.created",
        payload={"type": "message.created"},
        status=status,
        attempts=1,
        next_attempt_at=at,
        created_at=at,
    )
    WebhookAttempt.objects.create(delivery=made, started_at=at, status_code=500)
    return made


def test_old_deliveries_notifications_and_sessions_go_recent_ones_stay(
    bob, alice, chat_inbox, settings
):
    settings.WEBHOOK_DELIVERIES_KEPT_DAYS = 30
    settings.NOTIFICATIONS_KEPT_DAYS = 90
    endpoint = WebhookEndpoint.objects.create(
        url="https://hooks.example.com/in", event_types=["message.failed"]
    )
    Status = WebhookDelivery.Status
    old_delivered = delivery(endpoint, Status.DELIVERED, timedelta(days=31))
    old_failed = delivery(endpoint, Status.FAILED, timedelta(days=45))
    still_trying = delivery(endpoint, Status.PENDING, timedelta(days=31))
    recent = delivery(endpoint, Status.FAILED, timedelta(days=29))

    conversation = receive(chat_inbox, text="Hello").message.conversation
    with time_machine.travel(timezone.now() - timedelta(days=91)):
        services.agent_assign(conversation, assignee=bob, actor=alice)
        gone_session = Client()
        gone_session.force_login(bob)  # sessions last two weeks: long expired by now
    services.agent_assign(conversation, assignee=None, actor=alice)
    services.agent_assign(conversation, assignee=bob, actor=alice)
    kept_session = Client()
    kept_session.force_login(bob)
    assert Notification.objects.filter(recipient=bob).count() == 2

    assert housekeeping() == {
        "silent_visitors": 0,
        "sessions": 1,
        "webhook_deliveries": 2,
        "notifications": 1,
    }

    left = set(WebhookDelivery.objects.values_list("pk", flat=True))
    assert left == {still_trying.pk, recent.pk}
    assert not WebhookAttempt.objects.filter(delivery__in=[old_delivered, old_failed]).exists()
    assert WebhookAttempt.objects.filter(delivery=recent).exists()
    # Bob's bell still has this week's news, and he is still signed in.
    assert Notification.objects.filter(recipient=bob).count() == 1
    assert Session.objects.count() == 1
    assert kept_session.get("/inbox/").status_code == 200
    # Twice is harmless.
    assert set(housekeeping().values()) == {0}
