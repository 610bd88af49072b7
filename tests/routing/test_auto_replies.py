"""Acknowledgements, out-of-office replies and the expected reply time customers are told.

Maria writes to Acme Support by email; João by SMS. Support works Monday to Friday
09:00–18:00 in Lisbon (UTC in winter)."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.utils import timezone

from channels_adapters.delivery import message_deliver
from channels_adapters.webchat.chat import availability
from conversations import services
from conversations.models import Channel, Conversation, ConversationEvent, Message
from routing.models import AutoReply, SlaClock, SlaPolicy
from routing.replies import expected_reply, reply_time_text
from routing.tasks import auto_reply
from tests.channels_adapters.test_email import FIXTURES, customer_mail, pipe
from tests.channels_adapters.test_sms import deliver, incoming
from tests.conftest import receive, wait_for
from tests.routing.test_business_hours import make_schedule

ACK = "Hi {name}, we have your message (#{number}) and usually reply within {expected_reply}."
ACK_PT = "Olá {name}, recebemos a sua mensagem (#{number}); respondemos em {expected_reply}."
AWAY = "We are closed until {opens_at}. Your request is #{number}."
AWAY_THEN = "Closed until {opens_at}; then we usually reply within {expected_reply}."


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def email_policy(db):
    SlaPolicy.objects.all().delete()
    return SlaPolicy.objects.create(
        name="Email", channel=Channel.EMAIL, first_response_minutes=240, next_response_minutes=240
    )


@pytest.fixture
def hours(support):
    schedule = make_schedule("Europe/Lisbon", {day: [("09:00", "18:00")] for day in range(5)})
    support.business_hours = schedule
    support.save()
    return schedule


def templates(inbox, *specs):
    for kind, language, body in specs:
        AutoReply.objects.create(inbox=inbox, kind=kind, language=language, body=body)


def replies(conversation) -> list[Message]:
    return list(conversation.messages.filter(direction="outbound").order_by("id"))


@pytest.mark.django_db(transaction=True)
def test_a_new_email_gets_one_acknowledgement_that_answers_nothing(
    email_inbox, smtp_server, email_policy, embedded_worker
):
    templates(email_inbox, (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK))
    pipe(email_inbox, customer_mail(frm="Maria Silva <maria@example.com>", subject="Order 7781"))
    wait_for(lambda: smtp_server.received, what="the acknowledgement")
    conversation = Conversation.objects.get()

    [sent] = smtp_server.messages()
    assert sent["To"] == "maria@example.com"
    assert sent["Subject"] == f"Re: Order 7781 [#{conversation.pk}]"
    assert sent["Auto-Submitted"] == "auto-replied"  # RFC 3834: no robot answers it
    body = sent.get_body(("plain",)).get_content()
    assert f"Hi Maria Silva, we have your message (#{conversation.pk})" in body
    assert "usually reply within 4 hours" in body  # no history yet: the SLA target
    # Maria still waits for a person: the SLA clock runs on.
    conversation.refresh_from_db()
    assert conversation.first_response_at is None and conversation.waiting_since is not None
    assert SlaClock.objects.get(target="first_response").stopped_at is None

    [ack] = replies(conversation)
    assert auto_reply(ack.pk - 1, True) is None  # the task again: nothing more is sent
    assert ConversationEvent.objects.filter(kind="auto_reply").count() == 1


def test_an_acknowledgement_goes_once_and_only_to_a_new_conversation(mail_inbox, email_policy):
    templates(mail_inbox, (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK))
    first = receive(mail_inbox, address="maria@example.com").message
    assert auto_reply(first.pk, True) is not None
    assert auto_reply(first.pk, True) is None
    later = receive(mail_inbox, text="One more thing", address="maria@example.com").message
    assert later.conversation_id == first.conversation_id
    assert auto_reply(later.pk, False) is None
    assert len(replies(first.conversation)) == 1


@pytest.mark.parametrize(
    "header",
    [
        {"Auto_Submitted": "auto-replied"},
        {"Precedence": "bulk"},
        {"X_Autoreply": "yes"},
    ],
)
def test_automatic_mail_never_gets_an_acknowledgement(mail_inbox, email_policy, header):
    templates(mail_inbox, (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK))
    mail_inbox.address = "support@acme.example"
    mail_inbox.save()
    pipe(mail_inbox, customer_mail(subject="Out of office", **header))
    message = Message.objects.get(direction="inbound")
    assert message.metadata["automated"]
    assert auto_reply(message.pk, True) is None
    assert not Message.objects.filter(direction="outbound").exists()


@pytest.mark.parametrize("name", ["auto_reply_pt.eml", "mailing_list.eml", "bounce_template.eml"])
def test_real_auto_replies_list_mail_and_bounces_are_never_acknowledged(
    email_inbox, smtp_server, email_policy, name
):
    """Captured mail as it arrives: a Portuguese vacation reply, a newsletter, and a bounce
    for mail we never sent (a bounce of ours fails that reply instead: see test_email)."""
    templates(email_inbox, (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK))
    raw = (FIXTURES / name).read_bytes().replace(b"{{ORIGINAL_ID}}", b"x@y").replace(b"{{N}}", b"1")
    pipe(email_inbox, raw)
    for message in Message.objects.filter(direction="inbound"):
        assert auto_reply(message.pk, True) is None
    assert not Message.objects.filter(direction="outbound").exists()
    assert smtp_server.received == []


def test_the_customer_gets_the_template_in_their_language(mail_inbox, email_policy):
    templates(
        mail_inbox,
        (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK),
        (AutoReply.Kind.ACKNOWLEDGEMENT, "pt", ACK_PT),
    )
    message = receive(
        mail_inbox, address="maria@example.com", name="Maria", language="pt-BR"
    ).message
    reply = Message.objects.get(pk=auto_reply(message.pk, True))
    assert reply.text == (
        f"Olá Maria, recebemos a sua mensagem (#{message.conversation_id}); respondemos em 4 horas."
    )
    # No Spanish template: the one without a language, in English throughout (not "4 horas").
    other = receive(mail_inbox, address="ana@example.es", name="Ana", language="es").message
    assert Message.objects.get(pk=auto_reply(other.pk, True)).text == (
        f"Hi Ana, we have your message (#{other.conversation_id}) and usually reply within 4 hours."
    )


def test_an_unnamed_sms_customer_gets_the_acknowledgement_in_the_language_they_wrote(
    client, twilio, sms_inbox, email_policy
):
    templates(
        sms_inbox,
        (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK),
        (AutoReply.Kind.ACKNOWLEDGEMENT, "pt", ACK_PT),
    )
    message = deliver(
        twilio, client, sms_inbox, incoming(sid="SM1", body="Olá, a minha encomenda não chegou")
    ).message
    assert message.conversation.customer.language == "pt"  # SMS does not say: the text does
    reply = Message.objects.get(pk=auto_reply(message.pk, True))
    number = message.conversation_id
    assert reply.text == f"Olá, recebemos a sua mensagem (#{number}); respondemos em algumas horas."

    short = incoming(sid="SM2", body="ok", From="+351912000222")
    other = deliver(twilio, client, sms_inbox, short).message
    assert other.conversation.customer.language == ""  # too short to tell
    reply = Message.objects.get(pk=auto_reply(other.pk, True))
    assert reply.text.startswith(f"Hi, we have your message (#{other.conversation_id})")


def test_an_sms_out_of_hours_gets_the_out_of_office_reply_once_per_closed_spell(
    client, twilio, sms_inbox, hours, email_policy
):
    templates(
        sms_inbox,
        (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK),
        (AutoReply.Kind.OUT_OF_OFFICE, "", AWAY),
    )

    def sms(at, sid, body="Olá"):
        with time_machine.travel(utc(at), tick=False):
            deliver(twilio, client, sms_inbox, incoming(sid=sid, body=body))
            message = Message.objects.get(provider_id=sid)
            sent = auto_reply(message.pk, message.conversation.messages.count() == 1)
            if sent:
                message_deliver(sent)
        return message

    first = sms("2026-01-09 19:30", "SM1")  # Friday evening
    sms("2026-01-10 11:00", "SM2", "Ainda aí?")  # Saturday: the same closed spell
    sms("2026-01-12 10:00", "SM3", "Bom dia")  # Monday, open: no reply, not new
    sms("2026-01-12 19:00", "SM4", "Boa noite")  # Monday evening: a new closed spell
    number = first.conversation_id
    bodies = [call.form()["Body"][0] for call in twilio.calls()]
    assert bodies == [
        f"We are closed until Monday 12 January, 09:00 WET. Your request is #{number}.",
        f"We are closed until Tuesday 13 January, 09:00 WET. Your request is #{number}.",
    ]
    assert [m.metadata["automatic"] for m in replies(first.conversation)] == ["out_of_office"] * 2


def test_no_out_of_office_reply_right_after_an_agent_answered(
    client, twilio, sms_inbox, hours, email_policy, bob
):
    templates(sms_inbox, (AutoReply.Kind.OUT_OF_OFFICE, "", AWAY))

    def sms(at, sid, body):
        with time_machine.travel(utc(at), tick=False):
            deliver(twilio, client, sms_inbox, incoming(sid=sid, body=body))
            message = Message.objects.get(provider_id=sid)
            return auto_reply(message.pk, message.conversation.messages.count() == 1), message

    sent, first = sms("2026-01-09 17:00", "SM1", "Olá")  # Friday, open: no reply
    assert sent is None
    with time_machine.travel(utc("2026-01-09 17:50"), tick=False):  # an agent answers
        services.reply_send(conversation=first.conversation, author=bob, text="Resolvido?")
    # Closed since 18:00, but the agent wrote 40 minutes ago: no "we are closed".
    assert sms("2026-01-09 18:30", "SM2", "Quase!")[0] is None
    assert sms("2026-01-10 11:00", "SM3", "Ainda aí?")[0]  # Saturday: nobody is writing


def test_the_team_a_conversation_was_routed_to_decides_whether_we_are_closed(
    mail_inbox, billing, email_policy
):
    """Support (the inbox's team) keeps no hours; the mail went to Billing, closed at night:
    the customer is told when Billing opens, as the SLA clock counts, not "within 4 hours"."""
    billing.business_hours = make_schedule(
        "Europe/Lisbon", {day: [("09:00", "18:00")] for day in range(5)}
    )
    billing.save()
    templates(
        mail_inbox,
        (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK),
        (AutoReply.Kind.OUT_OF_OFFICE, "", AWAY),
    )
    with time_machine.travel(utc("2026-01-12 21:00"), tick=False):  # Monday night
        message = receive(mail_inbox, address="maria@example.com").message
        Conversation.objects.filter(pk=message.conversation_id).update(team=billing)
        reply = Message.objects.get(pk=auto_reply(message.pk, True))
    assert reply.text == AWAY.format(
        opens_at="Tuesday 13 January, 09:00 WET", number=message.conversation_id
    )


def billing_reply(mail_inbox, billing, kind, body, at: str) -> Message:
    """The automatic reply to a mail at `at` (UTC) that routing gave to Billing, open 09:00 to
    18:00 Lisbon time from Monday to Friday (its usual wait: 4 hours, the email policy's)."""
    billing.business_hours = make_schedule(
        "Europe/Lisbon", {day: [("09:00", "18:00")] for day in range(5)}
    )
    billing.save()
    templates(mail_inbox, (kind, "", body))
    with time_machine.travel(utc(at), tick=False):
        message = receive(mail_inbox, address="maria@example.com", name="Maria").message
        Conversation.objects.filter(pk=message.conversation_id).update(team=billing)
        return Message.objects.get(pk=auto_reply(message.pk, True))


@pytest.mark.parametrize(
    ("at", "within"),
    [
        # Monday night, with no out-of-office reply: Billing opens at 09:00, in 12 hours.
        ("2026-01-12 21:00", "16 hours"),
        # Open, an hour before closing: one hour today, three from 09:00, so by 12:00.
        ("2026-01-12 17:00", "19 hours"),
    ],
)
def test_an_acknowledgement_counts_the_usual_wait_in_the_team_s_open_hours(
    mail_inbox, billing, email_policy, at, within
):
    # Not "within 4 hours" either time: the team would not answer that soon.
    reply = billing_reply(mail_inbox, billing, AutoReply.Kind.ACKNOWLEDGEMENT, ACK, at)
    assert reply.text.endswith(f"usually reply within {within}.")


def test_the_out_of_office_reply_s_expected_time_counts_from_the_opening_it_names(
    mail_inbox, billing, email_policy
):
    kind = AutoReply.Kind.OUT_OF_OFFICE
    reply = billing_reply(mail_inbox, billing, kind, AWAY_THEN, "2026-01-12 21:00")
    assert reply.text == (
        "Closed until Tuesday 13 January, 09:00 WET; then we usually reply within 4 hours."
    )


def test_an_opted_out_number_gets_no_automatic_reply(client, twilio, sms_inbox, email_policy):
    templates(sms_inbox, (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK))
    deliver(twilio, client, sms_inbox, incoming(sid="SM1", body="STOP"))
    message = Message.objects.get(provider_id="SM1")
    assert auto_reply(message.pk, True) is None
    assert twilio.calls() == []


def test_expected_reply_time_is_the_median_first_response_in_business_hours(
    mail_inbox, chat_inbox, email_policy, bob
):
    from conversations import services

    start = timezone.now() - timedelta(days=3)
    for minutes in (10, 20, 30, 40, 600):
        with time_machine.travel(start, tick=False):
            conversation = receive(mail_inbox, address=f"c{minutes}@example.com").message
        with time_machine.travel(start + timedelta(minutes=minutes), tick=False):
            services.reply_send(conversation=conversation.conversation, author=bob, text="Answered")
    assert expected_reply(mail_inbox) == timedelta(minutes=30)
    assert reply_time_text(expected_reply(mail_inbox)) == "30 minutes"

    mail_inbox.expected_reply_minutes = 120  # set by hand, it wins
    assert reply_time_text(expected_reply(mail_inbox)) == "2 hours"
    # The widget tells visitors the same way; its default policy asks 15 minutes.
    SlaPolicy.objects.create(name="Everything else", first_response_minutes=15)
    assert availability(chat_inbox)["reply_time"] == "15 minutes"


def test_the_expected_time_is_what_the_routed_team_takes_at_that_priority(
    mail_inbox, billing, support, email_policy, bob
):
    """Support answers its questions in about four hours; Billing answers urgent ones in ten
    minutes. Maria's urgent refund, routed to Billing, is told ten minutes, not four hours."""
    from conversations import services

    templates(mail_inbox, (AutoReply.Kind.ACKNOWLEDGEMENT, "", ACK))
    start = timezone.now() - timedelta(days=2)

    def answered(n, team, priority, minutes):
        for i in range(n):
            with time_machine.travel(start, tick=False):
                conversation = receive(mail_inbox, address=f"{team.slug}{priority}{i}@example.com")
                conversation = conversation.message.conversation
                Conversation.objects.filter(pk=conversation.pk).update(team=team, priority=priority)
            with time_machine.travel(start + timedelta(minutes=minutes), tick=False):
                services.reply_send(conversation=conversation, author=bob, text="Answered")

    answered(6, support, Conversation.Priority.NORMAL, 240)
    answered(5, billing, Conversation.Priority.URGENT, 10)
    answered(5, billing, Conversation.Priority.NORMAL, 60)

    def told(team, priority):
        address = f"maria.{team.slug}{priority}@example.com"
        message = receive(mail_inbox, address=address, name="Maria").message
        Conversation.objects.filter(pk=message.conversation_id).update(team=team, priority=priority)
        return Message.objects.get(pk=auto_reply(message.pk, True)).text.rsplit("within ", 1)[1]

    assert told(billing, Conversation.Priority.URGENT) == "10 minutes."
    assert told(billing, Conversation.Priority.NORMAL) == "1 hour."
    # Billing has no history at high priority: its own answers, not the inbox's.
    assert told(billing, Conversation.Priority.HIGH) == "35 minutes."
    assert told(support, Conversation.Priority.NORMAL) == "4 hours."
    # The widget, before anyone is routed, tells the inbox's median (Support's, here).
    assert reply_time_text(expected_reply(mail_inbox)) == "1 hour"


@pytest.mark.parametrize(
    ("minutes", "text"),
    [
        (None, "a few hours"),
        (3, "a few minutes"),
        (12, "10 minutes"),
        (50, "50 minutes"),
        (80, "1 hour"),
        (100, "2 hours"),
        (60 * 30, "1 day"),
        (60 * 72, "3 days"),
    ],
)
def test_reply_times_are_rounded_to_what_a_customer_needs(minutes, text):
    assert reply_time_text(None if minutes is None else timedelta(minutes=minutes)) == text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Your ticket is {ticket}", "Unknown placeholder {ticket}"),
        ("Hi {name}, {Number}", "Unknown placeholder {Number}"),
    ],
)
def test_a_template_with_an_unknown_placeholder_is_refused(mail_inbox, body, message):
    with pytest.raises(ValidationError) as refused:
        AutoReply(inbox=mail_inbox, kind=AutoReply.Kind.ACKNOWLEDGEMENT, body=body).full_clean()
    assert message in str(refused.value)


