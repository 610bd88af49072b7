"""Messenger, end to end against a loopback fake of Meta's Graph API: signed webhooks in,
the Send API out. Payloads under tests/fixtures/meta/ follow Meta's documented examples."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.utils import timezone

from channels_adapters.delivery import (
    attachment_fetch,
    identity_profile_fetch,
    message_deliver,
)
from channels_adapters.models import InboundEvent
from conversations import services
from conversations.models import Attachment, Channel, Identity, Inbox, Message
from tests.conftest import (
    deliver_webhook,
    process_pending,
    receive,
    status_of,
    wait_for,
    webhook_path,
)
from tests.providers import FakeGraph, meta_payload

PSID = "6254792914585671"  # the customer of most fixtures
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def page_inbox(support, graph):
    return Inbox.objects.create(
        name="Acme on Messenger",
        kind=Channel.MESSENGER,
        default_team=support,
        settings={"page_id": graph.page_id, "api_base_url": graph.base_url},
        credentials={
            "page_access_token": graph.token,
            "app_secret": graph.app_secret,
            "verify_token": "a-verify-token-we-chose",
        },
    )


def customer_wrote(inbox, text="Oi, preciso de ajuda", psid=PSID):
    return receive(inbox, text=text, address=psid).message.conversation


def sent_reply(inbox, bob, text="Claro! Vou verificar 🙂"):
    """A customer message, and an agent's reply that reached Meta."""
    conversation = customer_wrote(inbox)
    reply = services.reply_send(conversation=conversation, author=bob, text=text)
    assert message_deliver(reply.pk).status == Message.Status.SENT
    reply.refresh_from_db()
    return reply


# --- The webhook's gate --------------------------------------------------------------------


