"""Routing rules: which conversations a rule's conditions match (table-driven), what its
actions do, first match or all matches, checks on what admins save, and edits taking effect
without a restart. Every message arrives through the real receive service. Personas: alice
the admin; bob (Support) and charlie (Billing), agents."""

import time as clock
from datetime import UTC, datetime

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from conversations import services
from conversations.models import Conversation, ConversationEvent, Notification
from routing.models import BusinessHours, BusinessInterval, RoutingRule
from tests.conftest import receive

HIGH, URGENT = Conversation.Priority.HIGH, Conversation.Priority.URGENT


def rule(conditions, name="Rule", **actions) -> RoutingRule:
    """A rule saved the way admin saves it (checked first); tags it "matched" by default."""
    if not any(key in actions for key in ("team", "priority", "assignee")):
        actions.setdefault("tags", "matched")
    made = RoutingRule(name=name, conditions=conditions, **actions)
    made.full_clean()
    made.save()
    return made


def arrive(inbox, text="Hello", *, attributes=None, address=None, **inbound) -> Conversation:
    """A customer (with these profile attributes) writes into `inbox`: a new conversation."""
    arrive.count = getattr(arrive, "count", 0) + 1
    address = address or f"customer{arrive.count}@example.com"
    if attributes:
        identity = services.identity_get_or_create(kind=inbox.kind, address=address)
        services.customer_update(customer=identity.customer, data={"attributes": attributes})
    received = receive(inbox, text=text, address=address, **inbound)
    return Conversation.objects.get(pk=received.message.conversation_id)


def tags(conversation) -> set[str]:
    return set(conversation.tags.values_list("name", flat=True))


# --- What conditions match -------------------------------------------------------------------


def text_contains(*words):
    return {"field": "text", "op": "contains", "value": list(words)}


