"""Automations: which conversations their conditions match (table-driven), what each action
does, the events that set them off, loops that cannot happen, failures that stay contained,
checks on what admins save, and the idle sweep ("pending for 3 days"). Everything goes through
the public entry points: the services, `automations_run` (as the SLA sweeper calls it) and the
Celery task. Personas: alice the admin; bob and dana (Support), charlie (Billing), agents.
Time is travelled, never slept."""

from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from conversations import services
from conversations.models import (
    CannedResponse,
    Conversation,
    ConversationEvent,
    Message,
    Notification,
)
from helpdesk.models import User
from routing import tasks
from routing.automations import BURST_LIMIT, automations_run
from routing.models import Automation, AutomationRun, RoutingRule, TeamMembership
from tests.conftest import receive

Status = Conversation.Status
HIGH = Conversation.Priority.HIGH


def automation(event, actions, conditions=(), *, name=None, **fields) -> Automation:
    """An automation saved the way admin saves it (checked first)."""
    made = Automation(
        name=name or f"On {event}",
        event=event,
        conditions=list(conditions),
        actions=actions,
        **fields,
    )
    made.full_clean()
    made.save()
    return made


def arrive(inbox, text="Hello", *, address=None, **inbound) -> Conversation:
    arrive.count = getattr(arrive, "count", 0) + 1
    address = address or f"customer{arrive.count}@example.com"
    received = receive(inbox, text=text, address=address, name="Ana Lima", **inbound)
    return Conversation.objects.get(pk=received.message.conversation_id)


def tags(conversation) -> set[str]:
    return set(conversation.tags.values_list("name", flat=True))


def runs(automation_) -> list[dict]:
    """What the automation did, oldest first, as its timeline events say."""
    return [
        event.data
        for event in ConversationEvent.objects.filter(
            kind=ConversationEvent.Kind.AUTOMATION, data__automation=automation_.pk
        ).order_by("id")
    ]


TAG_IT = [{"action": "add_tags", "tags": ["matched"]}]


# --- What conditions match -------------------------------------------------------------------


def persona(name):
    """A condition value naming a persona or team, resolved once the fixtures exist."""
    return f"@{name}"


CONVERSATION_CONDITIONS = [
    ({"field": "status", "op": "is", "value": "pending"}, {"status": "pending"}, True),
    ({"field": "status", "op": "in", "value": ["open", "pending"]}, {"status": "resolved"}, False),
    ({"field": "status", "op": "is_not", "value": "open"}, {}, False),
    ({"field": "priority", "op": "is", "value": "high"}, {"priority": HIGH}, True),
    ({"field": "priority", "op": "gte", "value": "high"}, {"priority": 3}, True),
    ({"field": "priority", "op": "lt", "value": "normal"}, {}, False),
    ({"field": "priority", "op": "in", "value": ["low", "urgent"]}, {}, False),
    ({"field": "assignee", "op": "exists"}, {"assignee": "bob"}, True),
    ({"field": "assignee", "op": "not_exists"}, {}, True),
    ({"field": "assignee", "op": "is", "value": persona("bob")}, {"assignee": "bob"}, True),
    ({"field": "assignee", "op": "is", "value": persona("bob")}, {"assignee": "dana"}, False),
    ({"field": "team", "op": "is", "value": persona("billing")}, {}, False),
    ({"field": "team", "op": "is_not", "value": persona("billing")}, {}, True),
    ({"field": "team", "op": "in", "value": [persona("billing")]}, {"team": "billing"}, True),
    ({"field": "tags", "op": "contains", "value": ["vip", "urgent"]}, {"tags": ["vip"]}, True),
    ({"field": "tags", "op": "contains", "value": "vip"}, {}, False),
    ({"field": "tags", "op": "not_contains", "value": "vip"}, {"tags": ["vip"]}, False),
    ({"field": "tags", "op": "not_contains", "value": "vip"}, {"tags": ["other"]}, True),
    ({"field": "hours_since_activity", "op": "gte", "value": 48}, {"hours_ago": 50}, True),
    ({"field": "hours_since_activity", "op": "gte", "value": 48}, {"hours_ago": 47}, False),
    ({"field": "hours_since_activity", "op": "lt", "value": 1}, {}, True),
    # The routing vocabulary works too; text is the customer's latest message.
    ({"field": "text", "op": "contains", "value": "refund"}, {"text": "A refund?"}, True),
    ({"field": "text", "op": "contains", "value": "refund"}, {}, False),
    ({"field": "channel", "op": "is", "value": "email"}, {}, True),
]


