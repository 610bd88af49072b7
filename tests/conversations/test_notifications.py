"""Notifications: assigned to me, mentioned in a note, my customer replied; by email too."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from conversations import services
from conversations.models import Channel, Conversation, Identity, Notification
from tests.conftest import listen, receive


def kinds(user):
    return list(
        Notification.objects.filter(recipient=user)
        .order_by("id")
        .values_list("kind", "conversation_id", "actor__display_name")
    )


@pytest.mark.django_db
class TestWhoIsTold:
    def test_the_assignee_is_told_but_not_when_assigning_themselves(self, chat_inbox, bob, dana):
        conversation = receive(chat_inbox).message.conversation
        services.conversation_assign(conversation=conversation, assignee=dana, actor=bob)
        services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
        assert kinds(dana) == [("assigned", conversation.pk, "Bob")]
        assert kinds(bob) == []

    def test_a_mention_tells_a_teammate_who_can_see_it(self, chat_inbox, bob, dana, charlie):
        conversation = receive(chat_inbox).message.conversation
        services.note_add(
            conversation=conversation,
            author=bob,
            text="@dana can you check? cc @charlie, not mail@bob.example, and @bob",
        )
        assert kinds(dana) == [("mentioned", conversation.pk, "Bob")]
        assert kinds(charlie) == []  # outside Support: the note must not reach him
        assert kinds(bob) == []  # mentioning yourself tells nobody

    def test_the_assignee_hears_when_their_customer_replies(self, chat_inbox, dana):
        conversation = receive(chat_inbox, text="Hello").message.conversation
        services.conversation_assign(conversation=conversation, assignee=dana)
        receive(chat_inbox, text="Any news?")
        assert [k for k, *_ in kinds(dana)] == ["assigned", "customer_replied"]

    def test_agents_hear_when_their_customer_writes_again_elsewhere(
        self, client, chat_inbox, api_inbox, bob, dana
    ):
        chat = receive(chat_inbox, address="v1", name="Grace").message.conversation
        services.conversation_assign(conversation=chat, assignee=dana, actor=bob)
        Identity.objects.create(
            customer=chat.customer, kind=Channel.API, address=f"{api_inbox.pk}:grace-42"
        )
        again = receive(api_inbox, address="grace-42", text="Did you get my chat?").message
        assert again.conversation_id != chat.pk
        assert kinds(dana)[-1] == ("wrote_again", again.conversation_id, None)
        client.force_login(dana)
        html = client.get("/inbox/notifications").content.decode()
        assert "Grace</bdi></span> wrote again, by API, in a new conversation" in html
        assert f"#m{again.pk}" in html  # it leads to the message itself
        # Once her chat is resolved, a new conversation is nobody's news but routing's.
        services.conversation_set_status(conversation=chat, status="resolved", actor=dana)
        receive(api_inbox, address="grace-42", text="Another thing", force_new_conversation=True)
        assert [kind for kind, *_ in kinds(dana)].count("wrote_again") == 1

    def test_wrote_again_tells_only_active_agents_who_may_see_the_new_conversation(
        self, chat_inbox, api_inbox, billing_inbox, bob, charlie, dana
    ):
        held = receive(billing_inbox, address="grace-42", name="Grace").message.conversation
        services.conversation_assign(conversation=held, assignee=charlie)
        customer = held.customer
        for agent, address in ((dana, "grace-7"), (bob, "grace-8")):
            Identity.objects.create(
                customer=customer, kind=Channel.API, address=f"{api_inbox.pk}:{address}"
            )
            other = receive(api_inbox, address=address, force_new_conversation=True)
            other = other.message.conversation
            services.conversation_assign(conversation=other, assignee=agent)
        dana.is_active = False  # gone: nobody reads her notifications
        dana.save()
        Identity.objects.create(customer=customer, kind=Channel.WEBCHAT, address="v1")
        again = receive(chat_inbox, address="v1", text="Me again").message
        told = Notification.objects.filter(kind="wrote_again", conversation=again.conversation)
        # Charlie, in Billing, may not open a Support chat: no news of it reaches him either.
        assert list(told.values_list("recipient__display_name", flat=True)) == ["Bob"]


@pytest.mark.django_db(transaction=True)
def test_a_notification_reaches_the_agents_sockets(chat_inbox, bob, dana):
    conversation = receive(chat_inbox, name="Jo").message.conversation
    next_event = listen(f"agent.{dana.pk}")
    services.note_add(conversation=conversation, author=bob, text="@dana look")
    event = next_event()
    while event["type"] != "notification.event":
        event = next_event()
    assert event["text"] == f"Bob mentioned you in #{conversation.pk}"
    assert event["conversation"] == conversation.pk


@pytest.mark.django_db
class TestPages:
    def test_the_bell_counts_unread_and_the_list_shows_them(self, client, chat_inbox, bob, dana):
        conversation = receive(chat_inbox, name="<b>Jo</b>").message.conversation
        services.note_add(conversation=conversation, author=bob, text="@dana <i>hi</i>")
        client.force_login(dana)
        page = client.get("/inbox/notifications")
        assert page.context["unread_notifications"] == 1
        html = page.content.decode()
        assert "Bob</bdi></span> mentioned you" in html
        assert "&lt;i&gt;hi&lt;/i&gt;" in html

    def test_each_notification_reads_as_a_sentence(self, client, chat_inbox, bob, dana):
        named = receive(chat_inbox, address="v1", name="Grace Okafor").message.conversation
        services.conversation_assign(conversation=named, assignee=dana, actor=bob)
        receive(chat_inbox, address="v1", text="Any news?")
        nameless = receive(chat_inbox, address="v2").message.conversation
        services.conversation_assign(conversation=nameless, assignee=dana)  # routing's doing
        receive(chat_inbox, address="v2", text="Hello?")
        client.force_login(dana)
        html = client.get("/inbox/notifications").content.decode()
        for said in (
            "Bob</bdi></span> assigned it to you",
            "Grace Okafor</bdi></span> replied",
            "Routing</bdi></span> assigned it to you",
            "The customer</bdi></span> replied",
        ):
            assert said in html
        # Whom and what it is about, without opening it.
        Conversation.objects.filter(pk=named.pk).update(subject="Refund for order 7781")
        html = client.get("/inbox/notifications").content.decode()
        said = "<bdi>Grace Okafor</bdi>: <bdi>Refund for order 7781</bdi></span>"
        assert f"#{named.pk} · {said}" in html

    def test_opening_the_conversation_reads_its_notifications(self, client, chat_inbox, bob, dana):
        one = receive(chat_inbox, address="v1").message.conversation
        two = receive(chat_inbox, address="v2").message.conversation
        services.conversation_assign(conversation=one, assignee=dana, actor=bob)
        services.conversation_assign(conversation=two, assignee=dana, actor=bob)
        client.force_login(dana)
        client.get(f"/inbox/{one.pk}/")
        unread = Notification.objects.filter(recipient=dana, read_at__isnull=True)
        assert list(unread.values_list("conversation_id", flat=True)) == [two.pk]
        client.post("/inbox/notifications")
        assert not unread.exists()

    def test_a_conversation_no_longer_visible_is_not_listed(
        self, client, chat_inbox, billing, bob, dana
    ):
        conversation = receive(chat_inbox, text="Secret stuff").message.conversation
        services.note_add(conversation=conversation, author=bob, text="@dana look")
        services.conversation_set_team(conversation=conversation, team=billing)
        chat_inbox.default_team = billing
        chat_inbox.save()
        client.force_login(dana)
        page = client.get("/inbox/notifications")
        assert page.context["notifications"] == []
        assert page.context["unread_notifications"] == 0  # nor counted behind the bell


def follow(client, user, conversation, follow="1"):
    client.force_login(user)
    return client.post(f"/inbox/{conversation.pk}/follow", {"follow": follow})


@pytest.mark.django_db
class TestFollowers:
    def test_a_follower_hears_of_replies_answers_and_status_changes_until_they_stop(
        self, client, chat_inbox, bob, dana
    ):
        conversation = receive(chat_inbox, text="Hello").message.conversation
        services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
        assert follow(client, dana, conversation).status_code == 302
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Stop following</button>" in page and "Followed by you" in page

        receive(chat_inbox, text="Any news?")
        services.reply_send(conversation=conversation, author=bob, text="Looking into it")
        services.conversation_set_status(conversation=conversation, status="resolved", actor=bob)
        assert kinds(dana) == [
            ("customer_replied", conversation.pk, None),
            ("followed", conversation.pk, "Bob"),
            ("followed", conversation.pk, "Bob"),
        ]
        html = client.get("/inbox/notifications").content.decode()
        assert "Bob</bdi></span> set it to resolved (you follow it)" in html
        assert "Bob</bdi></span> answered (you follow it)" in html
        # What she does herself is no news to her; the assignee hears as the assignee only.
        services.conversation_set_status(conversation=conversation, status="open", actor=dana)
        assert len(kinds(dana)) == 3
        assert [k for k, *_ in kinds(bob)] == ["customer_replied"]  # once, as its assignee

        follow(client, dana, conversation, follow="0")
        receive(chat_inbox, text="Hello again?")
        assert len(kinds(dana)) == 3
        assert "Nobody follows it" in client.get(f"/inbox/{conversation.pk}/").content.decode()

    def test_a_mentioned_agent_follows_and_followers_hear_of_notes(
        self, client, chat_inbox, bob, dana, alice
    ):
        conversation = receive(chat_inbox).message.conversation
        services.conversation_follow(conversation=conversation, user=alice)
        services.note_add(conversation=conversation, author=bob, text="@dana is this a refund?")
        # Told once, as mentioned; Alice, who follows, hears of the note.
        assert kinds(dana) == [("mentioned", conversation.pk, "Bob")]
        assert kinds(alice) == [("followed", conversation.pk, "Bob")]
        # Dana now follows: the customer's answer reaches her too.
        assert list(conversation.followers.order_by("display_name")) == [alice, dana]
        receive(chat_inbox, text="It is about order 12")
        assert kinds(dana)[-1] == ("customer_replied", conversation.pk, None)

    def test_a_follower_who_may_no_longer_see_it_hears_nothing(
        self, client, chat_inbox, bob, dana, support
    ):
        conversation = receive(chat_inbox).message.conversation
        follow(client, dana, conversation)
        support.memberships.filter(user=dana).delete()  # she moved to another team
        receive(chat_inbox, text="Still there?")
        services.conversation_set_status(conversation=conversation, status="pending", actor=bob)
        assert kinds(dana) == []

    def test_another_team_cannot_follow_what_it_cannot_see(self, client, chat_inbox, charlie):
        conversation = receive(chat_inbox).message.conversation
        assert follow(client, charlie, conversation).status_code == 404
        assert not conversation.followers.exists()

    def test_the_following_view_lists_what_the_agent_follows(self, client, chat_inbox, dana):
        followed = receive(chat_inbox, address="v1", text="Followed one").message.conversation
        receive(chat_inbox, address="v2", text="Another one")
        follow(client, dana, followed)
        html = client.get("/inbox/?view=following").content.decode()
        assert "Followed one" in html and "Another one" not in html
        assert 'data-count="following">1</span>' in html  # the tab's count

    def test_followers_carry_over_a_merge(self, client, chat_inbox, api_inbox, bob, dana):
        first = receive(chat_inbox, text="First").message.conversation
        Identity.objects.create(
            customer=first.customer, kind=Channel.API, address=f"{api_inbox.pk}:grace-42"
        )
        second = receive(api_inbox, address="grace-42", text="Second").message.conversation
        assert second.pk != first.pk
        follow(client, dana, first)
        services.conversation_merge(source=first, target=second, actor=bob)
        assert list(second.followers.all()) == [dana]
        # A merged conversation takes no followers: the work goes on in the other one.
        response = follow(client, bob, first)
        assert response.status_code == 302
        assert not first.followers.filter(pk=bob.pk).exists()


# --- By email ---------------------------------------------------------------------------------

SITE = "https://help.acme.example"


@pytest.fixture
def mail_to(settings, smtp_server):
    """Django's mail goes to the real SMTP server on loopback; links lead to SITE."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp_server.port
    settings.PUBLIC_URL = SITE
    return smtp_server


