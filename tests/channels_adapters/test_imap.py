import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.utils import timezone
from imap_tools import MailBoxUnencrypted

from channels_adapters.delivery import inbound_event_process, message_deliver
from channels_adapters.email.health import health_of, mailboxes_alert, with_mail_counts
from channels_adapters.email.imap import mailbox_poll
from channels_adapters.models import InboundEvent, MailboxState
from conversations import services
from conversations.models import Conversation, Inbox, Message
from tests.channels_adapters.test_email import customer_mail, fixture, pipe, reply_to
from tests.conftest import free_port


@pytest.fixture
def imap_inbox(email_inbox, imap_server):
    email_inbox.settings.update(
        imap_host=imap_server.host,
        imap_port=imap_server.port,
        imap_ssl=False,
        imap_username="support",
    )
    email_inbox.credentials = {"imap_password": imap_server.password}
    email_inbox.save()
    return email_inbox


def mailbox(server):
    return MailBoxUnencrypted(server.host, server.port).login("support", server.password)


def deliver(server, *raws, folder="INBOX"):
    """Mail arriving in the mailbox (an MTA's job; IMAP APPEND does the same to the store)."""
    with mailbox(server) as box:
        for raw in raws:
            box.append(raw, folder, flag_set=[])


def process_all():
    """What the worker does with the events the poller stored."""
    for pk in InboundEvent.objects.filter(status="pending").values_list("pk", flat=True):
        inbound_event_process(pk)


def unseen(server) -> list[str]:
    with mailbox(server) as box:
        return box.uids("UNSEEN")