@pytest.mark.django_db
class TestWebhookGate:
    def test_it_answers_metas_subscription_check_with_the_challenge(self, client, page_inbox):
        response = client.get(
            webhook_path(page_inbox),
            {
                "hub.mode": "subscribe",
                "hub.verify_token": "a-verify-token-we-chose",
                "hub.challenge": "1158201444",
            },
        )
        assert response.status_code == 200
        assert response.content == b"1158201444"
        assert response["Content-Type"].startswith("text/plain")

    @pytest.mark.parametrize(
        "params",
        [
            {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
            {"hub.mode": "subscribe", "hub.challenge": "1"},
            {"hub.mode": "unsubscribe", "hub.verify_token": "a-verify-token-we-chose"},
            {},
        ],
    )
    def test_it_refuses_a_subscription_check_without_our_token(self, client, page_inbox, params):
        response = client.get(webhook_path(page_inbox), params)
        assert response.status_code == 403
        assert b"1" not in response.content

    def test_an_inbox_without_a_verify_token_refuses_an_empty_one(self, client, page_inbox):
        page_inbox.credentials["verify_token"] = ""
        page_inbox.save()
        params = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "7"}
        assert client.get(webhook_path(page_inbox), params).status_code == 403

    @pytest.mark.parametrize(
        "signature",
        [
            None,
            "",
            "sha256=",
            "sha256=" + "0" * 64,
            "sha1=0123456789abcdef0123456789abcdef01234567",
            "signed-by-someone",
        ],
    )
    def test_a_missing_or_bad_signature_is_refused_and_nothing_stored(
        self, client, page_inbox, signature
    ):
        headers = {} if signature is None else {"HTTP_X_HUB_SIGNATURE_256": signature}
        response = client.post(
            webhook_path(page_inbox),
            data=meta_payload("messenger_text.json"),
            content_type="application/json",
            **headers,
        )
        assert response.status_code == 403
        assert not InboundEvent.objects.exists()

    def test_a_signature_made_with_another_apps_secret_is_refused(self, client, page_inbox):
        other_app = FakeGraph(app_secret="someone-elses-secret")
        try:
            response = other_app.post_webhook(
                client, webhook_path(page_inbox), meta_payload("messenger_text.json")
            )
        finally:
            other_app.close()
        assert response.status_code == 403
        assert not InboundEvent.objects.exists()

    def test_a_signature_for_another_body_is_refused(self, client, graph, page_inbox):
        body = meta_payload("messenger_text.json")
        tampered = body.replace(b"chegou", b"CHEGOU")
        response = client.post(
            webhook_path(page_inbox),
            data=tampered,
            content_type="application/json",
            HTTP_X_HUB_SIGNATURE_256=graph.sign(body),
        )
        assert response.status_code == 403
        assert not InboundEvent.objects.exists()

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("messenger_text.json", "Olá! Meu pedido ainda não chegou 😢 ¿Podem ajudar?"),
            # Meta escapes non-ASCII (and slashes) in the JSON it signs: the HMAC is over those
            # bytes, not over a re-encoding of the decoded text.
            (
                "messenger_escaped.json",
                "こんにちは、注文について — café 😀 https://acme.example/o/42",
            ),
        ],
    )
    def test_a_signature_over_non_ascii_bytes_is_accepted(
        self, client, graph, page_inbox, name, text
    ):
        (event,) = deliver_webhook(client, graph, page_inbox, meta_payload(name))
        assert event.status == InboundEvent.Status.PROCESSED
        assert event.message.text == text

    @pytest.mark.parametrize(
        "body",
        [
            b"{not json",
            b"\xff\xfe not utf-8",
            b"[]",
            b'{"object": "whatsapp_business_account", "entry": []}',
            b'{"object": "page", "entry": {"id": "1"}}',
        ],
    )
    def test_an_unreadable_body_gets_400_and_nothing_is_stored(
        self, client, graph, page_inbox, body
    ):
        response = graph.post_webhook(client, webhook_path(page_inbox), body)
        assert response.status_code == 400
        assert not InboundEvent.objects.exists()

    def test_the_same_webhook_twice_makes_one_message(self, client, graph, page_inbox):
        body = meta_payload("messenger_text.json")
        deliver_webhook(client, graph, page_inbox, body)
        # Meta's retry may be serialised differently; the mid still identifies it.
        deliver_webhook(client, graph, page_inbox, json.dumps(json.loads(body), indent=1).encode())
        assert InboundEvent.objects.count() == 1
        assert Message.objects.count() == 1

    def test_the_webhook_of_another_inbox_kind_is_not_found(self, client, graph, page_inbox):
        response = graph.post_webhook(
            client,
            f"/channels/whatsapp/{page_inbox.pk}/webhook",
            meta_payload("messenger_text.json"),
        )
        assert response.status_code == 404


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_deliveries_of_one_message_store_it_once(graph, page_inbox):
    body = meta_payload("messenger_text.json")
    # Half the copies are re-serialised, as a retry from another Meta server may be.
    copies = [body if i % 2 else json.dumps(json.loads(body)).encode() for i in range(10)]
    start = threading.Barrier(len(copies))

    def deliver(copy):
        try:
            start.wait(timeout=10)
            return graph.post_webhook(Client(), webhook_path(page_inbox), copy).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(len(copies)) as pool:
        codes = list(pool.map(deliver, copies))

    assert codes == [200] * 10
    assert InboundEvent.objects.count() == 1
    process_pending()
    message = Message.objects.get()
    assert message.text.startswith("Olá! Meu pedido")


# --- Inbound ---------------------------------------------------------------------------------


