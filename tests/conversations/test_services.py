import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from conversations import services
from conversations.models import (
    Channel,
    Conversation,
    ConversationEvent,
    Customer,
    Identity,
    Message,
    Notification,
)
from conversations.realtime import conversation_group, team_group
from tests.conftest import listen, receive

Status = Conversation.Status


def kinds(conversation):
    return list(conversation.events.order_by("id").values_list("kind", flat=True))


class TestReceive:
    def test_it_opens_a_conversation_for_a_new_customer(self, chat_inbox, support):
        received = receive(chat_inbox, "My parcel is late", address="visitor-1", name="Maria")

        message = received.message
        conversation = message.conversation
        assert received.created
        assert conversation.customer.name == "Maria"
        assert conversation.team == support
        assert conversation.status == Status.OPEN
        assert conversation.waiting_since is not None
        assert message.identity.address == "visitor-1"
        assert kinds(conversation) == [ConversationEvent.Kind.CREATED]

    def test_it_stores_a_provider_id_once(self, api_inbox):
        first = receive(api_inbox, "Hi", address="jo@example.com", provider_id="ext-42")
        again = receive(api_inbox, "Hi", address="jo@example.com", provider_id="ext-42")

        assert first.created and not again.created
        assert again.message.pk == first.message.pk
        assert Message.objects.filter(provider_id="ext-42").count() == 1

    def test_the_same_provider_id_in_another_inbox_is_another_message(
        self, api_inbox, billing_inbox
    ):
        receive(api_inbox, "Hi", provider_id="ext-1")
        receive(billing_inbox, "Hi", provider_id="ext-1")
        assert Message.objects.filter(provider_id="ext-1").count() == 2

    def test_it_continues_the_customers_open_conversation(self, chat_inbox):
        first = receive(chat_inbox, "Hello")
        second = receive(chat_inbox, "Are you there?")
        assert second.message.conversation_id == first.message.conversation_id

    def test_a_reply_reopens_a_resolved_conversation(self, chat_inbox, bob):
        conversation = receive(chat_inbox, "Hello").message.conversation
        services.conversation_set_status(
            conversation=conversation, status=Status.RESOLVED, actor=bob
        )

        again = receive(chat_inbox, "Actually, one more thing").message.conversation

        assert again.pk == conversation.pk
        assert again.status == Status.OPEN
        assert again.resolved_at is None
        reopened = again.events.get(kind=ConversationEvent.Kind.REOPENED)
        assert reopened.data == {"previous": "resolved", "reason": "customer_replied"}

    def test_a_reply_to_a_closed_conversation_opens_a_new_one(self, chat_inbox, bob):
        conversation = receive(chat_inbox, "Hello").message.conversation
        services.conversation_set_status(conversation=conversation, status=Status.CLOSED, actor=bob)
        again = receive(chat_inbox, "New question").message.conversation
        assert again.pk != conversation.pk

    def test_it_sanitises_html(self, api_inbox):
        message = receive(
            api_inbox,
            html='<p onclick="x()">Hi <script>alert(1)</script><a href="javascript:x">a</a>'
            '<a href="https://example.com">b</a></p>',
        ).message
        assert "script" not in message.html
        assert "onclick" not in message.html
        assert "javascript" not in message.html
        assert 'href="https://example.com"' in message.html

    def test_it_refuses_an_empty_message(self, api_inbox):
        with pytest.raises(ValidationError):
            receive(api_inbox, text="")
        assert not Conversation.objects.exists()

    def test_email_addresses_are_one_identity_whatever_their_case(self, api_inbox):
        receive(api_inbox, address="Jo@Example.COM", channel=Channel.EMAIL)
        receive(api_inbox, address="jo@example.com", channel=Channel.EMAIL)
        assert Identity.objects.filter(kind=Channel.EMAIL).count() == 1

    def test_a_nameless_customer_takes_the_name_their_message_gives_but_a_name_is_kept(
        self, api_inbox
    ):
        # A visitor who gave only an email, then wrote from it: their profile stayed nameless
        # and showed as an address everywhere.
        customer = receive(api_inbox, address="jo@example.com", channel=Channel.EMAIL).message
        customer = customer.conversation.customer
        assert customer.name == ""
        receive(api_inbox, address="jo@example.com", channel=Channel.EMAIL, name="Jo Müller")
        receive(api_inbox, address="jo@example.com", channel=Channel.EMAIL, name="JM (phone)")
        customer.refresh_from_db()
        assert customer.name == "Jo Müller"

    def test_a_customer_whose_channel_names_no_language_gets_the_one_they_write(self, api_inbox):
        def language(address, text, **kwargs):
            receive(api_inbox, text=text, address=address, **kwargs)
            return Customer.objects.get(identities__address=f"{api_inbox.pk}:{address}").language

        assert language("ana", "Olá, a minha encomenda ainda não chegou") == "pt"
        assert language("ana", "Sorry, I mean my order has not arrived") == "pt"  # kept
        assert language("luc", "Bonjour, où est ma commande ?") == "fr"
        assert language("sam", "ok thx") == ""  # too short to tell
        assert language("eva", "Where is my order, please?", language="de") == "de"
        assert (
            language("bot", "This is an automatic reply: I am away", metadata={"automated": 1})
            == ""
        )

    def test_a_misconfigured_language_list_costs_no_message(self, api_inbox, settings):
        services._language_identifier_load.cache_clear()
        settings.CUSTOMER_LANGUAGES = ["pt", "klingon"]
        try:
            received = receive(api_inbox, text="Olá, a minha encomenda ainda não chegou")
        finally:
            services._language_identifier_load.cache_clear()
        assert received.created and received.message.conversation.customer.language == ""

    def test_the_language_model_is_loaded_once_however_many_threads_ask(self, monkeypatch):
        """A busy process's first burst of messages arrives on many threads at once: each
        loading its own copy of the model is a second of CPU apiece."""
        from py3langid.langid import LanguageIdentifier

        loads, real = [], LanguageIdentifier.from_model_file.__func__
        monkeypatch.setattr(
            LanguageIdentifier,
            "from_model_file",
            classmethod(lambda cls, *a, **kw: loads.append(1) or real(cls, *a, **kw)),
        )
        services._language_identifier_load.cache_clear()
        start = threading.Barrier(4)

        def guess():
            start.wait()
            return services.language_guess("Meu pedido ainda não chegou, podem verificar?")

        with ThreadPoolExecutor(4) as pool:
            guesses = list(pool.map(lambda _: guess(), range(4)))
        services._language_identifier_load.cache_clear()
        assert guesses == ["pt"] * 4 and len(loads) == 1


