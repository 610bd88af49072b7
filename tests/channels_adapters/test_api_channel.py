import json
from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError

from channels_adapters.delivery import inbound_event_process, message_deliver
from channels_adapters.models import InboundEvent
from conversations import services
from conversations.models import Message


def post(client, inbox, body, token=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token or inbox.secret}"}
    return client.post(
        f"/channels/api/{inbox.pk}/messages", data=body, content_type="application/json", **headers
    )


@pytest.mark.django_db
class TestApiInbound:
    body = '{"id": "o-1", "from": "jo@example.com", "name": "Jo", "text": "Olá 👋"}'.encode()

    def test_it_stores_the_raw_event_and_answers_202(self, client, api_inbox):
        response = post(client, api_inbox, self.body)
        assert response.status_code == 202
        event = InboundEvent.objects.get()
        assert event.raw() == self.body
        inbound_event_process(event.pk)
        message = Message.objects.get()
        assert message.text == "Olá 👋"
        assert message.conversation.customer.name == "Jo"

    def test_nul_characters_leave_text_and_an_id_with_one_or_an_overlong_address_fails(
        self, client, api_inbox
    ):
        # PostgreSQL refuses NUL: the event stayed pending for ever. In text it goes; in what
        # names someone ("c\x001" is not "c1") it is refused, as is an address we cannot store.
        refused = post(client, api_inbox, json.dumps({"id": "n-0", "from": "c\x001", "text": "Hi"}))
        assert (refused.status_code, refused.json()["error"]) == (
            400,
            "Field 'from' cannot contain NUL characters.",
        )
        overlong = post(
            client, api_inbox, json.dumps({"id": "n-2", "from": "x" * 301, "text": "Hi"})
        )
        assert (overlong.status_code, overlong.json()["error"]) == (
            400,
            "Field 'from' has at most 300 characters.",
        )
        nul = {"id": "n-1", "from": "c1", "name": "J\x00o", "text": "Hi\x00 there"}
        post(client, api_inbox, json.dumps({**nul, "subject": "Re\x00fund"}).encode())
        (event,) = InboundEvent.objects.all()
        inbound_event_process(event.pk)
        message = Message.objects.get()
        assert (message.text, message.conversation.subject) == ("Hi there", "Refund")
        assert message.conversation.customer.name == "Jo"

    def test_the_same_id_in_two_integrations_is_two_customers(
        self, client, api_inbox, billing_inbox, bob
    ):
        """The shop's customer 42 and the billing system's 42 are different people: neither
        sees the other's conversation, and each shows as 42 to agents."""
        post(client, api_inbox, json.dumps({"id": "s-1", "from": "42", "text": "Where is it?"}))
        post(client, billing_inbox, json.dumps({"id": "b-1", "from": "42", "text": "Refund?"}))
        post(client, api_inbox, json.dumps({"id": "s-2", "from": "42", "text": "Any news?"}))
        for event in InboundEvent.objects.order_by("id"):
            inbound_event_process(event.pk)
        shop, billing = (
            Message.objects.get(text=text).conversation for text in ("Where is it?", "Refund?")
        )
        assert shop.inbox == api_inbox and billing.inbox == billing_inbox
        assert shop.customer_id != billing.customer_id
        assert Message.objects.get(text="Any news?").conversation == shop
        client.force_login(bob)
        page = client.get(f"/inbox/customers/{shop.customer_id}/").content.decode()
        assert '<span class="address">42</span>' in page

    def test_a_replay_is_acknowledged_and_stored_once(self, client, api_inbox):
        post(client, api_inbox, self.body)
        response = post(client, api_inbox, self.body)
        assert response.status_code == 202
        assert response.json()["duplicate"] is True
        assert InboundEvent.objects.count() == 1

    @pytest.mark.parametrize("token", ["wrong", " ", "x" * 43])
    def test_a_wrong_secret_is_refused_and_nothing_stored(self, client, api_inbox, token):
        assert post(client, api_inbox, self.body, token=token).status_code == 403
        assert not InboundEvent.objects.exists()

    def test_a_missing_secret_is_refused(self, client, api_inbox):
        response = client.post(
            f"/channels/api/{api_inbox.pk}/messages",
            data=self.body,
            content_type="application/json",
        )
        assert response.status_code == 403

    def test_another_inboxs_secret_is_refused(self, client, api_inbox, billing_inbox):
        assert post(client, api_inbox, self.body, token=billing_inbox.secret).status_code == 403

    @pytest.mark.parametrize(
        ("body", "error"),
        [
            (b"not json", "Body is not JSON"),
            (b"[1, 2]", "must be a JSON object"),
            (b'{"id": "1", "from": "a@b.c"}', "'text' is required"),
            (b'{"id": 5, "from": "a@b.c", "text": "x"}', "'id' is required"),
        ],
    )
    def test_malformed_bodies_get_400_and_nothing_is_stored(self, client, api_inbox, body, error):
        response = post(client, api_inbox, body)
        assert response.status_code == 400
        assert error in response.json()["error"]
        assert not InboundEvent.objects.exists()

    @pytest.mark.parametrize("megabytes", [1.5, 3])  # 3: past Django's own limit, 2.5 MB
    def test_a_body_over_1_mib_gets_413_in_json(self, client, api_inbox, megabytes):
        text = "x" * int(megabytes * 2**20)
        body = json.dumps({"id": "big", "from": "jo@example.com", "text": text}).encode()
        response = post(client, api_inbox, body)
        assert response.status_code == 413
        assert response.json() == {"error": "Body larger than 1 MiB."}
        assert not InboundEvent.objects.exists()

    def test_a_non_api_inbox_is_not_found(self, client, chat_inbox):
        response = post(client, chat_inbox, self.body)
        assert response.status_code == 404
        assert response.json() == {"error": f"No API inbox has the id {chat_inbox.pk}."}

    def test_a_switched_off_inbox_says_so(self, client, api_inbox):
        api_inbox.is_active = False
        api_inbox.save()
        response = post(client, api_inbox, self.body)
        assert response.status_code == 403
        assert response.json() == {"error": "This inbox is switched off; an admin can turn it on."}
        assert not InboundEvent.objects.exists()

    def test_erasing_a_blocked_customer_erases_what_was_set_aside(self, client, api_inbox, alice):
        post(client, api_inbox, json.dumps({"id": "s-1", "from": "42", "text": "Hi"}))
        inbound_event_process(InboundEvent.objects.get(dedupe_key="s-1").pk)
        customer = Message.objects.get().conversation.customer
        services.customer_block(customer=customer, actor=alice)
        post(client, api_inbox, json.dumps({"id": "s-2", "from": "42", "text": "spam"}))
        set_aside = InboundEvent.objects.get(dedupe_key="s-2")
        inbound_event_process(set_aside.pk)
        services.customer_erase(customer=customer, actor=alice)
        assert not InboundEvent.objects.filter(pk=set_aside.pk).exists()


