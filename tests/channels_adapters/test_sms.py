"""SMS through Twilio, against a loopback fake that speaks Twilio's wire format."""

import contextlib
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.utils import timezone

from channels_adapters.base import TransientError
from channels_adapters.delivery import (
    SENDING_ABANDONED,
    attachment_fetch,
    inbound_event_process,
    message_deliver,
    message_retry,
    sweep_stuck,
)
from channels_adapters.models import InboundEvent
from channels_adapters.sms.adapter import sms_segments
from conversations import services
from conversations.models import (
    Channel,
    ConversationEvent,
    DeliveryAttempt,
    Identity,
    Inbox,
    Message,
    Notification,
)
from routing.models import SlaClock, TeamMembership
from tests.conftest import wait_for, webhook_path, worker_killed_mid_task
from tests.providers import FakeTwilio

CUSTOMER = "+351912345678"


def incoming(sid="SM" + "a" * 32, body="Olá! A minha encomenda não chegou 📦", **extra):
    """The fields Twilio posts for an incoming SMS."""
    return {
        "ToCountry": "US",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "SmsSid": sid,
        "SmsStatus": "received",
        "Body": body,
        "To": "+15005550006",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": "AC" + "1" * 32,
        "From": CUSTOMER,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def status_callback(sid, status, **extra):
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": "AC" + "1" * 32,
        "From": "+15005550006",
        "To": CUSTOMER,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def deliver(twilio, client, inbox, params):
    """Twilio calls the webhook; the stored event is processed as the task would."""
    response = twilio.post_webhook(client, webhook_path(inbox), params)
    assert response.status_code == 200, response.content
    event = InboundEvent.objects.filter(inbox=inbox).order_by("-id").first()
    return inbound_event_process(event.pk) or event


def undelivered(twilio, client, message):
    """The carrier's "undelivered" (30003: unreachable handset) for `message`."""
    callback = status_callback(message.provider_id, "undelivered", ErrorCode="30003")
    deliver(twilio, client, message.inbox, callback)


def reply(conversation, agent, text="Vamos verificar, obrigado!", **kwargs):
    message = services.reply_send(conversation=conversation, author=agent, text=text, **kwargs)
    message_deliver(message.pk)
    message.refresh_from_db()
    return message


@pytest.mark.django_db
class TestIncoming:
    def test_an_sms_opens_a_conversation_and_gets_empty_twiml(self, client, twilio, sms_inbox):
        response = twilio.post_webhook(client, webhook_path(sms_inbox), incoming())
        assert response.status_code == 200
        assert response["Content-Type"] == "text/xml"
        assert b"<Response></Response>" in response.content
        inbound_event_process(InboundEvent.objects.get().pk)
        message = Message.objects.get()
        assert message.text == "Olá! A minha encomenda não chegou 📦"
        assert message.channel == Channel.SMS
        assert message.identity.address == CUSTOMER
        assert message.conversation.inbox == sms_inbox

    def test_the_next_sms_continues_the_conversation(self, client, twilio, sms_inbox):
        deliver(twilio, client, sms_inbox, incoming(sid="SM1"))
        deliver(twilio, client, sms_inbox, incoming(sid="SM2", body="Ainda nada"))
        assert Message.objects.values("conversation").distinct().count() == 1

    def test_an_inbox_switched_off_or_rekeyed_in_admin_takes_effect_at_once(
        self, client, twilio, sms_inbox
    ):
        path = webhook_path(sms_inbox)
        assert twilio.post_webhook(client, path, incoming(sid="SM1")).status_code == 200
        sms_inbox.credentials["auth_token"] = "rotated-token"
        sms_inbox.save()
        assert twilio.post_webhook(client, path, incoming(sid="SM2")).status_code == 403
        twilio.auth_token = "rotated-token"
        assert twilio.post_webhook(client, path, incoming(sid="SM3")).status_code == 200
        sms_inbox.is_active = False
        sms_inbox.save()
        assert twilio.post_webhook(client, path, incoming(sid="SM4")).status_code == 404
        stored = InboundEvent.objects.values_list("dedupe_key", flat=True)
        assert sorted(stored) == ["SM1", "SM3"]

    @pytest.mark.parametrize(
        "headers",
        [{}, {"HTTP_X_TWILIO_SIGNATURE": "bm90IGEgc2lnbmF0dXJl"}],
        ids=["missing", "forged"],
    )
    def test_an_unsigned_or_forged_webhook_is_refused(self, client, sms_inbox, headers):
        response = client.post(
            webhook_path(sms_inbox),
            data="MessageSid=SM1&From=%2B351912345678&Body=hi&SmsStatus=received",
            content_type="application/x-www-form-urlencoded",
            **headers,
        )
        assert response.status_code == 403
        assert not InboundEvent.objects.exists()

    def test_a_signature_for_another_url_or_token_is_refused(self, client, sms_inbox):
        other = FakeTwilio(auth_token="another-account-token")
        try:
            assert (
                other.post_webhook(client, webhook_path(sms_inbox), incoming()).status_code == 403
            )
        finally:
            other.close()
        twilio = FakeTwilio(auth_token=sms_inbox.credentials["auth_token"])
        try:
            response = twilio.post_webhook(
                client, webhook_path(sms_inbox), incoming(), signed_url="https://evil.example/x"
            )
            assert response.status_code == 403
        finally:
            twilio.close()
        assert not InboundEvent.objects.exists()

    def test_behind_a_proxy_the_signature_is_checked_against_public_url(
        self, client, twilio, sms_inbox, settings
    ):
        settings.PUBLIC_URL = "https://help.acme.example"
        path = webhook_path(sms_inbox)
        signed_url = f"https://help.acme.example{path}"
        response = twilio.post_webhook(client, path, incoming(), signed_url=signed_url)
        assert response.status_code == 200
        # What reached us (http://testserver...) is not what Twilio signed: refused.
        assert twilio.post_webhook(client, path, incoming(sid="SM9")).status_code == 403

    def test_a_webhook_signed_with_a_shared_key_is_checked_with_its_secret(
        self, client, twilio, sms_inbox
    ):
        path, secret = webhook_path(sms_inbox), "the-shared-key-secret"
        # Not set on the inbox yet: refused, and Twilio retries as its rule says.
        assert twilio.post_webhook(client, path, incoming(), shared_key=secret).status_code == 403
        sms_inbox.credentials["webhook_shared_key"] = secret
        sms_inbox.save()
        assert twilio.post_webhook(client, path, incoming(), shared_key=secret).status_code == 200
        # The Auth Token is not what signs under that header.
        token = sms_inbox.credentials["auth_token"]
        other = incoming(sid="SM2")
        assert twilio.post_webhook(client, path, other, shared_key=token).status_code == 403
        assert InboundEvent.objects.count() == 1

    def test_a_signed_body_without_message_sid_is_a_400(self, client, twilio, sms_inbox):
        response = twilio.post_webhook(
            client, webhook_path(sms_inbox), {"From": CUSTOMER, "Body": "x"}
        )
        assert response.status_code == 400
        assert b"MessageSid" in response.content
        assert not InboundEvent.objects.exists()

    def test_the_same_webhook_twice_is_one_message(self, client, twilio, sms_inbox):
        deliver(twilio, client, sms_inbox, incoming())
        deliver(twilio, client, sms_inbox, incoming())
        assert InboundEvent.objects.count() == 1
        assert Message.objects.count() == 1

    def test_stop_opts_out_and_replies_are_refused_until_start(
        self, client, twilio, sms_inbox, bob
    ):
        deliver(twilio, client, sms_inbox, incoming(sid="SM1", body="Hello"))
        deliver(twilio, client, sms_inbox, incoming(sid="SM2", body=" stop "))
        identity = Identity.objects.get(address=CUSTOMER)
        assert identity.opted_out_at is not None
        conversation = Message.objects.get(provider_id="SM2").conversation
        assert conversation.events.filter(kind=ConversationEvent.Kind.CONSENT).exists()
        with pytest.raises(ValidationError, match="opted out"):
            services.reply_send(conversation=conversation, author=bob, text="Still there?")
        assert twilio.calls() == []

        deliver(twilio, client, sms_inbox, incoming(sid="SM3", body="START"))
        identity.refresh_from_db()
        assert identity.opted_out_at is None
        assert reply(conversation, bob).status == Message.Status.SENT

    @pytest.mark.parametrize("keyword", ["UNSUBSCRIBE", "Revoke"])  # Twilio's own keywords
    def test_an_opt_out_while_a_reply_waits_fails_it_without_sending(
        self, client, twilio, sms_inbox, bob, keyword
    ):
        deliver(twilio, client, sms_inbox, incoming(sid="SM1", body="Hello"))
        conversation = Message.objects.get().conversation
        message = services.reply_send(conversation=conversation, author=bob, text="Hi!")
        deliver(twilio, client, sms_inbox, incoming(sid="SM2", body=keyword))
        message_deliver(message.pk)
        message.refresh_from_db()
        assert message.status == Message.Status.FAILED
        assert "opted out" in message.failure_reason
        assert twilio.calls() == []


@pytest.mark.django_db
class TestMedia:
    def mms(self, twilio):
        twilio.media["/media/ME1"] = (b"\x89PNG\r\n\x1a\n fake png", "image/png")
        return incoming(
            NumMedia="1",
            MediaUrl0=f"{twilio.url}/media/ME1",
            MediaContentType0="image/png",
        )

    def test_mms_media_is_fetched_with_the_accounts_credentials(
        self, client, twilio, sms_inbox, settings
    ):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = True
        deliver(twilio, client, sms_inbox, self.mms(twilio))
        attachment = Message.objects.get().attachments.get()
        assert attachment.is_pending
        assert attachment_fetch(attachment.pk) == "fetched"
        attachment.refresh_from_db()
        assert attachment.file.read() == b"\x89PNG\r\n\x1a\n fake png"
        assert attachment.content_type == "image/png"
        assert twilio.requests[-1].headers["authorization"].startswith("Basic ")
        assert attachment_fetch(attachment.pk) == "done"  # a second run changes nothing

    def test_media_on_a_private_address_is_refused_and_the_reason_kept(
        self, client, twilio, sms_inbox
    ):
        deliver(twilio, client, sms_inbox, self.mms(twilio))
        attachment = Message.objects.get().attachments.get()
        assert attachment_fetch(attachment.pk) == "failed"
        attachment.refresh_from_db()
        assert not attachment.file
        assert "not a public address" in attachment.fetch_error
        assert not any(r.path == "/media/ME1" for r in twilio.requests)

    def test_a_name_that_turns_private_after_its_check_reaches_nothing_private(
        self, client, twilio, sms_inbox, settings, monkeypatch
    ):
        # DNS rebinding: the media host answers a public address first, then the address of
        # something inside (here the fake Twilio, on 127.0.0.1) to whoever asks again.
        settings.PROVIDER_TIMEOUT_SECONDS = 2
        real_getaddrinfo, answers = socket.getaddrinfo, []

        def rebinding(host, port, *args, **kwargs):
            if host != "media.rebind.example":
                return real_getaddrinfo(host, port, *args, **kwargs)
            answers.append("127.0.0.1" if answers else "1.1.1.1")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[-1], port))]

        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        params = self.mms(twilio)
        params["MediaUrl0"] = params["MediaUrl0"].replace("127.0.0.1", "media.rebind.example")
        deliver(twilio, client, sms_inbox, params)
        attachment = Message.objects.get().attachments.get()
        with contextlib.suppress(TransientError):  # 1.1.1.1 is not reachable from here
            attachment_fetch(attachment.pk)

        assert not any(r.path == "/media/ME1" for r in twilio.requests)
        attachment.refresh_from_db()
        assert not attachment.file
        assert answers == ["1.1.1.1"]  # one answer, checked and connected to

    def test_a_name_with_an_address_that_does_not_answer_is_fetched_from_the_next(
        self, client, twilio, sms_inbox, settings, monkeypatch
    ):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = True  # the fake Twilio is on 127.0.0.1
        real_getaddrinfo = socket.getaddrinfo

        def both(host, port, *args, **kwargs):  # IPv6 first, where nothing listens
            if host != "media.example":
                return real_getaddrinfo(host, port, *args, **kwargs)
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]

        monkeypatch.setattr(socket, "getaddrinfo", both)
        params = self.mms(twilio)
        params["MediaUrl0"] = params["MediaUrl0"].replace("127.0.0.1", "media.example")
        deliver(twilio, client, sms_inbox, params)
        attachment = Message.objects.get().attachments.get()
        assert attachment_fetch(attachment.pk) == "fetched"

    def test_media_larger_than_the_limit_is_refused(self, client, twilio, sms_inbox, settings):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = True
        settings.MEDIA_FETCH_MAX_BYTES = 10
        deliver(twilio, client, sms_inbox, self.mms(twilio))
        attachment = Message.objects.get().attachments.get()
        assert attachment_fetch(attachment.pk) == "failed"
        attachment.refresh_from_db()
        assert "larger than" in attachment.fetch_error


