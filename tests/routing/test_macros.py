"""Macros: the ones an agent may use show on the conversation page, one click (a POST with its
CSRF token) applies one as that agent through the services, the timeline and other agents'
pages show it, and whatever may not be seen or used is a 404. Personas: alice the admin; bob
and dana (Support), charlie (Billing)."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from conversations import services
from conversations.models import (
    CannedResponse,
    Channel,
    Conversation,
    ConversationEvent,
    Inbox,
    Message,
    Notification,
)
from conversations.realtime import conversation_group
from helpdesk.models import User
from routing.automations import automations_run
from routing.models import Automation, Macro, TeamMembership
from tests.conftest import listen, receive


@pytest.fixture
def conversation(mail_inbox):
    received = receive(
        mail_inbox, text="Where is my refund?", address="ana@example.com", name="Ana Lima"
    )
    return Conversation.objects.get(pk=received.message.conversation_id)


@pytest.fixture
def refund_issued(db):
    canned = CannedResponse.objects.create(
        title="Refund issued",
        shortcut="refund-issued",
        body="Hi {customer.first_name}, your refund is on its way. {agent.first_name}",
    )
    return Macro.objects.create(
        name="Refund issued",
        actions=[
            {"action": "add_tags", "tags": ["refund-issued"]},
            {"action": "reply", "canned": canned.pk},
            {"action": "status", "status": "resolved"},
        ],
    )


def apply(client, conversation, macro):
    return client.post(
        reverse("inbox:macro", args=[conversation.pk]), {"macro": macro.pk}, follow=True
    )


def test_agents_see_the_macros_they_may_use(client, alice, bob, support, billing, conversation):
    for name, team in (("For all", None), ("Support only", support), ("Billing only", billing)):
        Macro.objects.create(name=name, team=team, actions=[{"action": "unassign"}])
    Macro.objects.create(name="Retired", actions=[{"action": "unassign"}], is_active=False)
    url = reverse("inbox:conversation", args=[conversation.pk])

    client.force_login(bob)
    shown = [macro.name for macro in client.get(url).context["macros"]]
    assert shown == ["For all", "Support only"]
    client.force_login(alice)
    shown = [macro.name for macro in client.get(url).context["macros"]]
    assert shown == ["Billing only", "For all", "Support only"]


def test_a_macro_that_writes_to_the_customer_asks_first(client, bob, conversation, refund_issued):
    escalate = Macro.objects.create(
        name="Escalate", actions=[{"action": "priority", "priority": 3}]
    )
    client.force_login(bob)
    page = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
    asks = 'data-confirm="“Refund issued” sends a canned reply to the customer. Run it?"'
    assert f'value="{refund_issued.pk}" {asks}>Refund issued<' in page
    assert f'name="macro" value="{escalate.pk}">Escalate<' in page  # stays one click


def test_one_click_applies_the_macro_as_the_agent(client, bob, conversation, refund_issued):
    client.force_login(bob)
    page = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
    assert f'name="macro" value="{refund_issued.pk}" data-confirm=' in page

    response = apply(client, conversation, refund_issued)

    assert response.redirect_chain == [(reverse("inbox:conversation", args=[conversation.pk]), 302)]
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.RESOLVED
    assert set(conversation.tags.values_list("name", flat=True)) == {"refund-issued"}
    reply = conversation.messages.get(direction=Message.Direction.OUTBOUND)
    assert (reply.text, reply.author, reply.status) == (
        "Hi Ana, your refund is on its way. Bob",
        bob,
        Message.Status.QUEUED,
    )
    applied = conversation.events.get(kind=ConversationEvent.Kind.MACRO)
    assert (applied.actor, applied.data) == (
        bob,
        {
            "macro": refund_issued.pk,
            "name": "Refund issued",
            "done": ["tag refund-issued", "replied with /refund-issued", "status resolved"],
            "skipped": [],
        },
    )
    later = conversation.events.filter(pk__gt=applied.pk).order_by("id")
    assert [(event.kind, event.actor) for event in later] == [
        ("tags", bob),
        ("assigned", bob),  # its reply answered an unassigned conversation: Bob has it now
        ("status", bob),
    ]
    html = response.content.decode()
    assert "“Refund issued” applied." in html
    assert "Macro applied by Bob “Refund issued”: tag refund-issued" in html


def test_a_double_click_applies_it_once(client, bob, conversation, refund_issued):
    client.force_login(bob)
    page = client.get(reverse("inbox:conversation", args=[conversation.pk]))
    click = {"macro": refund_issued.pk, "once": page.context["macro_once"]}
    url = reverse("inbox:macro", args=[conversation.pk])

    client.post(url, click)
    again = client.post(url, click, follow=True).content.decode()

    assert "“Refund issued” was already applied." in again
    assert conversation.messages.filter(direction=Message.Direction.OUTBOUND).count() == 1
    assert conversation.events.filter(kind=ConversationEvent.Kind.MACRO).count() == 1
    # A new page view is a new click.
    page = client.get(reverse("inbox:conversation", args=[conversation.pk]))
    client.post(url, {**click, "once": page.context["macro_once"]})
    assert conversation.events.filter(kind=ConversationEvent.Kind.MACRO).count() == 2


def test_other_agents_see_it_live(
    bob, conversation, refund_issued, django_capture_on_commit_callbacks
):
    next_event = listen(conversation_group(conversation.pk))
    client = Client()
    client.force_login(bob)

    with django_capture_on_commit_callbacks(execute=True):
        apply(client, conversation, refund_issued)

    events = [next_event(timeout=5)["event"] for _ in range(5)]
    assert events == ["tags", "assigned", "message", "status", "macro"]


def test_what_may_not_be_seen_or_used_is_not_found(
    client, bob, charlie, billing, conversation, refund_issued
):
    billing_macro = Macro.objects.create(
        name="Billing only", team=billing, actions=[{"action": "unassign"}]
    )
    url = reverse("inbox:macro", args=[conversation.pk])

    client.force_login(charlie)  # Billing: the conversation is Support's
    assert client.post(url, {"macro": refund_issued.pk}).status_code == 404
    client.force_login(bob)
    assert client.post(url, {"macro": billing_macro.pk}).status_code == 404
    assert client.post(url, {"macro": "nope"}).status_code == 404
    assert client.get(url).status_code == 405
    assert not conversation.events.filter(kind=ConversationEvent.Kind.MACRO).exists()


def test_a_post_without_its_csrf_token_is_refused(bob, conversation, refund_issued):
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    response = client.post(
        reverse("inbox:macro", args=[conversation.pk]), {"macro": refund_issued.pk}
    )
    assert response.status_code == 403
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.OPEN


def test_what_could_not_be_done_is_shown_to_the_agent(client, bob, dana, conversation):
    macro = Macro.objects.create(
        name="Hand to Dana",
        actions=[
            {"action": "assign", "agent": dana.pk},
            {"action": "priority", "priority": "high"},
        ],
    )
    User.objects.filter(pk=dana.pk).update(is_active=False)
    client.force_login(bob)

    html = apply(client, conversation, macro).content.decode()

    assert ("“Hand to Dana” applied, except: assign to Dana: not an active agent.") in html
    conversation.refresh_from_db()
    assert (conversation.assignee, conversation.priority) == (None, Conversation.Priority.HIGH)


def test_a_macro_whose_reply_cannot_go_leaves_the_conversation_open(
    client, bob, api_inbox, refund_issued
):
    conversation = receive(api_inbox, address="jo", name="Jo Lima").message.conversation
    client.force_login(bob)

    html = apply(client, conversation, refund_issued).content.decode()

    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.OPEN  # the customer is still waiting
    assert set(conversation.tags.values_list("name", flat=True)) == {"refund-issued"}
    assert "need its webhook URL" in html
    assert "status resolved: the reply before it was not sent" in html


def test_a_macro_sets_off_automations(client, bob, dana, conversation, refund_issued):
    TeamMembership.objects.filter(user=dana).update(is_lead=True)
    Automation.objects.create(
        name="Tell the lead",
        event=Automation.Event.STATUS_CHANGED,
        conditions=[{"field": "status", "op": "is", "value": "resolved"}],
        actions=[{"action": "notify", "to": "team_leads", "text": "a refund went out"}],
    )
    client.force_login(bob)

    apply(client, conversation, refund_issued)

    sent = Notification.objects.get(kind=Notification.Kind.AUTOMATION)
    assert (sent.recipient, sent.text) == (dana, "Tell the lead: a refund went out")


def test_a_macro_that_hands_the_conversation_away_goes_back_to_the_list(client, bob, billing):
    shared = Inbox.objects.create(name="No team", kind=Channel.API)
    conversation = receive(shared, address="jo").message.conversation
    services.conversation_assign(conversation=conversation, assignee=bob)  # so bob sees it
    macro = Macro.objects.create(
        name="To Billing",
        actions=[{"action": "team", "team": billing.pk}, {"action": "unassign"}],
    )
    client.force_login(bob)
    response = client.post(reverse("inbox:macro", args=[conversation.pk]), {"macro": macro.pk})
    assert response.url == reverse("inbox:list")


def test_the_demo_has_a_macro_and_idle_automations_once(db):
    call_command("seed_demo", customers=0, stdout=StringIO())
    call_command("seed_demo", customers=0, stdout=StringIO())

    reminder = CannedResponse.objects.get(shortcut="still-there", team=None)
    assert list(Automation.objects.values_list("idle_status", "idle_hours", "actions")) == [
        ("pending", 72, [{"action": "reply", "canned": reminder.pk}]),
        ("pending", 168, [{"action": "status", "status": "resolved"}]),
    ]
    macro = Macro.objects.get()
    assert macro.name == "Refund issued"
    for saved in (*Automation.objects.all(), macro):
        saved.full_clean()  # as admin would save them


def test_notifications_of_automations_say_what_happened(client, bob, conversation):
    services.conversation_assign(conversation=conversation, assignee=bob)
    Automation.objects.create(
        name="<i>Breach</i>",
        event=Automation.Event.SLA_BREACH,
        actions=[{"action": "notify", "to": "assignee", "text": "answer now"}],
    )
    automations_run(conversation=conversation, event="sla_breach")
    client.force_login(bob)
    html = client.get(reverse("inbox:notifications")).content.decode()
    assert "Automation</bdi></span> &lt;i&gt;Breach&lt;/i&gt;: answer now" in html