@pytest.mark.parametrize(("condition", "state", "matches"), CONVERSATION_CONDITIONS)
def test_it_matches_conversation_conditions_as_the_table_says(
    mail_inbox, alice, bob, dana, billing, condition, state, matches
):
    named = {"@bob": bob.pk, "@dana": dana.pk, "@billing": billing.pk}
    value = condition.get("value")
    if value is not None:
        condition = {
            **condition,
            "value": [named.get(v, v) for v in value]
            if isinstance(value, list)
            else named.get(value, value),
        }
    automation("sla_warning", TAG_IT, [condition])
    with time_machine.travel(timezone.now() - timedelta(hours=state.get("hours_ago", 0))):
        conversation = arrive(mail_inbox, state.get("text", "Hello"))
    if "status" in state:
        services.conversation_set_status(conversation=conversation, status=state["status"])
    if "priority" in state:
        services.conversation_set_priority(conversation=conversation, priority=state["priority"])
    if "assignee" in state:
        agent = {"bob": bob, "dana": dana}[state["assignee"]]
        services.conversation_assign(conversation=conversation, assignee=agent)
    if "team" in state:
        services.conversation_set_team(conversation=conversation, team=billing)
    if "tags" in state:
        services.conversation_tag(conversation=conversation, add=state["tags"])
    if "hours_ago" in state:  # the changes above were activity of their own: undo that
        Conversation.objects.filter(pk=conversation.pk).update(
            last_activity_at=timezone.now() - timedelta(hours=state["hours_ago"])
        )

    automations_run(conversation=conversation, event="sla_warning")

    assert ("matched" in tags(conversation)) is matches


# --- What each action does -------------------------------------------------------------------


@pytest.fixture
def canned(db):
    return CannedResponse.objects.create(
        title="Still there?",
        shortcut="still-there",
        body="Hi {customer.first_name}, is #{conversation.number} sorted? {agent.first_name}",
    )


def test_it_assigns_moves_prioritises_and_tags_through_the_services(mail_inbox, bob, dana, billing):
    conversation = arrive(mail_inbox)
    services.conversation_tag(conversation=conversation, add=["old"])
    rule = automation(
        "sla_breach",
        [
            {"action": "assign", "agent": dana.pk},
            {"action": "priority", "priority": "high"},
            {"action": "add_tags", "tags": ["escalated", "sla"]},
            {"action": "remove_tags", "tags": "old"},
            {"action": "team", "team": billing.pk},
        ],
        name="Escalate breaches",
    )

    automations_run(conversation=conversation, event="sla_breach")

    conversation.refresh_from_db()
    assert (conversation.assignee, conversation.priority, conversation.team) == (
        dana,
        HIGH,
        billing,
    )
    assert tags(conversation) == {"escalated", "sla"}
    ran = conversation.events.get(kind=ConversationEvent.Kind.AUTOMATION)
    changes = conversation.events.filter(pk__gt=ran.pk, actor=None)
    assert [event.kind for event in changes.order_by("id")] == [
        "assigned",
        "priority",
        "tags",
        "tags",
        "team",
    ]
    assert changes.get(kind="assigned").data["reason"] == "automation"
    assert Notification.objects.filter(recipient=dana, kind="assigned").exists()
    assert runs(rule) == [
        {
            "automation": rule.pk,
            "name": "Escalate breaches",
            "trigger": "sla_breach",
            "done": [
                "assigned to Dana",
                "priority high",
                "tag escalated, sla",
                "untag old",
                "moved to Billing",
            ],
            "skipped": [],
        }
    ]


def test_a_canned_reply_goes_out_signed_by_the_assignee_and_answers_nobody(mail_inbox, bob, canned):
    conversation = arrive(mail_inbox)
    automation("sla_warning", [{"action": "reply", "canned": canned.pk}])
    automations_run(conversation=conversation, event="sla_warning")
    services.conversation_assign(conversation=conversation, assignee=bob)
    automations_run(conversation=conversation, event="sla_warning")

    replies = conversation.messages.filter(direction=Message.Direction.OUTBOUND).order_by("id")
    number = conversation.pk
    assert [(m.text, m.author, m.status) for m in replies] == [
        (f"Hi Ana, is #{number} sorted? Support", None, "queued"),  # no assignee: the team
        (f"Hi Ana, is #{number} sorted? Bob", None, "queued"),
    ]
    conversation.refresh_from_db()
    # An automated message is not an agent's answer: SLA clocks keep counting.
    assert conversation.first_response_at is None
    assert conversation.waiting_since is not None


