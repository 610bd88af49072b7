"""Outgoing webhooks, as an integrator sees them: a loopback endpoint (tests/providers.py) that
checks our signature and keeps each event once by its id."""

import re
import signal
import socket
import subprocess
import threading
from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from channels_adapters.delivery import message_deliver
from channels_adapters.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from channels_adapters.webhooks import webhook_deliver, webhooks_sweep
from conversations import services
from conversations.models import Conversation, Message
from tests.conftest import receive, signed_in_http, start_celery_worker

ALL_TYPES = [
    "conversation.created",
    "conversation.updated",
    "message.created",
    "note.created",
    "message.delivered",
    "message.failed",
]


@pytest.fixture
def receiver():
    from tests.providers import FakeReceiver

    fake = FakeReceiver()
    yield fake
    fake.close()


@pytest.fixture
def loopback_allowed(settings):
    settings.MEDIA_FETCH_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1


def endpoint_for(receiver, types=ALL_TYPES, **fields) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.create(
        url=f"{receiver.url}/hooks", event_types=types, **fields
    )
    receiver.secret = endpoint.secret
    return endpoint


def deliveries(**filters):
    return list(WebhookDelivery.objects.filter(**filters).order_by("pk"))


@pytest.mark.usefixtures("loopback_allowed")
class TestEvents:
    def test_each_event_type_reaches_the_endpoint_once_signed_with_its_data(
        self, receiver, chat_inbox, bob, tasks_run
    ):
        endpoint_for(receiver)
        with tasks_run():
            received = receive(chat_inbox, text="My parcel is lost", name="Ana Lima")
        conversation = received.message.conversation
        with tasks_run():
            reply = services.reply_send(conversation=conversation, author=bob, text="On it!")
        with tasks_run():
            services.note_add(conversation=conversation, author=bob, text="Courier says Tuesday")
            services.conversation_set_status(
                conversation=conversation, status=Conversation.Status.RESOLVED, actor=bob
            )
        with tasks_run():
            message_deliver(reply.pk)  # sent: nothing for integrators yet
            reply.refresh_from_db()
            services.message_status_update(
                services.StatusUpdate(
                    channel=reply.channel, provider_id=reply.provider_id, status="delivered"
                )
            )
            services.message_status_update(  # read after delivered: nothing new to say
                services.StatusUpdate(
                    channel=reply.channel, provider_id=reply.provider_id, status="read"
                )
            )
        with tasks_run():
            second = services.reply_send(
                conversation=conversation, author=bob, text="Anything else?"
            )
        Message.objects.filter(pk=second.pk).update(status="sent", provider_id="chat-2")
        with tasks_run():
            services.message_status_update(
                services.StatusUpdate(
                    channel=second.channel, provider_id="chat-2", status="failed", reason="Gone"
                )
            )

        assert receiver.types() == [
            "conversation.created",
            "message.created",  # the customer's
            "message.created",  # bob's reply
            "conversation.updated",  # answering it, bob took it
            "note.created",
            "conversation.updated",  # resolved
            "message.delivered",
            "message.created",  # the second reply
            "message.failed",
            "conversation.updated",  # the failure reopened it
        ]
        assert len(receiver.calls()) == len(receiver.events)  # every one once
        events = list(receiver.events.values())
        opened = events[0]
        assert opened["data"]["conversation"]["number"] == conversation.number
        assert opened["data"]["conversation"]["customer"]["name"] == "Ana Lima"
        assert opened["data"]["conversation"]["status"] == "open"
        assert opened["occurred_at"].endswith("Z")
        assert events[1]["data"]["message"]["text"] == "My parcel is lost"
        assert events[1]["data"]["message"]["direction"] == "inbound"
        assert events[2]["data"]["message"]["author"]["name"] == bob.name
        assert events[3]["data"]["changes"] == {"assignee": {"from": None, "to": bob.pk}}
        assert events[4]["data"]["message"]["text"] == "Courier says Tuesday"
        assert events[5]["data"]["changes"] == {"status": {"from": "open", "to": "resolved"}}
        assert events[5]["data"]["actor"]["id"] == bob.pk
        assert events[6]["data"]["message"]["id"] == reply.pk
        failed = events[8]["data"]["message"]
        assert (failed["id"], failed["status"], failed["failure_reason"]) == (
            second.pk,
            "failed",
            "Gone",
        )
        for call in receiver.calls():
            assert call.path == "/hooks"
            assert call.headers["x-threadline-event-id"] == call.json()["id"]
            # No capability or secret travels: the reply token threads email replies.
            body = call.body.decode()
            assert conversation.reply_token not in body and receiver.secret not in body

    def test_priority_team_and_snooze_changes_say_from_what_to_what(
        self, receiver, chat_inbox, bob, billing, tasks_run
    ):
        conversation = receive(chat_inbox).message.conversation
        endpoint_for(receiver, types=["conversation.updated"])
        with tasks_run():
            services.conversation_set_priority(
                conversation=conversation, priority=Conversation.Priority.URGENT, actor=bob
            )
            services.conversation_set_team(conversation=conversation, team=billing, actor=bob)
            services.conversation_set_status(
                conversation=conversation,
                status=Conversation.Status.SNOOZED,
                snoozed_until=timezone.now() + timedelta(hours=1),
            )
        with time_machine.travel(timezone.now() + timedelta(hours=2)), tasks_run():
            services.snoozed_wake_due()

        changes = [event["data"]["changes"] for event in receiver.events.values()]
        assert changes == [
            {"priority": {"from": "normal", "to": "urgent"}},
            {"team": {"from": chat_inbox.default_team_id, "to": billing.pk}},
            {"status": {"from": "open", "to": "snoozed"}},
            {"status": {"from": "snoozed", "to": "open"}},
        ]
        last = list(receiver.events.values())[-1]["data"]
        assert last["actor"] is None and last["conversation"]["team"]["name"] == billing.name

    def test_a_conversation_an_agent_starts_is_created_too(
        self, receiver, chat_inbox, bob, tasks_run
    ):
        identity = receive(chat_inbox).message.identity
        endpoint_for(receiver, types=["conversation.created", "message.created"])
        with tasks_run():
            started = services.conversation_start(
                customer=identity.customer, identity=identity, author=bob, text="Any news?"
            )
        assert receiver.types() == ["conversation.created", "message.created"]
        opened = next(iter(receiver.events.values()))["data"]["conversation"]
        assert opened["number"] == started.number

    def test_a_merge_says_the_target_reopened_and_the_source_closed(
        self, receiver, chat_inbox, bob, tasks_run
    ):
        target = receive(chat_inbox, address="v1").message.conversation
        services.conversation_set_status(conversation=target, status="resolved")
        source = services.conversation_open(
            inbox=chat_inbox, customer=target.customer, subject="Another"
        )
        endpoint_for(receiver, types=["conversation.updated"])
        with tasks_run():
            services.conversation_merge(source=source, target=target, actor=bob)

        told = {
            event["data"]["conversation"]["number"]: event["data"]
            for event in receiver.events.values()
        }
        assert told[target.number]["changes"] == {"status": {"from": "resolved", "to": "open"}}
        assert told[target.number]["conversation"]["status"] == "open"
        assert told[source.number]["changes"] == {
            "status": {"from": "open", "to": "closed"},
            "merged_into": {"from": None, "to": target.number},
        }
        assert told[source.number]["conversation"]["status"] == "closed"

    def test_a_note_is_never_a_message_created(self, receiver, chat_inbox, bob, tasks_run):
        conversation = receive(chat_inbox).message.conversation
        endpoint_for(receiver, types=["message.created"])
        with tasks_run():
            services.note_add(conversation=conversation, author=bob, text="Internal only")
        assert receiver.calls() == [] and deliveries() == []

    def test_an_endpoint_hears_only_the_types_it_chose(self, receiver, chat_inbox, tasks_run):
        from tests.providers import FakeReceiver

        other = FakeReceiver()
        try:
            endpoint_for(receiver, types=["note.created"])
            endpoint_for(other, types=["conversation.created"])
            with tasks_run():
                receive(chat_inbox)
            assert receiver.calls() == []
            assert other.types() == ["conversation.created"]
        finally:
            other.close()

    def test_a_turned_off_endpoint_hears_nothing(self, receiver, chat_inbox, tasks_run):
        endpoint = endpoint_for(receiver)
        endpoint.is_active = False
        endpoint.save()
        with tasks_run():
            receive(chat_inbox)
        assert receiver.calls() == [] and deliveries() == []

    def test_what_waits_for_an_endpoint_turned_off_is_not_sent(self, receiver, chat_inbox):
        endpoint = endpoint_for(receiver)
        receive(chat_inbox)  # its tasks never run: the broker lost them
        endpoint.is_active = False
        endpoint.save()
        for delivery in deliveries():
            assert webhook_deliver(delivery.pk) is None
        assert receiver.calls() == []
        assert {(d.status, d.attempts) for d in deliveries()} == {("failed", 0)}

    def test_a_rolled_back_change_sends_nothing(self, receiver, chat_inbox, bob, tasks_run):
        conversation = receive(chat_inbox).message.conversation
        endpoint_for(receiver)
        with tasks_run(), pytest.raises(RuntimeError), transaction.atomic():
            services.note_add(conversation=conversation, author=bob, text="Draft")
            raise RuntimeError("the request failed after the note")
        assert receiver.calls() == [] and deliveries() == []


