"""The customer page and merging customers, with personas: bob (Support agent), charlie
(Billing agent, an outsider to Support's customers) and alice (admin)."""

import os
from email import message_from_bytes, policy

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from conversations import services
from conversations.models import Channel, Customer, Identity, Inbox
from conversations.realtime import team_group
from conversations.selectors import customers_visible_to
from tests.channels_adapters.test_email import customer_mail, customer_message, pipe
from tests.conftest import listen, receive, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def sms_inbox(support):
    return Inbox.objects.create(
        name="Support SMS", kind=Channel.SMS, address="+15550100", default_team=support
    )


@pytest.fixture
def jo(chat_inbox, mail_inbox, sms_inbox, billing_inbox):
    """Jo writes on the chat, by email and by SMS (Support), and to Billing's API inbox."""
    customer = receive(chat_inbox, text="Chat question", address="visitor-jo", name="Jo Lima")
    customer = customer.message.conversation.customer
    addresses = [
        (Channel.EMAIL, "jo@example.com"),
        (Channel.SMS, "+351912345678"),
        (Channel.API, f"{billing_inbox.pk}:jo-shop"),
    ]
    for kind, address in addresses:
        Identity.objects.create(customer=customer, kind=kind, address=address)
    receive(mail_inbox, text="Email question", address="jo@example.com", subject="Invoice 10436")
    receive(sms_inbox, text="SMS question", address="+351912345678")
    receive(billing_inbox, text="Billing question", address="jo-shop", subject="Refund secret")
    return customer


def page(client, customer):
    return client.get(reverse("inbox:customer", args=[customer.pk]))


def merge(client, source, target, **extra):
    data = {"into": target.pk, "confirm": "1", **extra}
    return client.post(reverse("inbox:customer_merge", args=[source.pk]), data)


class TestPage:
    def test_it_shows_every_address_and_every_conversation_the_agent_may_see(self, client, bob, jo):
        client.force_login(bob)
        response = page(client, jo)
        assert response.status_code == 200
        html = response.content.decode()
        assert "Jo Lima" in html
        for address in ("jo@example.com", "+351912345678"):
            assert address in html
        # The chat visitor's id is ours, meaningless to a person: the channel stands for it.
        assert '<span class="badge">Web chat</span>' in html and "visitor-jo" not in html
        shown = [c.inbox.kind for c in response.context["conversations"]]
        assert shown == ["sms", "email", "webchat"]  # newest first
        assert "Invoice 10436" in html
        assert "Refund secret" not in html  # Billing's conversation: not bob's to see

    def test_an_admin_sees_every_conversation(self, client, alice, jo):
        client.force_login(alice)
        html = page(client, jo).content.decode()
        assert "Refund secret" in html and "Invoice 10436" in html

    def test_customer_content_is_escaped(self, client, bob, chat_inbox):
        customer = receive(chat_inbox, name="<script>alert(1)</script>").message.conversation
        customer = customer.customer
        Customer.objects.filter(pk=customer.pk).update(
            attributes={"<b>plan</b>": "<img src=x onerror=alert(2)>"}, notes="<i>vip</i>"
        )
        client.force_login(bob)
        html = page(client, customer).content.decode()
        assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
        assert "<img src=x" not in html and "<b>plan" not in html and "<i>vip" not in html

    def test_the_conversation_page_links_to_the_customer(self, client, bob, jo):
        client.force_login(bob)
        conversation = jo.conversations.filter(inbox__kind="webchat").get()
        html = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
        assert f'href="{reverse("inbox:customer", args=[jo.pk])}"' in html

    def test_it_runs_the_same_queries_for_2_or_20_conversations(self, client, bob, chat_inbox):
        customer = receive(chat_inbox, address="v1", name="Ana").message.conversation.customer
        services.identity_add(customer=customer, kind="email", address="ana@example.com")
        services.conversation_open(inbox=chat_inbox, customer=customer, subject="Second")
        client.force_login(bob)

        def queries():
            with CaptureQueriesContext(connection) as captured:
                assert page(client, customer).status_code == 200
            return len(captured)

        few = queries()
        for _ in range(18):
            conversation = services.conversation_open(inbox=chat_inbox, customer=customer)
            services.conversation_assign(conversation=conversation, assignee=bob)
        assert len(page(client, customer).context["conversations"]) == 20
        assert queries() == few


