from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from channels_adapters.delivery import message_deliver, sweep_stuck
from conversations import services
from conversations.models import Conversation, Message
from tests.channels_adapters.test_email import customer_mail, pipe
from tests.conftest import worker_killed_mid_task


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_send_loses_nothing_and_resends_with_the_same_message_id(
    redis_url, email_inbox, smtp_server, bob, purge_broker
):
    # The worker dies while the server sits on its DATA, before it answers 250.
    data_received, release = smtp_server.hold_first()
    pipe(email_inbox, customer_mail())
    reply = worker_killed_mid_task(
        lambda: services.reply_send(
            conversation=Conversation.objects.get(), author=bob, text="Your refund is on its way."
        ),
        data_received,
        "DATA",
    )
    release.set()

    reply.refresh_from_db()
    assert reply.status == Message.Status.SENDING  # the worker died before it could say
    message_id = reply.provider_id
    assert message_deliver(reply.pk) is None  # a live task would not send it twice

    later = timezone.now() + timedelta(seconds=settings.SWEEP_STUCK_AFTER_SECONDS + 1)
    with time_machine.travel(later):
        assert sweep_stuck().messages == 1
        purge_broker()  # run the re-enqueued delivery here instead of in a worker
        assert message_deliver(reply.pk).status == Message.Status.SENT

    reply.refresh_from_db()
    assert reply.status == Message.Status.SENT
    # Retried, never lost, and sent once: the dead attempt was never accepted, and the resend
    # carries the Message-ID fixed before the first try (receivers deduplicate on it).
    [copy] = smtp_server.messages()
    assert copy["Message-ID"] == f"<{message_id}>"
