"""SLA clocks: counted in business hours, paused on the customer, warned and breached once.

Support works Monday to Friday 09:00–18:00 in Lisbon (UTC in winter, UTC+1 in summer) and is
closed on Christmas. Email answers within 4 working hours; urgent conversations within 30
minutes on any channel. Bob answers; Dana leads the team."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse

from conversations import services
from conversations.models import Channel, Conversation, ConversationEvent, Message, Notification
from conversations.realtime import ADMINS_GROUP, conversation_group
from routing.models import SlaClock, SlaPolicy, TeamMembership
from routing.sla import policy_for
from routing.tasks import auto_reply, sla_sweep
from tests.conftest import PASSWORD, listen, receive
from tests.routing.test_business_hours import _form, make_schedule

WEEKDAYS = range(5)
FIRST, NEXT, RESOLUTION = (
    SlaClock.Target.FIRST_RESPONSE,
    SlaClock.Target.NEXT_RESPONSE,
    SlaClock.Target.RESOLUTION,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def hours(support):
    schedule = make_schedule(
        "Europe/Lisbon", {day: [("09:00", "18:00")] for day in WEEKDAYS}, closed=["2026-12-25"]
    )
    support.business_hours = schedule
    support.save()
    return schedule


@pytest.fixture
def policies(db):
    SlaPolicy.objects.all().delete()  # the migration's defaults; these tests set their own
    return {
        "email": SlaPolicy.objects.create(
            name="Email",
            channel=Channel.EMAIL,
            first_response_minutes=240,
            next_response_minutes=240,
            resolution_minutes=480,
            warn_minutes=30,
        ),
        "urgent": SlaPolicy.objects.create(
            name="Urgent", priority=Conversation.Priority.URGENT, first_response_minutes=30
        ),
    }


@pytest.fixture
def lead(dana, support):
    TeamMembership.objects.filter(user=dana).update(is_lead=True)
    return dana


def mail(inbox, at: str, text="Where is my order?", **kwargs):
    with time_machine.travel(utc(at), tick=False):
        return receive(inbox, text=text, address="maria@example.com", **kwargs).message.conversation


def clock(conversation, target) -> SlaClock:
    return SlaClock.objects.filter(conversation=conversation, target=target).latest("id")


def due(conversation) -> datetime | None:
    conversation.refresh_from_db()
    return conversation.sla_due_at


@pytest.mark.parametrize(
    ("arrives", "first_response_due"),
    [
        ("2026-01-12 10:00", "2026-01-12 14:00"),  # Monday morning: the same afternoon
        ("2026-01-10 12:00", "2026-01-12 13:00"),  # Saturday: from Monday's opening
        # Friday 16:30 before the clocks go forward: 1.5 h on Friday, 2.5 h on Monday, which
        # is summer time (09:00 + 2.5 h = 11:30 local = 10:30 UTC).
        ("2026-03-27 16:30", "2026-03-30 10:30"),
        # And back: 15:30 UTC is 16:30 on a summer Friday; Monday is on UTC again.
        ("2026-10-23 15:30", "2026-10-26 11:30"),
        ("2026-12-24 17:00", "2026-12-28 12:00"),  # closed on Christmas Friday
    ],
)
def test_first_response_is_due_after_four_working_hours(
    mail_inbox, hours, policies, arrives, first_response_due
):
    conversation = mail(mail_inbox, arrives)
    assert clock(conversation, FIRST).due_at == utc(first_response_due)
    assert due(conversation) == utc(first_response_due)  # the resolution target is later


def test_a_reply_in_time_meets_the_target_and_the_next_message_starts_the_next_clock(
    mail_inbox, hours, policies, bob
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 11:15"), tick=False):
        services.reply_send(conversation=conversation, author=bob, text="Looking into it.")
    first = clock(conversation, FIRST)
    assert (first.outcome, first.elapsed_seconds) == ("met", 75 * 60)

    mail(mail_inbox, "2026-01-12 17:00", text="Any news?")
    # One working hour on Monday, three on Tuesday.
    assert clock(conversation, NEXT).due_at == utc("2026-01-13 12:00")
    mail(mail_inbox, "2026-01-12 17:30", text="Hello?")  # still the same wait
    assert SlaClock.objects.filter(conversation=conversation, target=NEXT).count() == 1
    # The resolution clock (8 working hours from 10:00 Monday: closing time) runs out first.
    assert due(conversation) == utc("2026-01-12 18:00")


def test_waiting_on_the_customer_pauses_the_clocks_and_their_reply_resumes_them(
    mail_inbox, hours, policies, bob
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 11:00"), tick=False):
        services.reply_send(conversation=conversation, author=bob, text="Which order number?")
        services.conversation_set_status(conversation=conversation, status="pending", actor=bob)
    resolution = clock(conversation, RESOLUTION)
    assert (resolution.state, resolution.remaining_seconds) == ("paused", 7 * 3600)
    assert due(conversation) is None  # nothing counts down while we wait on Maria

    with time_machine.travel(utc("2026-01-14 12:00"), tick=False):  # two days later
        sla_sweep()
    assert not ConversationEvent.objects.filter(kind="sla").exists()

    mail(mail_inbox, "2026-01-14 10:00", text="It is 7781.")
    conversation.refresh_from_db()
    assert conversation.status == "open"
    # The 7 hours left of resolution count from her answer; a next response is now owed.
    assert clock(conversation, RESOLUTION).due_at == utc("2026-01-14 17:00")
    assert clock(conversation, NEXT).due_at == utc("2026-01-14 14:00")
    assert due(conversation) == utc("2026-01-14 14:00")


def test_pending_without_a_reply_does_not_pause_the_first_response(
    mail_inbox, hours, policies, bob
):
    """Nobody answered: setting it pending would hide the wait, and the breach."""
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 11:00"), tick=False):
        services.conversation_set_status(conversation=conversation, status="pending", actor=bob)
    assert clock(conversation, FIRST).state == "running"
    assert clock(conversation, RESOLUTION).state == "paused"
    with time_machine.travel(utc("2026-01-12 15:00"), tick=False):
        sla_sweep()
    assert clock(conversation, FIRST).breached_at == utc("2026-01-12 14:00")  # 4 working hours


def test_no_response_target_runs_where_no_reply_can_go(billing_inbox, policies):
    """An API integration's messages cannot be answered from the inbox: a response clock
    there would breach, and alert the leads, every time. Its resolution is still timed."""
    SlaPolicy.objects.create(
        name="Everything else", first_response_minutes=15, resolution_minutes=600
    )
    conversation = receive(billing_inbox, address="c-9").message.conversation
    targets = set(conversation.sla_clocks.values_list("target", flat=True))
    assert targets == {RESOLUTION}


def test_warnings_and_breaches_are_announced_once_to_the_assignee_and_the_leads(
    mail_inbox, hours, policies, bob, lead
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    services.conversation_assign(conversation=conversation, assignee=bob)

    def notified(kind):
        return sorted(
            Notification.objects.filter(kind=kind).values_list("recipient__email", flat=True)
        )

    with time_machine.travel(utc("2026-01-12 13:29"), tick=False):
        assert sla_sweep() == {"warned": 0, "breached": 0}
    with time_machine.travel(utc("2026-01-12 13:30"), tick=False):
        assert sla_sweep() == {"warned": 1, "breached": 0}
        assert sla_sweep() == {"warned": 0, "breached": 0}
    assert notified("sla_warning") == ["bob@example.com"]  # the assignee, not the leads
    warning = Notification.objects.get(kind="sla_warning")
    assert warning.text == f"First response on #{conversation.pk} is due in 30 min"

    with time_machine.travel(utc("2026-01-12 14:00"), tick=False):
        assert sla_sweep() == {"warned": 0, "breached": 1}
    with time_machine.travel(utc("2026-01-12 14:05"), tick=False):
        assert sla_sweep() == {"warned": 0, "breached": 0}
    assert notified("sla_breached") == ["bob@example.com", "dana@example.com"]
    events = ConversationEvent.objects.filter(conversation=conversation, kind="sla")
    assert [(e.data["target"], e.data["state"]) for e in events] == [
        (FIRST, "warning"),
        (FIRST, "breached"),
    ]

    with time_machine.travel(utc("2026-01-12 15:00"), tick=False):
        services.reply_send(conversation=conversation, author=bob, text="Sorry for the wait.")
    first = clock(conversation, FIRST)
    assert (first.outcome, first.breached_at) == ("breached", utc("2026-01-12 14:00"))


def test_the_warning_leaves_as_many_working_minutes_as_the_policy_says(
    mail_inbox, hours, policies, bob
):
    """Mail at 14:20 on a Friday is due at 09:20 on Monday, 20 minutes after opening. Warned
    30 minutes ahead on the clock, Bob would hear at 08:50 on Monday, before anyone is in;
    30 working minutes ahead is 17:50 on Friday, while he can still answer."""
    conversation = mail(mail_inbox, "2026-01-16 14:20")
    services.conversation_assign(conversation=conversation, assignee=bob)
    first = clock(conversation, FIRST)
    assert (first.due_at, first.warn_at) == (utc("2026-01-19 09:20"), utc("2026-01-16 17:50"))

    with time_machine.travel(utc("2026-01-16 17:49"), tick=False):
        assert sla_sweep() == {"warned": 0, "breached": 0}
    with time_machine.travel(utc("2026-01-16 17:50"), tick=False):
        assert sla_sweep() == {"warned": 1, "breached": 0}
    [warning] = Notification.objects.filter(kind="sla_warning", recipient=bob)
    assert warning.text == (
        f"First response on #{conversation.pk} is due in 30 min of business hours"
    )


def test_an_unassigned_conversation_s_warning_goes_to_the_leads(mail_inbox, hours, policies, lead):
    mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 13:45"), tick=False):
        sla_sweep()
    assert list(Notification.objects.values_list("recipient", "kind")) == [(lead.pk, "sla_warning")]


def test_a_lead_no_longer_active_is_not_warned(mail_inbox, hours, policies, lead, charlie, support):
    TeamMembership.objects.create(team=support, user=charlie, is_lead=True)
    lead.is_active = False
    lead.save()
    mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 13:45"), tick=False):
        sla_sweep()
    assert list(Notification.objects.values_list("recipient", "kind")) == [
        (charlie.pk, "sla_warning")
    ]


def test_a_reply_after_the_target_is_a_breach_even_before_the_sweep_noticed(
    mail_inbox, hours, policies, bob
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 14:10"), tick=False):
        services.reply_send(conversation=conversation, author=bob, text="Here you go.")
    first = clock(conversation, FIRST)
    assert (first.outcome, first.breached_at) == ("breached", utc("2026-01-12 14:00"))


def test_raising_the_priority_applies_the_stricter_target_to_time_already_counted(
    mail_inbox, hours, policies, bob
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 10:10"), tick=False):
        services.conversation_set_priority(
            conversation=conversation, priority=Conversation.Priority.URGENT, actor=bob
        )
    assert clock(conversation, FIRST).due_at == utc("2026-01-12 10:30")
    # The urgent policy sets no resolution target: that clock stops, not measured.
    assert clock(conversation, RESOLUTION).outcome == "cancelled"
    assert due(conversation) == utc("2026-01-12 10:30")


def test_resolving_stops_every_clock_and_a_customer_reopening_starts_them_again(
    mail_inbox, hours, policies, bob
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 12:00"), tick=False):
        services.conversation_set_status(conversation=conversation, status="resolved", actor=bob)
    assert {c.target: c.outcome for c in conversation.sla_clocks.all()} == {
        FIRST: "cancelled",  # closed without an answer: not a response
        RESOLUTION: "met",
    }
    assert due(conversation) is None

    mail(mail_inbox, "2026-01-13 10:00", text="It still has not arrived.")
    running = conversation.sla_clocks.filter(stopped_at=None)
    assert sorted(c.target for c in running) == [FIRST, RESOLUTION]
    assert due(conversation) == utc("2026-01-13 14:00")


def test_reopening_an_unanswered_conversation_makes_it_wait_on_us_again(
    mail_inbox, hours, policies, bob
):
    """Resolved by mistake, reopened an hour later: Maria waits on us again since 10:00.
    Her first-response clock goes on from the reopening (the hour it stood resolved is not
    counted: resolving a "Thanks!" overnight is no night's wait), and resolving is timed."""
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 11:00"), tick=False):
        services.conversation_set_status(conversation=conversation, status="resolved", actor=bob)
    with time_machine.travel(utc("2026-01-12 12:00"), tick=False):
        services.conversation_set_status(conversation=conversation, status="open", actor=bob)
    conversation.refresh_from_db()
    assert conversation.waiting_since == utc("2026-01-12 10:00")
    first = clock(conversation, FIRST)
    assert (first.state, first.due_at) == ("running", utc("2026-01-12 15:00"))
    # 8 working hours from noon: six on Monday, two on Tuesday.
    assert clock(conversation, RESOLUTION).due_at == utc("2026-01-13 11:00")
    assert due(conversation) == utc("2026-01-12 15:00")

    with time_machine.travel(utc("2026-01-12 13:00"), tick=False):
        services.reply_send(conversation=conversation, author=bob, text="On its way.")
    first.refresh_from_db()
    assert (first.outcome, first.elapsed_seconds) == ("met", 2 * 3600)
    # Answered, then resolved and reopened: nobody waits, and no response is owed.
    with time_machine.travel(utc("2026-01-12 14:00"), tick=False):
        services.conversation_set_status(conversation=conversation, status="resolved", actor=bob)
        services.conversation_set_status(conversation=conversation, status="open", actor=bob)
    conversation.refresh_from_db()
    assert conversation.waiting_since is None
    assert not conversation.sla_clocks.filter(stopped_at=None).exclude(target=RESOLUTION).exists()


@pytest.mark.parametrize("resolved", [False, True])
def test_a_reply_that_never_arrived_counts_the_whole_wait(
    mail_inbox, hours, policies, bob, resolved
):
    """Maria writes at 10:00; Bob replies (and resolves) at 10:30; it bounces at 12:00. Her
    first response is due at 14:00 as if the reply had never been sent."""
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 10:30"), tick=False):
        reply = services.reply_send(conversation=conversation, author=bob, text="Done.")
        if resolved:
            services.conversation_set_status(conversation=conversation, status="resolved")
    with time_machine.travel(utc("2026-01-12 12:00"), tick=False):
        Message.objects.filter(pk=reply.pk).update(status="failed", failure_reason="Bounced")
        reply.refresh_from_db()
        services.message_failure_tell(reply)
    assert clock(conversation, FIRST).due_at == utc("2026-01-12 14:00")


def test_sending_an_old_failed_reply_again_does_not_answer_a_newer_question(
    mail_inbox, hours, policies, bob
):
    from channels_adapters.delivery import message_retry

    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 10:30"), tick=False):
        old = services.reply_send(conversation=conversation, author=bob, text="Invoice")
    with time_machine.travel(utc("2026-01-12 10:40"), tick=False):
        Message.objects.filter(pk=old.pk).update(status="failed", failure_reason="Bounced")
        old.refresh_from_db()
        services.message_failure_tell(old)
    with time_machine.travel(utc("2026-01-12 10:50"), tick=False):
        services.reply_send(conversation=conversation, author=bob, text="Looking into it")
    mail(mail_inbox, "2026-01-12 11:00", text="Where is the refund?")
    with time_machine.travel(utc("2026-01-12 11:30"), tick=False):
        message_retry(message=old)
    conversation.refresh_from_db()
    assert conversation.waiting_since == utc("2026-01-12 11:00")
    assert clock(conversation, NEXT).state == "running"


def test_automatic_mail_starts_no_clock(mail_inbox, hours, policies):
    conversation = mail(
        mail_inbox, "2026-01-12 10:00", metadata={"automated": "Auto-Submitted: auto-replied"}
    )
    assert not conversation.sla_clocks.exists()
    assert due(conversation) is None


@pytest.mark.parametrize(
    ("channel", "priority", "expected"),
    [
        ("email", 1, "Email"),
        ("email", 3, "Urgent email"),
        ("sms", 3, "Urgent"),  # priority outranks channel
        ("email", 2, "Email"),
        ("sms", 1, "Everything else"),
        ("webchat", 0, "Everything else"),
    ],
)
def test_the_most_specific_policy_applies(db, channel, priority, expected):
    SlaPolicy.objects.all().delete()
    for name, kind, level in [
        ("Everything else", "", None),
        ("Email", "email", None),
        ("Urgent", "", 3),
        ("Urgent email", "email", 3),
        ("Retired", "sms", None),
    ]:
        SlaPolicy.objects.create(
            name=name,
            channel=kind,
            priority=level,
            first_response_minutes=60,
            is_active=name != "Retired",
        )
    assert policy_for(channel, priority).name == expected


def test_a_channel_without_a_policy_is_not_measured(mail_inbox, hours):
    SlaPolicy.objects.exclude(channel="").delete()
    SlaPolicy.objects.filter(channel="").update(is_active=False)
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    assert not conversation.sla_clocks.exists()


def test_the_inbox_counts_down_and_sorts_by_what_is_due_first(
    client, mail_inbox, hours, policies, alice
):
    later = mail(mail_inbox, "2026-01-12 10:00", text="About my invoice")
    with time_machine.travel(utc("2026-01-12 10:30"), tick=False):
        sooner = receive(mail_inbox, text="URGENT: site down", address="joe@example.com")
        sooner = sooner.message.conversation
        services.conversation_set_priority(
            conversation=sooner, priority=Conversation.Priority.URGENT
        )
    client.login(email=alice.email, password=PASSWORD)
    with time_machine.travel(utc("2026-01-12 10:50"), tick=False):
        page = client.get(reverse("inbox:list"), {"view": "all", "sort": "sla"})
    html = page.content.decode()
    assert html.index(f'data-conversation="{sooner.pk}"') < html.index(
        f'data-conversation="{later.pk}"'
    )
    assert "due in 10 min" in html and "due in 3 h 10 min" in html
    with time_machine.travel(utc("2026-01-12 11:05"), tick=False):
        page = client.get(reverse("inbox:conversation", args=[sooner.pk]))
    assert "First response" in page.content.decode()
    assert "overdue 5 min" in page.content.decode()


def test_the_conversation_page_shows_how_each_target_ended(
    client, mail_inbox, hours, policies, bob, alice
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 15:00"), tick=False):
        sla_sweep()
        services.reply_send(conversation=conversation, author=bob, text="Sorry!")
    client.login(email=alice.email, password=PASSWORD)
    with time_machine.travel(utc("2026-01-12 15:01"), tick=False):
        html = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
    assert "breached" in html and "took 5 h, target 4 h" in html
    assert "SLA: first response target breached" in html  # the timeline


def test_clocks_of_two_channels_say_which_is_which(client, chat_inbox, mail_inbox, bob):
    # A chat answered by email: "Next response met in 3 min of 4 h" beside "First response
    # met in 1 min of 15 min" read as a mistake.
    conversation = receive(chat_inbox, text="Hi", address="v1").message.conversation
    email = services.identity_add(
        customer=conversation.customer, kind=Channel.EMAIL, address="jo@example.com"
    )
    services.reply_send(conversation=conversation, author=bob, text="Hello", identity=email)
    receive(mail_inbox, channel=Channel.EMAIL, address="jo@example.com", text="One more thing")
    client.force_login(bob)
    html = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
    assert '<strong>First response</strong> <span class="muted">(Web chat)</span>' in html
    assert '<strong>Next response</strong> <span class="muted">(Email)</span>' in html


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"first_response_minutes": ""}, "Set at least one target."),
        ({"channel": "email"}, "“Email” already covers this channel and priority"),
        (
            {"first_response_minutes": "10", "warn_minutes": "120"},
            "Warn fewer minutes ahead than the shortest target (10 minutes).",
        ),
        # A typo of a few zeros: every matching message would have failed to be stored.
        ({"first_response_minutes": "99999999999"}, "At most 525600 minutes (a year)."),
        # Saved, it breached every conversation as it opened.
        (
            {"first_response_minutes": "0", "next_response_minutes": "15"},
            "At least 1 minute. Leave it empty not to measure this target.",
        ),
    ],
)
def test_the_admin_refuses_a_policy_that_measures_nothing_or_overlaps(
    client, alice, policies, fields, message
):
    client.login(email=alice.email, password=PASSWORD)
    form = {
        "name": "New",
        "channel": "sms",
        "priority": "",
        "first_response_minutes": "60",
        "next_response_minutes": "",
        "resolution_minutes": "",
        "business_hours_only": "on",
        "warn_minutes": "5",
        "is_active": "on",
        **fields,
    }
    response = client.post(reverse("admin:routing_slapolicy_add"), form)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not SlaPolicy.objects.filter(name="New").exists()


