"""The agent inbox pages, with personas: bob (Support agent), a teammate, charlie (Billing, an
outsider to Support's conversations) and alice (admin)."""

import base64
import html
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import QueryDict
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from conversations import services
from conversations.models import (
    Channel,
    Conversation,
    ConversationEvent,
    Customer,
    Identity,
    Message,
)
from helpdesk.models import User
from tests.conftest import PASSWORD, receive

pytestmark = pytest.mark.django_db
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


@pytest.fixture(autouse=True)
def _clear_login_throttle():
    cache.clear()


def chat(inbox, text="Hello", address="visitor-1", name="Jo"):
    return receive(inbox, text=text, address=address, name=name).message.conversation


class TestLogin:
    def test_an_agent_signs_in_with_email_and_password(self, client, bob):
        response = client.post(reverse("login"), {"username": bob.email, "password": PASSWORD})
        assert response.status_code == 302
        assert response["Location"] == "/inbox/"
        assert client.get("/inbox/").status_code == 200

    def test_a_wrong_password_says_so(self, client, bob):
        response = client.post(reverse("login"), {"username": bob.email, "password": "nope"})
        assert response.status_code == 200
        assert b"do not match" in response.content

    def test_failures_lock_out_the_guesser_not_the_owner(self, bob):
        from django.test import Client

        bobs, guesser = Client(), Client()
        assert self.sign_in(bobs, bob, PASSWORD, "198.51.100.7").status_code == 302  # before
        bobs.post(reverse("logout"))  # as his browser does: the session ends, cookies stay
        assert "_auth_user_id" not in bobs.session
        for _ in range(10):
            self.sign_in(guesser, bob, "guess", "203.0.113.5")
        response = self.sign_in(guesser, bob, PASSWORD, "203.0.113.5")
        assert response.status_code == 429
        assert b"Too many failed attempts" in response.content
        assert "_auth_user_id" not in guesser.session
        # Guessing from ten more addresses closes the account to browsers it never signed in
        # on; Bob's own browser still gets in, whatever the guessers do.
        for n in range(10):
            self.sign_in(guesser, bob, "guess", f"203.0.113.{10 + n}")
        assert self.sign_in(Client(), bob, PASSWORD, "192.0.2.9").status_code == 429
        # Nor from the guesser's own address (an office's, or everyone's behind a proxy).
        assert self.sign_in(bobs, bob, PASSWORD, "203.0.113.5").status_code == 302

    def test_signing_in_again_after_an_action_leads_back_to_the_conversation(
        self, client, bob, chat_inbox
    ):
        # The session ended in another tab; Bob's reply was sent to the sign-in page.
        number = receive(chat_inbox).message.conversation_id
        sent = client.post(f"/inbox/{number}/reply", {"text": "Hello"})
        assert sent["Location"] == f"/login/?next=/inbox/{number}/reply"
        data = {"username": bob.email, "password": PASSWORD}
        back = client.post(sent["Location"], data)
        assert back["Location"] == f"/inbox/{number}/"  # a page, not the POST-only address
        assert client.get(back["Location"]).status_code == 200

    @staticmethod
    def sign_in(client, user, password, address):
        data = {"username": user.email, "password": password}
        return client.post(reverse("login"), data, REMOTE_ADDR=address)

    def test_one_address_trying_many_accounts_is_stopped(self, client, bob):
        for n in range(30):
            data = {"username": f"agent{n}@example.com", "password": "Winter2026!"}
            client.post(reverse("login"), data, REMOTE_ADDR="203.0.113.5")
        data = {"username": bob.email, "password": PASSWORD}
        assert client.post(reverse("login"), data, REMOTE_ADDR="203.0.113.5").status_code == 429

    def test_a_password_change_ends_other_sessions(self, client, bob):
        client.force_login(bob)
        assert client.get("/inbox/").status_code == 200
        bob.set_password("a brand new passphrase")
        bob.save()
        response = client.get("/inbox/")
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")

    def test_pages_need_a_signed_in_agent(self, client):
        response = client.get("/inbox/")
        assert response.status_code == 302
        assert response["Location"] == "/login/?next=/inbox/"