@pytest.mark.django_db
class TestReplies:
    @pytest.fixture
    def conversation(self, client, twilio, sms_inbox):
        deliver(twilio, client, sms_inbox, incoming())
        return Message.objects.get().conversation

    def test_a_reply_reaches_twilio_from_the_inbox_number(
        self, twilio, conversation, bob, settings
    ):
        settings.PUBLIC_URL = "https://help.acme.example"
        twilio.next_sids.append("SM" + "5" * 32)
        message = reply(conversation, bob, text="Já enviámos 🚚")
        assert message.status == Message.Status.SENT
        (call,) = twilio.calls()
        form = call.form()
        assert form["To"] == [CUSTOMER]
        assert form["From"] == ["+15005550006"]
        assert form["Body"] == ["Já enviámos 🚚"]
        assert form["StatusCallback"] == [
            f"https://help.acme.example/channels/sms/{conversation.inbox.pk}/webhook"
        ]
        assert message.provider_id == "SM" + "5" * 32

    def test_status_callbacks_move_forward_only(self, client, twilio, conversation, bob):
        message = reply(conversation, bob)
        sid, inbox = message.provider_id, conversation.inbox
        for status in ("sent", "delivered", "sent", "delivered", "failed"):
            deliver(twilio, client, inbox, status_callback(sid, status, ErrorCode="30008"))
        message.refresh_from_db()
        assert message.status == Message.Status.DELIVERED
        assert message.failure_reason == ""
        assert message.delivered_at is not None

    def test_a_callback_speaks_only_for_its_own_inbox(self, client, twilio, conversation, bob):
        """Each SMS inbox has its own webhook and may have its own Twilio account: one
        inbox's callback cannot fail another inbox's message, whatever SID it names."""
        message = reply(conversation, bob)
        other = Inbox.objects.create(
            name="Sales SMS",
            kind=Channel.SMS,
            address="+15005550007",
            default_team=conversation.inbox.default_team,
            settings=conversation.inbox.settings,
            credentials=conversation.inbox.credentials,
        )
        deliver(twilio, client, other, status_callback(message.provider_id, "undelivered"))
        message.refresh_from_db()
        assert (message.status, message.failure_reason) == (Message.Status.SENT, "")
        undelivered(twilio, client, message)  # through its own inbox's webhook
        message.refresh_from_db()
        assert message.status == Message.Status.FAILED

    def test_undelivered_shows_the_carriers_reason(self, client, twilio, conversation, bob):
        message = reply(conversation, bob)
        undelivered(twilio, client, message)
        message.refresh_from_db()
        assert message.status == Message.Status.FAILED
        assert message.failure_reason == (
            "Twilio error 30003: The handset is unreachable (switched off or out of coverage)."
        )
        # Its author hears it once, however often the carrier repeats it.
        deliver(
            twilio,
            client,
            conversation.inbox,
            status_callback(message.provider_id, "failed", ErrorCode="30003"),
        )
        told = Notification.objects.filter(recipient=bob, kind="failed", message=message)
        assert [n.text for n in told] == [message.failure_reason]

    def test_an_author_who_left_the_team_is_not_told_of_the_failure(
        self, client, twilio, conversation, bob, dana
    ):
        # The failure reason quotes the conversation: only who may still read it hears it.
        message = reply(conversation, bob)
        services.conversation_assign(conversation=conversation, assignee=dana, actor=dana)
        TeamMembership.objects.filter(user=bob).delete()
        undelivered(twilio, client, message)
        assert not Notification.objects.filter(recipient=bob).exists()
        assert Notification.objects.filter(recipient=dana, kind="failed", message=message).exists()

    @pytest.mark.parametrize(
        ("status", "reopened"),
        [("resolved", True), ("pending", True), ("closed", False), ("open", False)],
    )
    def test_a_reply_that_fails_after_resolving_reopens_the_conversation(
        self, client, twilio, conversation, bob, status, reopened
    ):
        """A macro answered and resolved at once, or the agent resolved right after sending:
        the carrier's "undelivered" puts the conversation back in the team's open work, and
        its timeline says why. A closed one stays closed; the author is told either way."""
        message = reply(conversation, bob)
        if status != "open":
            services.conversation_set_status(conversation=conversation, status=status, actor=bob)
        undelivered(twilio, client, message)
        conversation.refresh_from_db()
        assert conversation.status == ("open" if reopened else status)
        assert Notification.objects.filter(recipient=bob, kind="failed", message=message).exists()
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert ("Status changed: open, as a reply was not delivered" in page) is reopened
        # Nor was it an answer: back in "waiting on us" since the customer wrote, with no first
        # response, and the first-response clock counting on (a closed one waits on nobody).
        asked = conversation.messages.get(direction="inbound").created_at
        assert conversation.first_response_at is None
        assert conversation.waiting_since == (None if status == "closed" else asked)
        waiting = client.get("/inbox/?sort=waiting").content.decode()
        assert (f'href="/inbox/{conversation.pk}/"' in waiting) is (status != "closed")
        clock = conversation.sla_clocks.get(target=SlaClock.Target.FIRST_RESPONSE)
        assert (clock.stopped_at is None) is (status != "closed")

    def test_a_failed_reply_sent_again_answers_the_customer_again(
        self, client, twilio, conversation, bob
    ):
        message = reply(conversation, bob)
        undelivered(twilio, client, message)
        conversation.refresh_from_db()
        assert conversation.waiting_since is not None
        message_retry(message=message)
        conversation.refresh_from_db()
        assert conversation.waiting_since is None
        assert conversation.first_response_at is not None
        assert not conversation.sla_clocks.filter(stopped_at=None).exclude(target="resolution")

    def test_an_automatic_message_that_fails_reopens_nothing(
        self, client, twilio, conversation, bob
    ):
        message = services.reply_send(conversation=conversation, author=None, text="Thanks!")
        message_deliver(message.pk)
        message.refresh_from_db()
        services.conversation_set_status(conversation=conversation, status="resolved", actor=bob)
        undelivered(twilio, client, message)
        conversation.refresh_from_db()
        assert Message.objects.get(pk=message.pk).status == Message.Status.FAILED
        assert conversation.status == "resolved"

    def test_a_sent_that_comes_after_undelivered_leaves_it_failed_and_retryable(
        self, client, twilio, conversation, bob
    ):
        """Twilio's "sent" overtook the answer to our send, so it waited for the sweep; the
        carrier's "undelivered" came in between. The agent keeps the failure and its Retry."""
        sid = "SM" + "e" * 32
        twilio.next_sids.append(sid)
        message = services.reply_send(conversation=conversation, author=bob, text="Hi")
        early = deliver(twilio, client, conversation.inbox, status_callback(sid, "sent"))
        message_deliver(message.pk)
        undelivered = status_callback(sid, "undelivered", ErrorCode="30005")
        deliver(twilio, client, conversation.inbox, undelivered)
        inbound_event_process(early.pk)  # the sweep, two minutes later
        message.refresh_from_db()
        assert message.status == Message.Status.FAILED
        assert message.failure_reason.startswith("Twilio error 30005")
        assert message_retry(message=message).status == Message.Status.QUEUED

    def test_erasing_the_customer_deletes_every_payload_naming_their_number(
        self, client, twilio, conversation, alice, bob
    ):
        inbox = conversation.inbox
        sid = reply(conversation, bob).provider_id
        receipt = deliver(twilio, client, inbox, status_callback(sid, "delivered"))
        assert receipt.message.provider_id == sid  # a receipt is filed with its message
        customer = conversation.customer
        services.customer_block(customer=customer, actor=bob)
        aside = deliver(twilio, client, inbox, incoming(sid="SM" + "b" * 32, body="Still me"))
        assert aside.message is None and aside.status == InboundEvent.Status.IGNORED
        other = deliver(twilio, client, inbox, incoming(sid="SM" + "c" * 32, From="+351917777777"))
        assert InboundEvent.objects.count() == 4
        services.customer_erase(customer=customer, actor=alice)
        # What is left is the other customer's SMS: nothing with the erased number in it.
        assert list(InboundEvent.objects.all()) == [other]
        assert CUSTOMER.encode() not in other.raw()

    def test_a_callback_that_overtakes_the_send_is_applied_later(
        self, client, twilio, conversation, bob
    ):
        twilio.next_sids.append("SM" + "f" * 32)
        message = services.reply_send(conversation=conversation, author=bob, text="Hi")
        event = deliver(
            twilio, client, conversation.inbox, status_callback("SM" + "f" * 32, "delivered")
        )
        event.refresh_from_db()
        assert event.status == InboundEvent.Status.PENDING
        message_deliver(message.pk)
        inbound_event_process(event.pk)  # what the sweep does a minute later
        message.refresh_from_db()
        assert message.status == Message.Status.DELIVERED

    @pytest.mark.parametrize("mode", ["500", "429"])
    def test_a_provider_hiccup_is_retried_and_sent_once(self, twilio, conversation, bob, mode):
        twilio.fail(mode)
        message = reply(conversation, bob)
        assert message.status == Message.Status.QUEUED
        assert message.failure_reason.startswith("Twilio error 20")
        with time_machine.travel(message.next_attempt_at + timedelta(seconds=1), tick=False):
            message_deliver(message.pk)
        message.refresh_from_db()
        assert message.status == Message.Status.SENT
        assert len(twilio.calls()) == 2
        outcomes = list(message.attempts_log.values_list("outcome", flat=True))
        assert outcomes == [DeliveryAttempt.Outcome.RETRY, DeliveryAttempt.Outcome.SENT]

    def test_a_timeout_is_retried(self, twilio, conversation, bob, settings):
        settings.PROVIDER_TIMEOUT_SECONDS = 0.3
        twilio.fail("timeout")
        message = reply(conversation, bob)
        assert message.status == Message.Status.QUEUED
        assert "did not answer in time" in message.failure_reason

    def test_a_lost_answer_is_looked_up_not_sent_twice(self, twilio, conversation, bob):
        twilio.fail("answer_lost")  # Twilio sends it, then the connection drops
        message = reply(conversation, bob)
        assert message.status == Message.Status.SENT
        (made,) = twilio.sent
        assert message.provider_id == made["sid"]  # its delivery reports find it
        assert len(twilio.calls("POST")) == 1
        (looked_up,) = twilio.calls("GET")
        assert looked_up.query["To"] == CUSTOMER

    def test_an_answer_lost_before_twilio_acted_is_sent_on_the_next_attempt(
        self, twilio, conversation, bob
    ):
        earlier = reply(conversation, bob, text="Same words")  # the same text, sent before
        twilio.sent.append(  # and another app on the account, a moment ago
            {**twilio.sent[0], "sid": "SM" + "e" * 32, "body": "Booked. Same words"}
        )
        twilio.fail("hang_up")
        message = reply(conversation, bob, text="Same words")
        assert message.status == Message.Status.QUEUED  # not taken for the earlier one
        assert "hung up" in message.failure_reason
        with time_machine.travel(message.next_attempt_at + timedelta(seconds=1), tick=False):
            message_deliver(message.pk)
        message.refresh_from_db()
        assert message.status == Message.Status.SENT
        made = [m["sid"] for m in twilio.sent]
        assert made == [earlier.provider_id, "SM" + "e" * 32, message.provider_id]

    @pytest.mark.parametrize(
        ("mode", "reason"),
        [
            ("invalid_recipient", "Twilio error 21211: The number is not a valid phone number."),
            ("unsubscribed", "Twilio error 21610: The recipient replied STOP"),
        ],
    )
    def test_a_refused_recipient_fails_with_the_reason(
        self, client, twilio, conversation, bob, mode, reason
    ):
        twilio.fail(mode)
        message = reply(conversation, bob)
        assert message.status == Message.Status.FAILED
        assert message.failure_reason.startswith(reason)
        assert len(twilio.calls()) == 1
        # Bob hears of it, wherever he is now, with Twilio's reason.
        (told,) = Notification.objects.filter(recipient=bob, message=message)
        assert (told.kind, told.text) == ("failed", message.failure_reason)
        client.force_login(bob)
        page = client.get("/inbox/notifications").content.decode()
        assert f"Not delivered:</bdi></span> {reason}" in page

    def test_a_number_twilio_says_unsubscribed_is_refused_at_once_next_time(
        self, twilio, conversation, bob
    ):
        """An opt-out we never saw (a keyword of Twilio's Advanced Opt-Out, a STOP to another
        number of the service): Twilio's 21610 says so once, and it is kept."""
        twilio.fail("unsubscribed")
        assert reply(conversation, bob).status == Message.Status.FAILED
        with pytest.raises(ValidationError, match="opted out"):
            services.reply_send(conversation=conversation, author=bob, text="Hello?")
        assert len(twilio.calls()) == 1

    def test_an_attachment_goes_as_a_signed_media_link(
        self, client, twilio, conversation, bob, settings
    ):
        settings.PUBLIC_URL = "http://testserver"
        photo = services.InboundAttachment("label.png", "image/png", b"\x89PNG label")
        message = reply(conversation, bob, text="The label", attachments=(photo,))
        assert message.status == Message.Status.SENT
        (link,) = twilio.calls()[0].form()["MediaUrl"]
        response = client.get(link.removeprefix("http://testserver"))
        assert response.status_code == 200
        assert b"".join(response.streaming_content) == b"\x89PNG label"
        assert response["Content-Disposition"].startswith("attachment")
        assert client.get(link.removeprefix("http://testserver") + "x").status_code == 404

    def test_files_beyond_what_mms_takes_are_refused_before_anything_is_stored(
        self, twilio, conversation, bob
    ):
        scan = services.InboundAttachment("scan.pdf", "application/pdf", b"%PDF" + bytes(6 << 20))
        with pytest.raises(
            ValidationError, match="SMS takes at most 5 MB of files on one message; these are 6 MB"
        ):
            services.reply_send(
                conversation=conversation, author=bob, text="Scan", attachments=(scan,)
            )
        photos = tuple(
            services.InboundAttachment(f"p{n}.png", "image/png", b"\x89PNG") for n in range(11)
        )
        with pytest.raises(ValidationError, match="SMS takes at most 10 files on one message"):
            services.reply_send(conversation=conversation, author=bob, text="", attachments=photos)
        assert not conversation.messages.filter(direction=Message.Direction.OUTBOUND).exists()
        assert twilio.calls() == []

    def test_without_public_url_an_attachment_cannot_go(self, twilio, conversation, bob):
        photo = services.InboundAttachment("label.png", "image/png", b"\x89PNG label")
        message = reply(conversation, bob, text="The label", attachments=(photo,))
        assert message.status == Message.Status.FAILED
        assert "PUBLIC_URL" in message.failure_reason
        assert twilio.calls() == []