def test_hours_changed_in_admin_move_running_clocks_and_keep_what_they_counted(
    client, alice, mail_inbox, hours, policies
):
    """From 11:00 on Monday, Support closes at noon on Mondays. Maria's four working hours,
    due at 14:00, stayed due at 14:00 and breached then. They count the hour she has waited,
    one more before noon and two on Tuesday morning; her resolution target moves too."""
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    assert due(conversation) == utc("2026-01-12 14:00")
    rows = [
        (day.weekday, "09:00", "12:00" if day.weekday == 0 else "18:00", day.pk)
        for day in hours.intervals.order_by("weekday")
    ]
    client.force_login(alice)
    with time_machine.travel(utc("2026-01-12 11:00"), tick=False):
        response = client.post(
            reverse("admin:routing_businesshours_change", args=[hours.pk]),
            _form(rows, name=hours.name, schedule=hours),
        )
    assert response.status_code == 302, response.content.decode()
    first = clock(conversation, FIRST)
    assert (first.due_at, first.warn_at) == (utc("2026-01-13 11:00"), utc("2026-01-13 10:30"))
    assert clock(conversation, RESOLUTION).due_at == utc("2026-01-13 15:00")  # 8 h: 1 + 1 + 6
    assert due(conversation) == utc("2026-01-13 11:00")  # what the inbox counts down
    with time_machine.travel(utc("2026-01-12 14:01"), tick=False):
        assert sla_sweep() == {"warned": 0, "breached": 0}
    with time_machine.travel(utc("2026-01-13 11:01"), tick=False):
        assert sla_sweep()["breached"] == 1