def test_a_canned_reply_with_nothing_for_a_placeholder_is_not_sent(mail_inbox, canned):
    # Nobody to fix "Hi {customer.first_name}" before it goes: a customer with no name.
    conversation = receive(mail_inbox, text="?", address="x@example.com").message.conversation
    automation("sla_warning", [{"action": "reply", "canned": canned.pk}])
    automations_run(conversation=conversation, event="sla_warning")
    assert not conversation.messages.filter(direction=Message.Direction.OUTBOUND).exists()
    [event] = conversation.events.filter(kind="automation")
    assert event.data["skipped"] == [
        "reply with /still-there: nothing to put for {customer.first_name} here, so it was "
        "not sent."
    ]
    # A name that looks like a placeholder is a name: the reply goes.
    conversation.customer.name = "{agent.name}"
    conversation.customer.save()
    automations_run(conversation=conversation, event="sla_warning")
    [reply] = conversation.messages.filter(direction=Message.Direction.OUTBOUND)
    assert reply.text.startswith("Hi {agent.name}, is #")


def test_notes_statuses_and_snoozes(client, mail_inbox, bob):
    conversation = arrive(mail_inbox)
    services.conversation_assign(conversation=conversation, assignee=bob)
    automation(
        "sla_warning",
        [{"action": "note", "text": "{agent.name}: the customer {customer.name} waits"}],
    )
    automation("sla_breach", [{"action": "snooze", "hours": 24}])
    automations_run(conversation=conversation, event="sla_warning")
    note = conversation.messages.get(direction=Message.Direction.NOTE)
    assert (note.text, note.author) == ("Bob: the customer Ana Lima waits", None)
    client.force_login(bob)  # the timeline signs it with the automation, not the inbox
    page = client.get(f"/inbox/{conversation.pk}/").content.decode()
    assert "<strong>Automation “On sla_warning”</strong>" in page

    automations_run(conversation=conversation, event="sla_breach")
    conversation.refresh_from_db()
    assert conversation.status == Status.SNOOZED
    assert conversation.snoozed_until - timezone.now() == pytest.approx(
        timedelta(hours=24), abs=timedelta(minutes=1)
    )


def test_notifications_go_to_the_assignee_the_leads_or_an_agent_who_sees_it(
    mail_inbox, bob, dana, charlie
):
    TeamMembership.objects.filter(user=dana).update(is_lead=True)
    conversation = arrive(mail_inbox)
    services.conversation_assign(conversation=conversation, assignee=bob)
    rule = automation(
        "sla_breach",
        [
            {"action": "notify", "to": "assignee", "text": "the customer waits"},
            {"action": "notify", "to": "team_leads"},
            {"action": "notify", "to": charlie.pk},  # Billing: may not open it
        ],
        name="Breach alarm",
    )

    automations_run(conversation=conversation, event="sla_breach")

    sent = Notification.objects.filter(kind=Notification.Kind.AUTOMATION).order_by("id")
    assert [(n.recipient, n.text) for n in sent] == [
        (bob, "Breach alarm: the customer waits"),
        (dana, "Breach alarm"),
    ]
    assert runs(rule)[0]["skipped"] == ["notify Charlie: not an active agent who sees it."]


def test_a_refused_action_is_skipped_and_the_others_done(mail_inbox, bob, dana):
    rule = automation(
        "created",
        [{"action": "assign", "agent": dana.pk}, {"action": "add_tags", "tags": ["new"]}],
    )
    User.objects.filter(pk=dana.pk).update(is_active=False)  # after the automation was saved

    conversation = arrive(mail_inbox, "Hello?")

    assert conversation.messages.get().text == "Hello?"  # the customer's message is kept
    assert tags(conversation) == {"new"}
    assert runs(rule)[0]["skipped"] == ["assign to Dana: not an active agent."]


def test_the_timeline_says_which_automation_did_it(client, mail_inbox, bob):
    automation("created", [{"action": "priority", "priority": "urgent"}], name="<b>VIP</b> first")
    conversation = arrive(mail_inbox)
    client.force_login(bob)
    html = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
    assert "Automation “&lt;b&gt;VIP&lt;/b&gt; first”: priority urgent" in html


