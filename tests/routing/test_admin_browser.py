"""The condition editor of routing rules and automations, in Django admin in real headless
Chromium against the real ASGI server: an admin builds conditions from menus, never writing
JSON, and what they built routes the next message."""

import pytest
from playwright.sync_api import expect

from conversations.models import Conversation, Inbox
from routing.models import Automation, RoutingRule
from tests.conftest import signed_in
from tests.routing.test_rules import arrive

pytestmark = pytest.mark.django_db(transaction=True)


def condition(page, number):
    return page.locator(".field-conditions .rows-row").nth(number - 1)


def action(page, number):
    return page.locator(".field-actions .rows-row").nth(number - 1)


def test_an_admin_builds_a_rule_from_menus_and_it_routes(asgi_server, browser, alice, mail_inbox):
    page = signed_in(browser, asgi_server, alice)
    page.goto(f"{asgi_server}/admin/routing/routingrule/add/")
    expect(page.locator("#id_conditions")).to_be_hidden()  # the menus stand in for the JSON
    page.fill("#id_name", "Enterprise refunds")

    page.get_by_role("button", name="Add a condition").click()
    first = condition(page, 1)
    first.get_by_label("Field").select_option(label="Text")
    first.get_by_label("Operator").select_option(label="contains")
    first.get_by_label("Value").fill("refund, reembolso")

    page.get_by_role("button", name="Add a condition").click()
    second = condition(page, 2)
    second.get_by_label("Field").select_option(label="Customer attribute")
    second.get_by_label("Attribute").fill("plan")
    second.get_by_label("Value").fill("enterprise")

    page.get_by_role("button", name="Add a condition").click()
    third = condition(page, 3)
    third.get_by_label("Field").select_option(label="Inbox")
    third.get_by_label("Operator").select_option(label="is any of")
    third.get_by_label("Support email").check()

    page.get_by_role("button", name="Add a condition").click()
    condition(page, 4).get_by_role("button", name="Remove this condition").click()
    page.select_option("#id_priority", label="High")
    page.click("input[name=_save]")
    page.wait_for_url(f"{asgi_server}/admin/routing/routingrule/")

    rule = RoutingRule.objects.get()
    assert rule.conditions == [
        {"field": "text", "op": "contains", "value": ["refund", "reembolso"]},
        {"field": "customer.plan", "op": "is", "value": "enterprise"},
        {"field": "inbox", "op": "in", "value": [mail_inbox.pk]},
    ]
    high, asking = Conversation.Priority.HIGH, "A refund, please"
    assert arrive(mail_inbox, asking, attributes={"plan": "enterprise"}).priority == high
    assert arrive(mail_inbox, asking, attributes={"plan": "free"}).priority != high

    # The rule reopens as the same rows; a change to one of them is saved.
    page.goto(f"{asgi_server}/admin/routing/routingrule/{rule.pk}/change/")
    expect(page.locator(".field-conditions .rows-row")).to_have_count(3)
    expect(condition(page, 1).get_by_label("Value")).to_have_value("refund, reembolso")
    expect(condition(page, 2).get_by_label("Attribute")).to_have_value("plan")
    expect(condition(page, 3).get_by_label("Support email")).to_be_checked()
    # "is" → "is any of" keeps what was typed, as a list of one.
    condition(page, 2).get_by_label("Operator").select_option(label="is any of")
    expect(condition(page, 2).get_by_label("Value")).to_have_value("enterprise")
    condition(page, 2).get_by_label("Value").fill("enterprise, pro")
    page.click("input[name=_save]")
    page.wait_for_url(f"{asgi_server}/admin/routing/routingrule/")
    rule.refresh_from_db()
    plans = {"field": "customer.plan", "op": "in", "value": ["enterprise", "pro"]}
    assert rule.conditions[1] == plans


def test_the_server_still_judges_and_its_error_names_the_row(asgi_server, browser, alice):
    page = signed_in(browser, asgi_server, alice)
    page.goto(f"{asgi_server}/admin/routing/automation/add/")
    page.fill("#id_name", "Chase")
    page.select_option("#id_event", "customer_replied")
    page.get_by_role("button", name="Add a condition").click()
    first = condition(page, 1)
    first.get_by_label("Field").select_option(label="Hours since last activity")
    first.get_by_label("Operator").select_option(label="is more than")
    page.get_by_role("button", name="Add an action").click()
    action(page, 1).get_by_label("Action", exact=True).select_option(label="Set the priority")
    action(page, 1).get_by_label("Priority").select_option(label="High")
    page.get_by_role("button", name="Add an action").click()
    action(page, 2).get_by_label("Action", exact=True).select_option(label="Notify")
    action(page, 2).get_by_label("Who").select_option(label="The team's leads")
    page.click("input[name=_save]")  # no number of hours given

    expect(page.locator(".errorlist")).to_contain_text("Condition 1 (hours_since_activity)")
    assert not Automation.objects.exists()
    first = condition(page, 1)  # the page came back with the rows as they were
    expect(first.get_by_label("Operator")).to_have_value("gt")
    first.get_by_label("Value").fill("72")
    page.click("input[name=_save]")
    page.wait_for_url(f"{asgi_server}/admin/routing/automation/")
    saved = Automation.objects.get()
    assert saved.conditions == [{"field": "hours_since_activity", "op": "gt", "value": 72}]
    assert saved.actions == [  # a notification's text is optional: left out, not ""
        {"action": "priority", "priority": "high"},
        {"action": "notify", "to": "team_leads"},
    ]