def test_a_policy_target_changed_in_admin_applies_to_running_clocks(
    client, alice, mail_inbox, hours, policies, django_capture_on_commit_callbacks
):
    # Made before the day travelled to, as they would be (the cache sees a newer save).
    SlaPolicy.objects.update(updated_at=utc("2026-01-01 00:00"))
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    next_event, lists_event = listen(conversation_group(conversation.pk)), listen(ADMINS_GROUP)
    email = policies["email"]
    client.login(email=alice.email, password=PASSWORD)
    form = {
        "name": email.name,
        "channel": email.channel,
        "priority": "",
        "first_response_minutes": "60",  # was 240
        "next_response_minutes": "240",
        "resolution_minutes": "480",
        "business_hours_only": "on",
        "warn_minutes": "30",
        "is_active": "on",
    }
    with (  # sent after travelling back: the channel layer drops what looks a year old
        django_capture_on_commit_callbacks(execute=True),
        time_machine.travel(utc("2026-01-12 10:30"), tick=False),
    ):
        response = client.post(reverse("admin:routing_slapolicy_change", args=[email.pk]), form)
    assert response.status_code == 302, response.content.decode()
    first = clock(conversation, FIRST)
    assert (first.goal_seconds, first.due_at) == (3600, utc("2026-01-12 11:00"))
    assert due(conversation) == utc("2026-01-12 11:00")
    # Agents with the list or the conversation open see the new time without reloading: the
    # page hears of its conversation, a list once for all of them.
    assert next_event(timeout=5)["event"] == "sla"
    assert lists_event(timeout=5) | {"event_id": ""} == {
        "type": "conversation.event",
        "event": "sla",
        "conversation": None,
        "event_id": "",
    }
    # The policy no longer active: its targets stop as not measured, the urgent one aside.
    form["is_active"] = ""
    with time_machine.travel(utc("2026-01-12 10:40"), tick=False):
        client.post(reverse("admin:routing_slapolicy_change", args=[email.pk]), form)
    assert clock(conversation, FIRST).outcome == SlaClock.Outcome.CANCELLED
    assert due(conversation) is None