def test_an_agent_assigned_by_an_automation_is_told_which_one(client, mail_inbox, dana):
    automation("created", [{"action": "assign", "agent": dana.pk}], name="<i>Night</i> desk")
    arrive(mail_inbox)
    client.force_login(dana)
    html = client.get(reverse("inbox:notifications")).content.decode()
    assert "Automation “&lt;i&gt;Night&lt;/i&gt; desk”</bdi></span> assigned it to you" in html
    assert "Routing" not in html


# --- The events that set them off ------------------------------------------------------------


def test_created_runs_after_routing(mail_inbox, bob, charlie, billing):
    TeamMembership.objects.filter(user=charlie).update(is_lead=True)
    RoutingRule.objects.create(
        name="Refunds to Billing",
        conditions=[{"field": "text", "op": "contains", "value": "refund"}],
        team=billing,
    )
    rule = automation(
        "created",
        [{"action": "notify", "to": "team_leads", "text": "a refund"}],
        [{"field": "team", "op": "is", "value": billing.pk}],
    )

    arrive(mail_inbox, "Hello")
    conversation = arrive(mail_inbox, "I want a refund")

    assert [run["trigger"] for run in runs(rule)] == ["created"]
    assert Notification.objects.get(kind="automation").conversation == conversation


@pytest.mark.parametrize(
    ("at", "after_hours"),
    [
        ("2026-12-03T15:30:00+00:00", False),  # Lisbon 15:30, Madrid 16:30: both open
        ("2026-12-03T16:30:00+00:00", True),  # Lisbon 16:30 open, Madrid 17:30 closed
        ("2026-12-03T08:30:00+00:00", False),  # Lisbon 08:30 closed, Madrid 09:30 open
    ],
)
def test_hours_and_times_are_those_of_the_team_it_was_routed_to(
    mail_inbox, support, billing, at, after_hours
):
    """Support works 09:00–18:00 in Lisbon, Billing 09:00–17:00 in Madrid, an hour ahead. A
    refund routed to Billing is after hours when Billing is closed, as its SLA clock and its
    automatic reply say, whatever Support's hours."""
    from tests.routing.test_business_hours import make_schedule

    for team, zone, closes in (
        (support, "Europe/Lisbon", "18:00"),
        (billing, "Europe/Madrid", "17:00"),
    ):
        team.business_hours = make_schedule(
            zone, {day: [("09:00", closes)] for day in range(5)}, name=zone
        )
        team.save()
    RoutingRule.objects.create(
        name="Refunds to Billing",
        conditions=[{"field": "text", "op": "contains", "value": "refund"}],
        team=billing,
    )
    automation(
        "created",
        [{"action": "add_tags", "tags": ["after-hours"]}],
        [{"field": "business_hours", "op": "is", "value": "closed"}],
        name="After hours",
    )
    automation(
        "created",
        [{"action": "add_tags", "tags": ["evening"]}],
        [{"field": "time", "op": "between", "value": ["17:00", "23:00"]}],
        name="Evening",
    )

    with time_machine.travel(at, tick=False):
        conversation = arrive(mail_inbox, "I want a refund")

    assert conversation.team == billing
    assert tags(conversation) == ({"after-hours", "evening"} if after_hours else set())


def test_a_reply_that_reopens_raises_both_events_in_one_chain(mail_inbox, bob):
    replied = automation("customer_replied", [{"action": "add_tags", "tags": ["replied"]}])
    reopened = automation(
        "status_changed",
        [{"action": "assign", "agent": bob.pk}],
        [{"field": "status", "op": "is", "value": "open"}],
    )
    conversation = arrive(mail_inbox, "Hi", address="ana@example.com")
    assert runs(replied) == runs(reopened) == []  # opening is neither

    services.conversation_set_status(conversation=conversation, status=Status.RESOLVED)
    arrive(mail_inbox, "It broke again", address="ana@example.com")

    conversation.refresh_from_db()
    assert (conversation.status, conversation.assignee) == (Status.OPEN, bob)
    assert tags(conversation) == {"replied"}
    assert [len(runs(replied)), len(runs(reopened))] == [1, 1]


def test_assigning_sets_off_assigned_and_unassigning_does_not(mail_inbox, alice, bob):
    rule = automation("assigned", [{"action": "note", "text": "Welcome {agent.name}"}])
    conversation = arrive(mail_inbox)

    services.conversation_assign(conversation=conversation, assignee=bob, actor=alice)
    services.conversation_assign(conversation=conversation, assignee=bob, actor=alice)  # no-op
    services.conversation_assign(conversation=conversation, assignee=None, actor=alice)

    assert len(runs(rule)) == 1
    assert conversation.messages.get(direction="note").text == "Welcome Bob"