@pytest.mark.django_db
class TestInbound:
    def test_every_event_of_every_entry_in_a_batch_is_stored(self, client, graph, page_inbox):
        (event,) = deliver_webhook(client, graph, page_inbox, meta_payload("messenger_batch.json"))

        assert event.status == InboundEvent.Status.PROCESSED
        messages = {m.provider_id: m for m in Message.objects.select_related("identity")}
        assert set(messages) == {
            "m_batch_1_pt",
            "m_batch_2_quick",
            "m_batch_3_ja",
            "m_batch_4_postback",
        }
        assert messages["m_batch_1_pt"].text == "Bom dia, preciso trocar o tamanho 👕"
        assert messages["m_batch_3_ja"].text == "返品したいです。よろしくお願いします 🙏"
        assert messages["m_batch_3_ja"].identity.address == "7310452867593412"
        # Two messages from one customer land in one conversation; three customers in all.
        assert messages["m_batch_1_pt"].conversation == messages["m_batch_2_quick"].conversation
        assert len({m.conversation.customer_id for m in messages.values()}) == 3
        assert all(m.direction == Message.Direction.INBOUND for m in messages.values())

    def test_a_blocked_sender_in_a_batch_holds_back_nobody_else(self, client, graph, page_inbox):
        from conversations.models import Customer
        from conversations.services import customer_block

        spammer = Customer.objects.create(name="Spam bot")
        Identity.objects.create(
            customer=spammer, kind=Channel.MESSENGER, address="7310452867593412"
        )
        customer_block(customer=spammer, actor=None)
        (event,) = deliver_webhook(client, graph, page_inbox, meta_payload("messenger_batch.json"))

        assert event.status == InboundEvent.Status.PROCESSED
        assert event.error == "This sender is blocked: the message was not taken."
        stored = set(Message.objects.values_list("provider_id", flat=True))
        assert stored == {"m_batch_1_pt", "m_batch_2_quick", "m_batch_4_postback"}

    def test_a_quick_reply_keeps_its_text_and_payload(self, client, graph, page_inbox):
        deliver_webhook(client, graph, page_inbox, meta_payload("messenger_batch.json"))
        message = Message.objects.get(provider_id="m_batch_2_quick")
        assert message.text == "Trocar por M"
        assert message.metadata["quick_reply_payload"] == "SIZE_M"

    def test_a_postback_shows_the_button_title_and_keeps_its_payload(
        self, client, graph, page_inbox
    ):
        deliver_webhook(client, graph, page_inbox, meta_payload("messenger_batch.json"))
        message = Message.objects.get(provider_id="m_batch_4_postback")
        assert message.text == "Falar com um atendente"
        assert message.metadata["postback_payload"] == "TALK_TO_HUMAN"

    def test_a_postback_without_a_mid_is_stored_once(self, client, graph, page_inbox):
        body = meta_payload("messenger_postback_without_mid.json")
        deliver_webhook(client, graph, page_inbox, body)
        # A redelivery with other spacing has another body hash; its provider id is the same.
        deliver_webhook(client, graph, page_inbox, json.dumps(json.loads(body)).encode())
        message = Message.objects.get()
        assert message.text == "Começar"
        assert message.metadata["postback_payload"] == "GET_STARTED"

    def test_attachments_are_fetched_into_files_and_places_become_text(
        self, client, graph, page_inbox, settings
    ):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = True  # the fake CDN is on 127.0.0.1
        photo = b"\xff\xd8\xff\xe0" + b"jpeg" * 100
        graph.media["/v/t1.15752-9/caixa_quebrada.jpg"] = (photo, "image/jpeg")
        url = f"{graph.url}/v/t1.15752-9/caixa_quebrada.jpg?_nc_cat=104&oh=00_AYD"
        deliver_webhook(
            client, graph, page_inbox, meta_payload("messenger_attachments.json", MEDIA_URL=url)
        )

        message = Message.objects.get()
        assert message.text.splitlines() == [
            "Chegou assim, quebrado:",
            "📍 Loja Centro (-23.5505, -46.6333) https://maps.google.com/?q=-23.5505,-46.6333",
            "Acme — Política de trocas https://acme.example/trocas",
        ]
        attachment = message.attachments.get()
        assert attachment.is_pending
        assert attachment_fetch(attachment.pk) == "fetched"
        attachment.refresh_from_db()
        assert attachment.file.read() == photo
        assert attachment.content_type == "image/jpeg"
        assert attachment.filename == "caixa_quebrada.jpg"

    def test_media_on_a_private_address_is_refused_and_the_agent_sees_why(
        self, client, graph, page_inbox, settings
    ):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = False
        graph.media["/internal/secret.jpg"] = (b"internal", "image/jpeg")
        url = f"{graph.url}/internal/secret.jpg"
        deliver_webhook(
            client, graph, page_inbox, meta_payload("messenger_attachments.json", MEDIA_URL=url)
        )

        attachment = Attachment.objects.get()
        assert attachment_fetch(attachment.pk) == "failed"
        attachment.refresh_from_db()
        assert not attachment.file
        assert "not a public address" in attachment.fetch_error
        assert not [r for r in graph.requests if r.path == "/internal/secret.jpg"]

    def test_a_reply_typed_in_the_page_inbox_is_stored_as_an_agent_message(
        self, client, graph, page_inbox
    ):
        conversation = customer_wrote(page_inbox)
        assert conversation.waiting_since is not None

        deliver_webhook(client, graph, page_inbox, meta_payload("messenger_echo.json"))

        echo = Message.objects.get(provider_id="m_echo_from_page_inbox")
        assert echo.direction == Message.Direction.OUTBOUND
        assert echo.status == Message.Status.SENT
        assert echo.conversation == conversation
        assert echo.identity.address == PSID
        assert echo.text == "Oi! Aqui é a Marta, da loja. Já vou verificar 👍"
        conversation.refresh_from_db()
        assert conversation.waiting_since is None  # the customer got an answer

    def test_the_echo_of_our_own_reply_is_not_stored_again(self, client, graph, page_inbox, bob):
        # The echo may be processed before the send's answer gave the reply its mid.
        conversation = customer_wrote(page_inbox)
        reply = services.reply_send(conversation=conversation, author=bob, text="Já vou ver")
        echo = json.loads(meta_payload("messenger_echo.json"))
        echo["entry"][0]["messaging"][0]["message"].update(
            mid="m_echo_of_our_send", text=reply.text, metadata=f"threadline:{reply.pk}"
        )

        (event,) = deliver_webhook(client, graph, page_inbox, echo)

        assert event.status == InboundEvent.Status.IGNORED
        assert list(Message.objects.filter(direction=Message.Direction.OUTBOUND)) == [reply]

    def test_events_for_another_page_are_skipped(self, client, graph, page_inbox):
        page_inbox.settings["page_id"] = "9999999999"
        page_inbox.save()
        (event,) = deliver_webhook(client, graph, page_inbox, meta_payload("messenger_text.json"))
        assert event.status == InboundEvent.Status.IGNORED
        assert not Message.objects.exists()

    def test_the_customers_name_is_looked_up_once(self, client, graph, page_inbox):
        graph.profiles[PSID] = {"first_name": "João", "last_name": "Silva"}
        deliver_webhook(client, graph, page_inbox, meta_payload("messenger_text.json"))
        identity = Identity.objects.get(kind=Channel.MESSENGER, address=PSID)

        assert identity_profile_fetch(identity.pk) is True
        assert identity_profile_fetch(identity.pk) is False
        deliver_webhook(client, graph, page_inbox, meta_payload("messenger_batch.json"))
        identity_profile_fetch(identity.pk)

        identity.refresh_from_db()
        assert identity.customer.name == "João Silva"
        lookups = graph.calls("GET")
        assert len(lookups) == 1
        assert lookups[0].path == f"/v21.0/{PSID}"
        assert lookups[0].query["fields"] == "first_name,last_name"
        assert lookups[0].headers["authorization"] == f"Bearer {graph.token}"