@pytest.fixture
def integration(api_inbox, settings):
    """The integration behind the API inbox, taking replies on its webhook (on loopback, which
    only tests allow)."""
    from tests.providers import FakeIntegration

    settings.MEDIA_FETCH_ALLOW_PRIVATE = True
    fake = FakeIntegration(api_inbox.secret)
    api_inbox.settings = {"webhook_url": f"{fake.url}/threadline/replies"}
    api_inbox.save()
    yield fake
    fake.close()


def user_writes(client, inbox, text="Where is my order?", user="user-77"):
    body = json.dumps({"id": f"m-{text}", "from": user, "name": "Jo", "text": text}).encode()
    assert post(client, inbox, body).status_code == 202
    inbound_event_process(InboundEvent.objects.latest("pk").pk)
    return Message.objects.latest("pk").conversation


def answer(conversation, agent, text="Hi"):
    """The agent's reply, once the pipeline has tried to send it."""
    message = services.reply_send(conversation=conversation, author=agent, text=text)
    message_deliver(message.pk)
    message.refresh_from_db()
    return message


@pytest.mark.django_db
class TestApiReplies:
    def test_a_reply_reaches_the_integrations_webhook_signed(
        self, client, api_inbox, integration, bob
    ):
        conversation = user_writes(client, api_inbox)
        # Answered to the user, as the integration knows them, and counted as an answer.
        assert conversation.sla_clocks.filter(target="first_response").exists()
        message = answer(conversation, bob, text="On its way!")
        (call,) = integration.calls()
        assert call.path == "/threadline/replies"
        assert integration.signed(call)
        payload = call.json()
        assert payload["id"] == str(message.pk)
        assert payload["to"] == "user-77"
        assert payload["text"] == "On its way!"
        assert payload["author"] == "Bob"
        assert payload["conversation"]["id"] == conversation.pk
        assert message.status == Message.Status.SENT
        # Their user answers in the same conversation.
        assert user_writes(client, api_inbox, text="Thanks").pk == conversation.pk

    def test_a_signature_made_with_another_secret_does_not_verify(
        self, client, api_inbox, integration, bob
    ):
        conversation = user_writes(client, api_inbox)
        integration.secret = "the secret before it was rotated"
        message = answer(conversation, bob)
        assert message.status == Message.Status.FAILED
        said = "The integration's webhook answered HTTP 401: bad signature"
        assert message.failure_reason == said

    @pytest.mark.parametrize("mode", ["500", "429"])
    def test_a_hiccup_is_retried_with_the_same_id(self, client, api_inbox, integration, bob, mode):
        conversation = user_writes(client, api_inbox)
        integration.fail(mode)
        message = answer(conversation, bob)
        assert message.status == Message.Status.QUEUED
        assert f"HTTP {mode}" in message.failure_reason
        with time_machine.travel(message.next_attempt_at + timedelta(seconds=1), tick=False):
            message_deliver(message.pk)
        message.refresh_from_db()
        assert message.status == Message.Status.SENT
        assert [call.json()["id"] for call in integration.calls()] == [str(message.pk)] * 2

    def test_a_refusal_fails_the_reply_with_what_the_integration_said(
        self, client, api_inbox, integration, bob
    ):
        conversation = user_writes(client, api_inbox)
        integration.fail("404")
        message = answer(conversation, bob)
        assert message.status == Message.Status.FAILED
        said = "The integration's webhook answered HTTP 404: No such user"
        assert message.failure_reason == said

    def test_a_webhook_on_a_private_address_is_refused(
        self, client, api_inbox, integration, bob, settings
    ):
        settings.MEDIA_FETCH_ALLOW_PRIVATE = False  # as in production
        message = answer(user_writes(client, api_inbox), bob)
        assert message.status == Message.Status.FAILED
        assert "not a public address" in message.failure_reason
        assert integration.calls() == []

    def test_without_a_webhook_agents_are_told_before_they_write(self, client, api_inbox, bob):
        conversation = user_writes(client, api_inbox)
        # No response target either: nobody could meet it.
        assert not conversation.sla_clocks.filter(target="first_response").exists()
        with pytest.raises(ValidationError, match="need its webhook URL"):
            services.reply_send(conversation=conversation, author=bob, text="Hi")
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "need its webhook URL: an admin sets" in page  # the composer says it first
        assert not conversation.messages.filter(direction="outbound").exists()


