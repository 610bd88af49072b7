import os
import re
import signal
import subprocess
from datetime import timedelta

import httpx
import pytest
import time_machine
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from channels_adapters.delivery import message_deliver, message_retry, sweep_stuck
from channels_adapters.models import InboundEvent
from conversations import services
from conversations.models import Channel, DeliveryAttempt, Identity, Inbox, Message
from conversations.realtime import conversation_group, team_group
from tests.channels_adapters.test_sms import deliver, incoming
from tests.conftest import (
    listen,
    process_pending,
    receive,
    signed_in_http,
    start_celery_worker,
    status_of,
    wait_for,
)


class TestDeliver:
    def test_a_webchat_reply_is_sent_and_the_attempt_recorded(self, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        reply = services.reply_send(conversation=conversation, author=bob, text="Hi!")

        outcome = message_deliver(reply.pk)

        assert outcome.status == Message.Status.SENT
        reply.refresh_from_db()
        assert reply.sent_at is not None and reply.attempts == 1
        assert list(reply.attempts_log.values_list("outcome", flat=True)) == ["sent"]

    def test_delivering_twice_sends_once(self, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        reply = services.reply_send(conversation=conversation, author=bob, text="Hi!")
        message_deliver(reply.pk)
        assert message_deliver(reply.pk) is None
        assert DeliveryAttempt.objects.filter(message=reply).count() == 1

    def test_an_inbox_that_cannot_send_fails_visibly_and_can_be_retried(self, chat_inbox, bob):
        # An SMS inbox exists but nobody entered its Twilio account: the agent must see why.
        Inbox.objects.create(name="SMS", kind=Channel.SMS)
        conversation = receive(chat_inbox).message.conversation
        phone = Identity.objects.create(
            customer=conversation.customer, kind=Channel.SMS, address="+15550001"
        )
        message = services.Message.objects.create(
            conversation=conversation,
            direction="outbound",
            channel=Channel.SMS,
            inbox=Inbox.objects.get(kind=Channel.SMS),
            identity=phone,
            author=bob,
            text="x",
            status=Message.Status.QUEUED,
        )
        outcome = message_deliver(message.pk)

        message.refresh_from_db()
        assert outcome.status == message.status == Message.Status.FAILED
        assert message.failure_reason == 'The inbox "SMS" has no Twilio account SID set.'
        message_retry(message=message)
        assert status_of(message) == Message.Status.QUEUED


@pytest.mark.django_db(transaction=True)
class TestEmbeddedWorker:
    def test_the_in_process_worker_delivers_a_reply(self, embedded_worker, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        reply = services.reply_send(conversation=conversation, author=bob, text="On it!")
        wait_for(lambda: status_of(reply) == Message.Status.SENT, what="the reply to be sent")

    def test_the_sweep_delivers_a_message_whose_task_was_lost(self, chat_inbox, bob, purge_broker):
        from helpdesk.celery import EmbeddedWorker

        conversation = receive(chat_inbox).message.conversation
        reply = services.reply_send(conversation=conversation, author=bob, text="Lost?")
        assert purge_broker() >= 1  # the broker loses the delivery task
        worker = EmbeddedWorker()
        worker.start()
        try:
            # Beat dates its schedule when its thread builds it: after the jump below, the
            # sweep would not be due for another interval, and the wait ran out (flaky).
            wait_for(
                lambda: "scheduler" in vars(worker.beat.service), what="beat to set its schedule"
            )
            # Nothing delivers it until the stuck threshold passes and beat runs the sweep.
            later = timezone.now() + timedelta(
                seconds=settings.SWEEP_STUCK_AFTER_SECONDS + settings.SWEEP_INTERVAL_SECONDS + 5
            )
            assert status_of(reply) == Message.Status.QUEUED
            with time_machine.travel(later, tick=True):
                wait_for(
                    lambda: status_of(reply) == Message.Status.SENT,
                    what="the embedded beat's sweep to deliver the message",
                )
        finally:
            worker.stop()

    def test_the_sweep_reprocesses_an_inbound_event_whose_task_was_lost(
        self, api_inbox, purge_broker
    ):
        from channels_adapters.delivery import inbound_event_store

        with transaction.atomic():
            event, _ = inbound_event_store(
                inbox=api_inbox,
                dedupe_key="ext-7",
                payload=b'{"id": "ext-7", "from": "jo@example.com", "text": "hello"}',
            )
        purge_broker()
        assert sweep_stuck().events == 0  # too recent to be called stuck
        with time_machine.travel(timezone.now() + timedelta(hours=1)):
            assert sweep_stuck().events == 1
        # The sweep enqueued it; run what the broker now holds, as a worker would.
        from channels_adapters.delivery import inbound_event_process

        inbound_event_process(event.pk)
        event.refresh_from_db()
        assert event.status == InboundEvent.Status.PROCESSED
        assert event.message.text == "hello"


def test_an_event_failing_for_a_day_fails_for_an_admin_who_retries_it_for_a_day_more(
    client, alice, api_inbox, purge_broker
):
    """A hiccup (here the payload's file storage gone) is tried again by the sweep; a day
    on it is a bug, failed for an admin. Their retry gets a day of its own, not one try."""
    from channels_adapters.delivery import inbound_event_process, inbound_event_store

    payload = b'{"id": "ext-8", "from": "jo@example.com", "text": "%s"}' % (b"x" * 300_000)
    with transaction.atomic():
        event, _ = inbound_event_store(inbox=api_inbox, dedupe_key="ext-8", payload=payload)
    kept = event.payload_file.path
    lost = f"{kept}.lost"
    os.rename(kept, lost)  # the volume is not mounted
    start = timezone.now()

    def process_at(when) -> InboundEvent:
        with time_machine.travel(when, tick=False):
            inbound_event_process(event.pk)
        return InboundEvent.objects.get(pk=event.pk)

    tried = process_at(start + timedelta(minutes=1))
    assert (tried.status, tried.error[:35]) == ("pending", "Failed, will be tried again: FileNo")
    tried = process_at(start + timedelta(hours=25))
    assert tried.status == "failed"
    assert tried.error.startswith("Gave up after 2 attempts over a day: FileNotFoundError")

    # The admin asks for it again before the volume is back, then once it is.
    client.force_login(alice)
    with time_machine.travel(start + timedelta(hours=26), tick=False):
        response = client.post(
            "/admin/channels_adapters/inboundevent/",
            {"action": "reprocess", "_selected_action": [event.pk]},
            follow=True,
        )
    assert "1 events queued again." in response.content.decode()
    assert process_at(start + timedelta(hours=26, minutes=1)).status == "pending"
    os.rename(lost, kept)
    processed = process_at(start + timedelta(hours=27))
    assert (processed.status, processed.attempts) == ("processed", 4)
    assert processed.message.text.startswith("xxx")


@pytest.mark.django_db(transaction=True)
def test_a_separate_celery_worker_process_runs_what_the_web_process_enqueues(
    redis_url, client, api_inbox, chat_inbox, bob, purge_broker
):
    team_events = listen(team_group(api_inbox.default_team_id))
    worker = start_celery_worker(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        response = client.post(
            f"/channels/api/{api_inbox.pk}/messages",
            data=b'{"id": "ord-1", "from": "jo@example.com", "text": "Where is order 1?"}',
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {api_inbox.secret}",
        )
        assert response.status_code == 202
        event = InboundEvent.objects.get(dedupe_key="ord-1")
        # The worker announces the new conversation once it has committed it.
        announced = team_events()
        assert announced["event"] == "created"
        message = Message.objects.get(provider_id="ord-1")
        assert announced["message"] == message.pk
        assert message.text == "Where is order 1?"
        assert InboundEvent.objects.get(pk=event.pk).status == "processed"

        conversation = receive(chat_inbox).message.conversation
        conversation_events = listen(conversation_group(conversation.pk))
        reply = services.reply_send(conversation=conversation, author=bob, text="Hello")
        while (announced := conversation_events())["event"] != "delivery":
            pass  # our own "message" notification comes first
        assert announced["status"] == Message.Status.SENT
        assert status_of(reply) == Message.Status.SENT
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert "Traceback" not in output, output


class TestBrokerDown:
    """Redis down: what is sent or received is stored and said so; the sweep enqueues it."""

    def test_an_agents_reply_is_taken_and_goes_once_the_broker_is_back(
        self, server_without_redis, client, bob, email_inbox, smtp_server, purge_broker
    ):
        conversation = receive(email_inbox, address="ana@example.com").message.conversation
        agent = signed_in_http(client, bob, server_without_redis)
        page = agent.get(f"/inbox/{conversation.number}/").text
        form = dict(
            re.findall(r'name="(csrfmiddlewaretoken|seen|client_id)" value="([^"]*)"', page)
        )

        answer = agent.post(
            f"/inbox/{conversation.number}/reply",
            data={**form, "mode": "reply", "text": "Your refund is on its way."},
        )

        # Stored and shown as sent on its way, not a server error for the agent to send again.
        assert answer.status_code == 302
        reply = conversation.messages.get(direction=Message.Direction.OUTBOUND)
        assert reply.status == Message.Status.QUEUED
        later = timezone.now() + timedelta(seconds=settings.SWEEP_STUCK_AFTER_SECONDS + 1)
        with time_machine.travel(later):
            assert sweep_stuck().messages == 1
            purge_broker()  # run the re-enqueued delivery here instead of in a worker
            assert message_deliver(reply.pk).status == Message.Status.SENT
        assert len(smtp_server.messages()) == 1

    def test_an_api_message_is_accepted_and_processed_once_the_broker_is_back(
        self, server_without_redis, api_inbox, purge_broker
    ):
        answer = httpx.post(
            f"{server_without_redis}/channels/api/{api_inbox.pk}/messages",
            headers={"Authorization": f"Bearer {api_inbox.secret}"},
            json={"id": "order-42", "from": "jo@example.com", "text": "Where is my order?"},
        )

        assert answer.status_code == 202
        event = InboundEvent.objects.get()
        assert event.status == InboundEvent.Status.PENDING
        later = timezone.now() + timedelta(seconds=settings.SWEEP_STUCK_AFTER_SECONDS + 1)
        with time_machine.travel(later):
            assert sweep_stuck().events == 1
        purge_broker()
        assert process_pending()[0].status == InboundEvent.Status.PROCESSED
        assert Message.objects.get().text == "Where is my order?"


class TestLostFollowUps:
    """Work enqueued after commit whose task never ran (the broker was down at commit: the
    tests' on-commit tasks run only when asked): the sweep finds it in the database and it
    happens once."""

    @staticmethod
    def swept(minutes: float = 0):
        later = timezone.now() + timedelta(
            minutes=minutes, seconds=settings.SWEEP_STUCK_AFTER_SECONDS + 1
        )
        with time_machine.travel(later):
            return sweep_stuck()

    def test_mms_media_whose_fetch_was_lost_is_fetched_by_the_sweep(
        self, client, twilio, sms_inbox, settings, tasks_run
    ):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = True
        twilio.media["/media/ME1"] = (b"\x89PNG\r\n\x1a\n fake png", "image/png")
        mms = incoming(
            NumMedia="1", MediaUrl0=f"{twilio.url}/media/ME1", MediaContentType0="image/png"
        )
        deliver(twilio, client, sms_inbox, mms)
        attachment = Message.objects.get().attachments.get()
        assert attachment.is_pending

        assert self.swept().attachments == 1

        attachment.refresh_from_db()
        assert attachment.file.read() == b"\x89PNG\r\n\x1a\n fake png"
        assert self.swept().attachments == 0
        assert sum(r.path == "/media/ME1" for r in twilio.requests) == 1

    def test_media_whose_fetch_is_retrying_is_left_to_its_task(
        self, client, twilio, sms_inbox, settings, tasks_run
    ):
        mms = incoming(
            NumMedia="1", MediaUrl0=f"{twilio.url}/media/ME1", MediaContentType0="image/png"
        )
        deliver(twilio, client, sms_inbox, mms)
        attachment = Message.objects.get().attachments.get()
        with time_machine.travel(timezone.now() + timedelta(minutes=3)):
            # Tried (and waiting to try again, after a timeout): not lost.
            Message.objects.get().attachments.update(fetch_tried_at=timezone.now())
        assert self.swept(minutes=1).attachments == 0
        assert self.swept(minutes=10).attachments == 1  # no try for longer than a retry waits
        attachment.refresh_from_db()
        assert "not a public address" in attachment.fetch_error  # tried, and said why

    def test_a_transcript_whose_task_was_lost_is_sent_once_by_the_sweep(
        self, chat_inbox, email_inbox, smtp_server, tasks_run
    ):
        from channels_adapters.webchat import chat

        visitor = chat.visitor_contact(chat.visitor_session(inbox=chat_inbox), email="a@b.example")
        conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
        chat.transcript_request(visitor, conversation)
        assert smtp_server.messages() == []

        assert self.swept().transcripts == 1

        [mail] = smtp_server.messages()
        assert mail["To"] == "a@b.example"
        assert self.swept().transcripts == 0
        assert self.swept(minutes=30).transcripts == 0  # sent: never again
        assert len(smtp_server.messages()) == 1

    def test_a_transcript_asked_for_over_an_hour_ago_is_not_sent_late(
        self, chat_inbox, email_inbox, smtp_server, tasks_run
    ):
        from channels_adapters.webchat import chat

        visitor = chat.visitor_contact(chat.visitor_session(inbox=chat_inbox), email="a@b.example")
        conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
        chat.transcript_request(visitor, conversation)

        assert self.swept(minutes=60).transcripts == 0
        assert smtp_server.messages() == []