MATCHING = [
    # Keywords: whole words or phrases, any of them, ignoring case.
    (text_contains("refund"), {"text": "I want a REFUND, please"}, True),
    (text_contains("refund"), {"text": "Refunds take too long"}, False),
    (text_contains("refund"), {"text": "It was nonrefundable"}, False),
    (text_contains("money back", "reembolso"), {"text": "Quero o meu reembolso!"}, True),
    (text_contains("money back"), {"text": "I want my Money Back."}, True),
    (text_contains("money back"), {"text": "back my money"}, False),
    ({"field": "text", "op": "not_contains", "value": "refund"}, {"text": "Where is it?"}, True),
    ({"field": "text", "op": "not_contains", "value": "refund"}, {"text": "refund!"}, False),
    # Wildcard patterns match the whole text: * any text, ? one character.
    ({"field": "text", "op": "like", "value": "*order #????"}, {"text": "About order #1042"}, True),
    ({"field": "text", "op": "like", "value": "*order #????"}, {"text": "About order #10"}, False),
    ({"field": "text", "op": "like", "value": "order*"}, {"text": "my order"}, False),
    ({"field": "text", "op": "not_like", "value": "order*"}, {"text": "my order"}, True),
    ({"field": "text", "op": "is", "value": "stop"}, {"text": "  Stop "}, True),
    ({"field": "text", "op": "is", "value": "stop"}, {"text": "stop it"}, False),
    (
        {"field": "subject", "op": "starts_with", "value": "[urgent]"},
        {"subject": "[URGENT] Site down", "text": "help"},
        True,
    ),
    (
        {"field": "subject", "op": "contains", "value": "invoice"},
        {"subject": "Hello", "text": "invoice"},
        False,
    ),
    (
        {"field": "subject_or_text", "op": "contains", "value": "invoice"},
        {"subject": "Invoice 7", "text": "see the subject"},
        True,
    ),
    # Subject or text: either of them, each as a whole (the not_ operators: neither).
    (
        {"field": "subject_or_text", "op": "starts_with", "value": "urgent"},
        {"subject": "Site down", "text": "URGENT: nothing loads"},
        True,
    ),
    (
        {"field": "subject_or_text", "op": "is", "value": "stop"},
        {"subject": "Re: Our winter offers", "text": "STOP"},
        True,
    ),
    (
        {"field": "subject_or_text", "op": "like", "value": "*order #????"},
        {"subject": "About order #1042", "text": "see the subject"},
        True,
    ),
    (
        {"field": "subject_or_text", "op": "not_like", "value": "*order #????"},
        {"subject": "About order #1042", "text": "see the subject"},
        False,
    ),
    (
        {"field": "subject_or_text", "op": "not_contains", "value": "invoice"},
        {"subject": "Invoice 7", "text": "see the subject"},
        False,
    ),
    (
        {"field": "subject_or_text", "op": "starts_with", "value": "urgent"},
        {"subject": "Help", "text": "not urgent"},
        False,
    ),
    # Channel and inbox (the mail inbox is the default here).
    ({"field": "channel", "op": "is", "value": "email"}, {}, True),
    ({"field": "channel", "op": "is_not", "value": "email"}, {}, False),
    ({"field": "channel", "op": "in", "value": ["webchat", "sms"]}, {}, False),
    ({"field": "channel", "op": "not_in", "value": ["webchat", "sms"]}, {}, True),
    # Customer attributes: text ignoring case, numbers as numbers, lists by member.
    ({"field": "customer.plan", "op": "is", "value": "enterprise"}, {"plan": "Enterprise"}, True),
    ({"field": "customer.plan", "op": "is", "value": "enterprise"}, {"plan": "pro"}, False),
    ({"field": "customer.plan", "op": "is", "value": "enterprise"}, {}, False),
    ({"field": "customer.plan", "op": "is_not", "value": "enterprise"}, {}, True),
    ({"field": "customer.plan", "op": "in", "value": ["pro", "enterprise"]}, {"plan": "pro"}, True),
    ({"field": "customer.plan", "op": "not_in", "value": ["free"]}, {"plan": "free"}, False),
    ({"field": "customer.orders", "op": "gte", "value": 10}, {"orders": 12}, True),
    ({"field": "customer.orders", "op": "gt", "value": 10}, {"orders": "10"}, False),
    ({"field": "customer.orders", "op": "lte", "value": 10}, {"orders": "10.0"}, True),
    ({"field": "customer.orders", "op": "lt", "value": 10}, {"orders": "many"}, False),
    ({"field": "customer.orders", "op": "is", "value": 3}, {"orders": "3"}, True),
    ({"field": "customer.vip", "op": "is", "value": True}, {"vip": True}, True),
    ({"field": "customer.vip", "op": "is", "value": "true"}, {"vip": False}, False),
    ({"field": "customer.labels", "op": "contains", "value": "b2b"}, {"labels": ["B2B"]}, True),
    ({"field": "customer.note", "op": "contains", "value": "vip"}, {"note": "a VIP!"}, True),
    ({"field": "customer.manager", "op": "exists"}, {"manager": "Rita"}, True),
    ({"field": "customer.manager", "op": "exists"}, {"manager": ""}, False),
    ({"field": "customer.manager", "op": "not_exists"}, {}, True),
    # Language: a bare code takes its regional variants.
    ({"field": "language", "op": "is", "value": "pt"}, {"language": "pt-BR"}, True),
    ({"field": "language", "op": "is", "value": "pt-BR"}, {"language": "pt"}, False),
    ({"field": "language", "op": "in", "value": ["fr", "es"]}, {"language": "es"}, True),
    ({"field": "language", "op": "not_in", "value": ["fr", "es"]}, {"language": "pt"}, True),
]


@pytest.mark.parametrize(("condition", "message", "matches"), MATCHING)
def test_it_matches_conditions_as_the_table_says(mail_inbox, condition, message, matches):
    rule([condition])
    fields = ("text", "subject", "language")
    attributes = {key: value for key, value in message.items() if key not in fields}
    inbound = {key: value for key, value in message.items() if key in fields}

    conversation = arrive(mail_inbox, attributes=attributes, **inbound)

    assert ("matched" in tags(conversation)) is matches