class TestVisibility:
    def test_who_sees_which_customer(self, alice, bob, charlie, jo, chat_inbox, billing_inbox):
        support_only = receive(chat_inbox, address="v2").message.conversation.customer
        billing_only = receive(billing_inbox, address="b2").message.conversation.customer
        assert set(customers_visible_to(alice)) == {jo, support_only, billing_only}
        assert set(customers_visible_to(bob)) == {jo, support_only}
        assert set(customers_visible_to(charlie)) == {jo, billing_only}

    def test_an_outsider_gets_404_on_the_page_and_every_action(
        self, client, charlie, bob, chat_inbox, billing_inbox
    ):
        customer = receive(chat_inbox, address="v1", name="Private Person").message
        customer = customer.conversation.customer
        theirs = receive(billing_inbox, address="b1").message.conversation.customer
        client.force_login(charlie)
        n = customer.pk
        assert page(client, customer).status_code == 404
        assert client.get(reverse("inbox:customer_merge", args=[n]) + "?q=a").status_code == 404
        posts = {
            "customer_edit": {"name": "Hijacked"},
            "customer_identities": {"kind": "email", "address": "evil@example.com"},
            "customer_merge": {"into": theirs.pk, "confirm": "1"},
        }
        for name, data in posts.items():
            assert client.post(reverse(f"inbox:{name}", args=[n]), data).status_code == 404, name
        # Nor may charlie pull a customer he cannot see into one he can.
        assert merge(client, theirs, customer).status_code == 404
        customer.refresh_from_db()
        assert customer.name == "Private Person" and customer.merged_into is None
        assert list(customer.identities.values_list("address", flat=True)) == ["v1"]

    def test_pages_need_a_signed_in_agent(self, client, jo):
        response = page(client, jo)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


class TestEdit:
    def test_it_saves_the_profile_and_attribute_rows(self, client, bob, jo):
        Customer.objects.filter(pk=jo.pk).update(attributes={"orders": 3, "plan": "free"})
        client.force_login(bob)
        response = client.post(
            reverse("inbox:customer_edit", args=[jo.pk]),
            {
                "name": " Jo Lima Souza ",
                "language": "pt_br",
                "timezone": "America/Sao_Paulo",
                "notes": "Prefers WhatsApp.",
                # orders comes back as it was shown; plan is removed; stage is new.
                "attr_key": ["orders", "", "stage", ""],
                "attr_value": ["3", "", "customer", ""],
            },
        )
        assert response.status_code == 302
        jo.refresh_from_db()
        assert (jo.name, jo.language, jo.timezone) == (
            "Jo Lima Souza",
            "pt-BR",
            "America/Sao_Paulo",
        )
        assert jo.notes == "Prefers WhatsApp."
        assert jo.attributes == {"orders": 3, "stage": "customer"}  # 3 stays a number

    @pytest.mark.parametrize(
        ("bad", "error"),
        [
            ({"language": "portuguese"}, "is not a language code"),
            ({"timezone": "Mars/Olympus"}, "is not a time zone"),
            ({"attr_key": ["plan", ""], "attr_value": ["gold", "x"]}, "needs a name"),
            ({"attr_key": ["plan", "plan"], "attr_value": ["a", "b"]}, "appears twice"),
        ],
    )
    def test_bad_input_is_refused_clearly_and_changes_nothing(self, client, bob, jo, bad, error):
        client.force_login(bob)
        data = {"name": "Changed", "language": "en", "timezone": "", "notes": ""}
        data.update({"attr_key": ["plan"], "attr_value": ["gold"]}, **bad)
        response = client.post(reverse("inbox:customer_edit", args=[jo.pk]), data)
        assert response.status_code == 400
        html = response.content.decode()
        assert error in html
        assert 'value="Changed"' in html  # the agent's input is kept
        jo.refresh_from_db()
        assert (jo.name, jo.language, jo.attributes) == ("Jo Lima", "", {})

    def test_every_mistake_is_said_at_once(self, client, bob, jo):
        client.force_login(bob)
        data = {"name": "Jo", "language": "portuguese", "timezone": "Mars/Olympus", "notes": ""}
        data |= {"attr_key": ["plan", "", "plan"], "attr_value": ["a", "x", "b"]}
        response = client.post(reverse("inbox:customer_edit", args=[jo.pk]), data)
        assert response.status_code == 400
        html = response.content.decode()
        for error in ("needs a name", "appears twice", "not a language code", "not a time zone"):
            assert error in html
        jo.refresh_from_db()
        assert (jo.language, jo.attributes) == ("", {})

    def test_the_service_refuses_unknown_fields(self, jo):
        with pytest.raises(ValueError, match="merged_into"):
            services.customer_update(customer=jo, data={"merged_into": None})