class TestStateChanges:
    def test_each_change_leaves_an_event_with_its_actor(self, chat_inbox, bob, charlie):
        conversation = receive(chat_inbox).message.conversation

        services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
        services.conversation_set_priority(
            conversation=conversation, priority=Conversation.Priority.URGENT, actor=bob
        )
        services.conversation_tag(conversation=conversation, add=["Refund", "vip"], actor=bob)
        services.conversation_tag(conversation=conversation, remove=["vip"], actor=bob)
        services.conversation_set_status(
            conversation=conversation,
            status=Status.SNOOZED,
            actor=bob,
            snoozed_until=timezone.now() + timedelta(hours=2),
        )
        services.conversation_assign(conversation=conversation, assignee=None, actor=charlie)

        events = list(conversation.events.order_by("id"))
        assert [(e.kind, e.actor) for e in events] == [
            ("created", None),
            ("assigned", bob),
            ("priority", bob),
            ("tags", bob),
            ("tags", bob),
            ("status", bob),
            ("assigned", charlie),
        ]
        assert events[1].data == {"previous": None, "assignee": bob.pk, "assignee_name": "Bob"}
        assert events[3].data == {"added": ["refund", "vip"], "removed": []}
        assert events[4].data == {"added": [], "removed": ["vip"]}
        conversation.refresh_from_db()
        assert conversation.assignee is None
        assert list(conversation.tags.values_list("name", flat=True)) == ["refund"]

    def test_a_change_to_the_same_value_records_nothing(self, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
        services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
        assert kinds(conversation).count("assigned") == 1

    def test_snoozing_needs_a_future_time(self, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        with pytest.raises(ValidationError, match="future"):
            services.conversation_set_status(
                conversation=conversation,
                status=Status.SNOOZED,
                actor=bob,
                snoozed_until=timezone.now() - timedelta(minutes=1),
            )

    def test_a_snoozed_conversation_wakes_up_when_its_time_comes(self, chat_inbox, bob):
        import time_machine

        conversation = receive(chat_inbox).message.conversation
        services.conversation_set_status(
            conversation=conversation,
            status=Status.SNOOZED,
            actor=bob,
            snoozed_until=timezone.now() + timedelta(hours=1),
        )
        assert services.snoozed_wake_due() == 0
        with time_machine.travel(timezone.now() + timedelta(hours=1, seconds=1)):
            assert services.snoozed_wake_due() == 1
        conversation.refresh_from_db()
        assert conversation.status == Status.OPEN
        assert conversation.events.filter(kind="reopened", data__reason="snooze_ended").exists()
        # Nobody has it: whoever snoozed it hears it is back, once.
        (told,) = Notification.objects.filter(kind="snooze_ended")
        assert (told.recipient, told.conversation) == (bob, conversation)

    def test_a_snoozer_who_may_no_longer_see_it_is_not_told(self, chat_inbox, bob):
        import time_machine

        conversation = receive(chat_inbox).message.conversation
        until = timezone.now() + timedelta(hours=1)
        services.conversation_set_status(
            conversation=conversation, status=Status.SNOOZED, actor=bob, snoozed_until=until
        )
        bob.is_active = False  # left the company since
        bob.save()
        with time_machine.travel(until + timedelta(seconds=1)):
            assert services.snoozed_wake_due() == 1
        assert not Notification.objects.filter(kind="snooze_ended").exists()

    def test_a_woken_conversation_is_announced_to_its_assignee(self, client, chat_inbox, bob, dana):
        import time_machine

        conversation = receive(chat_inbox, subject="Kettle").message.conversation
        services.conversation_assign(conversation=conversation, assignee=dana, actor=bob)
        until = timezone.now() + timedelta(hours=1)
        services.conversation_set_status(
            conversation=conversation, status=Status.SNOOZED, actor=bob, snoozed_until=until
        )
        with time_machine.travel(until + timedelta(seconds=1)):
            services.snoozed_wake_due()
        assert list(Notification.objects.order_by("pk").values_list("recipient", "kind")) == [
            (dana.pk, "assigned"),
            (dana.pk, "snooze_ended"),
        ]
        client.force_login(dana)
        page = client.get("/inbox/notifications").content.decode()
        assert "Back from snooze:</bdi></span> Kettle" in page


class TestReplies:
    def test_a_reply_is_queued_on_the_channel_the_customer_last_used(self, chat_inbox, bob):
        conversation = receive(chat_inbox, "Hi").message.conversation

        reply = services.reply_send(conversation=conversation, author=bob, text="Hello!")

        assert reply.status == Message.Status.QUEUED
        assert reply.channel == Channel.WEBCHAT
        assert reply.identity.address == "visitor-1"
        conversation.refresh_from_db()
        assert conversation.first_response_at is not None
        assert conversation.waiting_since is None

    def test_a_reply_to_another_customers_address_is_refused(self, chat_inbox, bob):
        conversation = receive(chat_inbox, "Hi", address="visitor-1").message.conversation
        stranger = receive(chat_inbox, "Hi", address="visitor-2").message.identity
        with pytest.raises(ValidationError, match="another customer"):
            services.reply_send(conversation=conversation, author=bob, text="x", identity=stranger)

    def test_a_reply_where_the_channel_cannot_send_says_so(self, api_inbox, bob):
        conversation = receive(api_inbox, "Hi").message.conversation  # no webhook set
        with pytest.raises(ValidationError, match="need its webhook URL"):
            services.reply_send(conversation=conversation, author=bob, text="Hello")
        assert not Message.objects.filter(direction="outbound").exists()

    def test_a_resent_client_id_is_stored_once(self, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        one = services.reply_send(conversation=conversation, author=bob, text="x", client_id="c-1")
        two = services.reply_send(conversation=conversation, author=bob, text="x", client_id="c-1")
        assert one.pk == two.pk

    def test_a_note_is_never_queued_for_the_customer(self, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        note = services.note_add(conversation=conversation, author=bob, text="VIP customer")
        assert note.direction == Message.Direction.NOTE
        assert note.status == ""
        assert not note.is_customer_visible


class TestCustomerMerge:
    def test_identities_and_history_move_to_the_target(self, api_inbox, chat_inbox, bob):
        by_chat = receive(chat_inbox, "chat question", address="visitor-9", name="Maria")
        by_api = receive(api_inbox, "api question", address="maria@example.com")
        source, target = by_api.message.conversation.customer, by_chat.message.conversation.customer
        source.attributes = {"plan": "enterprise"}
        source.language = "pt"
        source.save()

        merged = services.customer_merge(source=source, target=target, actor=bob)

        assert merged.pk == target.pk
        assert set(target.identities.values_list("address", flat=True)) == {
            "visitor-9",
            f"{api_inbox.pk}:maria@example.com",
        }
        assert target.conversations.count() == 2
        merged.refresh_from_db()
        assert merged.attributes == {"plan": "enterprise"}
        assert merged.language == "pt"
        assert merged.name == "Maria"
        source.refresh_from_db()
        assert source.merged_into == target
        assert not source.identities.exists()
        moved = by_api.message.conversation
        assert moved.events.filter(kind="customer_merged", actor=bob).exists()
        # The next message from the moved address lands with the merged customer.
        again = receive(api_inbox, "follow-up", address="maria@example.com")
        assert again.message.conversation.customer_id == target.pk
        assert again.message.conversation_id == moved.pk

    def test_attributes_that_differ_are_kept_in_the_notes(self, api_inbox, chat_inbox):
        smith = receive(api_inbox, "a", address="js@example.com", name="Javier Smith")
        santos = receive(chat_inbox, "b", address="visitor-2", name="Javier Santos")
        source, target = (r.message.conversation.customer for r in (smith, santos))
        source.attributes = {"plan": "enterprise", "orders": 7, "city": "Vigo"}
        source.save()
        target.attributes, target.notes = {"plan": "pro", "orders": 24}, "Prefers chat."
        target.save()
        merged = services.customer_merge(source=source, target=target)
        assert merged.attributes == {"plan": "pro", "orders": 24, "city": "Vigo"}
        assert merged.notes == (
            "Prefers chat.\n\nMerged from Javier Smith, who had plan: enterprise, orders: 7."
        )

    def test_a_customer_cannot_be_merged_into_itself_or_twice(self, chat_inbox):
        one = receive(chat_inbox, address="v1").message.conversation.customer
        two = receive(chat_inbox, address="v2").message.conversation.customer
        with pytest.raises(ValidationError):
            services.customer_merge(source=one, target=one)
        services.customer_merge(source=one, target=two)
        with pytest.raises(ValidationError, match="already merged"):
            services.customer_merge(source=one, target=two)


class TestConversationMerge:
    def test_messages_and_tags_move_and_the_source_closes(self, chat_inbox, api_inbox, bob):
        first = receive(chat_inbox, "chat", address="v1").message.conversation
        customer = first.customer
        address = f"{api_inbox.pk}:v1@example.com"  # an integrator's id, in that inbox
        Identity.objects.create(customer=customer, kind=Channel.API, address=address)
        second = receive(api_inbox, "by api", address="v1@example.com").message.conversation
        services.conversation_tag(conversation=second, add=["refund"], actor=bob)

        target = services.conversation_merge(source=second, target=first, actor=bob)

        assert list(target.messages.values_list("text", flat=True)) == ["chat", "by api"]
        assert list(target.tags.values_list("name", flat=True)) == ["refund"]
        second.refresh_from_db()
        assert second.status == Status.CLOSED
        assert second.merged_into == first
        assert not second.messages.exists()
        assert first.events.get(kind="merged").data == {"source": second.pk, "messages": 1}
        assert second.events.get(kind="merged").data == {"target": first.pk, "messages": 1}

    def test_a_merged_conversation_is_not_worked_on(self, chat_inbox, billing, bob):
        # An automation or a stale page could assign, move, prioritise or tag the husk of a
        # merged conversation: work nobody would ever see, away from the customer's thread.
        first = receive(chat_inbox, address="v1").message.conversation
        second = receive(chat_inbox, "more", address="v1").message.conversation
        if second == first:  # the chat went on in one conversation: open another
            second = services.conversation_open(
                inbox=chat_inbox, customer=first.customer, subject="Another"
            )
        services.conversation_merge(source=second, target=first, actor=bob)
        changes = [
            lambda: services.conversation_assign(conversation=second, assignee=bob, actor=bob),
            lambda: services.conversation_set_team(conversation=second, team=billing, actor=bob),
            lambda: services.conversation_set_priority(
                conversation=second, priority=Conversation.Priority.HIGH, actor=bob
            ),
            lambda: services.conversation_tag(conversation=second, add=["refund"], actor=bob),
        ]
        for change in changes:
            with pytest.raises(ValidationError, match=f"merged into #{first.pk}"):
                change()
        second.refresh_from_db()
        assert second.assignee is None and second.team != billing and not second.tags.exists()
        assert second.priority == Conversation.Priority.NORMAL

    def test_conversations_of_different_customers_are_not_merged(self, chat_inbox):
        one = receive(chat_inbox, address="v1").message.conversation
        two = receive(chat_inbox, address="v2").message.conversation
        with pytest.raises(ValidationError, match="different customers"):
            services.conversation_merge(source=one, target=two)
        assert one.messages.count() == two.messages.count() == 1


@pytest.mark.django_db(transaction=True)
class TestRealtimeAfterCommit:
    """Agents are told of a change only once it is committed, never for a rolled back one."""

    def test_an_event_is_published_after_commit(self, chat_inbox, support, bob):
        conversation = receive(chat_inbox).message.conversation
        next_event = listen(team_group(support.pk))

        with transaction.atomic():
            services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
            # Still inside the transaction: announce a marker directly; it must come first.
            async_to_sync(get_channel_layer().group_send)(
                team_group(support.pk), {"type": "marker"}
            )

        assert next_event()["type"] == "marker"
        event = next_event()
        assert event["event"] == "assigned"
        assert event["conversation"] == conversation.pk
        assert event["assignee"] == bob.pk

    def test_nothing_is_published_for_a_rolled_back_change(self, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        next_event = listen(conversation_group(conversation.pk))

        with pytest.raises(RuntimeError), transaction.atomic():
            services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
            raise RuntimeError("the request failed after the assignment")
        services.conversation_set_priority(
            conversation=conversation, priority=Conversation.Priority.HIGH, actor=bob
        )

        assert next_event()["event"] == "priority"
        conversation.refresh_from_db()
        assert conversation.assignee is None
        assert kinds(conversation) == ["created", "priority"]

    def test_customer_and_conversation_counts_survive_merging(self, chat_inbox):
        one = receive(chat_inbox, address="v1").message.conversation.customer
        two = receive(chat_inbox, address="v2").message.conversation.customer
        services.customer_merge(source=one, target=two)
        assert Customer.objects.filter(merged_into__isnull=True).count() == 1
        assert Conversation.objects.filter(customer=two).count() == 2