def test_sla_events_run_their_own_automations_and_unknown_events_are_a_bug(mail_inbox):
    warning = automation("sla_warning", [{"action": "add_tags", "tags": ["sla-warning"]}])
    breach = automation("sla_breach", [{"action": "add_tags", "tags": ["sla-breach"]}])
    conversation = arrive(mail_inbox)

    automations_run(conversation=conversation, event="sla_breach")

    assert tags(conversation) == {"sla-breach"}
    assert (len(runs(warning)), len(runs(breach))) == (0, 1)
    with pytest.raises(ValueError, match="Not an automation event"):
        automations_run(conversation=conversation, event="idle")


def test_an_edit_in_admin_applies_at_once(mail_inbox):
    rule = automation("sla_warning", [{"action": "add_tags", "tags": ["first"]}], is_active=False)
    conversation = arrive(mail_inbox)
    automations_run(conversation=conversation, event="sla_warning")
    assert tags(conversation) == set()

    rule.is_active = True
    rule.save()
    automations_run(conversation=conversation, event="sla_warning")
    assert tags(conversation) == {"first"}

    rule.actions = [{"action": "add_tags", "tags": ["second"]}]
    rule.save()
    automations_run(conversation=conversation, event="sla_warning")
    assert tags(conversation) == {"first", "second"}


# --- Loops -----------------------------------------------------------------------------------


def test_two_automations_that_undo_each_other_stop(mail_inbox, bob):
    reopen = automation(
        "status_changed",
        [{"action": "status", "status": "open"}],
        [{"field": "status", "op": "is", "value": "pending"}],
        name="Never pending",
    )
    park = automation(
        "status_changed",
        [{"action": "status", "status": "pending"}],
        [{"field": "status", "op": "is", "value": "open"}],
        name="Always pending",
    )
    conversation = arrive(mail_inbox)

    services.conversation_set_status(conversation=conversation, status=Status.PENDING, actor=bob)

    statuses = conversation.events.filter(kind="status").order_by("id")
    assert [(e.actor, e.data["status"]) for e in statuses] == [
        (bob, "pending"),
        (None, "open"),  # Never pending
        (None, "pending"),  # Always pending; then each has acted once in this chain
    ]
    assert (len(runs(reopen)), len(runs(park))) == (1, 1)
    conversation.refresh_from_db()
    assert conversation.status == Status.PENDING


def test_a_chain_of_automations_stops_at_the_maximum_depth(mail_inbox, bob, dana):
    on_status, on_assigned = "status_changed", "assigned"

    def status_is(value):
        return [{"field": "status", "op": "is", "value": value}]

    def assignee_is(agent):
        return [{"field": "assignee", "op": "is", "value": agent.pk}]

    steps = [
        automation(on_status, [{"action": "assign", "agent": bob.pk}], status_is("pending")),
        automation(on_assigned, [{"action": "status", "status": "resolved"}], assignee_is(bob)),
        automation(on_status, [{"action": "assign", "agent": dana.pk}], status_is("resolved")),
        automation(on_assigned, [{"action": "status", "status": "closed"}], assignee_is(dana)),
        automation(on_status, [{"action": "add_tags", "tags": ["deep"]}], status_is("closed")),
    ]
    conversation = arrive(mail_inbox)

    services.conversation_set_status(conversation=conversation, status=Status.PENDING)

    # The agent's change is step 0; events of steps 1 to 3 are followed, step 4's are not.
    assert [len(runs(step)) for step in steps] == [1, 1, 1, 1, 0]
    conversation.refresh_from_db()
    assert (conversation.status, conversation.assignee, tags(conversation)) == (
        Status.CLOSED,
        dana,
        set(),
    )


def test_a_loop_through_the_queue_is_stopped(mail_inbox, bob, tasks_run):
    """Unassigning puts the conversation back in the queue, a task assigns it again, and a new
    chain begins: only the budget per automation and conversation ends that."""
    bob.availability, bob.last_seen_at = User.Availability.ONLINE, timezone.now()
    bob.save()
    rule = automation("assigned", [{"action": "unassign"}], name="Hot potato")

    with tasks_run():
        conversation = arrive(mail_inbox)

    done = runs(rule)
    assert len(done) == BURST_LIMIT + 1
    assert all(run["done"] == ["unassigned"] for run in done[:BURST_LIMIT])
    assert "a loop?" in done[-1]["stopped"]
    conversation.refresh_from_db()
    assert conversation.assignee == bob  # the last assignment stands