class TestIdentities:
    def add(self, client, customer, kind, address):
        url = reverse("inbox:customer_identities", args=[customer.pk])
        return client.post(url, {"kind": kind, "address": address})

    @pytest.mark.parametrize(
        ("kind", "typed", "stored"),
        [
            ("sms", "+44 20 7946 0958", "+442079460958"),
            ("whatsapp", "0044 20 7946 0958", "+442079460958"),
            ("email", "  Jo.Lima@Example.COM ", "jo.lima@example.com"),
        ],
    )
    def test_an_address_is_stored_in_its_one_spelling(self, client, bob, jo, kind, typed, stored):
        client.force_login(bob)
        assert self.add(client, jo, kind, typed).status_code == 302
        assert jo.identities.filter(kind=kind, address=stored).exists()

    def test_a_bad_address_says_why(self, client, bob, jo):
        client.force_login(bob)
        response = self.add(client, jo, "sms", "not a number")
        assert response.status_code == 400
        assert "'not a number' is not a phone number: write it with its country code" in (
            response.content.decode().replace("&#x27;", "'")
        )
        assert self.add(client, jo, "email", "nobody@").status_code == 400
        assert self.add(client, jo, "webchat", "visitor-9").status_code == 400
        # Without its country code a number would be guessed: 555-200-0077 as +55 (Brazil).
        response = self.add(client, jo, "sms", "555-200-0077")
        assert response.status_code == 400
        assert "write it with its country code" in response.content.decode()
        assert jo.identities.count() == 4

    def test_a_number_typed_without_country_code_is_read_in_the_configured_region(
        self, client, bob, jo, settings
    ):
        settings.PHONE_REGION = "US"
        client.force_login(bob)
        assert self.add(client, jo, "sms", "(555) 200-0077").status_code == 302
        assert jo.identities.filter(kind="sms", address="+15552000077").exists()
        assert self.add(client, jo, "sms", "+44 20 7946 0958").status_code == 302  # as written
        assert jo.identities.filter(kind="sms", address="+442079460958").exists()

    def test_another_customers_address_is_refused_with_an_offer_to_merge(
        self, client, bob, jo, chat_inbox
    ):
        ana = receive(chat_inbox, address="v-ana", name="Ana").message.conversation.customer
        client.force_login(bob)
        response = self.add(client, ana, "email", "JO@example.com")
        assert response.status_code == 400
        html = response.content.decode()
        assert "belongs to another customer" in html
        assert f'name="into" value="{jo.pk}"' in html  # the merge, one tick away
        assert not ana.identities.filter(kind="email").exists()
        # The same number on WhatsApp is the same person as on SMS.
        assert self.add(client, ana, "whatsapp", "+351 912 345 678").status_code == 400

    def test_an_address_of_a_customer_the_agent_cannot_see_names_nobody(
        self, client, bob, jo, billing_inbox
    ):
        receive(billing_inbox, address="hidden@example.com", name="Hidden Person", channel="email")
        client.force_login(bob)
        response = self.add(client, jo, "email", "hidden@example.com")
        assert response.status_code == 400
        assert b"Hidden Person" not in response.content
        assert b'name="into"' not in response.content