@pytest.mark.usefixtures("loopback_allowed")
class TestRetries:
    def test_a_server_error_is_retried_later_with_the_same_id_and_delivered_once(
        self, receiver, chat_inbox, tasks_run
    ):
        endpoint_for(receiver, types=["conversation.created"])
        receiver.fail("500")
        with tasks_run():
            receive(chat_inbox)
        (delivery,) = deliveries()
        assert (delivery.status, delivery.attempts) == ("pending", 1)
        assert receiver.events == {}
        # Backing off: not before its time, then once it comes.
        assert webhook_deliver(delivery.pk) is None
        with time_machine.travel(delivery.next_attempt_at + timedelta(seconds=1)):
            assert webhook_deliver(delivery.pk) is None

        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == ("delivered", 2)
        first, second = receiver.calls()
        assert first.json()["id"] == second.json()["id"] == str(delivery.event_id)
        assert len(receiver.events) == 1
        tries = WebhookAttempt.objects.filter(delivery=delivery).order_by("pk")
        assert [a.status_code for a in tries] == [500, 200]

    def test_the_backoff_doubles_and_a_hang_up_is_retried_too(
        self, receiver, chat_inbox, tasks_run
    ):
        endpoint_for(receiver, types=["conversation.created"])
        receiver.fail("hang_up", "500", "500")
        with tasks_run():
            receive(chat_inbox)
        (delivery,) = deliveries()
        waits = []
        for _ in range(2):
            delivery.refresh_from_db()
            with time_machine.travel(delivery.next_attempt_at + timedelta(seconds=1), tick=False):
                waits.append(webhook_deliver(delivery.pk))
        assert 30 <= waits[0] <= 60 <= waits[1] <= 120  # doubled each time, with jitter
        delivery.refresh_from_db()
        with time_machine.travel(delivery.next_attempt_at + timedelta(seconds=1), tick=False):
            assert webhook_deliver(delivery.pk) is None
        errors = list(delivery.tries.values_list("error", flat=True))
        assert errors[0].startswith("Could not reach the endpoint: RemoteProtocolError")
        assert WebhookDelivery.objects.get().status == "delivered"

    def test_a_refusal_fails_at_once_and_is_recorded(self, receiver, chat_inbox, tasks_run):
        endpoint_for(receiver, types=["conversation.created"])
        receiver.fail("400")
        with tasks_run():
            receive(chat_inbox)
        (delivery,) = deliveries()
        assert delivery.status == "failed"
        assert delivery.last_error == "Refused with HTTP 400: not tried again."
        (attempt,) = delivery.tries.all()
        assert (attempt.status_code, attempt.response) == (400, "No such hook")
        with time_machine.travel(timezone.now() + timedelta(hours=1)):
            assert webhooks_sweep() == 0
        assert len(receiver.calls()) == 1

    def test_after_a_day_of_failures_it_gives_up_and_the_endpoint_is_turned_off(
        self, receiver, chat_inbox, alice, tasks_run, mailoutbox
    ):
        endpoint = endpoint_for(receiver, types=["conversation.created"])
        start = timezone.now()
        receiver.fail(*["500"] * 200)
        with tasks_run():
            receive(chat_inbox)
        (delivery,) = deliveries()
        while delivery.status == "pending":
            due = delivery.next_attempt_at + timedelta(seconds=1)
            with time_machine.travel(due, tick=False), tasks_run():
                webhook_deliver(delivery.pk)
            delivery.refresh_from_db()

        assert delivery.next_attempt_at - start > timedelta(hours=23)
        assert delivery.last_error.startswith(f"Gave up after {delivery.attempts} attempts")
        assert delivery.tries.count() == delivery.attempts < 120
        endpoint.refresh_from_db()
        assert not endpoint.is_active and "every attempt failed since" in endpoint.disabled_reason
        (mail,) = mailoutbox
        assert mail.to == [alice.email] and endpoint.url in mail.subject
        with tasks_run():
            receive(chat_inbox, address="visitor-2")
        assert deliveries() == [delivery]  # a turned-off endpoint collects nothing more

    def test_an_admin_sends_failed_deliveries_again(
        self, client, alice, receiver, chat_inbox, tasks_run
    ):
        endpoint_for(receiver, types=["conversation.created"])
        receiver.fail("410")
        with tasks_run():
            receive(chat_inbox)
        (delivery,) = deliveries(status="failed")
        client.force_login(alice)
        with tasks_run():
            response = client.post(
                "/admin/channels_adapters/webhookdelivery/",
                {"action": "send_again", "_selected_action": [delivery.pk]},
                follow=True,
            )
        assert "1 deliveries queued again." in response.content.decode()
        assert WebhookDelivery.objects.get().status == "delivered"
        assert len(receiver.events) == 1

    def test_an_admin_sends_a_test_event_and_sees_what_the_endpoint_answered(
        self, client, alice, receiver, tasks_run
    ):
        endpoint = endpoint_for(receiver, types=["conversation.created"])
        off = WebhookEndpoint.objects.create(
            url="https://off.example.com/hooks", event_types=["message.created"], is_active=False
        )
        client.force_login(alice)
        with tasks_run():
            response = client.post(
                "/admin/channels_adapters/webhookendpoint/",
                {"action": "send_test_event", "_selected_action": [endpoint.pk, off.pk]},
                follow=True,
            )
        page = response.content.decode()
        assert "is on its way to 1 endpoint:" in page
        assert "1 endpoint turned off, sent nothing" in page
        (event,) = receiver.events.values()  # signed as any event, or the receiver refuses it
        assert event["type"] == "ping"
        assert event["data"]["endpoint"] == {"id": endpoint.pk, "url": endpoint.url}
        (delivery,) = deliveries()
        assert (delivery.endpoint, delivery.status, delivery.tries.get().status_code) == (
            endpoint,
            "delivered",
            200,
        )
        # Nobody can subscribe to it: it comes only when asked for.
        form = client.get("/admin/channels_adapters/webhookendpoint/add/").content.decode()
        assert 'value="ping"' not in form
        endpoint.event_types = ["ping"]
        with pytest.raises(ValidationError, match="Unknown event types: ping"):
            endpoint.full_clean()