def test_every_condition_of_a_rule_must_hold(mail_inbox):
    rule([text_contains("refund"), {"field": "customer.plan", "op": "is", "value": "enterprise"}])

    assert tags(arrive(mail_inbox, "refund", attributes={"plan": "enterprise"})) == {"matched"}
    assert tags(arrive(mail_inbox, "refund", attributes={"plan": "free"})) == set()
    assert tags(arrive(mail_inbox, "hello", attributes={"plan": "enterprise"})) == set()


def test_a_rule_without_conditions_matches_everything(mail_inbox, chat_inbox):
    rule([])
    assert tags(arrive(mail_inbox)) == tags(arrive(chat_inbox)) == {"matched"}


def test_a_rule_of_one_inbox_leaves_the_others_alone(mail_inbox, chat_inbox):
    rule([], inbox=chat_inbox)
    assert tags(arrive(chat_inbox)) == {"matched"}
    assert tags(arrive(mail_inbox)) == set()


def test_an_inbox_condition_names_inboxes_by_id(mail_inbox, chat_inbox):
    rule([{"field": "inbox", "op": "in", "value": [chat_inbox.pk]}])
    assert tags(arrive(chat_inbox)) == {"matched"}
    assert tags(arrive(mail_inbox)) == set()


@pytest.fixture
def lisbon_chat(chat_inbox):
    """The chat inbox answers in Lisbon (UTC in winter, UTC+1 in summer), Mon-Fri 09-18."""
    schedule = BusinessHours.objects.create(name="Lisbon", timezone="Europe/Lisbon")
    BusinessInterval.objects.bulk_create(
        BusinessInterval(schedule=schedule, weekday=day, opens="09:00", closes="18:00")
        for day in range(5)
    )
    chat_inbox.business_hours = schedule
    chat_inbox.save()
    return chat_inbox


@pytest.mark.parametrize(
    ("condition", "at_utc", "matches"),
    [
        ({"field": "time", "op": "between", "value": ["09:00", "17:00"]}, "07-13 07:59", False),
        ({"field": "time", "op": "between", "value": ["09:00", "17:00"]}, "07-13 08:00", True),
        ({"field": "time", "op": "between", "value": ["09:00", "17:00"]}, "07-13 15:59", True),
        ({"field": "time", "op": "between", "value": ["09:00", "17:00"]}, "07-13 16:00", False),
        ({"field": "time", "op": "between", "value": ["09:00", "17:00"]}, "01-12 16:00", True),
        ({"field": "time", "op": "between", "value": ["22:00", "06:00"]}, "01-12 23:30", True),
        ({"field": "time", "op": "between", "value": ["22:00", "06:00"]}, "01-13 05:59", True),
        ({"field": "time", "op": "between", "value": ["22:00", "06:00"]}, "01-13 06:00", False),
        ({"field": "time", "op": "between", "value": ["22:00", "06:00"]}, "07-13 21:30", True),
        ({"field": "weekday", "op": "in", "value": ["sat", "sun"]}, "01-17 12:00", True),
        ({"field": "weekday", "op": "in", "value": ["sat", "sun"]}, "01-16 23:59", False),
        ({"field": "weekday", "op": "not_in", "value": ["monday"]}, "01-12 09:00", False),
        ({"field": "business_hours", "op": "is", "value": "open"}, "07-13 08:00", True),
        ({"field": "business_hours", "op": "is", "value": "closed"}, "07-13 17:00", True),
        ({"field": "business_hours", "op": "is", "value": "open"}, "01-17 12:00", False),
    ],
)
def test_time_conditions_read_the_inbox_clock(lisbon_chat, condition, at_utc, matches):
    rule([condition])
    with time_machine.travel(datetime.fromisoformat(f"2026-{at_utc}").replace(tzinfo=UTC)):
        conversation = arrive(lisbon_chat)
    assert ("matched" in tags(conversation)) is matches


def test_the_inbox_clock_is_its_teams_when_it_has_none(mail_inbox, support):
    """Friday 20:00 UTC is already Saturday in Tokyo."""
    support.business_hours = BusinessHours.objects.create(name="Tokyo", timezone="Asia/Tokyo")
    support.save()
    rule([{"field": "weekday", "op": "in", "value": ["sat"]}])
    with time_machine.travel(datetime(2026, 1, 16, 20, 0, tzinfo=UTC)):
        assert tags(arrive(mail_inbox)) == {"matched"}