# --- What admins may save --------------------------------------------------------------------


BAD = [
    ({"actions": []}, "actions", "Give at least one action"),
    ({"actions": [{"action": "explode"}]}, "actions", "Action 1 (explode): unknown action"),
    ({"actions": [{"do": "status"}]}, "actions", 'Action 1: it must look like {"action"'),
    (
        {"actions": [{"action": "status", "status": "done"}]},
        "actions",
        "Action 1 (status): the status is one of open, pending, resolved, closed.",
    ),
    (
        {"actions": [{"action": "status", "status": "snoozed"}]},
        "actions",
        'use {"action": "snooze"',
    ),
    (
        {"actions": [{"action": "priority", "priority": "very"}]},
        "actions",
        "the priority is one of low, normal, high, urgent",
    ),
    ({"actions": [{"action": "add_tags", "tags": []}]}, "actions", "give 1 to 20 tag names"),
    ({"actions": [{"action": "snooze", "hours": -1}]}, "actions", "more than 0"),
    ({"actions": [{"action": "note", "text": " "}]}, "actions", "give the text"),
    ({"actions": [{"action": "notify", "to": "everyone"}]}, "actions", '"to" is "assignee"'),
    (
        {"actions": [{"action": "unassign", "agent": 3}]},
        "actions",
        "Action 1 (unassign): unknown keys agent.",
    ),
    (
        {"actions": [{"action": "reply", "canned": 999999}]},
        "actions",
        "No canned response has the id 999999.",
    ),
    (
        {"actions": [{"action": "assign", "agent": "bob"}]},
        "actions",
        "give the agent's id as a number",
    ),
    (
        {"actions": [{"action": "assign", "agent": 10**23}]},
        "actions",
        "give the agent's id as a number",
    ),
    ({"event": "idle"}, "idle_status", "Choose the status"),
    ({"event": "idle", "idle_status": "pending"}, "idle_hours", "after how many hours"),
    ({"event": "created", "idle_hours": 3}, "idle_hours", "Only “stayed in a status”"),
    (
        {"event": "idle", "idle_status": "pending", "idle_hours": 99_999_999_999},
        "idle_hours",
        "At most 87,600 hours (ten years).",
    ),
    (
        {"conditions": [{"field": "mood", "op": "is", "value": "bad"}]},
        "conditions",
        "Condition 1 (mood): unknown field",
    ),
    (
        {"conditions": [{"field": "team", "op": "is", "value": 999999}]},
        "conditions",
        "No team has the id 999999.",
    ),
    (
        {"conditions": [{"field": "priority", "op": "gte", "value": "huge"}]},
        "conditions",
        "'huge' is not a priority",
    ),
]


@pytest.mark.parametrize(("fields", "where", "message"), BAD)
def test_it_refuses_what_cannot_run_with_a_clear_message(db, fields, where, message):
    values = {"name": "Broken", "event": "created", "actions": TAG_IT, **fields}
    with pytest.raises(ValidationError) as refused:
        Automation(**values).full_clean()
    assert message in " ".join(refused.value.message_dict[where])


def test_an_inactive_agent_cannot_be_named(db, bob):
    bob.is_active = False
    bob.save()
    with pytest.raises(ValidationError, match=f"No active agent has the id {bob.pk}"):
        Automation(
            name="x", event="created", actions=[{"action": "notify", "to": bob.pk}]
        ).full_clean()


def test_admin_lists_the_ids_to_use_and_saves_a_valid_automation(client, alice, bob, canned):
    client.force_login(alice)
    url = reverse("admin:routing_automation_add")
    page = client.get(url).content.decode()
    assert f"{bob.pk} = Bob" in page
    assert f"{canned.pk} = /still-there (everyone)" in page

    form = {
        "name": "Remind",
        "position": 10,
        "is_active": "on",
        "event": "idle",
        "idle_status": "pending",
        "idle_hours": "",
        "conditions": "[]",
        "actions": '[{"action": "reply", "canned": 999999}]',
    }
    refused = client.post(url, form).content.decode()
    assert "No canned response has the id 999999." in refused
    assert "Say after how many hours" in refused

    form.update(idle_hours=72, actions=f'[{{"action": "reply", "canned": {canned.pk}}}]')
    assert client.post(url, form).status_code == 302
    saved = Automation.objects.get()
    assert (saved.idle_status, saved.idle_hours, saved.actions) == (
        "pending",
        72,
        [{"action": "reply", "canned": canned.pk}],
    )
    listing = client.get(reverse("admin:routing_automation_changelist")).content.decode()
    assert "Pending for 72 h" in listing
    assert "reply with /still-there" in listing  # what the id names, not the id