class EndlessAnswer:
    """An endpoint that answers its verdict with a body that goes on and on (hostile, or a
    misconfigured proxy streaming a file): it counts what the sender took before hanging up."""

    def __init__(self, status: int, size: int = 200 * 2**20):
        self.sent, self.size = 0, size
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, args=(status,), daemon=True)
        self.thread.start()

    def _serve(self, status: int):
        conn, _ = self.server.accept()
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 {status} X\r\nContent-Length: {self.size}\r\n\r\n"
            conn.sendall(head.encode())
            chunk = b"\x00" + b"x" * 65535  # a NUL, which PostgreSQL cannot store
            try:
                while self.sent < self.size:
                    conn.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:  # the sender hung up: what it did not read was never sent
                pass

    def close(self):
        self.server.close()
        self.thread.join(30)


@pytest.mark.usefixtures("loopback_allowed")
@pytest.mark.parametrize("status", [200, 500])
def test_an_endless_answer_is_not_read_to_its_end(chat_inbox, status):
    endless = EndlessAnswer(status)
    try:
        WebhookEndpoint.objects.create(url=f"{endless.url}/hooks", event_types=["message.created"])
        receive(chat_inbox)
        (delivery,) = deliveries()
        webhook_deliver(delivery.pk)
    finally:
        endless.close()
    # The worker kept the answer's first bytes and hung up: it did not take 200 MB in memory
    # (nor would it wait for ever on a body that never ends).
    assert endless.sent < 20 * 2**20
    (attempt,) = WebhookAttempt.objects.all()
    assert (attempt.status_code, attempt.response) == (status, "x" * 499)
    delivery.refresh_from_db()
    assert delivery.status == ("delivered" if status == 200 else "pending")