def test_a_cut_target_holds_for_a_clock_paused_while_the_customer_was_asked(
    client, alice, mail_inbox, hours, policies, bob
):
    """Maria's next response clock was paused (pending) when the target was cut from 4 hours
    to 1: it kept the 4 hours and came back with them when she answered."""
    SlaPolicy.objects.update(updated_at=utc("2026-01-01 00:00"))  # as in the test above
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 10:30"), tick=False):
        services.reply_send(conversation=conversation, author=bob, text="Which order?")
    mail(mail_inbox, "2026-01-12 11:00", text="Order 1234")
    with time_machine.travel(utc("2026-01-12 11:30"), tick=False):
        services.conversation_set_status(conversation=conversation, status="pending")
    email = policies["email"]
    client.force_login(alice)
    form = {"name": email.name, "channel": "email", "priority": "", "is_active": "on"}
    form |= {"first_response_minutes": "240", "next_response_minutes": "60"}
    form |= {"resolution_minutes": "480", "business_hours_only": "on", "warn_minutes": "30"}
    with time_machine.travel(utc("2026-01-12 12:00"), tick=False):
        response = client.post(reverse("admin:routing_slapolicy_change", args=[email.pk]), form)
    assert response.status_code == 302, response.content.decode()
    mail(mail_inbox, "2026-01-12 13:00", text="Any news?")
    # Half an hour counted before the pause, the other half from 13:00.
    assert clock(conversation, NEXT).due_at == utc("2026-01-12 13:30")


