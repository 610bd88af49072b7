"""WhatsApp (Cloud API), end to end against a loopback fake of Meta's Graph API. Payloads
under tests/fixtures/meta/ follow Meta's documented webhook examples."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse

from channels_adapters.delivery import attachment_fetch, message_deliver, message_retry
from channels_adapters.models import InboundEvent
from conversations import services
from conversations.models import (
    Attachment,
    Channel,
    Inbox,
    Message,
    Notification,
)
from tests.conftest import (
    deliver_webhook,
    process_pending,
    receive,
    status_of,
    wait_for,
    webhook_path,
)
from tests.providers import FakeGraph, meta_payload, multipart_fields

NUMBER = "5511987654321"  # João, in most fixtures
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg" * 64
PDF = b"%PDF-1.4\n% nota fiscal\n"


@pytest.fixture
def wa_inbox(support, graph):
    return Inbox.objects.create(
        name="Acme on WhatsApp",
        kind=Channel.WHATSAPP,
        address="+15550783881",
        default_team=support,
        settings={
            "phone_number_id": graph.phone_number_id,
            "api_base_url": graph.base_url,
            "templates": [
                {
                    "name": "order_update",
                    "language": "pt_BR",
                    "body": "Olá! Há novidades sobre o seu pedido. Responda para continuar.",
                },
                {"name": "shipped_named", "language": "en_US", "body": "Hi {{1}}, it shipped."},
            ],
        },
        credentials={
            "access_token": graph.token,
            "app_secret": graph.app_secret,
            "verify_token": "wa-verify-token",
        },
    )


def customer_wrote(inbox, text="Oi, tudo bem?", number=NUMBER):
    return receive(inbox, text=text, address=number).message.conversation


def sent_reply(inbox, bob, text="Olá João! Vou verificar 🙂"):
    conversation = customer_wrote(inbox)
    reply = services.reply_send(conversation=conversation, author=bob, text=text)
    assert message_deliver(reply.pk).status == Message.Status.SENT
    reply.refresh_from_db()
    return reply


# --- The webhook's gate ----------------------------------------------------------------------


@pytest.mark.django_db
class TestWebhookGate:
    def test_it_answers_metas_subscription_check(self, client, wa_inbox):
        params = {"hub.mode": "subscribe", "hub.verify_token": "wa-verify-token"}
        response = client.get(webhook_path(wa_inbox), {**params, "hub.challenge": "987654"})
        assert response.status_code == 200
        assert response.content == b"987654"
        wrong = {**params, "hub.verify_token": "wa-verify-tokeN", "hub.challenge": "987654"}
        assert client.get(webhook_path(wa_inbox), wrong).status_code == 403

    @pytest.mark.parametrize("signature", [None, "sha256=" + "f" * 64, "sha256=zz"])
    def test_a_missing_or_bad_signature_is_refused_and_nothing_stored(
        self, client, wa_inbox, signature
    ):
        headers = {} if signature is None else {"HTTP_X_HUB_SIGNATURE_256": signature}
        response = client.post(
            webhook_path(wa_inbox),
            data=meta_payload("whatsapp_text.json"),
            content_type="application/json",
            **headers,
        )
        assert response.status_code == 403
        assert not InboundEvent.objects.exists()

    def test_an_inbox_without_an_app_secret_refuses_every_webhook(self, client, graph, wa_inbox):
        wa_inbox.credentials["app_secret"] = ""
        wa_inbox.save()
        unsigned = FakeGraph(app_secret="")
        try:
            response = unsigned.post_webhook(
                client, webhook_path(wa_inbox), meta_payload("whatsapp_text.json")
            )
        finally:
            unsigned.close()
        assert response.status_code == 403
        assert not InboundEvent.objects.exists()

    @pytest.mark.parametrize(
        ("name", "text", "customer"),
        [
            ("whatsapp_text.json", "Olá! Meu pedido #4521 ainda não chegou 😟", "João Silva"),
            ("whatsapp_escaped.json", "こんにちは！届いていません 📦", "田中 花子"),
        ],
    )
    def test_raw_and_escaped_non_ascii_bodies_are_accepted(
        self, client, graph, wa_inbox, name, text, customer
    ):
        (event,) = deliver_webhook(client, graph, wa_inbox, meta_payload(name))
        assert event.status == InboundEvent.Status.PROCESSED
        assert event.message.text == text
        assert event.message.conversation.customer.name == customer

    @pytest.mark.parametrize(
        "body", [b"", b"{", b'{"object": "page", "entry": []}', b'"whatsapp_business_account"']
    )
    def test_an_unreadable_body_gets_400_and_nothing_is_stored(self, client, graph, wa_inbox, body):
        assert graph.post_webhook(client, webhook_path(wa_inbox), body).status_code == 400
        assert not InboundEvent.objects.exists()

    def test_the_same_webhook_twice_makes_one_message(self, client, graph, wa_inbox):
        deliver_webhook(client, graph, wa_inbox, meta_payload("whatsapp_text.json"))
        deliver_webhook(client, graph, wa_inbox, meta_payload("whatsapp_text.json"))
        assert InboundEvent.objects.count() == 1
        assert Message.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_deliveries_of_one_message_store_it_once(graph, wa_inbox):
    body = meta_payload("whatsapp_text.json")
    copies = [body if i % 2 else json.dumps(json.loads(body)).encode() for i in range(10)]
    start = threading.Barrier(len(copies))

    def deliver(copy):
        try:
            start.wait(timeout=10)
            return graph.post_webhook(Client(), webhook_path(wa_inbox), copy).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(len(copies)) as pool:
        assert list(pool.map(deliver, copies)) == [200] * 10

    assert InboundEvent.objects.count() == 1
    process_pending()
    assert Message.objects.get().text == "Olá! Meu pedido #4521 ainda não chegou 😟"


# --- Inbound ---------------------------------------------------------------------------------


@pytest.mark.django_db
class TestInbound:
    def test_the_number_becomes_an_e164_identity_shared_with_sms(self, client, graph, wa_inbox):
        texted = services.identity_get_or_create(kind=Channel.SMS, address="+55 11 98765-4321")

        (event,) = deliver_webhook(client, graph, wa_inbox, meta_payload("whatsapp_text.json"))

        identity = event.message.identity
        assert (identity.kind, identity.address) == (Channel.WHATSAPP, "+5511987654321")
        assert identity.customer == texted.customer

    def test_every_message_of_every_entry_in_a_batch_is_stored(self, client, graph, wa_inbox):
        (event,) = deliver_webhook(client, graph, wa_inbox, meta_payload("whatsapp_batch.json"))

        assert event.status == InboundEvent.Status.PROCESSED
        stored = {
            m.identity.address: (m.text, m.conversation.customer.name)
            for m in Message.objects.select_related("identity", "conversation__customer")
        }
        assert stored == {
            "+5511987654321": ("Oi de novo 👋", "João Silva"),
            "+819012345678": ("サイズ交換できますか？", "田中 花子"),
            "+351912345678": ("Boa tarde! Já fiz o pagamento.", "Ana Costa"),
        }

    def test_media_is_fetched_with_the_token_into_files(self, client, graph, wa_inbox, settings):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = True
        graph.add_whatsapp_media("1003383421387256", JPEG, "image/jpeg")
        graph.add_whatsapp_media("1003383421387257", PDF, "application/pdf")

        deliver_webhook(client, graph, wa_inbox, meta_payload("whatsapp_media.json"))

        image = Message.objects.get(provider_id="wamid.media.image.1")
        document = Message.objects.get(provider_id="wamid.media.document.2")
        assert (image.text, document.text) == ("A caixa chegou amassada", "Nota fiscal")
        for message, content, filename, content_type in (
            (image, JPEG, "image.jpg", "image/jpeg"),
            (document, PDF, "nota-fiscal-4521.pdf", "application/pdf"),
        ):
            attachment = message.attachments.get()
            assert attachment_fetch(attachment.pk) == "fetched"
            attachment.refresh_from_db()
            assert attachment.file.read() == content
            assert (attachment.filename, attachment.content_type) == (filename, content_type)
        downloads = [r for r in graph.requests if r.path.startswith("/wa/")]
        assert len(downloads) == 2
        assert all(r.headers["authorization"] == f"Bearer {graph.token}" for r in downloads)

    def test_a_photo_without_a_caption_is_stored(self, client, graph, wa_inbox):
        body = json.loads(meta_payload("whatsapp_media.json"))
        messages = body["entry"][0]["changes"][0]["value"]["messages"]
        del messages[1]
        del messages[0]["image"]["caption"]

        (event,) = deliver_webhook(client, graph, wa_inbox, body)

        assert event.status == InboundEvent.Status.PROCESSED
        assert event.message.attachments.get().source == "1003383421387256"

    def test_media_on_a_private_address_is_refused_and_the_agent_sees_why(
        self, client, graph, wa_inbox, settings
    ):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = False
        graph.add_whatsapp_media("1003383421387256", JPEG, "image/jpeg")
        deliver_webhook(client, graph, wa_inbox, meta_payload("whatsapp_media.json"))

        attachment = Attachment.objects.get(source="1003383421387256")
        assert attachment_fetch(attachment.pk) == "failed"
        attachment.refresh_from_db()
        assert not attachment.file
        assert "not a public address" in attachment.fetch_error
        assert not [r for r in graph.requests if r.path.startswith("/wa/")]

    def test_locations_contacts_and_replies_become_readable_text(self, client, graph, wa_inbox):
        deliver_webhook(client, graph, wa_inbox, meta_payload("whatsapp_kinds.json"))

        stored = {m.provider_id: m for m in Message.objects.all()}
        location = stored["wamid.kinds.location"]
        assert location.text == (
            "📍 Museu de Arte de São Paulo, Av. Paulista, 1578 - Bela Vista, São Paulo "
            "(-23.561414, -46.655881) https://maps.google.com/?q=-23.561414,-46.655881"
        )
        assert location.metadata["location"]["latitude"] == -23.561414
        assert stored["wamid.kinds.contacts"].text == (
            "👤 Shared contact: Maria Souza, +55 11 91234-5678, maria@example.com.br"
        )
        listed = stored["wamid.kinds.interactive"]
        assert listed.text == "Trocar tamanho"
        assert listed.metadata == {
            "reply_id": "exchange_size",
            "reply_to": "wamid.our.list.message",
        }
        assert stored["wamid.kinds.button_reply"].text == "Sim, confirmo ✅"
        assert stored["wamid.kinds.button_reply"].metadata["reply_id"] == "confirm_yes"
        button = stored["wamid.kinds.button"]
        assert (button.text, button.metadata["button_payload"]) == (
            "Rastrear pedido",
            "TRACK_ORDER",
        )
        assert "cannot be shown here" in stored["wamid.kinds.unsupported"].text
        # A reaction is not a message: it must not reopen or re-queue the conversation.
        assert "wamid.kinds.reaction" not in stored
        assert len({m.conversation_id for m in stored.values()}) == 1

    def test_changes_for_another_business_number_are_skipped(self, client, graph, wa_inbox):
        wa_inbox.settings["phone_number_id"] = "999000999000"
        wa_inbox.save()
        (event,) = deliver_webhook(client, graph, wa_inbox, meta_payload("whatsapp_text.json"))
        assert event.status == InboundEvent.Status.IGNORED
        assert not Message.objects.exists()


# --- Statuses ----------------------------------------------------------------------------------


@pytest.mark.django_db
class TestStatuses:
    def test_statuses_out_of_order_end_at_read_and_repeats_change_nothing(
        self, client, graph, wa_inbox, bob
    ):
        reply = sent_reply(wa_inbox, bob)
        body = json.loads(meta_payload("whatsapp_statuses.json", WAMID=reply.provider_id))
        deliver_webhook(client, graph, wa_inbox, body)  # read, delivered, sent: in that order
        assert status_of(reply) == Message.Status.READ

        statuses = body["entry"][0]["changes"][0]["value"]["statuses"]
        for status in (statuses[1], statuses[2]):  # delivered and sent again, one by one
            body["entry"][0]["changes"][0]["value"]["statuses"] = [status]
            deliver_webhook(client, graph, wa_inbox, body)

        reply.refresh_from_db()
        assert reply.status == Message.Status.READ
        assert reply.delivered_at is not None and reply.read_at is not None

    def test_delivered_then_read_for_one_message_are_two_events(self, client, graph, wa_inbox, bob):
        reply = sent_reply(wa_inbox, bob)
        body = json.loads(meta_payload("whatsapp_statuses.json", WAMID=reply.provider_id))
        value = body["entry"][0]["changes"][0]["value"]
        read, delivered, _ = value["statuses"]

        value["statuses"] = [delivered]
        deliver_webhook(client, graph, wa_inbox, body)
        assert status_of(reply) == Message.Status.DELIVERED
        value["statuses"] = [read]
        deliver_webhook(client, graph, wa_inbox, body)
        assert status_of(reply) == Message.Status.READ

    def test_a_failed_status_fails_the_reply_with_whatsapps_reason(
        self, client, graph, wa_inbox, bob
    ):
        reply = sent_reply(wa_inbox, bob)
        deliver_webhook(
            client, graph, wa_inbox, meta_payload("whatsapp_failed.json", WAMID=reply.provider_id)
        )
        reply.refresh_from_db()
        assert reply.status == Message.Status.FAILED
        assert reply.failure_reason.startswith(
            "Message undeliverable (code 131026): Message Undeliverable."
        )
        assert "no WhatsApp account" in reply.failure_reason

    def test_a_failure_that_overtakes_its_send_is_not_lost_beside_another_status(
        self, client, graph, wa_inbox, bob
    ):
        """Meta batches statuses: the "delivered" of one reply and the "failed" of another
        whose send has not answered yet. The first is applied at once; the failure, once
        the send has told us its wamid, and Bob hears of it."""
        first = sent_reply(wa_inbox, bob)
        graph.next_wamids.append("wamid.SECOND")
        second = services.reply_send(conversation=first.conversation, author=bob, text="E mais")
        body = json.loads(meta_payload("whatsapp_failed.json", WAMID="wamid.SECOND"))
        value = body["entry"][0]["changes"][0]["value"]
        failed = value["statuses"][0]
        delivered = {key: v for key, v in failed.items() if key != "errors"}
        value["statuses"] = [{**delivered, "id": first.provider_id, "status": "delivered"}, failed]
        deliver_webhook(client, graph, wa_inbox, body)
        assert status_of(first) == Message.Status.DELIVERED
        event = InboundEvent.objects.filter(inbox=wa_inbox).latest("id")
        assert event.status == InboundEvent.Status.PENDING

        message_deliver(second.pk)  # Graph's answer comes: "sent", wamid.SECOND
        process_pending()  # what the sweep does a minute later
        second.refresh_from_db()
        assert second.status == Message.Status.FAILED
        assert second.failure_reason.startswith("Message undeliverable (code 131026)")
        assert Notification.objects.filter(message=second, recipient=bob, kind="failed").exists()
        assert status_of(first) == Message.Status.DELIVERED
        event.refresh_from_db()
        assert (event.status, event.error) == (InboundEvent.Status.PROCESSED, "")


def test_a_retry_is_not_undone_by_the_statuses_its_batch_waited_for(client, graph, wa_inbox, bob):
    """Both replies fail in one batch; the second's send has not answered yet, so the batch
    waits for it. Bob retries the first meanwhile: the batch's replay must not fail it
    again."""
    first = sent_reply(wa_inbox, bob)
    graph.next_wamids.append("wamid.SECOND")
    second = services.reply_send(conversation=first.conversation, author=bob, text="E mais")
    body = json.loads(meta_payload("whatsapp_failed.json", WAMID=first.provider_id))
    value = body["entry"][0]["changes"][0]["value"]
    (failed,) = value["statuses"]
    value["statuses"] = [failed, {**failed, "id": "wamid.SECOND"}]
    deliver_webhook(client, graph, wa_inbox, body)
    assert status_of(first) == Message.Status.FAILED

    message_retry(message=first)
    message_deliver(second.pk)  # the second's wamid is known now
    process_pending()  # the sweep replays the batch
    assert status_of(second) == Message.Status.FAILED
    assert status_of(first) == Message.Status.QUEUED  # Bob's retry stands
    message_deliver(first.pk)
    assert status_of(first) == Message.Status.SENT
    assert Notification.objects.filter(message=first, kind="failed").count() == 1


def test_one_message_of_a_batch_that_cannot_be_taken_keeps_the_others(client, graph, wa_inbox):
    """Meta batches messages: one from a number we cannot read must not keep João's from
    the agents. His goes in; the event fails, naming the other, for an admin to see."""
    body = json.loads(meta_payload("whatsapp_text.json"))
    value = body["entry"][0]["changes"][0]["value"]
    (good,) = value["messages"]
    value["messages"] = [good, {**good, "id": "wamid.BAD", "from": "not-a-number"}]
    deliver_webhook(client, graph, wa_inbox, body)
    (message,) = Message.objects.all()
    assert message.text == good["text"]["body"]
    event = InboundEvent.objects.get(inbox=wa_inbox)
    assert event.status == InboundEvent.Status.FAILED
    assert event.error.startswith("1 of 2 messages not taken: wamid.BAD: ")
    assert event.message == message


def test_a_blocked_customer_writing_from_a_new_channel_keeps_nobody_else_out(
    client, graph, wa_inbox, sms_inbox, alice
):
    """Blocked on SMS, the same number writes on WhatsApp: a new identity of the blocked
    customer, undone with their message. The batch's other sender still goes in."""
    texted = receive(sms_inbox, address="+" + NUMBER).message.conversation
    services.customer_block(customer=texted.customer, actor=alice)
    body = json.loads(meta_payload("whatsapp_text.json"))
    value = body["entry"][0]["changes"][0]["value"]
    (blocked,) = value["messages"]
    value["messages"] = [blocked, {**blocked, "id": "wamid.OTHER", "from": "5511900000000"}]
    deliver_webhook(client, graph, wa_inbox, body)
    assert Message.objects.filter(provider_id="wamid.OTHER").exists()
    event = InboundEvent.objects.get(inbox=wa_inbox)
    assert (event.status, event.headers["blocked"]) == ("processed", f"whatsapp:+{NUMBER}")