@pytest.mark.usefixtures("loopback_allowed")
def test_an_answer_with_a_nul_is_recorded(chat_inbox):
    endless = EndlessAnswer(400, size=65536)
    try:
        WebhookEndpoint.objects.create(url=f"{endless.url}/hooks", event_types=["message.created"])
        receive(chat_inbox)
        (delivery,) = deliveries()
        webhook_deliver(delivery.pk)
    finally:
        endless.close()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error) == (
        "failed",
        "Refused with HTTP 400: not tried again.",
    )
    assert WebhookAttempt.objects.get().response == "x" * 499


def test_a_private_address_is_refused_unless_allowed(receiver, chat_inbox, tasks_run, settings):
    settings.MEDIA_FETCH_ALLOW_PRIVATE = False  # as in production
    endpoint_for(receiver, types=["conversation.created"])
    with tasks_run():
        receive(chat_inbox)
    (delivery,) = deliveries()
    assert delivery.status == "failed"
    assert "not a public address" in delivery.last_error
    assert receiver.calls() == []


def test_with_no_endpoint_a_message_asks_the_database_nothing_more(chat_inbox, receiver):
    receive(chat_inbox, address="visitor-0")  # the configuration tables read once
    with CaptureQueriesContext(connection) as queries:
        receive(chat_inbox)
    webhook_reads = [q["sql"] for q in queries if "webhook" in q["sql"]]
    # Only the configuration tables' one statement (TableCache) names the table.
    assert len(webhook_reads) == 1 and " UNION ALL " in webhook_reads[0]
    baseline = len(queries)

    endpoint_for(receiver, types=["note.created"])  # listens, to something else
    receive(chat_inbox, address="visitor-2")
    with CaptureQueriesContext(connection) as queries:
        receive(chat_inbox, address="visitor-3")
    assert len(queries) == baseline


