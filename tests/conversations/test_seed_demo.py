from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Count

from conversations.models import Channel, Conversation, Customer, Message
from helpdesk.models import User


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
    assert "threadline-demo" in out.getvalue()
    # The README's login works.
    assert client.login(username="admin@example.com", password="threadline-demo")
    assert client.get("/admin/conversations/conversation/").status_code == 200
    assert User.objects.get(email="agent@example.com").is_admin is False