def report(client, inbox, body, token=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token or inbox.secret}"}
    url = f"/channels/api/{inbox.pk}/statuses"
    return client.post(url, data=json.dumps(body), content_type="application/json", **headers)


def reported(client, inbox, message, status, **more):
    """The integration's word on `message`, once the worker has applied it."""
    response = report(client, inbox, {"id": str(message.pk), "status": status, **more})
    assert response.status_code == 202, response.content
    inbound_event_process(response.json()["event"])
    message.refresh_from_db()
    return response.json()


@pytest.mark.django_db
class TestApiStatuses:
    def test_delivered_and_read_show_on_the_reply_and_never_go_back(
        self, client, api_inbox, integration, bob
    ):
        conversation = user_writes(client, api_inbox)
        message = answer(conversation, bob, text="On its way!")
        reported(client, api_inbox, message, "delivered")
        assert (message.status, message.delivered_at is not None) == ("delivered", True)
        reported(client, api_inbox, message, "read")
        assert (message.status, message.read_at is not None) == ("read", True)
        # A late or replayed "delivered" changes nothing; the replay is not stored twice.
        assert reported(client, api_inbox, message, "delivered")["duplicate"] is True
        assert message.status == "read"
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert '<span class="badge ">Read</span>' in page  # on the reply, for its agents

    def test_a_reported_failure_fails_the_reply_with_their_reason(
        self, client, api_inbox, integration, bob
    ):
        conversation = user_writes(client, api_inbox)
        message = answer(conversation, bob)
        reported(client, api_inbox, message, "failed", reason="The user deleted their account")
        assert message.status == "failed"
        said = "The integration reported: The user deleted their account"
        assert message.failure_reason == said
        # Its author hears of it, as of any reply that did not reach the customer.
        assert bob.notifications.filter(conversation=conversation).exists()

    def test_a_status_for_what_the_inbox_did_not_send_is_404(
        self, client, api_inbox, billing_inbox, integration, bob
    ):
        conversation = user_writes(client, api_inbox)
        message = answer(conversation, bob)
        theirs = conversation.messages.get(direction="inbound")
        for body, token in [
            ({"id": str(theirs.pk), "status": "read"}, None),  # a user's message, not a reply
            ({"id": "999999", "status": "read"}, None),
        ]:
            response = report(client, api_inbox, body, token)
            assert response.status_code == 404
            assert response.json()["error"].startswith("This inbox sent no reply with the id")
        # Another integration's secret opens its own inbox only.
        body = {"id": str(message.pk), "status": "read"}
        response = report(client, billing_inbox, body, token=billing_inbox.secret)
        assert response.status_code == 404
        assert report(client, api_inbox, body, token=billing_inbox.secret).status_code == 403
        assert not InboundEvent.objects.filter(headers__type="status").exists()
        message.refresh_from_db()
        assert message.status == "sent"

    @pytest.mark.parametrize(
        ("body", "error"),
        [
            (
                {"id": "12", "status": "seen"},
                "Field 'status' must be one of: delivered, read, failed.",
            ),
            ({"id": "m-12", "status": "read"}, "Field 'id' is required: a reply's id"),
            ({"id": "9" * 40, "status": "read"}, "Field 'id' is required: a reply's id"),
            ({"id": 12, "status": "read"}, "Field 'id' is required: a reply's id"),
            ({"id": "12", "status": "failed", "reason": 5}, "Field 'reason' must be a string."),
        ],
    )
    def test_malformed_statuses_get_400(self, client, api_inbox, body, error):
        response = report(client, api_inbox, body)
        assert response.status_code == 400
        assert response.json()["error"].startswith(error)