def test_matching_takes_linear_time_whatever_the_pattern(mail_inbox):
    """Patterns that make a backtracking engine take exponential time (ReDoS) cost nothing:
    words are escaped literals and wildcards never backtrack."""
    rule([{"field": "text", "op": "like", "value": "*a*a*a*a*a*a*a*a*a*a*a*a*b"}])
    rule([text_contains("(a+)+$", "a" * 100)], name="Words")
    started = clock.perf_counter()
    conversation = arrive(mail_inbox, "a" * 20_000)
    assert clock.perf_counter() - started < 2  # a backtracking matcher would take centuries
    assert tags(conversation) == set()


# --- What rules do ---------------------------------------------------------------------------


def test_a_rule_sets_team_priority_tags_and_assignee_each_recorded_with_its_name(
    mail_inbox, billing, charlie
):
    rule(
        [], name="Billing VIP", team=billing, priority=URGENT, tags="VIP, billing", assignee=charlie
    )

    conversation = arrive(mail_inbox, "Hi")

    assert (conversation.team, conversation.priority, conversation.assignee) == (
        billing,
        URGENT,
        charlie,
    )
    assert tags(conversation) == {"vip", "billing"}
    events = {
        event.kind: event.data
        for event in conversation.events.exclude(kind=ConversationEvent.Kind.CREATED)
    }
    assert events == {
        "team": {"previous": mail_inbox.default_team_id, "team": billing.pk, "rule": "Billing VIP"},
        "priority": {"previous": 1, "priority": URGENT, "rule": "Billing VIP"},
        "tags": {"added": ["billing", "vip"], "removed": [], "rule": "Billing VIP"},
        "assigned": {
            "previous": None,
            "assignee": charlie.pk,
            "assignee_name": "Charlie",
            "reason": "rule",
            "rule": "Billing VIP",
        },
    }
    notification = Notification.objects.get(recipient=charlie)
    assert notification.conversation == conversation
    assert notification.kind == Notification.Kind.ASSIGNED


def test_an_inactive_assignee_is_passed_over(client, alice, mail_inbox, charlie):
    rule([], assignee=charlie)
    charlie.is_active = False
    charlie.save()
    assert arrive(mail_inbox).assignee is None
    # The admin who deactivated Charlie sees which rules now skip him.
    client.force_login(alice)
    listing = client.get(reverse("admin:routing_routingrule_changelist")).content.decode()
    assert "assign Charlie (inactive: passed over)" in listing


@pytest.mark.parametrize(
    ("first_stops", "priority", "expected_tags"),
    [(True, HIGH, {"first"}), (False, URGENT, {"first", "second"})],
)
def test_the_first_match_decides_unless_it_lets_later_rules_apply(
    mail_inbox, first_stops, priority, expected_tags
):
    rule(
        [text_contains("refund")],
        name="First",
        position=1,
        stop=first_stops,
        priority=HIGH,
        tags="first",
    )
    rule([text_contains("nothing")], name="Not matching", position=2, tags="no")
    rule([], name="Second", position=3, priority=URGENT, tags="second")

    conversation = arrive(mail_inbox, "A refund please")

    assert (conversation.priority, tags(conversation)) == (priority, expected_tags)


def test_rules_run_in_position_order(mail_inbox, billing, support):
    rule([], name="Late", position=20, team=support, stop=False)
    rule([], name="Early", position=10, team=billing, stop=False)
    assert arrive(mail_inbox).team == support  # the later rule's team replaces the earlier's


def test_inactive_rules_do_not_run(mail_inbox):
    rule([], is_active=False)
    assert tags(arrive(mail_inbox)) == set()


def test_only_new_conversations_are_routed(mail_inbox, billing):
    conversation = arrive(mail_inbox, "hello", address="ana@example.com")
    rule([], team=billing)
    receive(mail_inbox, text="me again", address="ana@example.com")
    conversation.refresh_from_db()
    assert conversation.team == mail_inbox.default_team
    assert conversation.messages.count() == 2