@pytest.mark.django_db
class TestPolling:
    def test_new_mail_is_stored_marked_seen_and_remembered(self, imap_inbox, imap_server):
        deliver(imap_server, fixture("new_thread_fr.eml"), fixture("cc_and_attachment.eml"))

        result = mailbox_poll(imap_inbox)

        assert (result.stored, result.duplicates) == (2, 0)
        assert unseen(imap_server) == []
        process_all()
        assert Conversation.objects.count() == 2
        state = MailboxState.objects.get(inbox=imap_inbox)
        assert state.last_uid == 2 and state.uidvalidity
        assert mailbox_poll(imap_inbox).stored == 0  # nothing new, nothing read twice

    def test_a_mailbox_connected_for_the_first_time_leaves_its_past_alone(
        self, imap_inbox, imap_server
    ):
        """Connecting the shop's existing mailbox opened a conversation for every mail of the
        last years, and sent each of those senders an acknowledgement."""
        long_ago = datetime(2024, 3, 1, tzinfo=UTC)
        with mailbox(imap_server) as box:
            box.append(fixture("new_thread_fr.eml"), "INBOX", flag_set=["\\Seen"])
            box.append(fixture("cc_and_attachment.eml"), "INBOX", dt=long_ago, flag_set=[])
            box.append(fixture("list_post.eml"), "INBOX", flag_set=["\\Seen"])  # read after
        deliver(imap_server, fixture("iso2022jp.eml"))  # unread, this week: it waits for us

        result = mailbox_poll(imap_inbox)

        assert (result.stored, result.left_alone) == (1, 3)
        process_all()
        assert Conversation.objects.count() == 1
        assert len(unseen(imap_server)) == 1  # the old unread one, as it was
        # From now on, whatever arrives comes in, read by someone in the meantime or not.
        with mailbox(imap_server) as box:
            box.append(fixture("cp1252_labelled_utf8.eml"), "INBOX", flag_set=["\\Seen"])
        assert mailbox_poll(imap_inbox).stored == 1

    def test_a_crash_between_storing_and_marking_loses_and_duplicates_nothing(
        self, imap_inbox, imap_server
    ):
        deliver(imap_server, fixture("new_thread_fr.eml"))
        mailbox_poll(imap_inbox)
        # As if the worker died after storing: the flag and the saved UID never happened.
        with mailbox(imap_server) as box:
            box.flag(box.uids("ALL"), "\\Seen", False)
        MailboxState.objects.filter(inbox=imap_inbox).update(last_uid=0)

        result = mailbox_poll(imap_inbox)

        assert (result.stored, result.duplicates) == (0, 1)
        assert InboundEvent.objects.count() == 1
        assert unseen(imap_server) == []

    def test_a_new_uidvalidity_rescans_without_duplicates(self, imap_inbox, imap_server):
        deliver(imap_server, fixture("new_thread_fr.eml"))
        mailbox_poll(imap_inbox)
        MailboxState.objects.filter(inbox=imap_inbox).update(uidvalidity=1, last_uid=99)
        deliver(imap_server, fixture("iso2022jp.eml"))

        result = mailbox_poll(imap_inbox)

        assert (result.stored, result.duplicates) == (1, 1)
        assert InboundEvent.objects.count() == 2

    def test_processed_mail_can_be_moved_to_a_folder(self, imap_inbox, imap_server):
        # Not made beforehand: the poller makes it. (It stored the first mail, failed to move
        # it, and held back every mail behind it, at each poll.)
        imap_inbox.settings["imap_after"] = "move:Processed"
        imap_inbox.save()
        deliver(imap_server, fixture("new_thread_fr.eml"))
        mailbox_poll(imap_inbox)
        with mailbox(imap_server) as box:
            assert box.uids("ALL") == []
            box.folder.set("Processed")
            assert len(box.uids("ALL")) == 1

    def test_not_email_is_left_in_the_mailbox_and_the_rest_goes_on(
        self, imap_inbox, imap_server, alice, settings
    ):
        settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
        deliver(imap_server, b"garbage without any headers\r\n", fixture("new_thread_fr.eml"))
        result = mailbox_poll(imap_inbox)
        assert (result.stored, len(result.unreadable)) == (1, 1)
        assert len(unseen(imap_server)) == 1

        # Admins hear of it (health, then one alert), and for a week, not for ever.
        def health():
            return health_of(with_mail_counts(Inbox.objects.filter(pk=imap_inbox.pk)).get())

        assert health() == (
            "unreadable mail: 1 in the last 7 days could not be stored and waits unread in "
            "the mailbox for someone to read it there (the last, UID 1: no From address and "
            "no Date, Message-ID, Subject or To header)"
        )
        assert mailboxes_alert() == 1
        assert "unreadable mail: 1 in the last 7 days" in mail.outbox[0].body
        assert "Read it in the mailbox, where it stays unread" in mail.outbox[0].body
        with time_machine.travel(timezone.now() + timedelta(days=8)):
            deliver(imap_server, customer_mail(subject="A week later"))
            assert len(mailbox_poll(imap_inbox).unreadable) == 0
            assert health() == "ok"
            assert mailboxes_alert() == 0
        assert len(unseen(imap_server)) == 1  # the unreadable one, still there to be read

    def test_a_nul_in_a_subject_neither_fails_its_mail_nor_holds_back_the_next(
        self, imap_inbox, imap_server
    ):
        # PostgreSQL refuses NUL in text: this mail failed on every poll, and so did every
        # mail behind it.
        poisoned = (
            b"From: maria@example.com\r\nTo: support@acme.example\r\n"
            b"Subject: =?utf-8?q?Order=00_7781?=\r\nMessage-ID: <nul@example.com>\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\nWhere=00 is it?\r\n"
        )
        deliver(imap_server, poisoned, customer_mail(frm="ana@example.com", subject="Next one"))
        assert mailbox_poll(imap_inbox).stored == 2
        process_all()
        texts = Message.objects.values_list("conversation__subject", "text")
        assert set(texts) == {("Order 7781", "Where is it?"), ("Next one", "Hello")}


@pytest.mark.django_db
def test_a_customer_reply_lands_once_whether_by_imap_pipe_or_http(
    client, imap_inbox, imap_server, smtp_server, bob
):
    """The issue's 'done when': an agent's reply goes out over SMTP; the customer's answer,
    fed through IMAP, the pipe and the HTTP endpoint alike, lands in the same conversation
    exactly once."""
    pipe(imap_inbox, customer_mail(subject="Where is my order?"))
    conversation = Conversation.objects.get()
    message_deliver(
        services.reply_send(conversation=conversation, author=bob, text="It ships today.").pk
    )
    [sent] = smtp_server.messages()
    answer = reply_to(sent, body="Great, thank you!")

    deliver(imap_server, answer)
    mailbox_poll(imap_inbox)
    process_all()
    pipe(imap_inbox, answer)
    response = client.post(
        f"/channels/email/{imap_inbox.pk}/mime",
        data=answer,
        content_type="message/rfc822",
        HTTP_AUTHORIZATION=f"Bearer {imap_inbox.secret}",
    )

    assert response.status_code == 202
    assert Conversation.objects.count() == 1
    texts = list(conversation.messages.values_list("direction", "text"))
    assert texts == [
        ("inbound", "Hello"),
        ("outbound", "It ships today."),
        ("inbound", "Great, thank you!"),
    ]


