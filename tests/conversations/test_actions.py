"""The conversation page's actions (tags, transfer, merge) and starting a conversation from the
customer page, with personas: bob and dana (Support), charlie (Billing, an outsider to Support's
conversations) and alice (admin)."""

import pytest
from django.urls import reverse
from django.utils import timezone

from conversations import services
from conversations.models import (
    Channel,
    Conversation,
    ConversationEvent,
    Identity,
    Inbox,
    Message,
    Tag,
)
from tests.conftest import receive

pytestmark = pytest.mark.django_db


def chat(inbox, text="Hello", address="visitor-1"):
    return receive(inbox, text=text, address=address, name="Jo").message.conversation


def flashed(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


class TestTags:
    def test_it_adds_normalised_tags_and_removes_one(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        url = reverse("inbox:tags", args=[conversation.pk])
        assert client.post(url, {"add": " Refund, VIP "}).status_code == 302
        assert set(conversation.tags.values_list("name", flat=True)) == {"refund", "vip"}

        client.post(url, {"remove": "vip"})
        assert list(conversation.tags.values_list("name", flat=True)) == ["refund"]
        events = conversation.events.filter(kind=ConversationEvent.Kind.TAGS).order_by("id")
        assert [e.data for e in events] == [
            {"added": ["refund", "vip"], "removed": []},
            {"added": [], "removed": ["vip"]},
        ]

    def test_the_page_offers_existing_tags_and_a_remove_button_per_chip(
        self, client, bob, chat_inbox
    ):
        conversation = chat(chat_inbox)
        Tag.objects.create(name="shipping")
        services.conversation_tag(conversation=conversation, add=["<b>refund</b>"])
        client.force_login(bob)
        html = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert '<option value="shipping">' in html
        assert 'aria-label="Remove tag &lt;b&gt;refund&lt;/b&gt;"' in html
        assert "<b>refund</b>" not in html

    def test_an_empty_or_overlong_tag_is_refused_visibly(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        url = reverse("inbox:tags", args=[conversation.pk])
        response = client.post(url, {"add": " , "}, follow=True)
        assert flashed(response) == ["Type the tag to add."]
        response = client.post(url, {"add": "x" * 51}, follow=True)
        assert flashed(response) == ["A tag has at most 50 characters."]
        assert not conversation.tags.exists()
        assert not conversation.events.filter(kind=ConversationEvent.Kind.TAGS).exists()

    def test_an_outsider_gets_404(self, client, charlie, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(charlie)
        response = client.post(reverse("inbox:tags", args=[conversation.pk]), {"add": "spam"})
        assert response.status_code == 404
        assert not conversation.tags.exists()


class TestTransfer:
    def test_it_moves_the_conversation_to_another_team(self, client, bob, billing, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        response = client.post(
            reverse("inbox:transfer", args=[conversation.pk]), {"team": billing.pk}, follow=True
        )
        # Still Support's inbox, so bob still sees it.
        assert response.redirect_chain[-1][0] == f"/inbox/{conversation.pk}/"
        assert flashed(response) == ["Transferred to Billing."]
        conversation.refresh_from_db()
        assert conversation.team == billing
        event = conversation.events.get(kind=ConversationEvent.Kind.TEAM)
        assert (event.actor, event.data["team"]) == (bob, billing.pk)

    def test_an_agent_who_hands_it_away_goes_back_to_the_list(
        self, client, bob, support, billing, billing_inbox
    ):
        conversation = receive(billing_inbox, address="shop-1").message.conversation
        services.conversation_set_team(conversation=conversation, team=support)
        client.force_login(bob)
        response = client.post(
            reverse("inbox:transfer", args=[conversation.pk]), {"team": billing.pk}, follow=True
        )
        assert response.status_code == 200
        assert response.redirect_chain[-1][0] == "/inbox/"
        assert flashed(response) == [
            f"#{conversation.pk} was transferred to Billing; it left your inbox."
        ]
        conversation.refresh_from_db()
        assert conversation.team == billing

    def test_only_a_team_that_exists(self, client, bob, support, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        url = reverse("inbox:transfer", args=[conversation.pk])
        for value in ("999999", "billing", ""):
            response = client.post(url, {"team": value}, follow=True)
            assert flashed(response) == ["Choose a team to transfer the conversation to."]
        conversation.refresh_from_db()
        assert conversation.team == support
        assert not conversation.events.filter(kind=ConversationEvent.Kind.TEAM).exists()

    def test_an_outsider_gets_404(self, client, charlie, billing, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(charlie)
        url = reverse("inbox:transfer", args=[conversation.pk])
        assert client.post(url, {"team": billing.pk}).status_code == 404
        conversation.refresh_from_db()
        assert conversation.team != billing


class TestMerge:
    @pytest.fixture
    def pair(self, chat_inbox):
        """Two conversations of one customer."""
        source = chat(chat_inbox, text="Where is my parcel?")
        target = services.conversation_open(inbox=chat_inbox, customer=source.customer)
        return source, target

    def merge(self, client, source, into, **extra):
        url = reverse("inbox:merge", args=[source.pk])
        return client.post(url, {"into": into, "confirm": "1", **extra}, follow=True)

    def test_it_moves_the_messages_and_lands_on_the_target(self, client, bob, pair):
        source, target = pair
        client.force_login(bob)
        response = self.merge(client, source, f"#{target.pk}")
        assert response.redirect_chain[-1][0] == f"/inbox/{target.pk}/"
        assert flashed(response) == [f"#{source.pk} was merged into this conversation."]
        assert "Where is my parcel?" in response.content.decode()
        source.refresh_from_db()
        assert (source.merged_into, source.status) == (target, Conversation.Status.CLOSED)
        assert target.events.filter(kind=ConversationEvent.Kind.MERGED, actor=bob).exists()
        # Each timeline names the other end.
        assert f"Merged by Bob: #{source.pk} into this one" in response.content.decode()
        page = client.get(f"/inbox/{source.pk}/").content.decode()
        assert f"Merged by Bob: into #{target.pk}" in page

    def test_it_needs_the_confirmation(self, client, bob, pair):
        source, target = pair
        client.force_login(bob)
        response = self.merge(client, source, target.pk, confirm="")
        assert flashed(response) == ["Nothing was merged: tick the box to confirm the merge."]
        source.refresh_from_db()
        assert source.merged_into is None

    def test_the_services_refusal_is_shown(self, client, bob, chat_inbox, pair):
        source, _ = pair
        stranger = chat(chat_inbox, address="visitor-2")
        client.force_login(bob)
        response = self.merge(client, source, stranger.pk)
        assert flashed(response) == [
            "These conversations belong to different customers; merge the customers first."
        ]
        response = self.merge(client, source, source.pk)
        assert flashed(response) == ["A conversation cannot be merged into itself."]
        source.refresh_from_db()
        assert source.merged_into is None

    def test_the_target_must_be_visible_too(self, client, bob, pair, billing_inbox):
        source, _ = pair
        hidden = services.conversation_open(inbox=billing_inbox, customer=source.customer)
        client.force_login(bob)
        for into in (hidden.pk, 10**6):  # the same words: no hint that it exists
            response = self.merge(client, source, into)
            assert flashed(response) == [f"There is no conversation #{into} that you can see."]
        source.refresh_from_db()
        assert source.merged_into is None

    def test_an_outsider_gets_404(self, client, charlie, pair):
        source, target = pair
        client.force_login(charlie)
        response = self.merge(client, source, target.pk)
        assert response.status_code == 404
        source.refresh_from_db()
        assert source.merged_into is None


class TestStart:
    @pytest.fixture
    def jo(self, mail_inbox):
        """Jo wrote once by email; she also has a phone number and a Messenger id."""
        customer = receive(mail_inbox, address="jo@example.com", subject="Hi").message
        customer = customer.conversation.customer
        Identity.objects.create(customer=customer, kind=Channel.SMS, address="+351912345678")
        Identity.objects.create(customer=customer, kind=Channel.MESSENGER, address="psid-7")
        Identity.objects.create(customer=customer, kind=Channel.API, address="jo-shop")
        return customer

    @pytest.fixture
    def other_inboxes(self, support):
        Inbox.objects.create(
            name="SMS", kind=Channel.SMS, address="+15550100", default_team=support
        )
        Inbox.objects.create(name="Page", kind=Channel.MESSENGER, default_team=support)

    def start(self, client, customer, identity, text="Your refund is on its way", **extra):
        url = reverse("inbox:customer_start", args=[customer.pk])
        return client.post(url, {"identity": identity.pk, "text": text, **extra})

    def test_it_opens_a_conversation_assigned_to_the_author_with_the_message_queued(
        self, client, bob, jo, mail_inbox
    ):
        client.force_login(bob)
        email = jo.identities.get(kind=Channel.EMAIL)
        response = self.start(client, jo, email, subject="Your refund")
        conversation = Conversation.objects.latest("pk")
        assert response.status_code == 302
        assert response["Location"] == f"/inbox/{conversation.pk}/"
        assert (conversation.customer, conversation.inbox, conversation.assignee) == (
            jo,
            mail_inbox,
            bob,
        )
        assert conversation.subject == "Your refund"
        (message,) = conversation.messages.all()
        assert (message.direction, message.status, message.identity) == (
            "outbound",
            "queued",
            email,
        )
        kinds = set(conversation.events.values_list("kind", flat=True))
        assert {ConversationEvent.Kind.CREATED, ConversationEvent.Kind.ASSIGNED} <= kinds

    def test_sending_the_same_start_twice_asks_before_a_second_conversation(
        self, client, bob, jo, mail_inbox
    ):
        """A double click, or Back after sending: the same text to the same customer again
        is held, saying where it went; pressed again from that page, it is meant."""
        client.force_login(bob)
        email = jo.identities.get(kind=Channel.EMAIL)
        assert self.start(client, jo, email, text="Your refund is sent").status_code == 302
        first = Conversation.objects.latest("pk")
        response = self.start(client, jo, email, text="Your refund is sent")
        assert response.status_code == 409
        html = response.content.decode()
        assert "you sent this same message to this customer at" in html
        assert f"in #{first.pk}" in html and "Your refund is sent</textarea>" in html
        assert '<input type="hidden" name="again" value="1">' in html
        assert Conversation.objects.latest("pk") == first
        # Other words are another conversation; the same words, pressed again, too.
        assert self.start(client, jo, email, text="Your exchange is sent").status_code == 302
        again = self.start(client, jo, email, text="Your refund is sent", again="1")
        assert again.status_code == 302
        assert Message.objects.filter(text="Your refund is sent").count() == 2

    def test_the_page_offers_every_address_with_what_would_refuse_it(self, client, bob, jo):
        client.force_login(bob)
        response = client.get(reverse("inbox:customer", args=[jo.pk]))
        offered = {i.kind: i for i in response.context["start_identities"]}
        assert set(offered) == {Channel.EMAIL, Channel.SMS, Channel.MESSENGER, Channel.API}
        assert offered[Channel.EMAIL].sending()["refusal"] == ""

    @pytest.mark.parametrize(
        ("kind", "refusal"),
        [
            (Channel.SMS, "opted out of messages"),
            (Channel.MESSENGER, "Messenger does not let a Page write first"),
        ],
    )
    def test_a_channel_refusal_keeps_the_draft_and_creates_nothing(
        self, client, bob, jo, other_inboxes, kind, refusal
    ):
        jo.identities.filter(kind=Channel.SMS).update(opted_out_at=timezone.now())
        before = Conversation.objects.count()
        client.force_login(bob)
        response = self.start(client, jo, jo.identities.get(kind=kind), text="Draft kept")
        assert response.status_code == 400
        html = response.content.decode()
        assert refusal in html and "Draft kept" in html
        assert Conversation.objects.count() == before

    def test_an_address_of_someone_else_is_refused(self, client, bob, jo, mail_inbox):
        stranger = receive(mail_inbox, address="ana@example.com").message.identity
        client.force_login(bob)
        before = Conversation.objects.count()
        response = self.start(client, jo, stranger)
        assert response.status_code == 400
        assert b"Choose one of this customer&#x27;s addresses." in response.content
        assert Conversation.objects.count() == before

    def test_an_outsider_gets_404(self, client, charlie, jo):
        client.force_login(charlie)
        before = Conversation.objects.count()
        response = self.start(client, jo, jo.identities.get(kind=Channel.EMAIL))
        assert response.status_code == 404
        assert Conversation.objects.count() == before