def test_a_refused_message_does_not_drop_the_wait_for_a_failure(client, graph, wa_inbox, bob):
    first = sent_reply(wa_inbox, bob)
    graph.next_wamids.append("wamid.SECOND")
    second = services.reply_send(conversation=first.conversation, author=bob, text="E mais")
    body = json.loads(meta_payload("whatsapp_text.json"))
    value = body["entry"][0]["changes"][0]["value"]
    (good,) = value["messages"]
    value["messages"] = [{**good, "id": "wamid.NEW"}, {**good, "id": "wamid.BAD", "from": "x"}]
    failed = json.loads(meta_payload("whatsapp_failed.json", WAMID="wamid.SECOND"))
    value["statuses"] = failed["entry"][0]["changes"][0]["value"]["statuses"]
    deliver_webhook(client, graph, wa_inbox, body)
    event = InboundEvent.objects.get(inbox=wa_inbox)
    assert event.status == InboundEvent.Status.PENDING
    message_deliver(second.pk)  # the send's answer: its wamid is known now
    process_pending()
    assert status_of(second) == Message.Status.FAILED
    event.refresh_from_db()
    assert event.status == InboundEvent.Status.FAILED
    assert "1 of 2 messages not taken: wamid.BAD" in event.error


def test_a_documents_name_loses_what_would_reorder_it(wa_inbox):
    document = services.InboundMedia(
        source="m1", content_type="application/pdf", filename="invoice\u202efdp.exe"
    )
    received = receive(wa_inbox, address=NUMBER, text="see", media=(document,))
    assert received.message.attachments.get().filename == "invoicefdp.exe"