@pytest.mark.django_db(transaction=True)  # as in production: the admin's own transactions
def test_a_policy_deleted_in_admin_hands_its_clocks_to_the_one_that_now_applies(
    client, alice, mail_inbox, hours, policies
):
    SlaPolicy.objects.update(updated_at=utc("2026-01-01 00:00"))  # as in the test above
    SlaPolicy.objects.create(name="Any channel", first_response_minutes=120)
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    client.force_login(alice)
    with time_machine.travel(utc("2026-01-12 10:30"), tick=False):
        response = client.post(
            reverse("admin:routing_slapolicy_delete", args=[policies["email"].pk]),
            {"post": "yes"},
        )
    assert response.status_code == 302
    first = clock(conversation, FIRST)
    assert (first.policy.name, first.due_at) == ("Any channel", utc("2026-01-12 12:00"))
    assert clock(conversation, RESOLUTION).outcome == SlaClock.Outcome.CANCELLED
    assert due(conversation) == utc("2026-01-12 12:00")
    # And by the list's "delete selected": its clocks stop, nothing measuring them now.
    with time_machine.travel(utc("2026-01-12 10:40"), tick=False):
        response = client.post(
            reverse("admin:routing_slapolicy_changelist"),
            {"action": "delete_selected", "_selected_action": [first.policy_id], "post": "yes"},
        )
    assert response.status_code == 302
    assert clock(conversation, FIRST).outcome == SlaClock.Outcome.CANCELLED