class TestMerge:
    @pytest.fixture
    def ana(self, chat_inbox, mail_inbox):
        received = receive(mail_inbox, address="ana@example.com", name="Ana Souza")
        customer = received.message.conversation.customer
        services.identity_add(customer=customer, kind="email", address="ana.souza@example.com")
        Identity.objects.create(customer=customer, kind=Channel.WEBCHAT, address="visitor-ana")
        receive(chat_inbox, text="Ana by chat", address="visitor-ana")
        return customer

    def test_search_finds_other_customers_by_name_email_or_phone(self, client, bob, jo, ana):
        client.force_login(bob)
        url = reverse("inbox:customer_merge", args=[ana.pk])
        for query in ("jo lima", "JO@EXAMPLE", "+351 912 345 678"):
            assert client.get(url, {"q": query}).context["candidates"] == [jo], query
        assert ana not in client.get(url, {"q": "ana"}).context["candidates"]  # never itself

    def test_merging_leaves_one_profile_with_both_histories(self, client, bob, jo, ana):
        client.force_login(bob)
        response = merge(client, ana, jo)
        assert response.status_code == 302
        assert response["Location"] == reverse("inbox:customer", args=[jo.pk])
        page_html = client.get(response["Location"]).content.decode()
        assert "was merged into Jo Lima" in page_html
        assert {"ana@example.com", "visitor-ana", "jo@example.com"} <= set(
            jo.identities.values_list("address", flat=True)
        )
        assert jo.conversations.count() == 6
        assert len(client.get(response["Location"]).context["conversations"]) == 5
        ana.refresh_from_db()
        assert ana.merged_into == jo
        # The old profile's page and links go to the one it was merged into.
        response = page(client, ana)
        assert response.status_code == 302
        assert response["Location"] == reverse("inbox:customer", args=[jo.pk])

    def test_a_merge_needs_the_confirmation(self, client, bob, jo, ana):
        client.force_login(bob)
        response = merge(client, ana, jo, confirm="")
        assert response.status_code == 302
        assert "tick the box" in client.get(response["Location"]).content.decode()
        ana.refresh_from_db()
        assert ana.merged_into is None

    def test_merging_into_itself_is_refused(self, client, bob, jo):
        client.force_login(bob)
        response = merge(client, jo, jo)
        html = client.get(response["Location"]).content.decode()
        assert "cannot be merged into itself" in html
        jo.refresh_from_db()
        assert jo.merged_into is None and jo.identities.count() == 4

    def test_merging_into_a_customer_the_agent_cannot_see_is_404(
        self, client, bob, jo, billing_inbox
    ):
        hidden = receive(billing_inbox, address="b1").message.conversation.customer
        client.force_login(bob)
        assert merge(client, jo, hidden).status_code == 404
        jo.refresh_from_db()
        assert jo.merged_into is None

    def test_a_form_posted_to_a_merged_profile_changes_nothing(self, client, bob, jo, ana):
        services.customer_merge(source=ana, target=jo)
        client.force_login(bob)
        url = reverse("inbox:customer_edit", args=[ana.pk])
        response = client.post(url, {"name": "Stale tab"})
        assert response["Location"] == reverse("inbox:customer", args=[jo.pk])
        jo.refresh_from_db()
        assert jo.name == "Jo Lima"