class TestList:
    def test_views_hold_what_they_say(self, client, bob, dana, chat_inbox, billing_inbox):
        mine = chat(chat_inbox, address="v1", name="Mine Customer")
        services.conversation_assign(conversation=mine, assignee=bob)
        theirs = chat(chat_inbox, address="v2", name="Dana Customer")
        services.conversation_assign(conversation=theirs, assignee=dana)
        chat(chat_inbox, address="v3", name="Waiting Customer")
        receive(billing_inbox, address="b1", name="Billing Customer")
        client.force_login(bob)

        def names(view):
            html = client.get(f"/inbox/?view={view}").content.decode()
            return {
                n
                for n in ("Mine", "Dana", "Waiting", "Billing")
                if f"{n} Customer" in html.split('class="rows"')[1]
            }

        assert names("mine") == {"Mine"}
        assert names("unassigned") == {"Waiting"}
        assert names("teams") == {"Mine", "Dana", "Waiting"}
        assert names("all") == {"Mine"}  # agents have no "All": they get their own view

    def test_counts_per_view(self, client, bob, chat_inbox):
        services.conversation_assign(conversation=chat(chat_inbox, address="v1"), assignee=bob)
        waiting = chat(chat_inbox, address="v2")
        resolved = chat(chat_inbox, address="v3")
        services.conversation_set_status(conversation=resolved, status="resolved")
        for followed in (waiting, resolved):  # only the work still to do is counted
            services.conversation_follow(conversation=followed, user=bob)
        client.force_login(bob)
        response = client.get("/inbox/")
        assert [(key, count) for key, _, count in response.context["views"]] == [
            ("mine", 1),
            ("unassigned", 1),
            ("teams", 2),
            ("following", 1),
        ]

    @pytest.mark.parametrize(
        ("query", "found"),
        [
            ("3a12", None),  # a chat visitor's id is no address to search by
            ("parcel", "Jo"),
            ("+351912", "Ana"),
            ("(912) 345-678", "Ana"),  # a number typed as it is written, not as stored
            ("00351 912 345", "Ana"),
            ("Rosa", "Rosa"),
            ("  Rosa   Lima ", "Rosa"),  # spaces as typed
            ("nothing-like-it", None),
            ("77-88", None),
            ("PROBLÈME", "Zoë"),  # capitals of any script, not only ASCII
            ("probleme de livraison", "Zoë"),  # what customers wrote, accents aside too
            ("zoë lefèvre", "Zoë"),
            ("zoe lefevre", "Zoë"),  # accents aside, as agents type names
            ("LEFÈVRE", "Zoë"),
            ("reclamacao", "Rosa"),  # and subjects
            ("100%", None),  # the wildcards are characters like the others
            ("a_b", None),
        ],
    )
    def test_search_finds_text_phone_and_name(self, client, alice, chat_inbox, query, found):
        receive(chat_inbox, text="Un problème de livraison", address="v9", name="Zoë Lefèvre")
        receive(chat_inbox, text="Where is my parcel?", address="v1", name="Jo")
        receive(chat_inbox, channel=Channel.SMS, text="Hi", address="+351912345678", name="Ana")
        receive(chat_inbox, text="Hello", address="v3", name="Rosa Lima", subject="Reclamação")
        receive(chat_inbox, text="Hi", address="9f3a1234bc", name="Hex")
        client.force_login(alice)
        rows = client.get("/inbox/", {"q": query, "view": "all"}).context["conversations"]
        assert [c.customer.name.split()[0] for c in rows] == ([found] if found else [])

    def test_a_nul_character_in_a_search_or_a_form_is_dropped(self, client, alice, chat_inbox):
        # PostgreSQL refuses NUL: a search or a saved field with one (a paste) was a 500.
        customer = receive(chat_inbox, name="Jo").message.conversation.customer
        client.force_login(alice)
        found = client.get("/inbox/", {"q": "J\x00o", "view": "all"}).context["conversations"]
        assert [c.customer_id for c in found] == [customer.pk]
        client.post(f"/inbox/customers/{customer.pk}/edit", {"name": "Ev\x00e"})
        customer.refresh_from_db()
        assert customer.name == "Eve"

    def test_a_search_that_finds_nothing_in_mine_offers_the_teams(self, client, bob, chat_inbox):
        chat(chat_inbox, text="The lid is cracked", address="v1")
        client.force_login(bob)
        page = client.get("/inbox/", {"q": "cracked"})  # Mine: nobody's conversation yet
        assert list(page.context["conversations"]) == []
        link = "?q=cracked&amp;view=teams"
        assert f'<a href="{link}">Search “cracked” in My teams</a>' in page.content.decode()
        found = client.get("/inbox/", {"q": "cracked", "view": "teams"}).context
        assert len(found["conversations"]) == 1
        assert found["wider_search"] is None

    def test_search_by_conversation_number(self, client, bob, chat_inbox, billing_inbox):
        mine = chat(chat_inbox, address="v1")
        theirs = receive(billing_inbox, address="c-9").message.conversation
        client.force_login(bob)
        for query in (f"#{mine.pk}", str(mine.pk)):
            rows = client.get("/inbox/", {"q": query, "view": "teams"}).context["conversations"]
            assert [c.pk for c in rows] == [mine.pk]
        rows = client.get("/inbox/", {"q": f"#{theirs.pk}", "view": "teams"}).context
        assert list(rows["conversations"]) == []  # another team's stays out of sight
        assert client.get("/inbox/", {"q": "9" * 30}).status_code == 200

    def test_a_new_tag_or_team_mate_is_offered_on_the_next_page(self, client, alice, chat_inbox):
        conversation = chat(chat_inbox, address="v1")
        client.force_login(alice)
        page = client.get("/inbox/").content.decode()  # the bars' choices are kept a while
        assert 'value="outage"' not in page
        services.conversation_tag(conversation=conversation, add=["outage"])
        mate = User.objects.create_user(email="mate@acme.example")
        page = client.get("/inbox/").content.decode()
        assert '<option value="outage">outage</option>' in page  # the filter bar
        assert '<option value="tag:outage">Tag “outage”</option>' in page  # the bulk bar
        assert f'<option value="assign:{mate.pk}">Assign to mate</option>' in page

    def test_a_lead_filters_by_assignee(self, client, alice, bob, dana, chat_inbox):
        bobs, danas, nobodys = (chat(chat_inbox, address=f"v{i}") for i in range(3))
        services.conversation_assign(conversation=bobs, assignee=bob)
        services.conversation_assign(conversation=danas, assignee=dana)
        client.force_login(alice)
        page = client.get("/inbox/", {"view": "all", "assignee": dana.pk})
        assert [c.pk for c in page.context["conversations"]] == [danas.pk]
        assert f'<option value="{dana.pk}" selected>Dana</option>' in page.content.decode()
        page = client.get("/inbox/", {"view": "all", "assignee": "none"})
        assert [c.pk for c in page.context["conversations"]] == [nobodys.pk]

    def test_filters_take_only_known_values(self, client, alice, chat_inbox, mail_inbox):
        chat(chat_inbox, address="v1")
        receive(mail_inbox, channel=Channel.EMAIL, address="a@b.example", subject="Invoice")
        client.force_login(alice)
        rows = client.get("/inbox/", {"view": "all", "channel": "email"}).context["conversations"]
        assert [c.channel for c in rows] == ["email"]
        response = client.get(
            "/inbox/", {"view": "all", "channel": "x'; drop", "sort": "pk", "after": "!!"}
        )
        assert response.status_code == 200
        assert len(response.context["conversations"]) == 2

    def test_keyset_pages_cover_everything_once(self, client, alice, chat_inbox):
        for i in range(120):
            chat(chat_inbox, address=f"v{i}")
        client.force_login(alice)
        seen, query = [], "view=all"
        while query:
            response = client.get(f"/inbox/?{query}")
            seen += [c.pk for c in response.context["conversations"]]
            query = response.context["next_query"]
        assert len(seen) == len(set(seen)) == 120
        ordered = Conversation.objects.order_by("-last_activity_at", "-id")
        assert seen == list(ordered.values_list("pk", flat=True))

    def test_the_list_runs_the_same_queries_for_5_or_40_rows(
        self, client, alice, chat_inbox, django_assert_num_queries
    ):
        client.force_login(alice)

        def queries():
            from django.db import connection
            from django.test.utils import CaptureQueriesContext

            with CaptureQueriesContext(connection) as captured:
                assert client.get("/inbox/?view=all").status_code == 200
            return len(captured)

        for i in range(5):
            c = chat(chat_inbox, address=f"a{i}")
            services.conversation_tag(conversation=c, add=["vip"])
        few = queries()
        for i in range(35):
            c = chat(chat_inbox, address=f"b{i}")
            services.conversation_tag(conversation=c, add=["vip", "refund"])
        assert queries() == few

    def test_a_customer_nobody_named_goes_by_their_number_or_address(
        self, client, alice, sms_inbox, chat_inbox
    ):
        texted = receive(sms_inbox, text="Olá", address="+351912000111").message.conversation
        chatted = receive(chat_inbox, text="Hi", address="visitor-9").message.conversation
        client.force_login(alice)
        rows = client.get("/inbox/?view=all").content.decode()
        assert '<bdi class="who">+351912000111</bdi>' in rows
        # A chat visitor's id says nothing: the profile's number tells two visitors apart.
        visitor = chatted.customer_id
        assert f'<bdi class="who">Customer {visitor}</bdi>' in rows
        page = client.get(f"/inbox/{texted.pk}/").content.decode()
        assert "+351912000111 · " in page
        assert f"Customer {visitor} · " in client.get(f"/inbox/{chatted.pk}/").content.decode()

    def test_a_customer_with_several_addresses_goes_by_the_same_one_everywhere(
        self, client, alice, sms_inbox
    ):
        texted = receive(sms_inbox, text="Olá", address="+351912000222").message.conversation
        # An address added later, which sorts first by kind ("email" < "sms").
        Identity.objects.create(
            customer=texted.customer, kind=Channel.EMAIL, address="aaa@example.com"
        )
        client.force_login(alice)
        rows = client.get("/inbox/?view=all").content.decode()
        assert '<bdi class="who">+351912000222</bdi>' in rows
        page = client.get(f"/inbox/{texted.pk}/").content.decode()
        assert "+351912000222 · " in page
        assert "aaa@example.com · " not in page
        profile = client.get(f"/inbox/customers/{texted.customer_id}/").content.decode()
        assert "<h1>+351912000222</h1>" in profile
        assert "<title>+351912000222 · Threadline</title>" in profile

    def test_a_row_shows_tags_the_start_of_a_long_message_and_its_age(
        self, client, alice, chat_inbox
    ):
        with time_machine.travel(timezone.now() - timedelta(hours=3), tick=False):
            long = chat(chat_inbox, text="refund " * 100, address="long")
            services.conversation_tag(conversation=long, add=["vip", "refund"])
        with time_machine.travel(timezone.now() - timedelta(days=45), tick=False):
            old = chat(chat_inbox, text="Hi", address="old")
        services.conversation_set_priority(conversation=old, priority=Conversation.Priority.URGENT)
        client.force_login(alice)
        rows = client.get("/inbox/?view=all&partial=rows").content.decode()
        row = rows[rows.index(f'data-conversation="{old.pk}"') :].split("</li>")[0]
        assert f'<a href="/inbox/{old.pk}/">' in row
        assert '<span class="badge">Web chat</span>' in row
        assert '<span class="badge status-open">Open</span>' in row
        assert '<span class="badge priority-3">Urgent</span>' in row
        assert ("refund " * 100)[:159] + "…</span>" in rows
        assert '<span class="badge">refund</span><span class="badge">vip</span>' in rows
        assert ">3 h ago</time>" in rows
        assert f">{timezone.localtime(old.last_activity_at):%-d %b %Y}</time>" in rows

    def test_the_sorts_that_leave_conversations_out_say_so(self, client, bob, chat_inbox):
        chat(chat_inbox)
        client.force_login(bob)
        page = client.get("/inbox/?view=teams&sort=sla").content.decode()
        assert '<option value="sla" selected>SLA due first (only those with a target)' in page
        assert "Waiting on us, longest first (only those)" in page

    def test_a_row_previews_the_last_message_and_says_when_a_reply_failed(
        self, client, bob, chat_inbox
    ):
        conversation = chat(chat_inbox, text="Where is: my parcel?")
        client.force_login(bob)
        rows = client.get("/inbox/?view=teams&partial=rows").content.decode()
        assert '<span class="preview">Where is: my parcel?</span>' in rows
        # An automatic acknowledgement does not hide the question.
        services.reply_send(
            conversation=conversation, author=None, text="We have it", automatic="acknowledgement"
        )
        rows = client.get("/inbox/?view=teams&partial=rows").content.decode()
        assert '<span class="preview">Where is: my parcel?</span>' in rows
        reply = services.reply_send(conversation=conversation, author=bob, text="On its way")
        rows = client.get("/inbox/?view=teams&partial=rows").content.decode()
        assert '<span class="preview">Reply: On its way</span>' in rows
        Message.objects.filter(pk=reply.pk).update(status=Message.Status.FAILED)
        rows = client.get("/inbox/?view=teams&partial=rows").content.decode()
        assert (
            '<span class="preview"><span class="badge failed">not delivered</span> '
            "Reply: On its way</span>"
        ) in rows

    def test_the_list_is_headed_by_the_view_it_shows(self, client, bob, chat_inbox):
        """Screen readers go by headings: the list's page had none of its own, the first
        one found was the side bar's "Views"."""
        client.force_login(bob)
        assert re.search(r'<h1 class="sr-only">\s*Mine\s*</h1>', client.get("/inbox/").text)
        page = client.get("/inbox/?view=teams").text
        assert re.search(r'<h1 class="sr-only">\s*My teams\s*</h1>', page)
        client.post("/inbox/views/save", {"name": "Chats <new>", "query": "view=teams"})
        page = client.get("/inbox/?view=teams").text
        assert re.search(r'<h1 class="sr-only">\s*Chats &lt;new&gt;\s*</h1>', page)

    def test_customer_content_is_escaped(self, client, alice, chat_inbox):
        receive(chat_inbox, text="<img src=x onerror=alert(1)>", name="<script>alert(2)</script>")
        client.force_login(alice)
        for url in ("/inbox/?view=all", "/inbox/?view=all&partial=rows"):
            html = client.get(url).content.decode()
            assert "<script>alert(2)" not in html and "&lt;script&gt;alert(2)" in html
            assert "<img src=x" not in html and "&lt;img src=x" in html