# --- Sending ---------------------------------------------------------------------------------


@pytest.mark.django_db
class TestSend:
    def test_a_reply_in_the_window_reaches_whatsapp_as_text(self, graph, wa_inbox, bob):
        reply = sent_reply(wa_inbox, bob, text="Olá João! 🙂 Seu pedido sai hoje. ありがとう")

        ((request, wamid),) = graph.sent
        assert request.path == f"/v21.0/{graph.phone_number_id}/messages"
        assert request.headers["authorization"] == f"Bearer {graph.token}"
        assert request.json() == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": NUMBER,
            "type": "text",
            "text": {"body": "Olá João! 🙂 Seu pedido sai hoje. ありがとう"},
        }
        assert reply.provider_id == wamid

    def test_a_reply_goes_from_the_number_the_customer_last_wrote_to(self, graph, wa_inbox, bob):
        """João wrote to our sales number days ago, then to support's, which continued that
        conversation: the reply goes from support's number, whose 24 hours are open."""
        with time_machine.travel(START, tick=False):
            sales = Inbox.objects.create(
                name="Sales on WhatsApp",
                kind=Channel.WHATSAPP,
                settings={**wa_inbox.settings, "phone_number_id": "2220001"},
                credentials=wa_inbox.credentials,
            )
            conversation = customer_wrote(sales)
        with time_machine.travel(START + timedelta(days=3), tick=False):
            assert customer_wrote(wa_inbox, text="Alguma novidade?") == conversation
            reply = services.reply_send(conversation=conversation, author=bob, text="Sim!")
            assert reply.inbox == wa_inbox
            assert message_deliver(reply.pk).status == Message.Status.SENT
        ((request, _),) = graph.sent
        assert request.path == f"/v21.0/{graph.phone_number_id}/messages"

    def test_outside_the_window_free_text_is_refused_and_nothing_sent(self, graph, wa_inbox, bob):
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(wa_inbox)
        with time_machine.travel(START + timedelta(hours=24, minutes=1), tick=False):
            with pytest.raises(ValidationError, match="Pick an approved template"):
                services.reply_send(conversation=conversation, author=bob, text="Oi?")
            # No template to pick: the agent is told what can be done instead.
            wa_inbox.settings["templates"] = []
            wa_inbox.save()
            conversation.inbox.refresh_from_db()
            with pytest.raises(ValidationError, match="no approved template to send instead"):
                services.reply_send(conversation=conversation, author=bob, text="Oi?")
        assert not Message.objects.filter(direction=Message.Direction.OUTBOUND).exists()
        assert graph.requests == []

    def test_outside_the_window_a_template_goes(self, graph, wa_inbox, bob):
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(wa_inbox)
        with time_machine.travel(START + timedelta(days=3), tick=False):
            reply = services.reply_send(
                conversation=conversation, author=bob, text="", template="order_update"
            )
            assert message_deliver(reply.pk).status == Message.Status.SENT

        assert graph.payloads() == [
            {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": NUMBER,
                "type": "template",
                "template": {"name": "order_update", "language": {"code": "pt_BR"}},
            }
        ]

    def test_the_agent_is_told_the_window_closed_and_picks_a_template_on_the_page(
        self, client, graph, wa_inbox, bob
    ):
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(wa_inbox)
        seen = conversation.messages.get().pk
        page = reverse("inbox:conversation", args=[conversation.pk])
        client.force_login(bob)
        with time_machine.travel(START + timedelta(hours=1), tick=False):
            shown = client.get(page).content.decode()
        assert 'data-refusal=""' in shown  # free text goes: nothing said before writing
        client.cookies["tz"] = "America/Sao_Paulo"  # the agent's browser's zone
        with time_machine.travel(START + timedelta(days=3), tick=False):
            shown = client.get(page).content.decode()
            # Before a word is written: the window is closed (since when, in the agent's
            # time), and the templates that may go instead (not one with a parameter).
            assert "The customer last wrote on 2026-03-02 06:00 -03, and WhatsApp" in shown
            assert "only delivers free-form messages within 24" in shown
            assert '<option value="order_update|pt_BR" data-body="Olá! Há novidades' in shown
            assert 'value="shipped_named"' not in shown
            sent = client.post(
                reverse("inbox:reply", args=[conversation.pk]),
                {"mode": "reply", "text": "", "template": "order_update|pt_BR", "seen": seen},
            )
            assert sent.status_code == 302
            reply = conversation.messages.get(direction=Message.Direction.OUTBOUND)
            message_deliver(reply.pk)
        # The timeline shows what João read: the template's text.
        assert reply.text == "Olá! Há novidades sobre o seu pedido. Responda para continuar."
        [payload] = graph.payloads()
        assert payload["template"] == {"name": "order_update", "language": {"code": "pt_BR"}}

    def test_a_template_name_in_two_languages_sends_the_one_picked(self, graph, wa_inbox, bob):
        spanish = {"name": "order_update", "language": "es", "body": "¡Hay novedades!"}
        wa_inbox.settings["templates"].append(spanish)
        wa_inbox.save()
        with time_machine.travel(START, tick=False):
            conversation = customer_wrote(wa_inbox)
        with time_machine.travel(START + timedelta(days=3), tick=False):
            reply = services.reply_send(
                conversation=conversation, author=bob, text="", template="order_update|es"
            )
            message_deliver(reply.pk)
        assert reply.text == "¡Hay novedades!"
        [payload] = graph.payloads()
        assert payload["template"] == {"name": "order_update", "language": {"code": "es"}}

    def test_an_agent_writes_first_with_a_template_from_the_customer_page(
        self, client, graph, wa_inbox, bob
    ):
        with time_machine.travel(START, tick=False):
            customer = customer_wrote(wa_inbox).customer
        whatsapp = customer.identities.get(kind=Channel.WHATSAPP)
        client.force_login(bob)
        with time_machine.travel(START + timedelta(days=30), tick=False):
            page = client.get(reverse("inbox:customer", args=[customer.pk])).content.decode()
            assert f'<select id="start-template-{whatsapp.pk}" name="template">' in page
            response = client.post(
                reverse("inbox:customer_start", args=[customer.pk]),
                {"identity": whatsapp.pk, "text": "", "template": ["", "order_update|pt_BR"]},
            )
        assert response.status_code == 302
        started = Message.objects.get(direction=Message.Direction.OUTBOUND)
        assert started.metadata["template"] == "order_update|pt_BR"
        assert started.conversation != customer.conversations.order_by("id").first()

    @pytest.mark.parametrize(
        ("template", "reason"),
        [
            ("order_updates", "no WhatsApp template named 'order_updates'"),
            ("shipped_named", "has parameters to fill in"),
        ],
    )
    def test_a_template_we_cannot_send_is_refused(self, graph, wa_inbox, bob, template, reason):
        conversation = customer_wrote(wa_inbox)
        with pytest.raises(ValidationError, match=reason):
            services.reply_send(conversation=conversation, author=bob, text="", template=template)
        assert graph.requests == []

    def test_files_whatsapp_would_refuse_are_refused_before_anything_is_stored(
        self, graph, wa_inbox, bob
    ):
        conversation = customer_wrote(wa_inbox)
        receipt = services.InboundAttachment("nota.pdf", "application/pdf", PDF)
        with pytest.raises(ValidationError, match="A WhatsApp template cannot carry attachments"):
            services.reply_send(
                conversation=conversation,
                author=bob,
                text="",
                template="order_update",
                attachments=(receipt,),
            )
        photo = services.InboundAttachment("foto.jpg", "image/jpeg", JPEG + bytes(6 << 20))
        with pytest.raises(ValidationError, match="images of at most 5 MB; foto.jpg is larger"):
            services.reply_send(
                conversation=conversation, author=bob, text="", attachments=(photo,)
            )
        assert not Message.objects.filter(direction=Message.Direction.OUTBOUND).exists()
        assert graph.requests == []

    def test_attachments_are_uploaded_then_sent_after_the_text(self, graph, wa_inbox, bob):
        conversation = customer_wrote(wa_inbox)
        reply = services.reply_send(
            conversation=conversation,
            author=bob,
            text="Segue a nota e a foto",
            attachments=(
                services.InboundAttachment("nota.pdf", "application/pdf", PDF),
                services.InboundAttachment("foto.jpg", "image/jpeg", JPEG),
            ),
        )
        assert message_deliver(reply.pk).status == Message.Status.SENT

        uploads = [r for r in graph.calls() if r.path.endswith("/media")]
        assert len(uploads) == 2
        first = multipart_fields(uploads[0])
        assert first["messaging_product"][2] == b"whatsapp"
        assert first["type"][2] == b"application/pdf"
        assert first["file"] == ("nota.pdf", "application/pdf", PDF)
        pdf_id, jpeg_id = graph.uploads
        assert graph.uploads[jpeg_id] == ("foto.jpg", "image/jpeg", JPEG)
        text, document, image = graph.payloads()
        assert text["text"] == {"body": "Segue a nota e a foto"}
        assert (document["type"], document["document"]) == (
            "document",
            {"id": pdf_id, "filename": "nota.pdf"},
        )
        assert (image["type"], image["image"]) == ("image", {"id": jpeg_id})
        reply.refresh_from_db()
        assert reply.provider_id == graph.sent[0][1]

    @pytest.mark.parametrize(
        ("mode", "reason"),
        [
            ("500", "Something went wrong (code 131000)"),
            ("429", "Application request limit reached (code 4)"),
            ("rate_limit", "Rate limit hit (code 130429): Cloud API message throughput"),
        ],
    )
    def test_a_transient_error_is_retried_and_the_retry_sends_once(
        self, graph, wa_inbox, bob, mode, reason
    ):
        conversation = customer_wrote(wa_inbox)
        reply = services.reply_send(conversation=conversation, author=bob, text="Oi")
        graph.fail(mode)

        assert message_deliver(reply.pk).status == Message.Status.QUEUED
        reply.refresh_from_db()
        assert reason in reply.failure_reason
        with time_machine.travel(reply.next_attempt_at + timedelta(seconds=1), tick=False):
            assert message_deliver(reply.pk).status == Message.Status.SENT

        reply.refresh_from_db()
        assert list(reply.attempts_log.values_list("outcome", flat=True)) == ["retry", "sent"]
        assert len(graph.sent) == 1
        assert reply.provider_id == graph.sent[0][1]

    def test_a_timeout_is_retried(self, graph, wa_inbox, bob, settings):
        settings.PROVIDER_TIMEOUT_SECONDS = 0.3
        conversation = customer_wrote(wa_inbox)
        reply = services.reply_send(conversation=conversation, author=bob, text="Oi")
        graph.fail("timeout")

        assert message_deliver(reply.pk).status == Message.Status.QUEUED
        reply.refresh_from_db()
        assert "did not answer in time" in reply.failure_reason
        assert graph.sent == []

    @pytest.mark.parametrize(
        ("mode", "reason"),
        [
            ("invalid_recipient", "Message Undeliverable. (code 131026)"),
            ("outside_window", "(code 131047): Message failed to send because more than 24"),
        ],
    )
    def test_a_refusal_from_whatsapp_fails_the_reply_with_its_reason(
        self, graph, wa_inbox, bob, mode, reason
    ):
        conversation = customer_wrote(wa_inbox)
        reply = services.reply_send(conversation=conversation, author=bob, text="Oi")
        graph.fail(mode)

        assert message_deliver(reply.pk).status == Message.Status.FAILED
        reply.refresh_from_db()
        assert reason in reply.failure_reason
        assert graph.sent == []


@pytest.mark.django_db(transaction=True)
def test_the_worker_stores_a_photo_and_fetches_it(
    embedded_worker, client, graph, wa_inbox, settings
):
    settings.MEDIA_FETCH_ALLOW_PRIVATE = True
    graph.add_whatsapp_media("1003383421387256", JPEG, "image/jpeg")
    graph.add_whatsapp_media("1003383421387257", PDF, "application/pdf")

    response = graph.post_webhook(
        client, webhook_path(wa_inbox), meta_payload("whatsapp_media.json")
    )
    assert response.status_code == 200

    def both_fetched():
        attachments = list(Attachment.objects.order_by("pk"))
        return attachments if len(attachments) == 2 and all(a.file for a in attachments) else None

    attachments = wait_for(both_fetched, what="both attachments to be fetched")
    assert [a.file.read() for a in attachments] == [JPEG, PDF]
    assert [a.message.text for a in attachments] == ["A caixa chegou amassada", "Nota fiscal"]