@pytest.mark.django_db(transaction=True)
def test_merge_customers_into_one_profile_with_both_histories(
    asgi_server, browser, bob, chat_inbox, mail_inbox
):
    chat = receive(chat_inbox, text="Chat about my blender", address="visitor-1", name="Rui")
    mail = receive(
        mail_inbox, text="Blender again", address="rui@example.com", subject="Broken blender"
    )
    visitor, emailer = chat.message.conversation.customer, mail.message.conversation.customer

    tab = signed_in(browser, asgi_server, bob)
    tab.goto(f"{asgi_server}/inbox/{chat.message.conversation_id}/")
    tab.click(f'.side a[href="/inbox/customers/{visitor.pk}/"]')
    tab.fill("#merge-q", "rui@example")
    tab.press("#merge-q", "Enter")
    candidate = tab.locator(f'[data-candidate="{emailer.pk}"]')
    candidate.locator("input[name=confirm]").check()
    candidate.locator("button[type=submit]").click()

    tab.wait_for_url(f"{asgi_server}/inbox/customers/{emailer.pk}/")
    assert "was merged into" in tab.inner_text(".flash")
    rows = tab.locator(".history tbody tr")
    assert rows.count() == 2
    assert {rows.nth(i).get_attribute("data-conversation") for i in range(2)} == {
        str(chat.message.conversation_id),
        str(mail.message.conversation_id),
    }
    addresses = tab.inner_text(".identities")
    assert "Web chat" in addresses and "rui@example.com" in addresses
    # The visitor's old profile now opens the merged one.
    tab.goto(f"{asgi_server}/inbox/customers/{visitor.pk}/")
    tab.wait_for_url(f"{asgi_server}/inbox/customers/{emailer.pk}/")


class TestBlocking:
    """Maria's address sends spam to Support's email inbox; Bob blocks her."""

    @pytest.fixture
    def spam(self, mail_inbox):
        from routing.models import AutoReply

        mail_inbox.address = "support@acme.example"
        mail_inbox.save()
        AutoReply.objects.create(inbox=mail_inbox, kind="acknowledgement", body="Thanks, #{number}")
        pipe(mail_inbox, customer_mail(subject="Cheap watches", body="Buy now"))
        return Customer.objects.get(identities__address="maria@example.com")

    def test_a_blocked_sender_is_kept_aside_and_opens_nothing_until_unblocked(
        self, client, bob, mail_inbox, spam
    ):
        from channels_adapters.models import InboundEvent
        from conversations.models import Conversation, Message

        conversation = spam.conversations.get()
        client.force_login(bob)
        # The page asks first (inbox.js confirms a button with data-confirm).
        page = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
        name = spam.name or "this sender"
        assert f'data-confirm="Block {name}? This conversation closes' in page
        response = client.post(
            reverse("inbox:customer_block", args=[spam.pk]),
            {"blocked": "1", "conversation": conversation.pk},
        )
        assert response.status_code == 302
        conversation.refresh_from_db()
        assert conversation.status == Conversation.Status.CLOSED
        page = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
        assert "Sender blocked by Bob" in page and "Unblock" in page

        said = pipe(mail_inbox, customer_mail(subject="Cheap watches again", body="Buy"))
        assert said == "ignored: This sender is blocked: the message was not taken.\n"
        kept = InboundEvent.objects.order_by("-id").first()
        assert kept.status == InboundEvent.Status.IGNORED  # the raw mail is kept, set aside
        assert kept.error == "This sender is blocked: the message was not taken."
        assert Conversation.objects.count() == 1
        assert not Message.objects.filter(text__contains="again").exists()

        # Unblocked from the conversation's page: back on it.
        response = client.post(
            reverse("inbox:customer_block", args=[spam.pk]),
            {"blocked": "0", "conversation": conversation.pk},
        )
        assert response.url == reverse("inbox:conversation", args=[conversation.pk])
        pipe(mail_inbox, customer_mail(subject="A real question", body="Where is order 7?"))
        assert Message.objects.filter(text__contains="order 7").exists()

    def test_someone_who_may_not_see_the_customer_cannot_block_them(self, client, charlie, spam):
        client.force_login(charlie)
        response = client.post(reverse("inbox:customer_block", args=[spam.pk]), {"blocked": "1"})
        assert response.status_code == 404
        spam.refresh_from_db()
        assert spam.blocked_at is None

    def test_a_blocked_number_can_still_opt_out(self, sms_inbox):
        received = receive(sms_inbox, text="Win a prize", address="+351912000333")
        customer = received.message.conversation.customer
        services.customer_block(customer=customer, actor=None)
        with pytest.raises(services.SenderBlocked):
            receive(sms_inbox, text="STOP", address="+351912000333", opt_out=True)
        identity = customer.identities.get()
        assert identity.opted_out_at is not None
        assert customer.conversations.get().messages.count() == 1