@pytest.mark.django_db
class TestCrossChannel:
    def test_an_email_customer_answered_by_sms_replies_into_the_same_conversation(
        self, client, twilio, sms_inbox, email_inbox, bob
    ):
        by_mail = services.message_receive(
            inbox=email_inbox,
            inbound=services.InboundMessage(
                channel=Channel.EMAIL, address="rui@example.pt", text="Call me?", subject="Order"
            ),
        ).message
        deliver(twilio, client, sms_inbox, incoming(sid="SM1", body="It's Rui, by SMS"))
        by_sms = Message.objects.get(provider_id="SM1")
        services.customer_merge(
            source=by_sms.conversation.customer, target=by_mail.conversation.customer
        )
        conversation = by_mail.conversation
        sms = Identity.objects.get(kind=Channel.SMS)
        message = reply(conversation, bob, text="Ligamos já", identity=sms)
        assert message.status == Message.Status.SENT
        assert message.channel == Channel.SMS
        assert message.inbox == sms_inbox
        assert twilio.calls()[0].form()["To"] == [CUSTOMER]
        assert conversation.events.filter(kind=ConversationEvent.Kind.CHANNEL).exists()

        deliver(twilio, client, sms_inbox, incoming(sid="SM2", body="Obrigado"))
        assert Message.objects.get(provider_id="SM2").conversation == conversation

    def test_the_same_number_on_whatsapp_is_the_same_customer(self, db):
        sms = services.identity_get_or_create(kind=Channel.SMS, address="+44 20 7946 0958")
        whatsapp = services.identity_get_or_create(kind=Channel.WHATSAPP, address="442079460958")
        assert sms.address == whatsapp.address == "+442079460958"
        assert sms.customer_id == whatsapp.customer_id

    @pytest.mark.parametrize("number", ["12", "not a number", "+1 555"])
    def test_an_impossible_number_is_refused(self, db, number):
        with pytest.raises(ValidationError):
            services.identity_get_or_create(kind=Channel.SMS, address=number)


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_deliveries_of_one_sms_store_one_message(twilio, sms_inbox):
    params, barrier = incoming(), threading.Barrier(10)
    statuses = []

    def post():
        barrier.wait()
        try:
            statuses.append(
                twilio.post_webhook(Client(), webhook_path(sms_inbox), params).status_code
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 10
    (event,) = InboundEvent.objects.all()
    inbound_event_process(event.pk)
    inbound_event_process(event.pk)
    assert Message.objects.count() == 1


def test_end_to_end_with_the_worker(twilio, sms_inbox, bob, embedded_worker, settings):
    settings.PUBLIC_URL = "http://testserver"
    client = Client()
    assert twilio.post_webhook(client, webhook_path(sms_inbox), incoming()).status_code == 200
    message = wait_for(lambda: Message.objects.filter(channel=Channel.SMS).first())
    answer = services.reply_send(conversation=message.conversation, author=bob, text="On it")
    sent = wait_for(lambda: Message.objects.filter(pk=answer.pk, status="sent").first())
    callback = status_callback(sent.provider_id, "delivered")
    assert twilio.post_webhook(client, webhook_path(sms_inbox), callback).status_code == 200
    wait_for(lambda: Message.objects.filter(pk=answer.pk, status="delivered").exists())
    assert timezone.now() - sent.sent_at < timedelta(minutes=1)


def test_a_burst_of_webhooks_all_reach_the_worker(twilio, sms_inbox, embedded_worker):
    client = Client()
    for number in range(30):
        params = incoming(
            sid=f"SM{number:02}", body=f"message {number}", From=f"+3519100000{number:02}"
        )
        assert twilio.post_webhook(client, webhook_path(sms_inbox), params).status_code == 200
    wait_for(
        lambda: not InboundEvent.objects.filter(status=InboundEvent.Status.PENDING).exists(),
        what="the worker to process all 30 events",
    )
    texts = set(Message.objects.values_list("text", flat=True))
    assert texts == {f"message {number}" for number in range(30)}
    assert Message.objects.values("conversation").distinct().count() == 30


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("", "GSM-7", 0),
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # two septets each: 160
        ("€" * 81, "GSM-7", 2),
        ("a" * 152 + "€", "GSM-7", 1),  # 154 septets still fit one message
        ("a" * 152 + "€" + "a" * 10, "GSM-7", 2),  # the escape pair is not cut
        ("ç" * 70, "UCS-2", 1),
        ("ç" * 71, "UCS-2", 2),
        ("Olá 👋", "UCS-2", 1),
        ("👋" * 35, "UCS-2", 1),  # 70 code units
        ("👋" * 36, "UCS-2", 2),
        ("お問い合わせありがとうございます" * 5, "UCS-2", 2),
    ],
)
def test_segment_counts_follow_gsm7_and_ucs2(text, encoding, segments):
    counted = sms_segments(text)
    assert (counted.encoding, counted.segments) == (encoding, segments)


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_send_fails_the_sms_for_the_agent_to_check_and_retry(
    redis_url, client, twilio, sms_inbox, bob, purge_broker
):
    """Sending an SMS twice reaches the customer twice, so a send cut off halfway is not
    repeated by itself. It must not stay "sending" for ever either: it fails, says why, and
    its author hears of it and can retry."""
    deliver(twilio, client, sms_inbox, incoming())
    twilio.fail("timeout")  # Twilio has the request and the worker dies waiting for the answer
    message = worker_killed_mid_task(
        lambda: services.reply_send(
            conversation=Message.objects.get().conversation, author=bob, text="Vamos ver."
        ),
        twilio.called,
        "Twilio",
    )
    message.refresh_from_db()
    assert message.status == Message.Status.SENDING

    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        sweep_stuck()  # an attempt may be slow: nothing yet
        assert Message.objects.get(pk=message.pk).status == Message.Status.SENDING
    with time_machine.travel(timezone.now() + SENDING_ABANDONED + timedelta(seconds=1)):
        assert sweep_stuck().messages == 0  # failed, not sent again by itself
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED
    assert "may or may not have reached the customer" in message.failure_reason
    assert Notification.objects.get(recipient=bob, kind="failed").message == message
    assert len(twilio.calls()) == 1
    purge_broker()
    message_retry(message=message)
    assert message_deliver(message.pk).status == Message.Status.SENT