def test_a_rule_saved_around_the_checks_is_skipped_and_the_others_still_run(mail_inbox):
    broken = rule([], name="Broken", tags="broken", stop=False)
    RoutingRule.objects.filter(pk=broken.pk).update(
        conditions=[{"field": "nope"}], updated_at=timezone.now()
    )
    rule([], name="Fine", position=200)
    assert tags(arrive(mail_inbox)) == {"matched"}


def test_a_routing_failure_never_loses_the_message(mail_inbox, billing, monkeypatch):
    from routing import services as routing

    rule([], team=billing)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(routing, "_apply", broken)
    conversation = arrive(mail_inbox, "still here")
    assert conversation.messages.get().text == "still here"
    assert conversation.team == mail_inbox.default_team  # unrouted, waiting in its inbox's team


# --- Changes take effect at once --------------------------------------------------------------


def test_edits_apply_to_the_next_message_without_a_restart(mail_inbox, billing, support):
    first = rule([], team=billing)
    assert arrive(mail_inbox).team == billing

    first.team = support
    first.save()
    assert arrive(mail_inbox).team == support

    first.is_active = False
    first.save()
    rule([], name="Another", priority=HIGH)
    assert arrive(mail_inbox).priority == HIGH

    RoutingRule.objects.all().delete()
    conversation = arrive(mail_inbox)
    assert (conversation.team, conversation.priority) == (support, Conversation.Priority.NORMAL)


def test_a_message_checks_the_configuration_tables_once(mail_inbox, billing):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    rule([], team=billing)
    with CaptureQueriesContext(connection) as queries:
        conversation = arrive(mail_inbox)
    assert conversation.team == billing
    # Rules, automations, SLA policies and automatic replies, all in one statement.
    (check,) = [q["sql"] for q in queries if "MAX(updated_at)" in q["sql"]]
    assert check.count(" UNION ALL ") >= 3


# --- What admins may save --------------------------------------------------------------------

INVALID = [
    ({"field": "channel", "op": "is", "value": "email"}, "Conditions must be a list"),
    ([{"field": "colour", "op": "is", "value": "red"}], "Condition 1 (colour): unknown field"),
    ([{"op": "is", "value": "red"}], "Condition 1: a field is needed"),
    (["text contains refund"], 'Condition 1: it must look like {"field"'),
    (
        [{"field": "channel", "op": "equals", "value": "email"}],
        "Condition 1 (channel): unknown operator 'equals'; use one of is, is_not, in, not_in.",
    ),
    ([{"field": "channel", "op": "is", "value": "fax"}], "'fax' is not a channel"),
    ([{"field": "channel", "op": "in", "value": "email"}], "in takes a list of channels"),
    ([{"field": "channel", "op": "is", "value": ["email"]}], "is takes one channel; use in"),
    ([{"field": "text", "op": "contains", "value": []}], "give 1 to 50 words or phrases"),
    ([{"field": "text", "op": "contains", "value": ["a" * 101]}], "at most 100 characters"),
    ([{"field": "text", "op": "like", "value": "*" * 201}], "a pattern of 1 to 200 characters"),
    ([{"field": "time", "op": "between", "value": ["9am", "5pm"]}], "times are written HH:MM"),
    ([{"field": "time", "op": "between", "value": ["09:00", "09:00"]}], "must differ"),
    ([{"field": "weekday", "op": "in", "value": ["someday"]}], "'someday' is not a weekday"),
    ([{"field": "weekday", "op": "in", "value": ["monkey"]}], "'monkey' is not a weekday"),
    ([{"field": "business_hours", "op": "is", "value": "yes"}], '"open" or "closed"'),
    ([{"field": "language", "op": "is", "value": "Portuguese!"}], "not a language code"),
    ([{"field": "customer.", "op": "is", "value": "x"}], "name the attribute"),
    ([{"field": "customer.orders", "op": "gt", "value": "lots"}], "gt compares with a number"),
    ([{"field": "customer.plan", "op": "exists", "value": "x"}], "exists takes no value"),
    ([{"field": "customer.plan", "op": "is", "value": {"a": 1}}], "is takes one value"),
    ([{"field": "text", "op": "contains", "value": "x", "sql": "1"}], "unknown keys sql"),
    ([{"field": "inbox", "op": "is", "value": 999999}], "No inbox has the id 999999"),
    ([{"field": "inbox", "op": "is", "value": "Support"}], '"Support" is not an inbox id'),
    # Past what the database's keys hold: looking it up was a 500.
    ([{"field": "inbox", "op": "is", "value": 10**20}], f"{10**20} is not an inbox id"),
    ([{"field": "assignee", "op": "in", "value": [True]}], "true is not an agent id (a number)"),
]