def test_what_the_menus_cannot_show_stays_json_untouched(asgi_server, browser, alice):
    kept = [
        {"field": "channel", "op": "is", "value": "email"},
        {"field": "text", "op": "contains", "value": ["refund, now"]},  # a comma of its own
    ]
    rule = RoutingRule.objects.create(name="Odd", conditions=kept, priority=2)
    page = signed_in(browser, asgi_server, alice)
    page.goto(f"{asgi_server}/admin/routing/routingrule/{rule.pk}/change/")
    expect(page.locator(".rows-note")).to_have_text(
        "Condition 2 cannot be shown in the form; edit it here."
    )
    expect(page.locator("#id_conditions")).to_be_visible()
    page.click("input[name=_save]")
    page.wait_for_url(f"{asgi_server}/admin/routing/routingrule/")
    rule.refresh_from_db()
    assert rule.conditions == kept

    # Made to fit, the JSON turns into rows again.
    page.goto(f"{asgi_server}/admin/routing/routingrule/{rule.pk}/change/")
    page.fill("#id_conditions", '[{"field": "text", "op": "contains", "value": ["refund"]}]')
    page.get_by_role("button", name="Edit with the form").click()
    expect(page.locator("#id_conditions")).to_be_hidden()
    expect(condition(page, 1).get_by_label("Value")).to_have_value("refund")


def test_rows_keep_what_they_hold_and_the_focus(asgi_server, browser, alice, mail_inbox):
    other = Inbox.objects.create(name="Billing email", kind="email", address="billing@acme.example")
    rule = RoutingRule.objects.create(
        name="Codes",
        priority=2,
        conditions=[
            {"field": "inbox", "op": "in", "value": [mail_inbox.pk, other.pk]},  # not menu order
            {"field": "customer.code", "op": "contains", "value": "007"},
            {"field": "customer.orders", "op": "is", "value": 20},
        ],
    )
    page = signed_in(browser, asgi_server, alice)
    page.goto(f"{asgi_server}/admin/routing/routingrule/{rule.pk}/change/")
    expect(page.locator(".field-conditions .rows-row")).to_have_count(3)  # no JSON: a set
    expect(condition(page, 2).get_by_label("Value")).to_have_value("007")

    # Removed from the keyboard, a row hands the focus to the next one.
    condition(page, 1).get_by_role("button", name="Remove this condition").press("Enter")
    expect(condition(page, 1).get_by_label("Field")).to_be_focused()
    page.click("input[name=_save]")
    page.wait_for_url(f"{asgi_server}/admin/routing/routingrule/")
    rule.refresh_from_db()
    assert rule.conditions == [  # "007" stays text: a number would be 7, in no "agent 007"
        {"field": "customer.code", "op": "contains", "value": "007"},
        {"field": "customer.orders", "op": "is", "value": 20},
    ]


def test_what_the_menus_would_change_stays_json_and_says_why(asgi_server, browser, alice, bob):
    bob.is_active = False
    bob.save()
    cases = {
        "holds a number too long for the form": [
            {"field": "customer.crm_id", "op": "is", "value": 12345678901234567891}
        ],
        f"names {bob.pk}, which is not among the choices": [
            {"field": "assignee", "op": "is", "value": bob.pk}
        ],
    }
    page = signed_in(browser, asgi_server, alice)
    for why, conditions in cases.items():
        rule = RoutingRule.objects.create(name=why, conditions=conditions, priority=2)
        page.goto(f"{asgi_server}/admin/routing/routingrule/{rule.pk}/change/")
        expect(page.locator(".field-conditions .rows-note")).to_contain_text(f"Condition 1 {why}")
        page.click("input[name=_save]")
        page.wait_for_url(f"{asgi_server}/admin/routing/routingrule/")
        rule.refresh_from_db()
        assert rule.conditions == conditions

    # A condition the script cannot read at all: its list stays JSON, the actions still work.
    automation = Automation.objects.create(
        name="Odd",
        event="created",
        conditions=[{"field": ["status"], "op": "is", "value": "open"}],
        actions=[{"action": "priority", "priority": "high"}],
    )
    page.goto(f"{asgi_server}/admin/routing/automation/{automation.pk}/change/")
    expect(page.locator("#id_conditions")).to_be_visible()
    expect(action(page, 1).get_by_label("Priority")).to_have_value('"high"')