@pytest.mark.django_db
def test_a_failing_mailbox_shows_in_health_and_alerts_admins_once(imap_inbox, alice, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    imap_inbox.credentials = {"imap_password": "wrong"}
    imap_inbox.save()

    def health():
        return health_of(with_mail_counts(Inbox.objects.filter(pk=imap_inbox.pk)).get())

    for attempt in range(3):
        with pytest.raises(Exception, match="(?i)auth"):
            mailbox_poll(imap_inbox)
        if attempt == 0:  # not "ok" from the first failure; nobody is alerted yet
            assert health().startswith("retrying: the last poll failed (")
            assert mailboxes_alert() == 0

    assert health().startswith("failing: 3 polls in a row, last error")
    assert mailboxes_alert() == 1
    assert mailboxes_alert() == 0  # once per incident
    [alert] = mail.outbox
    assert alert.to == ["alice@example.com"]
    assert "Acme Support" in alert.subject


@pytest.mark.django_db(transaction=True)
def test_two_health_checks_at_once_alert_the_admins_once(alice, mail_inbox, smtp_server, settings):
    """Beat's check and a late or retried one overlap: both read "not alerted yet", and both
    mailed the admins."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite takes one writer at a time: there is no race to see")
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp_server.port
    mail_inbox.settings = {"silent_after_hours": 1}
    mail_inbox.save()
    data_received, release = smtp_server.hold_first()

    def check():
        try:
            mailboxes_alert()
        finally:
            connection.close()

    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        first = threading.Thread(target=check)
        first.start()
        assert data_received.wait(30)  # the first check is mailing the admins
        assert mailboxes_alert() == 0
        release.set()
        first.join()

    [alert] = smtp_server.messages()
    assert "Support email" in alert["Subject"]


@pytest.mark.django_db
def test_healthz_reports_each_mailbox(client, imap_inbox, imap_server):
    deliver(imap_server, fixture("new_thread_fr.eml"))
    assert client.get("/healthz").json()["mailboxes"] == {"not polled yet": 1}
    mailbox_poll(imap_inbox)
    assert client.get("/healthz").json()["mailboxes"] == {"ok": 1}
    assert Message.objects.count() == 0  # polled and stored; processing is the worker's job


def test_an_admin_checks_the_mail_servers_of_an_inbox(
    client, alice, imap_inbox, smtp_server, chat_inbox
):
    """The inbox list's action signs in to IMAP and SMTP as polling and sending do, and says
    how it went; a wrong password and a server that is not there are named."""
    imap_inbox.settings.update(smtp_host="127.0.0.1", smtp_port=smtp_server.port, smtp_timeout=5)
    imap_inbox.save()
    client.force_login(alice)

    def check(*inboxes) -> str:
        page = client.post(
            "/admin/conversations/inbox/",
            {"action": "connections_check", "_selected_action": [i.pk for i in inboxes]},
            follow=True,
        )
        return page.content.decode()

    page = check(imap_inbox, chat_inbox)
    assert f"IMAP {imap_inbox.settings['imap_host']}: signed in, folder INBOX." in page
    assert f"SMTP 127.0.0.1:{smtp_server.port}: connected." in page
    assert f"{chat_inbox}: not an email inbox." in page

    imap_inbox.credentials = {"imap_password": "wrong"}
    imap_inbox.settings["smtp_port"] = free_port()  # nobody listens there
    imap_inbox.save()
    page = check(imap_inbox)
    assert "MailboxLoginError" in page
    assert "ConnectionRefusedError" in page
    assert smtp_server.received == []  # nothing was sent