def test_admin_lists_say_what_the_ids_in_rules_and_actions_name(client, alice, bob, support):
    from routing.models import RoutingRule

    RoutingRule.objects.create(
        name="VIP", conditions=[{"field": "assignee", "op": "in", "value": [bob.pk, 999999]}]
    )
    Automation.objects.create(
        name="Escalate",
        event="created",
        conditions=[
            {"field": "team", "op": "is", "value": support.pk},
            {"field": "assignee", "op": "not_exists"},
        ],
        actions=[{"action": "assign", "agent": bob.pk}, {"action": "team", "team": support.pk}],
    )
    client.force_login(alice)
    rules = client.get(reverse("admin:routing_routingrule_changelist")).content.decode()
    assert "assignee in Bob, agent 999999 (not found)" in rules
    listing = client.get(reverse("admin:routing_automation_changelist")).content.decode()
    assert "if team is Support and assignee not exists<" in listing
    assert "assign to Bob, move to team Support" in listing


# --- Idle: "pending for 3 days" --------------------------------------------------------------


@pytest.fixture
def pending_policy(canned):
    remind = automation(
        "idle",
        [{"action": "reply", "canned": canned.pk}],
        name="Pending 3 days: remind",
        idle_status="pending",
        idle_hours=72,
    )
    resolve = automation(
        "idle",
        [{"action": "status", "status": "resolved"}],
        name="Pending 7 days: resolve",
        idle_status="pending",
        idle_hours=7 * 24,
    )
    return remind, resolve


def reminders(conversation) -> int:
    return conversation.messages.filter(direction="outbound", author=None).count()


def test_pending_three_days_reminds_and_seven_days_resolves(mail_inbox, bob, pending_policy):
    remind, resolve = pending_policy
    start = timezone.now()
    conversation = arrive(mail_inbox)
    services.conversation_set_status(conversation=conversation, status=Status.PENDING, actor=bob)
    quiet = arrive(mail_inbox)  # stays open: no automation for it

    with time_machine.travel(start + timedelta(days=2, hours=23)):
        assert tasks.automations_idle() == 0
    with time_machine.travel(start + timedelta(days=3, minutes=1)):
        assert tasks.automations_idle() == 1
        assert tasks.automations_idle() == 0  # the sweep again, or in a second worker
    assert reminders(conversation) == 1
    conversation.refresh_from_db()
    assert conversation.status == Status.PENDING  # a reminder is not a change of status

    with time_machine.travel(start + timedelta(days=7, minutes=1)):
        assert tasks.automations_idle() == 1
        assert tasks.automations_idle() == 0
    conversation.refresh_from_db()
    assert conversation.status == Status.RESOLVED
    assert reminders(conversation) == 1
    assert (len(runs(remind)), len(runs(resolve))) == (1, 1)
    assert AutomationRun.objects.filter(conversation=quiet).count() == 0


def test_a_broken_idle_automation_stops_no_other(mail_inbox, pending_policy):
    # Saved around admin's checks (an import, an older version): hours past what a date can
    # hold made the sweep fail before every idle automation after it.
    broken = automation(
        "idle", TAG_IT, name="Typo", idle_status="pending", idle_hours=1, position=0
    )
    Automation.objects.filter(pk=broken.pk).update(idle_hours=2_000_000_000)  # ~228,000 years
    start = timezone.now()
    conversation = arrive(mail_inbox)
    services.conversation_set_status(conversation=conversation, status=Status.PENDING)
    with time_machine.travel(start + timedelta(days=10)):
        assert tasks.automations_idle() == 2  # the reminder and the resolution
    conversation.refresh_from_db()
    assert conversation.status == Status.RESOLVED