class TestTheirData:
    """Maria asks for her data, then to be forgotten. She mailed Support an invoice, chatted,
    had an older profile merged into hers, and was CC'd on Leo's conversation."""

    @pytest.fixture
    def maria(self, mail_inbox, chat_inbox):
        mail_inbox.address = "support@acme.example"
        mail_inbox.save()
        mail = customer_message("Maria <maria@example.com>", "Invoice", "My invoice is attached.")
        mail.add_attachment(
            b"%PDF-1.4 maria", maintype="application", subtype="pdf", filename="i.pdf"
        )
        pipe(mail_inbox, mail.as_bytes())
        customer = Customer.objects.get(identities__address="maria@example.com")
        Identity.objects.create(customer=customer, kind=Channel.WEBCHAT, address="visitor-maria")
        receive(chat_inbox, text="Maria by chat", address="visitor-maria")
        older = receive(chat_inbox, text="From my old laptop", address="visitor-old")
        services.customer_merge(source=older.message.conversation.customer, target=customer)
        leos = customer_mail(frm="leo@example.com", cc="maria@example.com", body="Leo")
        pipe(mail_inbox, leos)
        # She answers Leo's thread for all, as a CC'd participant of his conversation.
        answer = message_from_bytes(
            customer_mail(
                frm="Maria <maria@example.com>",
                subject="Re: Help",
                body="Maria agrees with Leo.",
                in_reply_to=message_from_bytes(leos)["Message-ID"],
            ),
            policy=policy.default,
        )
        answer.add_attachment(b"maria's photo", maintype="image", subtype="png", filename="m.png")
        pipe(mail_inbox, answer.as_bytes())
        return customer

    def test_an_admin_downloads_everything_held_about_her(self, client, alice, bob, maria):
        import io
        import json
        import zipfile

        conversation = maria.conversations.get(subject="Invoice")
        services.note_add(conversation=conversation, author=bob, text="She sounds upset")
        client.force_login(bob)
        assert "Download everything" not in page(client, maria).content.decode()
        assert client.get(reverse("inbox:customer_export", args=[maria.pk])).status_code == 403

        client.force_login(alice)
        response = client.get(reverse("inbox:customer_export", args=[maria.pk]))
        assert response.status_code == 200
        assert response["Content-Disposition"] == f'attachment; filename="customer-{maria.pk}.zip"'
        bundle = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
        data = json.loads(bundle.read("customer.json"))
        assert data["customer"]["name"] == "Maria"
        assert {a["address"] for a in data["addresses"]} == {
            "maria@example.com",
            "visitor-maria",
            "visitor-old",
        }
        assert len(data["conversations"]) == 3  # hers and the merged profile's, not Leo's
        (in_leos,) = data["messages_in_others_conversations"]
        assert in_leos["text"].strip() == "Maria agrees with Leo."
        leo = Customer.objects.get(identities__address="leo@example.com")
        assert in_leos["conversation"] == leo.conversations.get().pk
        mail = next(c for c in data["conversations"] if c["subject"] == "Invoice")
        said = [(m["direction"], m["text"].strip(), m["agent"]) for m in mail["messages"]]
        assert said == [
            ("inbound", "My invoice is attached.", None),
            ("note", "She sounds upset", "Bob"),
        ]
        (attached,) = mail["messages"][0]["attachments"]
        assert attached["name"] == "i.pdf" and attached["file"].endswith(".pdf")
        assert bundle.read(attached["file"]) == b"%PDF-1.4 maria"

    def erase(self, client, customer, confirm="erase"):
        return client.post(
            reverse("inbox:customer_erase", args=[customer.pk]), {"confirm": confirm}
        )

    def test_an_admin_erases_everything_about_the_customer(
        self, client, alice, mail_inbox, maria, django_capture_on_commit_callbacks
    ):
        from django.contrib.admin.models import LogEntry

        from channels_adapters.models import InboundEvent
        from conversations.models import Attachment, Conversation, Message

        leo = Customer.objects.get(identities__address="leo@example.com")
        files = [a.file.path for a in Attachment.objects.order_by("pk")]
        assert [open(f, "rb").read() for f in files] == [b"%PDF-1.4 maria", b"maria's photo"]
        # Blocked, she wrote again: kept aside as it came, not made a message.
        services.customer_block(customer=maria, actor=alice)
        pipe(mail_inbox, customer_mail(subject="Why?", body="Maria, blocked"))
        assert InboundEvent.objects.filter(message=None).count() == 1
        assert InboundEvent.objects.count() == 4
        leos = leo.conversations.get()
        assert leos.participants.get().address == "maria@example.com"
        assert [m.text.strip() for m in leos.messages.order_by("pk")] == [
            "Leo",
            "Maria agrees with Leo.",
        ]
        client.force_login(alice)
        assert "Erase this customer" in page(client, maria).content.decode()

        hers = set(maria.conversations.values_list("pk", flat=True))
        next_event = listen(team_group(mail_inbox.default_team_id))
        with django_capture_on_commit_callbacks(execute=True):  # the files go after commit
            response = self.erase(client, maria)
        assert response.status_code == 302 and response["Location"] == reverse("inbox:list")
        said = client.get(response["Location"]).content.decode()
        assert (
            f"Customer {maria.pk} erased: 3 conversations, 3 messages and 2 files deleted; "
            "1 message in others’ conversations blanked." in said
        )
        assert not Customer.objects.exclude(pk=leo.pk).exists()  # hers and the merged one
        assert not Identity.objects.filter(address__contains="maria").exists()
        assert not Identity.objects.filter(address="visitor-old").exists()
        assert list(Conversation.objects.all()) == list(leo.conversations.all())
        assert not Message.objects.filter(text__contains="Maria").exists()
        assert not any(os.path.exists(f) for f in files) and not Attachment.objects.exists()
        # Her answer in Leo's thread stays in its place, blanked.
        assert [m.text.strip() for m in leos.messages.order_by("pk")] == [
            "Leo",
            services.ERASED_TEXT,
        ]
        # Her mail as it arrived is gone; Leo's, which named her in Cc, is his record.
        assert [event.raw().count(b"Leo") for event in InboundEvent.objects.all()] == [1]
        assert leo.conversations.get().participants.count() == 0
        entry = LogEntry.objects.get()
        assert entry.user == alice and entry.object_repr == f"Customer {maria.pk} (erased)"
        assert "maria" not in f"{entry.object_repr} {entry.change_message}".lower()
        assert page(client, maria).status_code == 404
        # Open inbox pages hear that her conversations are gone.
        told = [next_event(5) for _ in hers]
        assert {(e["event"], e["conversation"]) for e in told} == {("erased", pk) for pk in hers}

        # Nothing is left for her next mail to join: it opens a new profile.
        pipe(mail_inbox, customer_mail(subject="Hello again"))
        again = Customer.objects.get(identities__address="maria@example.com")
        assert again.pk != maria.pk and again.conversations.count() == 1

    def test_only_an_admin_may_and_only_with_the_word(self, client, alice, bob, maria):
        client.force_login(bob)
        assert "Erase this customer" not in page(client, maria).content.decode()
        response = self.erase(client, maria)
        assert response.status_code == 403
        client.force_login(alice)
        response = self.erase(client, maria, confirm="yes")
        assert response.status_code == 400
        assert "Type “erase” to confirm: nothing was deleted." in response.content.decode()
        assert maria.conversations.count() == 3 and maria.identities.count() == 3