@pytest.mark.parametrize(("conditions", "error"), INVALID)
def test_conditions_are_checked_with_a_clear_error(db, conditions, error):
    with pytest.raises(ValidationError) as caught:
        RoutingRule(name="Bad", conditions=conditions, tags="x").full_clean()
    assert any(error in message for message in caught.value.message_dict["conditions"])


def test_a_rule_must_do_something(db):
    with pytest.raises(ValidationError, match="at least one thing to do"):
        RoutingRule(name="Idle", conditions=[]).full_clean()


def test_admins_write_and_read_rules_in_admin(client, alice, billing, mail_inbox):
    client.force_login(alice)
    add = reverse("admin:routing_routingrule_add")
    form = {
        "name": "Refunds",
        "position": "10",
        "inbox": "",
        "is_active": "on",
        "conditions": '[{"field": "text", "op": "contains", "value": ["refund"]}]',
        "team": billing.pk,
        "priority": "2",
        "tags": "refund",
        "assignee": "",
        "stop": "on",
    }
    page = client.get(add)
    assert b"customer.&lt;attribute&gt;" in page.content  # the help lists fields, escaped

    refused = client.post(add, {**form, "conditions": '[{"field": "text", "op": "has"}]'})
    assert refused.status_code == 200
    assert "unknown operator &#x27;has&#x27;" in refused.content.decode()
    assert not RoutingRule.objects.exists()

    not_json = client.post(add, {**form, "conditions": "[{field: text}"})
    assert b"Enter a valid JSON." in not_json.content

    assert client.post(add, form).status_code == 302
    saved = RoutingRule.objects.get()
    assert saved.conditions == [{"field": "text", "op": "contains", "value": ["refund"]}]
    listing = client.get(reverse("admin:routing_routingrule_changelist")).content.decode()
    assert "text contains [&quot;refund&quot;]" in listing
    assert "team Billing, priority high, tags refund" in listing
    change = client.get(reverse("admin:routing_routingrule_change", args=[saved.pk]))
    assert change.status_code == 200

    assert arrive(mail_inbox, "a refund").team == billing


def test_admins_set_capacity_and_channel_weights(client, alice, support, bob, mail_inbox):
    client.force_login(alice)
    url = reverse("admin:routing_team_change", args=[support.pk])
    membership = support.memberships.get()
    form = {
        "name": "Support",
        "slug": "support",
        "description": "",
        "business_hours": "",
        "auto_assign": "on",
        "requeue_offline_chats": "on",
        "channel_weights": '{"webchat": 4, "fax": 2, "email": 0}',
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "1",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": membership.pk,
        "memberships-0-team": support.pk,
        "memberships-0-user": bob.pk,
        "memberships-0-max_open": "6",
        "memberships-0-skills": "PT, refunds",
    }
    refused = client.post(url, form).content.decode()
    assert "“fax” is not a channel" in refused
    assert "The weight of email must be a whole number from 1 to 100." in refused

    assert client.post(url, {**form, "channel_weights": '{"webchat": 4}'}).status_code == 302
    arrive(mail_inbox)  # nobody online: it waits
    listing = client.get(reverse("admin:routing_team_changelist")).content.decode()
    assert '<td class="field-queue">1</td>' in listing
    support.refresh_from_db()
    membership.refresh_from_db()
    assert (support.weight("webchat"), support.weight("email")) == (4, 1)
    assert (membership.max_open, membership.skill_set) == (6, {"pt", "refunds"})