def sweep(after=timedelta(minutes=3)):
    """The beat's task, run `after` from now (past the grace delay of two minutes)."""
    from conversations.tasks import email_notifications

    with time_machine.travel(timezone.now() + after, tick=False):
        return email_notifications()


def parts(mail):
    return (
        mail.get_body(("plain",)).get_content(),
        mail.get_body(("html",)).get_content(),
    )


@pytest.mark.django_db
class TestByEmail:
    def test_an_agent_away_gets_one_mail_with_links_and_escaped_customer_words(
        self, mail_to, chat_inbox, bob, dana
    ):
        name = '<b>Zoë</b> & "Co"'
        one = receive(chat_inbox, address="v1", name=name).message.conversation
        Conversation.objects.filter(pk=one.pk).update(subject="<img src=x onerror=alert(1)>")
        two = receive(chat_inbox, address="v2", name="Grace").message.conversation
        services.conversation_assign(conversation=one, assignee=bob, actor=dana)
        note = services.note_add(conversation=two, author=dana, text="@bob <script>x</script>")

        assert sweep() == {"mails": 1, "notifications": 2, "failed": 0}

        [mail] = mail_to.messages()
        assert mail["To"] == "bob@example.com"
        assert mail["From"] == "Threadline <support@localhost>"
        assert mail["Subject"] == (
            f"[Threadline] 2 updates: #{one.pk} assigned to you, #{two.pk} you were mentioned"
        )
        assert mail["Auto-Submitted"] == "auto-generated"
        assert mail["X-Loop"].startswith("threadline-agents-")
        text, html = parts(mail)
        assert f"{SITE}/inbox/{one.pk}/" in text
        assert f"{SITE}/inbox/{two.pk}/#m{note.pk}" in text
        assert "Dana assigned it to you" in text
        assert f"{SITE}/inbox/profile" in text  # where to choose what comes by email
        assert f'href="{SITE}/inbox/{one.pk}/"' in html
        assert f'href="{SITE}/inbox/profile"' in html
        assert "&lt;b&gt;Zoë&lt;/b&gt; &amp; &quot;Co&quot;" in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "&lt;script&gt;x&lt;/script&gt;" in html  # the note's excerpt
        assert "<img" not in html and "<script" not in html and "<b>" not in html
        assert dana.email not in [m["To"] for m in mail_to.messages()]  # she did it all

        assert sweep() == {"mails": 0, "notifications": 0, "failed": 0}  # sent once
        assert sweep(timedelta(hours=2))["mails"] == 0
        assert len(mail_to.received) == 1
        # Still unread in the inbox: the bell has it whatever the mail did.
        assert Notification.objects.filter(recipient=bob, read_at__isnull=True).count() == 2

    def test_read_recent_unchosen_old_and_inactive_ones_get_no_mail(
        self, mail_to, chat_inbox, api_inbox, billing, bob, dana
    ):
        from helpdesk.models import User

        def assigned(address, agent):
            conversation = receive(chat_inbox, address=address).message.conversation
            return services.conversation_assign(conversation=conversation, assignee=agent)

        with time_machine.travel(timezone.now() - timedelta(days=2)):
            assigned("v0", bob)  # from before the look-back: never news by email
        read = assigned("v1", bob)
        services.notifications_mark_read(bob, read)
        receive(chat_inbox, address="v1", text="Thanks!")  # customer replied: not chosen
        assigned("v2", dana)
        User.objects.filter(pk=dana.pk).update(is_active=False)
        moved = receive(api_inbox).message.conversation
        services.conversation_assign(conversation=moved, assignee=bob)
        # Transferred to Billing, and no longer his: he may not see it now.
        services.conversation_set_team(conversation=moved, team=billing, unassign_outsider=True)
        api_inbox.default_team = billing
        api_inbox.save()

        assert sweep()["mails"] == 0, [m["Subject"] for m in mail_to.messages()]
        with time_machine.travel(timezone.now() + timedelta(minutes=3)):
            recent = assigned("v4", bob)
        assert sweep(timedelta(minutes=4)) == {"mails": 0, "notifications": 0, "failed": 0}
        assert mail_to.received == []
        # Once its two minutes are up, the recent one goes: nothing else.
        assert sweep(timedelta(minutes=6)) == {"mails": 1, "notifications": 1, "failed": 0}
        [mail] = mail_to.messages()
        assert mail["Subject"] == f"[Threadline] 1 update: #{recent.pk} assigned to you"

    def test_an_agent_chooses_the_kinds(self, mail_to, chat_inbox, bob):
        bob.email_notifications = ["customer_replied"]
        bob.save()
        conversation = receive(chat_inbox, name="Grace").message.conversation
        services.conversation_assign(conversation=conversation, assignee=bob)
        receive(chat_inbox, text="Any news?")
        sweep()
        [mail] = mail_to.messages()
        assert mail["Subject"] == f"[Threadline] 1 update: #{conversation.pk} customer replied"
        assert "Grace replied" in parts(mail)[0]
        assert "Any news?" in parts(mail)[0]

    def test_a_refused_mail_goes_at_the_next_sweep_once(self, mail_to, chat_inbox, bob):
        conversation = receive(chat_inbox).message.conversation
        services.conversation_assign(conversation=conversation, assignee=bob)
        mail_to.answers = ["451 4.3.0 Try again later"]

        assert sweep() == {"mails": 0, "notifications": 0, "failed": 1}
        assert mail_to.received == []
        assert sweep() == {"mails": 1, "notifications": 1, "failed": 0}
        assert sweep() == {"mails": 0, "notifications": 0, "failed": 0}
        assert len(mail_to.received) == 1

    def test_our_mail_forwarded_into_an_inbox_is_set_aside(self, mail_to, chat_inbox, bob):
        """Bob's mailbox forwards to support@: the mail must not open a conversation, which
        routing would give to an agent, who would be mailed about it, and so on."""
        from channels_adapters.models import InboundEvent
        from conversations.models import Inbox
        from tests.channels_adapters.test_email import pipe

        mail_inbox = Inbox.objects.create(
            name="Support email", kind=Channel.EMAIL, address="support@acme.example"
        )
        conversation = receive(chat_inbox).message.conversation
        services.conversation_assign(conversation=conversation, assignee=bob)
        sweep()
        [sent] = mail_to.received
        opened = Conversation.objects.count()

        said = pipe(mail_inbox, sent.content)

        assert said.startswith("ignored: Our own notification mail to an agent came back")
        [event] = InboundEvent.objects.filter(inbox=mail_inbox)
        assert event.status == InboundEvent.Status.IGNORED  # kept, for an admin to see
        assert Conversation.objects.count() == opened

        # A forwarding rule (procmail's, a provider's) puts its own X-Loop above ours: ours
        # still tells the mail apart.
        forwarded = b"X-Loop: bob@example.com\r\n" + sent.content.replace(
            b"Message-ID: <", b"Message-ID: <fwd."
        )
        said = pipe(mail_inbox, forwarded)

        assert said.startswith("ignored: Our own notification mail to an agent came back"), said
        assert Conversation.objects.count() == opened


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_mail_the_agent_once(mail_to, chat_inbox, bob):
    """Beat's sweep and a late one overlap: the second finds the notification claimed."""
    import threading

    from django.db import connection

    conversation = receive(chat_inbox).message.conversation
    services.conversation_assign(conversation=conversation, assignee=bob)
    data_received, release = mail_to.hold_first()
    results = []

    def first():
        try:
            results.append(sweep())
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert data_received.wait(30)  # the first sweep is mailing Bob
        assert sweep() == {"mails": 0, "notifications": 0, "failed": 0}
    finally:
        release.set()
        thread.join(30)
    assert results == [{"mails": 1, "notifications": 1, "failed": 0}]
    assert len(mail_to.received) == 1


@pytest.mark.django_db(transaction=True)
def test_upgrading_mails_nothing_of_what_was_left_unread_before(chat_inbox, bob, alice):
    """The migration that brings notifications by email: the first sweep after it sends none
    of the notifications already in the bell (those since are mailed as usual)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from conversations.notification_mail import notifications_email_sweep

    conversation = receive(chat_inbox, text="Hello").message.conversation
    before = ("conversations", "0033_follow_up_markers")
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    MigrationExecutor(connection).migrate([before])
    try:
        old_apps = MigrationExecutor(connection).loader.project_state([before]).apps
        old_apps.get_model("conversations", "Notification").objects.create(
            recipient_id=bob.pk, kind="assigned", conversation_id=conversation.pk
        )
    finally:
        MigrationExecutor(connection).migrate(latest)
    services.agent_assign(conversation, assignee=None, actor=alice)
    services.agent_assign(conversation, assignee=bob, actor=alice)

    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        sent = notifications_email_sweep()
    assert sent == {"mails": 1, "notifications": 1, "failed": 0}  # the new one only
    assert Notification.objects.filter(recipient=bob, emailed_at=None).count() == 0