# --- Delivery and read receipts -----------------------------------------------------------------


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@pytest.mark.django_db
class TestReceipts:
    def test_a_delivery_receipt_marks_the_reply_delivered(self, client, graph, page_inbox, bob):
        reply = sent_reply(page_inbox, bob)
        deliver_webhook(
            client,
            graph,
            page_inbox,
            meta_payload("messenger_delivery.json", MID=reply.provider_id),
        )
        reply.refresh_from_db()
        assert reply.status == Message.Status.DELIVERED
        assert reply.delivered_at is not None

    def test_a_read_watermark_marks_what_was_sent_before_it_read(
        self, client, graph, page_inbox, bob
    ):
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(page_inbox)
        replies = []
        for minutes in (1, 2, 10):
            with time_machine.travel(START + timedelta(minutes=minutes), tick=False):
                reply = services.reply_send(conversation=conversation, author=bob, text="Oi")
                message_deliver(reply.pk)
                replies.append(reply)
        read = json.loads(meta_payload("messenger_read.json"))
        read["entry"][0]["messaging"][0]["read"]["watermark"] = ms(START + timedelta(minutes=2))

        with time_machine.travel(START + timedelta(minutes=11), tick=False):
            deliver_webhook(client, graph, page_inbox, read)

        assert [status_of(r) for r in replies] == ["read", "read", "sent"]

    def test_the_newest_reply_is_read_by_a_watermark_at_metas_own_stamp(
        self, client, graph, page_inbox, bob
    ):
        """Meta stamps a message while it handles our Send API call, and a read watermark is
        the newest read message's stamp; the answer to our call reaches us after it."""
        accept, stamped = graph._messenger_send, []
        with time_machine.travel(START, tick=False) as clock:

            def send_then_answer_late(request):
                stamped.append(ms(timezone.now()))
                clock.shift(timedelta(milliseconds=300))  # the answer's way back to us
                return accept(request)

            graph._messenger_send = send_then_answer_late
            conversation = customer_wrote(page_inbox)
            reply = services.reply_send(conversation=conversation, author=bob, text="Claro!")
            message_deliver(reply.pk)
        read = json.loads(meta_payload("messenger_read.json"))
        read["entry"][0]["messaging"][0]["read"]["watermark"] = stamped[0]

        deliver_webhook(client, graph, page_inbox, read)

        assert status_of(reply) == Message.Status.READ

    def test_a_delivery_watermark_without_mids_marks_earlier_replies_delivered(
        self, client, graph, page_inbox, bob
    ):
        with time_machine.travel(START, tick=False):
            reply = sent_reply(page_inbox, bob)
        delivery = json.loads(meta_payload("messenger_delivery.json"))
        receipt = delivery["entry"][0]["messaging"][0]["delivery"]
        del receipt["mids"]
        receipt["watermark"] = ms(START + timedelta(seconds=5))

        deliver_webhook(client, graph, page_inbox, delivery)

        assert status_of(reply) == Message.Status.DELIVERED

    def test_late_and_repeated_receipts_never_move_a_status_back(
        self, client, graph, page_inbox, bob
    ):
        with time_machine.travel(START, tick=False):
            reply = sent_reply(page_inbox, bob)
        read = json.loads(meta_payload("messenger_read.json"))
        read["entry"][0]["messaging"][0]["read"]["watermark"] = ms(START + timedelta(minutes=1))
        deliver_webhook(client, graph, page_inbox, read)
        assert status_of(reply) == Message.Status.READ

        # The delivery receipt overtaken by the read one arrives, then both again.
        delivered = meta_payload("messenger_delivery.json", MID=reply.provider_id)
        deliver_webhook(client, graph, page_inbox, delivered)
        deliver_webhook(client, graph, page_inbox, json.dumps(json.loads(delivered)).encode())
        read["entry"][0]["time"] += 1  # a new delivery of the same watermark
        deliver_webhook(client, graph, page_inbox, read)

        reply.refresh_from_db()
        assert reply.status == Message.Status.READ
        assert reply.read_at is not None and reply.delivered_at is not None