class TestAdmin:
    def test_an_admin_adds_an_endpoint_sees_its_secret_and_rotates_it(self, client, alice):
        client.force_login(alice)
        response = client.post(
            "/admin/channels_adapters/webhookendpoint/add/",
            {
                "url": "https://crm.example.com/threadline",
                "description": "CRM",
                "event_types": ["conversation.created", "message.created"],
                "is_active": "on",
            },
        )
        assert response.status_code == 302
        endpoint = WebhookEndpoint.objects.get()
        assert endpoint.event_types == ["conversation.created", "message.created"]
        assert re.fullmatch(r"whsec_[0-9a-f]{64}", endpoint.secret)  # 256 bits
        page = client.get(f"/admin/channels_adapters/webhookendpoint/{endpoint.pk}/change/")
        assert endpoint.secret in page.content.decode()

        rotate = {"action": "rotate_secret", "_selected_action": [endpoint.pk]}
        # Asked first: until the integration has the new one, it refuses our events.
        asked = client.post("/admin/channels_adapters/webhookendpoint/", rotate)
        assert "they refuse our events" in asked.content.decode()
        assert WebhookEndpoint.objects.get().secret == endpoint.secret
        client.post("/admin/channels_adapters/webhookendpoint/", {**rotate, "confirmed": "yes"})
        old, endpoint = endpoint.secret, WebhookEndpoint.objects.get()
        assert endpoint.secret != old and endpoint.secret.startswith("whsec_")

    def test_an_endpoint_needs_an_http_url_and_known_types(self, client, alice):
        client.force_login(alice)
        response = client.post(
            "/admin/channels_adapters/webhookendpoint/add/",
            {"url": "ftp://crm.example.com/", "event_types": ["message.deleted"]},
        )
        assert response.status_code == 200
        assert not WebhookEndpoint.objects.exists()
        text = response.content.decode()
        assert "Enter a valid URL." in text
        assert "message.deleted is not one of the available choices" in text


