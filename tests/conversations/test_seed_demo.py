from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Count

from conversations.models import Channel, Conversation, Customer, Identity, Message
from helpdesk.models import User
from routing.hours import is_open, schedule_for
from routing.models import SlaClock


@pytest.mark.django_db
def test_the_demo_covers_every_channel_and_is_idempotent(client):
    out = StringIO()
    call_command("seed_demo", stdout=out)
    counts = (Customer.objects.count(), Conversation.objects.count(), Message.objects.count())
    call_command("seed_demo", stdout=StringIO())

    assert (
        Customer.objects.count(),
        Conversation.objects.count(),
        Message.objects.count(),
    ) == counts
    assert counts[0] == 50 + 1  # and the enterprise customer the routing demo needs
    assert set(Conversation.objects.values_list("inbox__kind", flat=True)) == set(Channel.values)
    # Some customers wrote weeks ago on another channel: their history spans channels.
    spanning = Customer.objects.annotate(
        channels=Count("conversations__inbox__kind", distinct=True)
    ).filter(channels=2, conversations__status=Conversation.Status.CLOSED)
    assert spanning.count() == 5
    # Their profile is as old as their first conversation ("since" on the customer page).
    for customer in spanning:
        first = customer.conversations.order_by("created_at").first()
        assert customer.created_at <= first.created_at
    # "Last seen" is when the address last wrote, days ago for most, not the seeding.
    for identity in Identity.objects.filter(messages__direction="inbound").distinct():
        last = identity.messages.filter(direction="inbound").latest("created_at").created_at
        assert abs(identity.last_seen_at - last) < timedelta(minutes=1), identity
    # Every demo address can be answered: "chloé.smith@" needs SMTPUTF8, which we do not send.
    emails = Identity.objects.filter(kind=Channel.EMAIL).values_list("address", flat=True)
    assert all(address.isascii() for address in emails)
    assert "threadline-demo" in out.getvalue()
    # The README's login works.
    assert client.login(username="admin@example.com", password="threadline-demo")
    assert client.get("/admin/conversations/conversation/").status_code == 200
    assert User.objects.get(email="agent@example.com").is_admin is False
    # The demo's running SLA targets fall due while their team works, not on a Sunday night.
    running = SlaClock.objects.filter(stopped_at=None, business_hours_only=True)
    running = running.exclude(due_at=None).select_related("conversation__inbox")
    assert running.exists()
    for clock in running:
        schedule = schedule_for(clock.conversation.inbox, clock.conversation.team_id)
        assert schedule is None or is_open(schedule, clock.due_at - timedelta(seconds=1)), clock