@pytest.mark.django_db(transaction=True)
def test_a_send_slower_than_the_sweeps_patience_ends_sent_all_the_same(
    client, twilio, sms_inbox, bob, settings
):
    """The sweep gave up on an attempt that was only slow (a stalled worker): when Twilio's
    answer does come, the SMS is sent, with its sid, not left failed for a retry that would
    reach the customer twice."""
    settings.PROVIDER_TIMEOUT_SECONDS = 60
    deliver(twilio, client, sms_inbox, incoming())
    sid = "SM" + "7" * 32
    twilio.next_sids.append(sid)
    twilio.fail("slow")
    message = services.reply_send(
        conversation=Message.objects.get().conversation, author=bob, text="Hi"
    )

    def attempt():
        try:
            return message_deliver(message.pk)
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(attempt)
        assert twilio.called.wait(30)
        with time_machine.travel(timezone.now() + SENDING_ABANDONED + timedelta(minutes=1)):
            sweep_stuck()
        assert Message.objects.get(pk=message.pk).status == Message.Status.FAILED
        twilio.go_on.set()
        assert sending.result(timeout=30).status == Message.Status.SENT
    message.refresh_from_db()
    assert (message.status, message.provider_id, message.failure_reason) == ("sent", sid, "")
    deliver(twilio, client, sms_inbox, status_callback(sid, "delivered"))
    assert Message.objects.get(pk=message.pk).status == Message.Status.DELIVERED