def test_one_language_has_one_template_however_it_is_written(mail_inbox):
    kind = AutoReply.Kind.OUT_OF_OFFICE
    french = AutoReply(inbox=mail_inbox, kind=kind, language="FR", body="Fermé")
    french.full_clean()
    french.save()
    assert french.language == "fr"
    with pytest.raises(ValidationError, match="already exists"):
        AutoReply(inbox=mail_inbox, kind=kind, language="fr", body="Aussi fermé").full_clean()
    with pytest.raises(ValidationError, match="not a language code"):
        AutoReply(inbox=mail_inbox, kind=kind, language="french", body="Fermé").full_clean()
    brazil = AutoReply(inbox=mail_inbox, kind=kind, language="pt_br", body="Fechado")
    brazil.full_clean()
    assert brazil.language == "pt-BR"


def test_chat_inboxes_take_no_templates(chat_inbox):
    with pytest.raises(ValidationError, match="The chat widget says itself"):
        AutoReply(inbox=chat_inbox, kind=AutoReply.Kind.OUT_OF_OFFICE, body="Away").full_clean()


def test_an_admin_writes_the_templates_on_the_inbox_page(client, alice, mail_inbox):
    from django.urls import reverse

    client.force_login(alice)
    url = reverse("admin:conversations_inbox_change", args=[mail_inbox.pk])
    assert "Acknowledgement of a new conversation" in client.get(url).content.decode()
    form = {
        "name": mail_inbox.name,
        "kind": "email",
        "address": mail_inbox.address,
        "settings": "{}",
        "new_credentials": "",
        "is_active": "on",
        "auto_replies-TOTAL_FORMS": "1",
        "auto_replies-INITIAL_FORMS": "0",
        "auto_replies-0-kind": "acknowledgement",
        "auto_replies-0-language": "pt",
        "auto_replies-0-body": "Recebemos o pedido #{ticket}",
        "auto_replies-0-is_active": "on",
    }
    refused = client.post(url, form)
    assert "Unknown placeholder {ticket}; use {number}" in refused.content.decode()
    form["auto_replies-0-body"] = "Recebemos o pedido #{number}"
    assert client.post(url, form).status_code == 302
    saved = AutoReply.objects.get(inbox=mail_inbox)
    assert (saved.language, saved.body) == ("pt", "Recebemos o pedido #{number}")