# --- Sending ---------------------------------------------------------------------------------


@pytest.mark.django_db
class TestSend:
    def test_a_reply_reaches_meta_as_a_response_marked_as_ours(self, graph, page_inbox, bob):
        reply = sent_reply(page_inbox, bob, text="Claro! Vou verificar 🙂 ありがとう")

        ((request, mid),) = graph.sent
        assert request.path == f"/v21.0/{graph.page_id}/messages"
        assert request.headers["authorization"] == f"Bearer {graph.token}"
        assert request.json() == {
            "recipient": {"id": PSID},
            "messaging_type": "RESPONSE",
            "message": {
                "text": "Claro! Vou verificar 🙂 ありがとう",
                "metadata": f"threadline:{reply.pk}",
            },
        }
        assert reply.provider_id == mid
        assert reply.status == Message.Status.SENT

    def test_between_24_hours_and_7_days_a_reply_goes_with_the_human_agent_tag(
        self, graph, page_inbox, bob
    ):
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(page_inbox)
        with time_machine.travel(START + timedelta(days=3), tick=False):
            reply = services.reply_send(conversation=conversation, author=bob, text="Desculpe")
            assert message_deliver(reply.pk).status == Message.Status.SENT

        payload = graph.payloads()[0]
        assert payload["messaging_type"] == "MESSAGE_TAG"
        assert payload["tag"] == "HUMAN_AGENT"

    def test_after_7_days_the_reply_is_refused_and_meta_never_called(self, graph, page_inbox, bob):
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(page_inbox)
        with time_machine.travel(START + timedelta(days=7, minutes=1), tick=False):
            with pytest.raises(ValidationError) as refused:
                services.reply_send(conversation=conversation, author=bob, text="Ainda aí?")

        assert "more than 7 days ago" in refused.value.messages[0]
        assert not Message.objects.filter(direction=Message.Direction.OUTBOUND).exists()
        assert graph.requests == []

    def test_without_the_human_agent_tag_the_window_is_24_hours(self, graph, page_inbox, bob):
        page_inbox.settings["human_agent_tag"] = False
        page_inbox.save()
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(page_inbox)
        with time_machine.travel(START + timedelta(hours=25), tick=False):
            with pytest.raises(ValidationError, match="more than 24 hours ago"):
                services.reply_send(conversation=conversation, author=bob, text="Oi")
        assert graph.requests == []

    def test_a_reply_whose_window_closed_while_queued_fails_without_calling_meta(
        self, graph, page_inbox, bob
    ):
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(page_inbox)
        with time_machine.travel(START + timedelta(days=6, hours=23), tick=False):
            reply = services.reply_send(conversation=conversation, author=bob, text="Oi")
        with time_machine.travel(START + timedelta(days=7, hours=1), tick=False):
            assert message_deliver(reply.pk).status == Message.Status.FAILED

        reply.refresh_from_db()
        assert "more than 7 days ago" in reply.failure_reason
        assert graph.requests == []

    def test_a_text_over_2000_characters_is_refused(self, graph, page_inbox, bob):
        conversation = customer_wrote(page_inbox)
        with pytest.raises(ValidationError, match="at most 2000 characters"):
            services.reply_send(conversation=conversation, author=bob, text="a" * 2001)

    def test_attachments_are_uploaded_one_send_each_after_the_text(self, graph, page_inbox, bob):
        conversation = customer_wrote(page_inbox)
        reply = services.reply_send(
            conversation=conversation,
            author=bob,
            text="Segue a etiqueta de troca",
            attachments=(
                services.InboundAttachment("etiqueta.pdf", "application/pdf", b"%PDF-1.4 label"),
                services.InboundAttachment("mapa.png", "image/png", b"\x89PNG map"),
            ),
        )
        assert message_deliver(reply.pk).status == Message.Status.SENT

        text, pdf, png = graph.payloads()
        assert text["message"]["text"] == "Segue a etiqueta de troca"
        for part, kind, file in (
            (pdf, "file", ("etiqueta.pdf", "application/pdf", b"%PDF-1.4 label")),
            (png, "image", ("mapa.png", "image/png", b"\x89PNG map")),
        ):
            assert part["recipient"] == {"id": PSID}
            assert part["messaging_type"] == "RESPONSE"
            assert part["message"] == {
                "attachment": {"type": kind, "payload": {"is_reusable": True}},
                "metadata": f"threadline:{reply.pk}",
            }
            assert part["filedata"] == file
        reply.refresh_from_db()
        assert reply.provider_id == graph.sent[0][1]

    def test_an_attachment_failing_after_the_text_went_out_is_not_retried(
        self, graph, page_inbox, bob
    ):
        conversation = customer_wrote(page_inbox)
        reply = services.reply_send(
            conversation=conversation,
            author=bob,
            text="Segue a foto",
            attachments=(services.InboundAttachment("foto.png", "image/png", b"\x89PNG"),),
        )
        graph.fail("", "500")  # the text goes; the attachment hits a server error

        assert message_deliver(reply.pk).status == Message.Status.FAILED
        reply.refresh_from_db()
        assert "Only 1 of 2 parts were sent" in reply.failure_reason
        assert len(graph.sent) == 1

    @pytest.mark.parametrize(
        ("mode", "reason"),
        [
            ("500", "An unexpected error has occurred. (code 2)"),
            ("429", "Application request limit reached (code 4)"),
            ("rate_limit", "Calls to this api have exceeded the rate limit. (code 613)"),
            ("temporary", "Temporary send message failure. Please try again later. (code 1200)"),
        ],
    )
    def test_a_transient_error_is_retried_and_the_retry_sends_once(
        self, graph, page_inbox, bob, mode, reason
    ):
        conversation = customer_wrote(page_inbox)
        reply = services.reply_send(conversation=conversation, author=bob, text="Oi")
        graph.fail(mode)

        outcome = message_deliver(reply.pk)

        reply.refresh_from_db()
        assert outcome.status == reply.status == Message.Status.QUEUED
        assert reason in reply.failure_reason
        assert reply.next_attempt_at is not None
        assert message_deliver(reply.pk) is None  # backing off: nothing happens yet
        with time_machine.travel(reply.next_attempt_at + timedelta(seconds=1), tick=False):
            assert message_deliver(reply.pk).status == Message.Status.SENT

        reply.refresh_from_db()
        assert list(reply.attempts_log.values_list("outcome", flat=True)) == ["retry", "sent"]
        assert reply.failure_reason == ""
        assert len(graph.sent) == 1
        assert reply.provider_id == graph.sent[0][1]

    def test_a_timeout_is_retried(self, graph, page_inbox, bob, settings):
        settings.PROVIDER_TIMEOUT_SECONDS = 0.3
        conversation = customer_wrote(page_inbox)
        reply = services.reply_send(conversation=conversation, author=bob, text="Oi")
        graph.fail("timeout")

        assert message_deliver(reply.pk).status == Message.Status.QUEUED
        reply.refresh_from_db()
        assert "did not answer in time" in reply.failure_reason
        with time_machine.travel(reply.next_attempt_at + timedelta(seconds=1), tick=False):
            assert message_deliver(reply.pk).status == Message.Status.SENT
        assert len(graph.sent) == 1

    @pytest.mark.parametrize(
        ("mode", "reason"),
        [
            ("invalid_recipient", "(#100) No matching user found (code 100/2018001)"),
            ("outside_window", "Messenger only delivers when they write again"),
        ],
    )
    def test_a_refusal_from_meta_fails_the_reply_with_its_reason(
        self, graph, page_inbox, bob, mode, reason
    ):
        conversation = customer_wrote(page_inbox)
        reply = services.reply_send(conversation=conversation, author=bob, text="Oi")
        graph.fail(mode)

        assert message_deliver(reply.pk).status == Message.Status.FAILED
        reply.refresh_from_db()
        assert reason in reply.failure_reason
        assert list(reply.attempts_log.values_list("outcome", flat=True)) == ["failed"]
        assert graph.sent == []

    def test_a_wrong_page_token_fails_with_metas_reason(self, graph, page_inbox, bob):
        page_inbox.credentials["page_access_token"] = "expired-token"
        page_inbox.save()
        conversation = customer_wrote(page_inbox)
        reply = services.reply_send(conversation=conversation, author=bob, text="Oi")

        assert message_deliver(reply.pk).status == Message.Status.FAILED
        reply.refresh_from_db()
        assert "Invalid OAuth access token" in reply.failure_reason
        assert "(code 190)" in reply.failure_reason


@pytest.mark.django_db(transaction=True)
def test_the_worker_stores_the_message_names_the_customer_and_delivers_the_reply(
    embedded_worker, client, graph, page_inbox, bob
):
    graph.profiles[PSID] = {"first_name": "João", "last_name": "Silva"}
    response = graph.post_webhook(
        client, webhook_path(page_inbox), meta_payload("messenger_text.json")
    )
    assert response.status_code == 200

    message = wait_for(
        lambda: Message.objects.filter(direction="inbound").first(), what="the message"
    )
    wait_for(
        lambda: Identity.objects.filter(address=PSID, customer__name="João Silva").exists(),
        what="the profile name",
    )
    reply = services.reply_send(conversation=message.conversation, author=bob, text="Oi, João!")
    wait_for(lambda: status_of(reply) == Message.Status.SENT, what="the reply to be sent")
    assert graph.payloads()[0]["message"]["text"] == "Oi, João!"