@pytest.mark.django_db(transaction=True)
class TestLostTasks:
    def test_with_the_broker_down_at_commit_the_sweep_delivers_later(
        self, server_without_redis, client, bob, chat_inbox, receiver, purge_broker, settings
    ):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = True
        conversation = receive(chat_inbox).message.conversation
        endpoint_for(receiver, types=["message.created"])
        agent = signed_in_http(client, bob, server_without_redis)
        page = agent.get(f"/inbox/{conversation.number}/").text
        form = dict(
            re.findall(r'name="(csrfmiddlewaretoken|seen|client_id)" value="([^"]*)"', page)
        )

        answer = agent.post(
            f"/inbox/{conversation.number}/reply",
            data={**form, "mode": "reply", "text": "Your refund is on its way."},
        )

        assert answer.status_code == 302  # the reply is taken, its event recorded
        (delivery,) = deliveries()
        assert (delivery.status, delivery.attempts) == ("pending", 0)
        assert webhooks_sweep() == 0  # not lost yet: its task may still come
        later = timezone.now() + timedelta(seconds=settings.SWEEP_STUCK_AFTER_SECONDS + 1)
        with time_machine.travel(later):
            assert webhooks_sweep() == 1
            purge_broker()  # run the re-enqueued delivery here instead of in a worker
            webhook_deliver(delivery.pk)
        (event,) = receiver.events.values()
        assert event["data"]["message"]["text"] == "Your refund is on its way."


@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_claim_ran_out_does_not_undo_the_one_who_delivered(
    chat_inbox, receiver, settings
):
    """Worker A's request outlives its claim; the sweep's task B claims the delivery, sends it
    and records it delivered; then the refusal A got comes back. The endpoint has the event:
    the delivery stays delivered."""
    from tests.providers import Answer

    settings.MEDIA_FETCH_ALLOW_PRIVATE = True
    endpoint_for(receiver, types=["conversation.created"])
    receive(chat_inbox)
    (delivery,) = deliveries()
    answered = receiver.answer

    def answer(request):
        if len(receiver.calls()) > 1:  # B's
            return answered(request)
        try:  # A's, held while B comes, once A's claim has run out
            with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=False):
                assert webhook_deliver(delivery.pk) is None
        finally:
            connection.close()  # this thread's
        return Answer(410, b"gone", "text/plain")

    receiver.answer = answer
    webhook_deliver(delivery.pk)

    delivery.refresh_from_db()
    assert len(receiver.events) == 1
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    assert sorted(delivery.tries.values_list("status_code", flat=True)) == [200, 410]


@pytest.mark.django_db(transaction=True)
def test_a_separate_celery_worker_delivers_the_events(
    redis_url, chat_inbox, bob, receiver, purge_broker, monkeypatch
):
    monkeypatch.setenv("MEDIA_FETCH_ALLOW_PRIVATE", "true")  # for the worker process
    endpoint_for(receiver, types=["conversation.created", "message.created"])
    worker = start_celery_worker(stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        conversation = receive(chat_inbox, text="Hello there").message.conversation
        services.reply_send(conversation=conversation, author=bob, text="Hi!")
        # Each call sets `called` after it is recorded: cleared, then counted, none is missed.
        while len(receiver.calls()) < 3:
            assert receiver.called.wait(30), "the worker sent nothing more"
            receiver.called.clear()
        assert sorted(call.json()["type"] for call in receiver.calls()) == [
            "conversation.created",
            "message.created",
            "message.created",
        ]
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert "Traceback" not in output, output
    assert WebhookDelivery.objects.filter(status="delivered").count() == 3