def test_a_late_sweep_does_both_in_order(mail_inbox, pending_policy):
    start = timezone.now()
    conversation = arrive(mail_inbox)
    services.conversation_set_status(conversation=conversation, status=Status.PENDING)

    with time_machine.travel(start + timedelta(days=10)):
        assert tasks.automations_idle() == 2

    conversation.refresh_from_db()
    assert (reminders(conversation), conversation.status) == (1, Status.RESOLVED)


def test_each_stay_in_the_status_counts_from_its_start(mail_inbox, bob, pending_policy):
    start = timezone.now()
    conversation = arrive(mail_inbox, address="ana@example.com")
    services.conversation_set_status(conversation=conversation, status=Status.PENDING, actor=bob)

    with time_machine.travel(start + timedelta(days=2)):
        arrive(mail_inbox, "Still broken", address="ana@example.com")  # reopens it
    with time_machine.travel(start + timedelta(days=2, hours=12)):
        services.conversation_set_status(
            conversation=conversation, status=Status.PENDING, actor=bob
        )
    with time_machine.travel(start + timedelta(days=4)):
        assert tasks.automations_idle() == 0  # 1.5 days into the second stay
    with time_machine.travel(start + timedelta(days=5, hours=13)):
        assert tasks.automations_idle() == 1
    assert reminders(conversation) == 1

    # Out of the status and back: a new stay, a new reminder three days on.
    with time_machine.travel(start + timedelta(days=6)):
        services.conversation_set_status(conversation=conversation, status=Status.OPEN)
        services.conversation_set_status(conversation=conversation, status=Status.PENDING)
    with time_machine.travel(start + timedelta(days=9, minutes=1)):
        assert tasks.automations_idle() == 1
    assert reminders(conversation) == 2


def test_idle_conditions_are_checked_again_hourly_until_they_hold(mail_inbox, canned):
    """Open a day and tagged vip: tagged after the day was up, it was never nudged (the stay
    had been looked at once, and that was all)."""
    rule = automation(
        "idle",
        [{"action": "add_tags", "tags": ["nudged"]}],
        [{"field": "tags", "op": "contains", "value": "vip"}],
        idle_status="open",
        idle_hours=24,
    )
    start = timezone.now()
    conversation = arrive(mail_inbox)

    with time_machine.travel(start + timedelta(days=1, minutes=1)):
        assert tasks.automations_idle() == 0
    with time_machine.travel(start + timedelta(days=1, minutes=30)):
        assert tasks.automations_idle() == 0  # nothing new: not looked at again yet
    services.conversation_tag(conversation=conversation, add=["vip"])
    with time_machine.travel(start + timedelta(days=1, minutes=40)):
        assert tasks.automations_idle() == 0  # within the hour of the last look
    with time_machine.travel(start + timedelta(days=1, hours=1, minutes=2)):
        assert tasks.automations_idle() == 1
        assert tasks.automations_idle() == 0  # the sweep again, or in a second worker
    with time_machine.travel(start + timedelta(days=3)):
        assert tasks.automations_idle() == 0  # once per stay

    assert list(AutomationRun.objects.values_list("automation", "matched")) == [(rule.pk, True)]
    assert tags(conversation) == {"vip", "nudged"}


def test_blocking_a_spammer_closes_without_setting_automations_off(mail_inbox, bob):
    survey = automation("status_changed", [{"action": "add_tags", "tags": ["survey-sent"]}])
    spam = arrive(mail_inbox, "Cheap watches", address="spam@example.com")
    services.customer_block(customer=spam.customer, actor=bob, conversation=spam)
    spam.refresh_from_db()
    assert spam.status == Status.CLOSED
    assert runs(survey) == [] and tags(spam) == set()
    # An ordinary close still sets it off.
    other = arrive(mail_inbox, "Where is order 7?", address="ana@example.com")
    services.conversation_set_status(conversation=other, status=Status.CLOSED, actor=bob)
    assert len(runs(survey)) == 1 and tags(other) == {"survey-sent"}


def test_a_canned_reply_with_a_fallback_reaches_a_customer_without_a_name(mail_inbox, canned):
    canned.body = "Hi {customer.first_name|there}, is #{conversation.number} sorted?"
    canned.full_clean()
    canned.save()
    conversation = receive(mail_inbox, text="?", address="x@example.com").message.conversation
    automation("sla_warning", [{"action": "reply", "canned": canned.pk}])
    automations_run(conversation=conversation, event="sla_warning")
    [reply] = conversation.messages.filter(direction=Message.Direction.OUTBOUND)
    assert reply.text == f"Hi there, is #{conversation.number} sorted?"