class TestConversation:
    def test_the_timeline_shows_every_channel_notes_and_events(
        self, client, bob, chat_inbox, mail_inbox
    ):
        conversation = chat(chat_inbox, text="Hi from the chat")
        email = Identity.objects.create(
            customer=conversation.customer, kind=Channel.EMAIL, address="jo@example.com"
        )
        services.reply_send(conversation=conversation, author=bob, text="By mail", identity=email)
        services.note_add(conversation=conversation, author=bob, text="Check the order")
        client.force_login(bob)
        html = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Hi from the chat" in html and "By mail" in html and "Check the order" in html
        assert "Web chat" in html and "Email" in html
        assert "internal note" in html
        assert html.index("Channel switched") < html.index("By mail")  # ahead of the reply

    def test_a_chat_visitor_goes_by_a_name_or_address_never_by_their_id(
        self, client, bob, chat_inbox
    ):
        conversation = chat(chat_inbox, address="4f1c9e0a2b7d", name="")
        client.force_login(bob)
        html = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "4f1c9e0a2b7d" not in html
        assert f"<strong>Customer {conversation.customer_id}</strong>" in html
        # The composer's channel picker and the side panel tell two chat visitors apart.
        assert ">Web chat (last seen just now)</option>" in html
        assert "<dd>last seen <time datetime=" in html and "data-ago>just now</time>" in html
        with time_machine.travel(timezone.now() + timedelta(hours=3)):
            chat(chat_inbox, address="8d2e6b1f0a3c", name="")
            Identity.objects.filter(address="8d2e6b1f0a3c").update(customer=conversation.customer)
            html = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert ">Web chat (last seen 3 h ago)</option>" in html
        assert ">Web chat (last seen just now)</option>" in html
        Identity.objects.create(
            customer=conversation.customer, kind=Channel.EMAIL, address="jo@example.com"
        )
        html = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "<strong>jo@example.com</strong>" in html and "4f1c9e0a2b7d" not in html

    def test_a_failed_reply_shows_the_reason_and_can_be_retried(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        message = services.reply_send(conversation=conversation, author=bob, text="Hi")
        Message.objects.filter(pk=message.pk).update(
            status=Message.Status.FAILED, failure_reason="Mailbox full (552)"
        )
        client.force_login(bob)
        assert "Mailbox full (552)" in client.get(f"/inbox/{conversation.pk}/").content.decode()
        response = client.post(reverse("inbox:retry", args=[message.pk]))
        assert response.status_code == 302
        message.refresh_from_db()
        assert message.status == Message.Status.QUEUED
        # Sent minutes after it was written, maybe after the customer's newer message: the
        # timeline, in the order things were written, says when it went.
        later = message.created_at + timedelta(minutes=8)
        Message.objects.filter(pk=message.pk).update(status=Message.Status.SENT, sent_at=later)
        html = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert f'sent <time datetime="{later.isoformat()}">' in html

    def test_answer_a_chat_customer_by_email(self, client, bob, chat_inbox, mail_inbox):
        conversation = chat(chat_inbox)
        email = Identity.objects.create(
            customer=conversation.customer, kind=Channel.EMAIL, address="jo@example.com"
        )
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/")
        assert [i.kind for i in page.context["identities"]] == ["email", "webchat"]
        response = client.post(
            reverse("inbox:reply", args=[conversation.pk]),
            {"text": "Sent by mail", "identity": email.pk, "seen": page.context["seen"]},
        )
        assert response.status_code == 302
        reply = conversation.messages.get(direction="outbound")
        assert (reply.channel, reply.inbox, reply.text) == ("email", mail_inbox, "Sent by mail")

    def test_a_note_says_which_mentions_reached_nobody(self, client, bob, dana, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        response = client.post(
            reverse("inbox:reply", args=[conversation.pk]),
            {"text": "@dana @nobody please check", "mode": "note", "seen": 10**9},
            follow=True,
        )
        flashed = [str(m) for m in response.context["messages"]]
        assert flashed == [
            "Nobody was told of @nobody: no agent who may see this conversation goes by that "
            "name (the part of their email before the @)."
        ]
        assert dana.notifications.count() == 1

    def test_a_placeholder_left_unfilled_holds_the_reply(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox, name="")  # a visitor who gave no name
        client.force_login(bob)
        text = "Hi {customer.first_name},\n\nRefunds take 5 days. {signature}"
        response = client.post(
            reverse("inbox:reply", args=[conversation.pk]), {"text": text, "seen": 10**9}
        )
        assert response.status_code == 400
        page = response.content.decode()
        assert "Fill in or remove {customer.first_name} before sending" in page
        assert "Hi {customer.first_name}," in page  # the draft, kept to fix
        assert not conversation.messages.filter(direction="outbound").exists()
        # Named since, the customer's name goes in; braces that are no placeholder of ours
        # go out as written.
        services.customer_update(customer=conversation.customer, data={"name": "Jo Lee"})
        sent = client.post(
            reverse("inbox:reply", args=[conversation.pk]), {"text": text, "seen": 10**9}
        )
        assert sent.status_code == 302
        reply = conversation.messages.get(direction="outbound")
        assert reply.text == "Hi Jo,\n\nRefunds take 5 days. {signature}"

    def test_a_note_is_not_sent(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        response = client.post(
            reverse("inbox:reply", args=[conversation.pk]),
            {"text": "Internal only", "mode": "note", "seen": 10**9},
            follow=True,
        )
        note = conversation.messages.get(direction="note")
        assert note.text == "Internal only" and note.status == ""
        # The composer stays on notes: the next line is not sent to the customer by surprise.
        assert '<input type="radio" name="mode" value="note" checked>' in response.content.decode()
        response = client.post(
            reverse("inbox:reply", args=[conversation.pk]),
            {"text": "Hello!", "mode": "reply", "seen": 10**9},
            follow=True,
        )
        assert '<input type="radio" name="mode" value="reply" checked>' in response.content.decode()

    def test_the_timeline_opens_and_reopens_before_the_message_that_did_it(
        self, client, bob, chat_inbox
    ):
        conversation = chat(chat_inbox, text="first")
        services.conversation_set_status(conversation=conversation, status="resolved")
        receive(chat_inbox, text="second", address="visitor-1")
        client.force_login(bob)
        timeline = client.get(f"/inbox/{conversation.pk}/").context["timeline"]
        said = [item.text if kind == "message" else item.kind for kind, item in timeline]
        assert said == ["created", "first", "status", "reopened", "second"]

    def test_a_form_sent_twice_writes_once(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox, text="First")
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/")
        once, seen = page.context["reply_once"], page.context["seen"]
        page_once = once
        assert f'name="client_id" value="{once}"' in page.content.decode()
        url = reverse("inbox:reply", args=[conversation.pk])
        for mode in ("reply", "reply", "note"):
            # The same page's form (a double click, a resend), then a note from a fresh page.
            if mode == "note":
                once = client.get(f"/inbox/{conversation.pk}/").context["reply_once"]
            for _ in range(2):
                form = {"text": f"A {mode}", "mode": mode, "seen": seen, "client_id": once}
                assert client.post(url, form).status_code == 302
        assert conversation.messages.filter(text="A reply").count() == 1
        assert conversation.messages.filter(text="A note").count() == 1
        # The first answer was lost and the browser sends again after the customer wrote: it
        # was sent, so it is neither held as stale nor sent twice.
        receive(chat_inbox, text="Hello?")
        form = {"text": "A reply", "mode": "reply", "seen": seen, "client_id": page_once}
        assert client.post(url, form).status_code == 302
        assert conversation.messages.filter(text="A reply").count() == 1

    def test_a_reply_to_a_stale_view_asks_first(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox, text="First")
        client.force_login(bob)
        seen = client.get(f"/inbox/{conversation.pk}/").context["seen"]
        receive(chat_inbox, text="Actually, never mind!")  # arrives while bob types
        url = reverse("inbox:reply", args=[conversation.pk])
        response = client.post(url, {"text": "Here is the refund", "seen": seen})
        assert response.status_code == 409
        html = response.content.decode()
        assert "Here is the refund</textarea>" in html
        arrived = conversation.messages.get(text="Actually, never mind!")
        assert f'<li class="message inbound new" id="m{arrived.pk}">' in html
        assert html.count('class="message inbound new"') == 1  # "First" was seen
        assert not conversation.messages.filter(direction="outbound").exists()
        # The files chosen could not be kept on the page sent back: it names them.
        label = SimpleUploadedFile("label.png", PNG, content_type="image/png")
        response = client.post(url, {"text": "Here is the refund", "seen": seen, "files": [label]})
        assert "attach label.png again" in response.content.decode()
        # Sent again from the page that showed it: sent as it is.
        seen = response.context["seen"]
        response = client.post(url, {"text": "Here is the refund", "seen": seen})
        assert response.status_code == 302
        assert conversation.messages.filter(direction="outbound").count() == 1

    def test_a_reply_over_a_conversation_a_teammate_resolved_meanwhile_asks_first(
        self, client, bob, dana, chat_inbox
    ):
        """Dana resolved it while Bob wrote: his reply would have gone out unseen by him on a
        resolved conversation. Held once, saying who did what; sent as it is from there,
        without reopening it."""
        conversation = chat(chat_inbox, text="Where is my parcel?")
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/").context
        services.conversation_set_status(conversation=conversation, status="resolved", actor=dana)
        url = reverse("inbox:reply", args=[conversation.pk])
        form = {"text": "It left today.", "seen": page["seen"], "seen_event": page["seen_event"]}
        # A note answers nobody: never held.
        assert (
            client.post(url, {**form, "mode": "note", "text": "Ask the carrier"}).status_code == 302
        )

        response = client.post(url, form)
        assert response.status_code == 409
        html = response.content.decode()
        assert "while you were writing, Dana set its status to resolved" in html
        assert "It left today.</textarea>" in html
        resolved = conversation.events.get(kind="status", actor=dana)
        assert f'<li class="event new" data-event="{resolved.pk}"' in html
        assert not conversation.messages.filter(direction="outbound").exists()
        # Bob's own changes are not news to him: he takes it, and sends from the held page.
        services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
        seen_event = response.context["seen_event"]
        assert seen_event == resolved.pk
        response = client.post(
            url, {**form, "seen": response.context["seen"], "seen_event": seen_event}
        )
        assert response.status_code == 302
        assert conversation.messages.filter(direction="outbound").count() == 1
        conversation.refresh_from_db()
        assert conversation.status == "resolved"

    @pytest.mark.parametrize("mode", ["reply", "note"])
    def test_back_after_sending_and_send_again_asks_before_a_second_copy(
        self, client, bob, chat_inbox, mode
    ):
        """Back to the page before sending: the browser restores the text, and the page,
        loaded anew, has a new client id. The same text is held, the one sent marked."""
        conversation = chat(chat_inbox, text="First")
        client.force_login(bob)
        url = reverse("inbox:reply", args=[conversation.pk])
        before = client.get(f"/inbox/{conversation.pk}/").context
        form = {"text": "Refunded today.", "mode": mode, "seen": before["seen"]}
        assert client.post(url, {**form, "client_id": before["reply_once"]}).status_code == 302
        again = client.get(f"/inbox/{conversation.pk}/?back").context["reply_once"]
        response = client.post(url, {**form, "client_id": again})
        assert response.status_code == 409
        html = response.content.decode()
        assert f"Not sent: you already sent this same {mode}" in html
        assert "Refunded today.</textarea>" in html
        (sent,) = conversation.messages.filter(text="Refunded today.")
        assert re.search(rf'<li class="[^"]*\bnew\b[^"]*" id="m{sent.pk}"', html)
        assert '<input type="hidden" name="again" value="1">' in html
        # Pressed again from the page that showed it: meant, and sent.
        form |= {"seen": response.context["seen"], "again": "1"}
        assert client.post(url, {**form, "client_id": again}).status_code == 302
        assert conversation.messages.filter(text="Refunded today.").count() == 2
        if mode == "reply":  # a reply that failed, written again, is meant: it goes
            conversation.messages.filter(direction="outbound").update(status="failed")
            again = client.get(f"/inbox/{conversation.pk}/").context["reply_once"]
            form.pop("again")
            assert client.post(url, {**form, "client_id": again}).status_code == 302

    def test_an_agent_attaches_files_to_a_reply_and_a_note(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        url = reverse("inbox:reply", args=[conversation.pk])
        png = SimpleUploadedFile("label.png", PNG, content_type="image/png")
        csv = SimpleUploadedFile("orders.csv", b"order,total\n10441,12.50\n", "text/csv")
        response = client.post(url, {"text": "", "files": [png, csv], "seen": 10**9})
        assert response.status_code == 302
        reply = conversation.messages.get(direction="outbound")
        assert sorted(a.filename for a in reply.attachments.all()) == ["label.png", "orders.csv"]
        assert {a.content_type for a in reply.attachments.all()} == {"image/png", "text/csv"}
        pdf = SimpleUploadedFile("receipt.pdf", b"%PDF-1.4 ...", content_type="application/pdf")
        client.post(url, {"text": "", "mode": "note", "files": [pdf], "seen": 10**9})
        note = conversation.messages.get(direction="note")
        assert [a.filename for a in note.attachments.all()] == ["receipt.pdf"]
        # Text whose first 2,048 bytes end inside a character is still text.
        accented = SimpleUploadedFile("notas.csv", b"a" * 2047 + "é,1\n".encode(), "text/csv")
        assert (
            client.post(url, {"text": "CSV", "files": [accented], "seen": 10**9}).status_code == 302
        )
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "label.png" in page and "receipt.pdf" in page

    def test_a_file_we_do_not_take_is_refused_and_nothing_is_sent(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        page = SimpleUploadedFile("invoice.html", b"<script>alert(1)</script>", "image/png")
        photo = SimpleUploadedFile("label.png", PNG, content_type="image/png")
        response = client.post(
            reverse("inbox:reply", args=[conversation.pk]),
            {"text": "See attached", "files": [photo, page], "seen": 10**9},
        )
        assert response.status_code == 400
        html = response.content.decode()
        assert "invoice.html cannot be attached" in html and "See attached</textarea>" in html
        # The good file was dropped with it and must be attached again; the refused one not.
        assert "Your files were not kept: attach label.png again." in html
        assert not conversation.messages.filter(direction="outbound").exists()

    def test_files_the_channel_would_refuse_are_refused_with_the_draft_kept(
        self, client, alice, sms_inbox
    ):
        texted = receive(sms_inbox, text="Olá", address="+351912000333").message.conversation
        client.force_login(alice)
        page = client.get(f"/inbox/{texted.pk}/").content.decode()
        assert 'data-files="at most 10 files, 5 MB in all"' in page  # the composer's hint
        scan = SimpleUploadedFile("scan.png", PNG + bytes(6 << 20), content_type="image/png")
        response = client.post(
            reverse("inbox:reply", args=[texted.pk]),
            {"text": "Your scan", "files": [scan], "seen": 10**9},
        )
        assert response.status_code == 400
        html = response.content.decode()
        assert "SMS takes at most 5 MB of files on one message; these are 6 MB." in html
        assert "Your scan</textarea>" in html
        assert not texted.messages.filter(direction="outbound").exists()

    def test_a_merged_conversation_takes_no_reply_or_note(self, client, bob, chat_inbox):
        source = chat(chat_inbox, address="v1")
        services.conversation_set_status(conversation=source, status=Conversation.Status.CLOSED)
        target = chat(chat_inbox, address="v1", text="Me again")
        services.conversation_merge(source=source, target=target, actor=bob)
        client.force_login(bob)
        page = client.get(f"/inbox/{source.pk}/").content.decode()
        assert "data-composer" not in page and f'href="/inbox/{target.pk}/">#{target.pk}' in page
        url = reverse("inbox:reply", args=[source.pk])
        for mode in ("reply", "note"):
            response = client.post(url, {"text": "Hello?", "mode": mode, "seen": 10**9})
            assert response.status_code == 400
            assert f"merged into #{target.pk}; write there" in response.content.decode()
        assert not Message.objects.filter(text="Hello?").exists()
        # Where the customer's conversations are listed, it says where it went, not "Closed".
        for page in (f"/inbox/{target.pk}/", f"/inbox/customers/{target.customer_id}/"):
            assert f"merged into #{target.pk}</span>" in client.get(page).content.decode()

    def test_a_refused_reply_keeps_the_draft_and_says_why(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        response = client.post(
            reverse("inbox:reply", args=[conversation.pk]), {"text": "   ", "seen": 10**9}
        )
        assert response.status_code == 400
        assert b"A reply needs text" in response.content

    def test_answering_an_unassigned_conversation_takes_it(self, client, bob, dana, chat_inbox):
        conversation = chat(chat_inbox)
        services.reply_send(conversation=conversation, author=bob, text="Ack", automatic="ack")
        conversation.refresh_from_db()
        assert conversation.assignee is None  # an automatic reply takes nothing
        client.force_login(bob)
        url = reverse("inbox:reply", args=[conversation.pk])
        client.post(url, {"text": "Looking into it", "seen": 10**9})
        conversation.refresh_from_db()
        assert conversation.assignee == bob
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Assigned by Bob: Bob, on answering" in page
        client.force_login(dana)  # a teammate's answer leaves it with Bob
        client.post(url, {"text": "Bob is on it", "seen": 10**9})
        conversation.refresh_from_db()
        assert conversation.assignee == bob

    def test_the_assignee_field_shows_an_assignee_from_another_team(
        self, client, bob, charlie, chat_inbox
    ):
        conversation = chat(chat_inbox)
        services.conversation_assign(conversation=conversation, assignee=charlie)
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert f'<option value="{charlie.pk}" selected>Charlie</option>' in page

    def test_an_agent_cannot_hand_a_conversation_to_another_teams_agent(
        self, client, bob, charlie, chat_inbox
    ):
        # The field offers the team's agents; a crafted form gave it to Billing's Charlie,
        # who then saw a conversation of a team he is not in.
        conversation = chat(chat_inbox)
        client.force_login(bob)
        url = reverse("inbox:assign", args=[conversation.pk])
        page = client.post(url, {"assignee": charlie.pk}, follow=True).content.decode()
        assert "Charlie is not in this conversation&#x27;s team: transfer it to their" in page
        bulk = {"action": f"assign:{charlie.pk}", "conversations": [conversation.pk]}
        page = client.post(reverse("inbox:bulk"), bulk, follow=True).content.decode()
        assert f"Not changed: #{conversation.pk}: Charlie is not in" in page
        conversation.refresh_from_db()
        assert conversation.assignee is None

    def test_a_note_is_never_held_as_stale_and_no_address_means_notes_only(
        self, client, bob, chat_inbox, billing_inbox, alice
    ):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        seen = client.get(f"/inbox/{conversation.pk}/").context["seen"]
        receive(chat_inbox, text="Hello again?", address="visitor-1")
        url = reverse("inbox:reply", args=[conversation.pk])
        response = client.post(url, {"text": "Check stock", "mode": "note", "seen": seen})
        assert response.status_code == 302
        assert conversation.messages.filter(direction="note", text="Check stock").exists()
        # A customer an agent took down by hand, with no address: the composer offers notes.
        nowhere = Conversation.objects.create(
            inbox=billing_inbox,
            customer=Customer.objects.create(name="Walk-in"),
            last_activity_at=timezone.now(),
        )
        client.force_login(alice)
        page = client.get(f"/inbox/{nowhere.pk}/").content.decode()
        assert '<input type="radio" name="mode" value="reply" disabled>' in page
        assert '<input type="radio" name="mode" value="note" checked>' in page
        assert "No address to reply to: <a" in page

    def test_a_snooze_time_without_the_snoozed_status_changes_nothing_and_says_so(
        self, client, bob, chat_inbox
    ):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        response = client.post(
            reverse("inbox:status", args=[conversation.pk]),
            {"status": "pending", "snoozed_until": "2030-01-01T09:00"},
            follow=True,
        )
        assert "A snooze time goes with the status Snoozed" in response.content.decode()
        conversation.refresh_from_db()
        assert conversation.status == Conversation.Status.OPEN

    def test_actions_assign_snooze_and_prioritise(self, client, bob, dana, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        client.post(reverse("inbox:assign", args=[conversation.pk]), {"assignee": dana.pk})
        client.post(reverse("inbox:priority", args=[conversation.pk]), {"priority": "3"})
        later = (timezone.now() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
        client.post(
            reverse("inbox:status", args=[conversation.pk]),
            {"status": "snoozed", "snoozed_until": later},
        )
        conversation.refresh_from_db()
        assert conversation.assignee == dana
        assert conversation.priority == 3
        assert conversation.status == "snoozed"
        kinds = set(conversation.events.values_list("kind", flat=True))
        assert {ConversationEvent.Kind.ASSIGNED, ConversationEvent.Kind.STATUS} <= kinds
        assert "Dana" in client.get(f"/inbox/{conversation.pk}/").content.decode()

    @time_machine.travel("2026-11-30 12:00Z", tick=False)
    def test_times_are_read_and_shown_in_the_agents_time_zone(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        client.cookies["tz"] = "America/New_York"  # what inbox.js sets from the browser
        client.post(
            reverse("inbox:status", args=[conversation.pk]),
            {"status": "snoozed", "snoozed_until": "2026-12-01T09:00"},
        )
        conversation.refresh_from_db()
        assert conversation.snoozed_until == datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
        html = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Status changed by Bob: snoozed until Dec 1, 09:00" in html
        assert ">Dec 1, 09:00</time>" in html  # beside the status, at the top
        rows = client.get("/inbox/?view=teams&status=snoozed&partial=rows").content.decode()
        assert ">Snoozed until Dec 1, 09:00</span>" in rows  # in the list too
        for unknown in ("Not/A_Zone", "America", "../../etc"):  # the server's zone, UTC
            client.cookies["tz"] = unknown
            html = client.get(f"/inbox/{conversation.pk}/").content.decode()
            assert "snoozed until Dec 1, 14:00" in html

    @pytest.mark.parametrize("until", ["2001-01-01T10:00", "2026-13-45T10:00"])
    def test_snoozing_into_the_past_or_a_day_that_is_none_is_refused_visibly(
        self, client, bob, chat_inbox, until
    ):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        response = client.post(
            reverse("inbox:status", args=[conversation.pk]),
            {"status": "snoozed", "snoozed_until": until},
            follow=True,
        )
        assert b"Snoozing needs a time in the future" in response.content
        conversation.refresh_from_db()
        assert conversation.status == "open"

    def test_the_sidebar_lists_the_customers_other_conversations_the_agent_may_see(
        self, client, bob, chat_inbox, billing_inbox
    ):
        earlier = chat(chat_inbox, text="Where is my parcel?")
        services.conversation_set_status(conversation=earlier, status=Conversation.Status.CLOSED)
        Conversation.objects.filter(pk=earlier.pk).update(subject="Parcel")
        billing = receive(billing_inbox, channel=Channel.WEBCHAT, subject="Card declined")
        billing = billing.message.conversation
        services.conversation_set_status(conversation=billing, status=Conversation.Status.CLOSED)
        current = chat(chat_inbox, text="Me again")
        assert earlier.customer_id == billing.customer_id == current.customer_id
        services.customer_update(
            customer=current.customer, data={"notes": "Prefers email after 6 pm"}
        )
        client.force_login(bob)
        page = client.get(f"/inbox/{current.pk}/")
        html = page.content.decode()
        assert [c.pk for c in page.context["history"]] == [earlier.pk]
        assert f'href="/inbox/{earlier.pk}/">#{earlier.pk} Parcel</a>' in html
        assert '<span class="badge status-closed">Closed</span>' in html  # in the card
        assert "Prefers email after 6 pm" in html
        # Billing's conversation is not Bob's to see: neither listed nor offered to merge into.
        assert f"#{billing.pk}" not in html and "Card declined" not in html

    def test_the_page_runs_the_same_queries_for_3_or_30_messages(self, client, bob, chat_inbox):
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        conversation = chat(chat_inbox)
        client.force_login(bob)

        def queries():
            with CaptureQueriesContext(connection) as captured:
                assert client.get(f"/inbox/{conversation.pk}/").status_code == 200
            return len(captured)

        services.reply_send(conversation=conversation, author=bob, text="One")
        few = queries()
        for i in range(15):
            receive(chat_inbox, text=f"More {i}")
            services.note_add(conversation=conversation, author=bob, text=f"Note {i}")
        assert queries() == few
        # Nor for more addresses to write to (the composer's "Send on" and what each takes).
        for i in range(10):
            services.identity_add(
                customer=conversation.customer, kind="email", address=f"jo{i}@example.com"
            )
        assert queries() == few


class TestPermissions:
    def test_an_outsider_gets_404_everywhere_on_a_conversation(
        self, client, charlie, bob, chat_inbox
    ):
        conversation = chat(chat_inbox, text="Private matter")
        message = services.reply_send(conversation=conversation, author=bob, text="x")
        attachment = services.attachment_store(
            message=message, filename="a.pdf", content=b"%PDF", content_type="application/pdf"
        )
        client.force_login(charlie)
        n = conversation.pk
        assert client.get(f"/inbox/{n}/").status_code == 404
        assert client.get(f"/inbox/{n}/?partial=timeline").status_code == 404
        for name in ("reply", "assign", "status", "priority"):
            response = client.post(reverse(f"inbox:{name}", args=[n]), {"text": "x"})
            assert response.status_code in (400, 404), name
        assert client.post(reverse("inbox:retry", args=[message.pk])).status_code == 404
        assert client.get(reverse("inbox:attachment", args=[attachment.pk])).status_code == 404
        assert "Private matter" not in client.get("/inbox/?view=teams&q=Private").content.decode()
        conversation.refresh_from_db()
        assert conversation.messages.count() == 2
        assert conversation.assignee == bob  # who answered it, nothing Charlie tried

    def test_attachments_download_only_as_files(self, client, bob, chat_inbox):
        conversation = chat(chat_inbox)
        message = services.reply_send(conversation=conversation, author=bob, text="x")
        attachment = services.attachment_store(
            message=message, filename="<b>x</b>.html", content=b"<script>", content_type="text/html"
        )
        client.force_login(bob)
        response = client.get(reverse("inbox:attachment", args=[attachment.pk]))
        assert response.status_code == 200
        assert response["Content-Disposition"].startswith("attachment")
        assert response["X-Content-Type-Options"] == "nosniff"

    def test_every_url_refuses_the_anonymous_and_the_outsider(
        self, client, charlie, bob, chat_inbox
    ):
        """Walk the resolver: each page gets a redirect to login, a 403/404/405, never data."""
        conversation = chat(chat_inbox, text="Secret words")
        message = services.reply_send(conversation=conversation, author=bob, text="Secret reply")
        ids = {
            "number": conversation.pk,
            "message_id": message.pk,
            "attachment_id": 10**6,
            "inbox_id": chat_inbox.pk,
            "kind": "sms",
            "token": "x",
        }

        def walk(patterns, prefix=""):
            for pattern in patterns:
                if isinstance(pattern, URLResolver):
                    yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
                elif isinstance(pattern, URLPattern):
                    yield prefix + str(pattern.pattern)

        paths = []
        for route in walk(get_resolver().url_patterns):
            if route.startswith(("admin/", "^")) or "(?P" in route:
                continue  # Django admin guards itself; regex routes are static files
            path = "/" + route
            for key, value in ids.items():
                path = path.replace(f"<int:{key}>", str(value)).replace(f"<str:{key}>", str(value))
            paths.append(path)
        assert f"/inbox/{conversation.pk}/" in paths

        paths.remove("/logout/")  # it would end the persona's session half way through
        # The chat widget answers visitors, who are not users: its own checks apply.
        public = {"/", "/login/", "/healthz", "/widget.js", "/widget/demo/"}
        public |= {"/api/v1/schema", "/api/v1/docs"}  # the API's description, no data
        # "Forgot your password?": for those who cannot sign in (the link checks its token).
        public |= {"/login/forgot", "/login/forgot/sent", "/login/reset/done"}
        public |= {"/login/reset/<uidb64>/<token>"}
        for who in (None, charlie):
            client.logout()
            if who:
                client.force_login(who)
            for path in paths:
                for method in ("get", "post"):
                    response = getattr(client, method)(path)
                    body = getattr(response, "content", b"")
                    assert b"Secret" not in body, (who, method, path)
                    if path in public or path.startswith("/channels/"):
                        continue
                    if who is None:
                        # The REST API asks for credentials: 401.
                        assert response.status_code in (302, 401, 403, 404, 405), (method, path)
                        if response.status_code == 302:
                            assert response["Location"].startswith("/login/"), path
                    # By segment: "/api/v1/" names no conversation 1.
                    elif {str(conversation.pk), str(message.pk)} & set(path.split("/")):
                        assert response.status_code in (400, 403, 404, 405), (method, path)


def test_a_conversation_transferred_to_another_team_leaves_the_first_teams_queue(
    client, bob, charlie, chat_inbox, billing
):
    moved = chat(chat_inbox, text="A question for billing", address="v1")
    services.conversation_set_team(conversation=moved, team=billing)
    stays = chat(chat_inbox, text="A question for us", address="v2")

    def listed(user, view):
        client.force_login(user)
        page = client.get(f"/inbox/?view={view}").content.decode()
        counts = json.loads(html.unescape(re.search(r'data-counts="([^"]*)"', page).group(1)))
        shown = [pk for pk in (moved.pk, stays.pk) if f'data-conversation="{pk}"' in page]
        return shown, counts[view]

    # Bob's team answers the inbox: the transferred one is Billing's work now, not his.
    assert listed(bob, "unassigned") == ([stays.pk], 1)
    assert listed(bob, "teams") == ([stays.pk], 1)
    assert listed(charlie, "unassigned") == ([moved.pk], 1)
    assert listed(charlie, "teams") == ([moved.pk], 1)
    # Bob may still read it (its inbox is his team's), as a search finds it.
    client.force_login(bob)
    assert client.get(reverse("inbox:conversation", args=[moved.pk])).status_code == 200


class TestBulkActions:
    def test_an_agent_resolves_several_conversations_at_once(
        self, client, bob, chat_inbox, billing_inbox
    ):
        first, second = chat(chat_inbox, address="v1"), chat(chat_inbox, address="v2")
        theirs = receive(billing_inbox, address="c-9").message.conversation  # Billing's
        client.force_login(bob)
        page = client.get("/inbox/?view=teams").content.decode()
        assert f'name="conversations" value="{first.pk}" form="bulk"' in page
        assert '<option value="status:resolved">Resolve</option>' in page
        response = client.post(
            reverse("inbox:bulk"),
            {
                "conversations": [first.pk, second.pk, theirs.pk],
                "action": "status:resolved",
                "query": "view=teams&status=&evil=1",
            },
        )
        assert response["Location"] == "/inbox/?view=teams"  # back to the same list
        for conversation in (first, second, theirs):
            conversation.refresh_from_db()
        assert first.status == second.status == Conversation.Status.RESOLVED
        assert theirs.status == Conversation.Status.OPEN  # not Bob's to change, nor to know of
        assert first.events.filter(kind="status", actor=bob).exists()
        flashed = [str(m) for m in client.get(response["Location"]).context["messages"]]
        assert flashed == [
            f"Resolved 2 conversations: #{first.pk}, #{second.pk}.",
            "1 of the conversations picked could not be found.",
        ]

    def test_one_refusal_does_not_stop_the_others(self, client, bob, dana, chat_inbox):
        source = chat(chat_inbox, address="v1")
        services.conversation_set_status(conversation=source, status=Conversation.Status.CLOSED)
        target = chat(chat_inbox, address="v1", text="Me again")
        services.conversation_merge(source=source, target=target, actor=bob)
        services.conversation_set_status(conversation=target, status=Conversation.Status.CLOSED)
        client.force_login(bob)
        url = reverse("inbox:bulk")
        client.post(url, {"conversations": [source.pk, target.pk], "action": "status:open"})
        target.refresh_from_db()
        source.refresh_from_db()
        assert target.status == Conversation.Status.OPEN
        assert source.status == Conversation.Status.CLOSED
        flashed = [str(m) for m in client.get("/inbox/").context["messages"]]
        assert flashed == [
            f"Reopened 1 conversation: #{target.pk}.",
            f"Not changed: #{source.pk}: This conversation was merged; work in the one it "
            "went into.",
        ]
        # Assigning to a teammate and tagging go through the same services.
        client.post(url, {"conversations": [target.pk], "action": f"assign:{dana.pk}"})
        client.post(url, {"conversations": [target.pk], "action": "tag:Refund"})
        target.refresh_from_db()
        assert target.assignee == dana
        assert [t.name for t in target.tags.all()] == ["refund"]

    def test_the_agent_goes_back_to_the_page_they_were_on_and_a_forged_one_is_dropped(
        self, client, bob, chat_inbox
    ):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        # Page 2 of "SLA due first": after the row due then, number 5.
        page_two = QueryDict(mutable=True)
        page_two.update({"view": "teams", "sort": "sla"})
        page_two["after"] = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", 5]').decode()
        bulk = {"conversations": [conversation.pk], "action": "priority:3"}
        query = f"{page_two.urlencode()}&partial=rows"
        response = client.post(reverse("inbox:bulk"), {**bulk, "query": query})
        assert response["Location"] == f"/inbox/?{page_two.urlencode()}"
        query = "view=teams&sort=sla&after=');drop table--"
        response = client.post(reverse("inbox:bulk"), {**bulk, "query": query})
        assert response["Location"] == "/inbox/?view=teams&sort=sla"

    def test_a_bulk_action_without_conversations_or_with_a_bad_action_is_refused(
        self, client, bob, chat_inbox
    ):
        conversation = chat(chat_inbox)
        client.force_login(bob)
        url = reverse("inbox:bulk")
        response = client.post(url, {"action": "status:resolved"})
        assert response.status_code == 302
        flashed = [str(m) for m in client.get(response["Location"]).context["messages"]]
        assert flashed == ["Pick between 1 and 100 conversations."]
        for action in ("status:snoozed", "assign:999", "delete:all", ""):
            response = client.post(url, {"conversations": [conversation.pk], "action": action})
            assert response.status_code == 400, action
        conversation.refresh_from_db()
        assert conversation.status == Conversation.Status.OPEN


class TestSavedViews:
    def test_an_agent_saves_filters_and_finds_them_in_the_sidebar(
        self, client, bob, dana, chat_inbox, mail_inbox
    ):
        chat(chat_inbox, address="v1")
        receive(mail_inbox, channel=Channel.EMAIL, address="a@b.example", subject="Invoice")
        client.force_login(bob)
        response = client.post(
            reverse("inbox:view_save"),
            {"name": "Email waiting", "query": "view=teams&channel=email&evil=1&sort=waiting"},
        )
        assert response.status_code == 302
        assert response["Location"] == "/inbox/?view=teams&channel=email&sort=waiting"
        page = client.get(response["Location"])
        assert [v.name for v in page.context["saved_views"]] == ["Email waiting"]
        assert [c.channel for c in page.context["conversations"]] == ["email"]
        assert 'aria-current="page">Email waiting' in page.content.decode()
        assert page.content.decode().count('aria-current="page"') == 1  # not My teams as well
        # The same filters applied through the form, which sends its empty fields too.
        form = "view=teams&q=&status=&channel=email&team=&priority=&tag=&sort=waiting"
        assert 'aria-current="page">Email waiting' in client.get(f"/inbox/?{form}").content.decode()

        # A nameless view is refused, and the list keeps its filters.
        response = client.post(reverse("inbox:view_save"), {"name": " ", "query": form})
        assert response["Location"] == "/inbox/?view=teams&channel=email&sort=waiting"
        # Apply keeps an inbox picked in the sidebar.
        page = client.get(f"/inbox/?view=teams&inbox={mail_inbox.pk}").content.decode()
        assert f'<input type="hidden" name="inbox" value="{mail_inbox.pk}">' in page

        client.force_login(dana)  # a teammate does not get bob's views
        assert list(client.get("/inbox/").context["saved_views"]) == []
        saved = bob.saved_views.get()
        assert client.post(reverse("inbox:view_delete", args=[saved.pk])).status_code == 404
        assert bob.saved_views.exists()

        client.force_login(bob)
        client.post(reverse("inbox:view_delete", args=[saved.pk]))
        assert not bob.saved_views.exists()

    def test_a_view_needs_a_name(self, client, bob):
        client.force_login(bob)
        response = client.post(
            reverse("inbox:view_save"), {"name": " ", "query": "view=mine"}, follow=True
        )
        assert b"A saved view needs a name" in response.content
        assert not bob.saved_views.exists()


def test_the_timeline_says_what_team_priority_and_tags_changed_to(
    client, mail_inbox, billing, alice
):
    conversation = receive(mail_inbox, address="maria@example.com").message.conversation
    services.conversation_set_team(conversation=conversation, team=billing, actor=alice)
    services.conversation_set_priority(conversation=conversation, priority=3, actor=alice)
    services.conversation_tag(conversation=conversation, add=["refund"], actor=alice)
    billing.name = "Billing & refunds"  # renamed since: the timeline says what it is now
    billing.save()
    client.force_login(alice)
    html = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
    assert "Team changed by Alice: Billing &amp; refunds" in html
    assert "Priority changed by Alice: Urgent" in html
    assert "Tags changed by Alice: +refund" in html


@pytest.mark.parametrize(
    ("age", "said"),
    [
        (timedelta(seconds=20), "just now"),
        (timedelta(minutes=12, seconds=50), "12 min ago"),
        (timedelta(hours=23, minutes=59), "23 h ago"),
        (timedelta(days=29, hours=23), "29 d ago"),
    ],
)
def test_an_age_is_said_at_the_precision_an_agent_needs(age, said):
    from conversations.templatetags.sla import ago

    assert ago(timezone.now() - age) == said