@pytest.mark.django_db
def test_a_webhook_s_credentials_stay_out_of_what_agents_read(client, api_inbox, bob, settings):
    """A webhook URL may carry the integration's basic-auth password: an agent reads the
    failure reason, which names the host it could not reach, never the password."""
    from conversations.models import DeliveryAttempt
    from tests.conftest import free_port

    settings.MEDIA_FETCH_ALLOW_PRIVATE = True
    api_inbox.settings = {"webhook_url": f"http://shop:hunter2@127.0.0.1:{free_port()}/hook"}
    api_inbox.save()
    message = answer(user_writes(client, api_inbox), bob)
    assert message.status == Message.Status.QUEUED  # nobody listens there: tried again later
    assert message.failure_reason.startswith("Could not reach 127.0.0.1:")
    said = [message.failure_reason, *DeliveryAttempt.objects.values_list("detail", flat=True)]
    assert not [text for text in said if "hunter2" in text]


@pytest.mark.django_db
def test_a_user_of_a_deactivated_inbox_is_not_answered_from_another_integration(
    client, api_inbox, billing_inbox, bob
):
    """The shop's inbox is switched off; the billing app's takes replies. A reply to the
    shop's user would go from the billing app's inbox, whose integration does not know them:
    the agent is told before anything is queued, not by a failure later."""
    conversation = user_writes(client, api_inbox)
    billing_inbox.settings = {"webhook_url": "https://billing.example.com/replies"}
    billing_inbox.save()
    api_inbox.is_active = False
    api_inbox.save()
    with pytest.raises(ValidationError, match="user-77 is not a user of “Billing API”"):
        services.reply_send(conversation=conversation, author=bob, text="Hi")
    assert not conversation.messages.filter(direction="outbound").exists()