def test_a_team_given_other_hours_in_admin_moves_its_running_clocks(
    client, alice, mail_inbox, hours, policies, support
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    late = make_schedule(
        "Europe/Lisbon", {day: [("13:00", "22:00")] for day in WEEKDAYS}, name="Late"
    )
    client.force_login(alice)
    form = {
        "name": support.name,
        "slug": support.slug,
        "description": "",
        "business_hours": late.pk,
        "auto_assign": "on",
        "channel_weights": "{}",
        "memberships-TOTAL_FORMS": 0,
        "memberships-INITIAL_FORMS": 0,
    }
    with time_machine.travel(utc("2026-01-12 11:00"), tick=False):
        response = client.post(reverse("admin:routing_team_change", args=[support.pk]), form)
    assert response.status_code == 302, response.content.decode()
    # The hour from 10:00 stays counted; the three left run from 13:00.
    assert clock(conversation, FIRST).due_at == utc("2026-01-12 16:00")


def test_an_inbox_given_its_own_hours_in_admin_moves_its_running_clocks(
    client, alice, mail_inbox, hours, policies
):
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    late = make_schedule(
        "Europe/Lisbon", {day: [("13:00", "22:00")] for day in WEEKDAYS}, name="Late"
    )
    client.force_login(alice)
    form = {"name": mail_inbox.name, "kind": "email", "address": mail_inbox.address}
    form |= {"default_team": mail_inbox.default_team_id, "is_active": "on", "settings": "{}"}
    form |= {"business_hours": late.pk, "new_credentials": ""}
    form |= {"auto_replies-TOTAL_FORMS": 0, "auto_replies-INITIAL_FORMS": 0}
    with time_machine.travel(utc("2026-01-12 11:00"), tick=False):
        response = client.post(
            reverse("admin:conversations_inbox_change", args=[mail_inbox.pk]), form
        )
    assert response.status_code == 302, response.content.decode()
    assert clock(conversation, FIRST).due_at == utc("2026-01-12 16:00")


def test_a_target_of_0_saved_before_it_was_refused_measures_nothing(mail_inbox, policies):
    SlaPolicy.objects.filter(name="Email").update(first_response_minutes=0)
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    assert not conversation.sla_clocks.filter(target=FIRST).exists()
    with time_machine.travel(utc("2026-01-12 10:01"), tick=False):
        assert sla_sweep()["breached"] == 0


def test_it_merged_conversations_stop_their_clocks(mail_inbox, hours, policies, bob):
    first = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 10:05"), tick=False):
        second = receive(
            mail_inbox, text="Also this", address="maria@example.com", force_new_conversation=True
        ).message.conversation
        services.conversation_merge(source=second, target=first, actor=bob)
    assert not second.sla_clocks.filter(stopped_at=None).exists()
    assert due(second) is None
    assert due(first) == utc("2026-01-12 14:00")
    with time_machine.travel(utc("2026-01-12 14:00") + timedelta(minutes=1), tick=False):
        assert sla_sweep()["breached"] == 1  # the target's own clock, not the merged one's


def test_a_merge_keeps_the_longer_wait_and_the_higher_priority(mail_inbox, hours, policies, bob):
    """Maria's urgent question of 10:00 is merged into her later, normal one: it stays
    urgent, and its first response is due 30 minutes from 10:00, not from 11:00."""
    urgent = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 10:00"), tick=False):
        services.conversation_set_priority(conversation=urgent, priority=3, actor=bob)
    with time_machine.travel(utc("2026-01-12 11:00"), tick=False):
        later = receive(
            mail_inbox, text="Hello?", address="maria@example.com", force_new_conversation=True
        ).message.conversation
    assert clock(later, FIRST).due_at == utc("2026-01-12 15:00")
    with time_machine.travel(utc("2026-01-12 11:05"), tick=False):
        services.conversation_merge(source=urgent, target=later, actor=bob)
    later.refresh_from_db()
    assert later.priority == 3
    first = later.sla_clocks.get(target=FIRST, stopped_at=None)
    # Over its 30 minutes already: due now, and the next sweep says it was breached.
    assert (first.started_at, first.due_at) == (utc("2026-01-12 10:00"), utc("2026-01-12 11:05"))
    assert not urgent.sla_clocks.filter(stopped_at=None).exists()
    with time_machine.travel(utc("2026-01-12 11:06"), tick=False):
        assert sla_sweep()["breached"] == 1
    assert later.events.filter(kind="sla", data__state="breached").exists()
    assert later.events.filter(kind="priority", data__priority=3).exists()


def test_a_merge_leaves_one_response_owed(mail_inbox, hours, policies, bob):
    """An unanswered question merged into an answered conversation that was asked again:
    one response is owed, counted from the earlier question."""
    unanswered = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 10:30"), tick=False):
        answered = receive(
            mail_inbox, text="Also", address="maria@example.com", force_new_conversation=True
        ).message.conversation
        services.reply_send(conversation=answered, author=bob, text="Done.")
    mail(mail_inbox, "2026-01-12 11:00", text="Thanks, and the other?")
    assert clock(answered, NEXT).state == "running"
    with time_machine.travel(utc("2026-01-12 11:05"), tick=False):
        services.conversation_merge(source=unanswered, target=answered, actor=bob)
    running = answered.sla_clocks.filter(stopped_at=None).exclude(target=RESOLUTION)
    assert [(c.target, c.started_at) for c in running] == [(FIRST, utc("2026-01-12 10:00"))]


@pytest.mark.parametrize("ended", ["resolved", "snoozed", "pending"])
def test_a_question_merged_into_an_ended_conversation_reopens_it(
    mail_inbox, hours, policies, bob, ended
):
    """Maria's new mail was merged into her old, resolved conversation: it stayed resolved,
    in no queue, its clock stopped as not measured, while she waited; a snoozed one slept on
    for days. Our replies were then headed by the old one's first words, not her subject."""
    with time_machine.travel(utc("2026-01-09 10:00"), tick=False):
        old = receive(mail_inbox, text="Olá", address="maria@example.com").message.conversation
        services.reply_send(conversation=old, author=bob, text="Olá Maria")
        until = {"snoozed_until": utc("2026-01-20 09:00")} if ended == "snoozed" else {}
        services.conversation_set_status(conversation=old, status=ended, actor=bob, **until)
    new = mail(mail_inbox, "2026-01-12 10:00", subject="Refund", force_new_conversation=True)
    with time_machine.travel(utc("2026-01-12 10:05"), tick=False):
        services.conversation_merge(source=new, target=old, actor=bob)
    old.refresh_from_db()
    assert (old.status, old.subject) == ("open", "Refund")
    assert old.events.filter(kind="reopened", data__reason="merged").exists()
    # Her question is measured, from her mail: 4 business hours; and the resolution too.
    assert old.sla_clocks.get(target=FIRST, stopped_at=None).due_at == utc("2026-01-12 14:00")
    assert old.sla_clocks.get(target=RESOLUTION, stopped_at=None).due_at is not None


def test_the_demo_acknowledges_the_routed_refund_and_counts_its_clock_down(db, client):
    from io import StringIO

    from django.core.management import call_command

    with time_machine.travel(utc("2026-01-13 10:00")):  # a Tuesday: Billing is at work
        call_command("seed_demo", customers=0, stdout=StringIO())
        call_command("seed_demo", customers=0, stdout=StringIO())  # idempotent: one reply
    refund = Conversation.objects.get(customer__attributes__plan="enterprise")
    [ack] = refund.messages.filter(direction="outbound")
    assert ack.metadata == {"automatic": "acknowledgement"}
    assert f"Your request is #{refund.pk}" in ack.text
    assert "We usually reply within 4 hours." in ack.text  # the email target: no history yet
    assert refund.sla_due_at is not None

    client.login(email="admin@example.com", password="threadline-demo")
    with time_machine.travel(utc("2026-01-13 10:30")):
        page = client.get(reverse("inbox:list"), {"view": "all", "sort": "sla"})
    assert f'data-conversation="{refund.pk}"' in page.content.decode()
    assert "due in 3 h 30 min" in page.content.decode()

    # Out of hours the customer hears when the team is back instead.
    with time_machine.travel(utc("2026-01-17 12:00")):  # Saturday
        late = receive(
            refund.inbox, text="Any news on the refund?", address="ceo@northwind.example"
        )
        reply = Message.objects.get(pk=auto_reply(late.message.pk, True))
    assert "We are closed right now and open again Monday 19 January, " in reply.text


def test_a_breach_sets_off_the_automations_that_escalate_it_once(mail_inbox, hours, policies, bob):
    from routing.models import Automation

    escalate = Automation(
        name="Escalate breaches",
        event="sla_breach",
        actions=[
            {"action": "priority", "priority": "urgent"},
            {"action": "add_tags", "tags": ["escalated"]},
        ],
    )
    escalate.full_clean()
    escalate.save()
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    with time_machine.travel(utc("2026-01-12 13:45"), tick=False):
        sla_sweep()  # a warning: not what it waits for
    conversation.refresh_from_db()
    assert conversation.priority == Conversation.Priority.NORMAL
    with time_machine.travel(utc("2026-01-12 14:00"), tick=False):
        sla_sweep()
        sla_sweep()
    conversation.refresh_from_db()
    assert conversation.priority == Conversation.Priority.URGENT
    assert list(conversation.tags.values_list("name", flat=True)) == ["escalated"]
    assert conversation.events.filter(kind="automation").count() == 1


@pytest.mark.parametrize("business_hours_only", [True, False])
def test_a_target_past_the_admins_bound_stops_no_message(
    mail_inbox, hours, policies, business_hours_only
):
    # Saved around the admin's check (a script, an older version): 2,147,483,647 minutes is
    # what PostgreSQL holds, far past what dates can count to.
    policies["email"].first_response_minutes = 2_147_483_647
    policies["email"].business_hours_only = business_hours_only
    policies["email"].save()
    conversation = mail(mail_inbox, "2026-01-12 10:00")
    assert conversation.messages.count() == 1
    # Not measured: no clock counts that far. The policy's other targets still are.
    assert not conversation.sla_clocks.filter(target="first_response").exists()
    assert clock(conversation, "resolution").due_at is not None
