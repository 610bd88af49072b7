"""Automatic assignment: to online agents in turn, within their capacity (weighted per
channel) and skills; the team queue and how it moves as capacity frees; live chats of agents
who go offline; what a waiting customer is told; and 100 conversations arriving at once on
real parallel database sessions. Personas: bob and dana (Support), charlie (Billing).
Time is travelled, never slept."""

import re
import threading
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from channels_adapters.webchat import chat as webchat
from conversations import services
from conversations.models import (
    Channel,
    Conversation,
    ConversationEvent,
    Inbox,
    Notification,
    Visitor,
)
from conversations.realtime import customer_group
from helpdesk.models import User
from routing.models import RoutingRule, Team, TeamMembership
from routing.services import (
    QueueStatus,
    agent_availability_set,
    queue_assign,
    queue_status,
    queues_sweep,
)
from tests.conftest import PASSWORD, listen, receive, signed_in_http

OPEN, RESOLVED = Conversation.Status.OPEN, Conversation.Status.RESOLVED


def online(*agents, minutes_ago=0):
    """The agents set themselves online and have the inbox open (its socket says so)."""
    for agent in agents:
        agent.availability = User.Availability.ONLINE
        agent.last_seen_at = timezone.now() - timedelta(minutes=minutes_ago)
        agent.save()


def capacity(agent, max_open, skills=""):
    TeamMembership.objects.filter(user=agent).update(max_open=max_open, skills=skills)


def arrive(inbox, text="Hello", **inbound) -> Conversation:
    arrive.count = getattr(arrive, "count", 0) + 1
    address = (
        f"customer{arrive.count}@example.com"
        if inbox.kind == Channel.EMAIL
        else f"visitor-{arrive.count}"
    )
    received = receive(inbox, text=text, address=address, **inbound)
    return Conversation.objects.get(pk=received.message.conversation_id)


def assignee_of(conversation):
    conversation.refresh_from_db()
    return conversation.assignee


def resolve(conversation, actor):
    return services.conversation_set_status(conversation=conversation, status=RESOLVED, actor=actor)


# --- Who gets a new conversation -------------------------------------------------------------


def test_new_conversations_go_to_online_agents_in_turn(mail_inbox, bob, dana):
    online(bob, dana)

    conversations = [arrive(mail_inbox) for _ in range(4)]

    assert [c.assignee for c in conversations] == [bob, dana, bob, dana]
    event = conversations[0].events.get(kind=ConversationEvent.Kind.ASSIGNED)
    assert event.data == {
        "previous": None,
        "assignee": bob.pk,
        "assignee_name": "Bob",
        "reason": "routing",
    }
    assert event.actor is None
    assert Notification.objects.filter(recipient=bob, kind="assigned").count() == 2


@pytest.mark.parametrize(
    ("availability", "seen_minutes_ago", "assigned"),
    [
        ("online", 0, True),
        ("online", 2, True),
        ("online", 4, False),  # the inbox has not been open for a while
        ("online", None, False),  # never opened it
        ("away", 0, False),
        ("offline", 0, False),
    ],
)
def test_never_to_an_agent_who_is_away_offline_or_not_there(
    mail_inbox, bob, availability, seen_minutes_ago, assigned
):
    bob.availability = availability
    if seen_minutes_ago is not None:
        bob.last_seen_at = timezone.now() - timedelta(minutes=seen_minutes_ago)
    bob.save()

    conversation = arrive(mail_inbox)

    assert conversation.assignee == (bob if assigned else None)
    assert conversation.status == OPEN  # waiting in Support's queue otherwise


def test_never_to_a_deactivated_agent(mail_inbox, bob):
    online(bob)
    bob.is_active = False
    bob.save()
    assert arrive(mail_inbox).assignee is None


def test_only_members_of_the_conversations_team_are_picked(mail_inbox, billing, charlie):
    online(charlie)
    assert arrive(mail_inbox).assignee is None  # Charlie is in Billing, the inbox in Support
    RoutingRule.objects.create(name="All to Billing", team=billing)
    assert arrive(mail_inbox).assignee == charlie


@pytest.mark.parametrize(
    ("weights", "channels", "assigned"),
    [
        ({}, ["webchat", "email", "email"], [True, True, False]),  # 3 + 1 = 4, then full
        ({}, ["email", "email", "webchat", "email"], [True, True, False, True]),  # 2 + 3 > 4
        ({"webchat": 1}, ["webchat"] * 5, [True] * 4 + [False]),
        ({"email": 2}, ["email"] * 3, [True, True, False]),
    ],
)
def test_capacity_counts_each_channel_by_its_weight(
    support, mail_inbox, chat_inbox, bob, weights, channels, assigned
):
    support.channel_weights = weights
    support.save()
    capacity(bob, 4)
    online(bob)
    inboxes = {"email": mail_inbox, "webchat": chat_inbox}

    results = [arrive(inboxes[channel]).assignee == bob for channel in channels]

    assert results == assigned


def test_only_open_conversations_count_against_capacity(mail_inbox, bob):
    capacity(bob, 1)
    online(bob)
    first = arrive(mail_inbox)
    services.conversation_set_status(
        conversation=first,
        status=Conversation.Status.SNOOZED,
        actor=bob,
        snoozed_until=timezone.now() + timedelta(hours=1),
    )
    assert arrive(mail_inbox).assignee == bob


def test_a_conversation_tagged_with_a_skill_goes_to_an_agent_who_has_it(mail_inbox, bob, dana):
    RoutingRule.objects.create(
        name="Portuguese",
        conditions=[{"field": "language", "op": "is", "value": "pt"}],
        tags="pt",
    )
    capacity(dana, 10, skills="pt, refunds")
    online(bob, dana)

    first = arrive(mail_inbox, "Olá", language="pt")
    second = arrive(mail_inbox, "Bom dia", language="pt-BR")
    third = arrive(mail_inbox, "Hello")  # needs no skill: Bob's turn
    assert [first.assignee, second.assignee, third.assignee] == [dana, dana, bob]

    agent_availability_set(user=dana, availability="away")
    waiting = arrive(mail_inbox, "Obrigado", language="pt")
    assert waiting.assignee is None  # waits for someone who speaks Portuguese


# --- The queue -------------------------------------------------------------------------------


def test_conversations_wait_when_everyone_is_full_and_are_assigned_as_capacity_frees(
    mail_inbox, bob, tasks_run
):
    capacity(bob, 1)
    online(bob)
    first, second = arrive(mail_inbox), arrive(mail_inbox)
    assert (first.assignee, second.assignee) == (bob, None)
    assert queue_status(second) == QueueStatus(position=1, expected_wait=timedelta(minutes=10))

    with tasks_run():
        resolve(first, bob)

    assert assignee_of(second) == bob
    assert second.events.filter(kind="assigned").get().data["reason"] == "queue"
    assert queue_status(second) == QueueStatus(position=None, expected_wait=None)


def test_the_queue_takes_the_most_urgent_then_the_oldest(mail_inbox, bob, tasks_run):
    capacity(bob, 1)
    online(bob)
    busy = arrive(mail_inbox)
    older, urgent, newer = arrive(mail_inbox), arrive(mail_inbox), arrive(mail_inbox)
    services.conversation_set_priority(
        conversation=urgent, priority=Conversation.Priority.URGENT, actor=bob
    )
    assert [queue_status(c).position for c in (urgent, older, newer)] == [1, 2, 3]

    with tasks_run():
        resolve(busy, bob)
    assert [assignee_of(c) for c in (urgent, older, newer)] == [bob, None, None]

    with tasks_run():
        resolve(urgent, bob)
    assert [assignee_of(c) for c in (older, newer)] == [bob, None]


def test_a_live_chat_goes_ahead_of_older_mail_of_the_same_priority(
    mail_inbox, chat_inbox, bob, tasks_run
):
    """The chat's customer watches the widget; the mail's can wait a little. A more urgent
    mail still goes first."""
    capacity(bob, 3)  # room for one chat (weight 3) or three emails
    online(bob)
    busy = arrive(chat_inbox)
    email, chat = arrive(mail_inbox), chatting(chat_inbox)
    assert [queue_status(c).position for c in (chat, email)] == [1, 2]
    urgent = arrive(mail_inbox)
    services.conversation_set_priority(
        conversation=urgent, priority=Conversation.Priority.HIGH, actor=bob
    )
    assert [queue_status(c).position for c in (urgent, chat, email)] == [1, 2, 3]
    with tasks_run():
        services.conversation_set_priority(
            conversation=urgent, priority=Conversation.Priority.NORMAL, actor=bob
        )
        resolve(busy, bob)  # room for the chat, and then for nothing else
    assert [assignee_of(c) for c in (chat, email, urgent)] == [bob, None, None]


def chatting(inbox, *, here=True) -> Conversation:
    """A live chat from a visitor with the widget open (`here`), or who has left since."""
    visitor = webchat.visitor_session(inbox=inbox)
    conversation = webchat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    webchat.visitor_seen(visitor.pk, opened=1)
    if not here:
        webchat.visitor_seen(visitor.pk, opened=-1)
    return conversation


def test_a_chat_whose_visitor_left_waits_like_mail(mail_inbox, chat_inbox, bob, tasks_run):
    """Those still watching the widget go first; the one who left gets the answer by email,
    in turn with the mail that came before it."""
    capacity(bob, 3)
    online(bob)
    arrive(chat_inbox)  # Bob's only place
    email, left, watching = (
        arrive(mail_inbox),
        chatting(chat_inbox, here=False),
        chatting(chat_inbox),
    )
    assert [queue_status(c).position for c in (watching, email, left)] == [1, 2, 3]
    # She comes back: ahead again, and the one watching is told at once they moved back.
    told = listen(customer_group(watching.customer_id))
    with tasks_run():
        webchat.visitor_seen(Visitor.objects.get(identity__customer=left.customer).pk, opened=1)
    assert [queue_status(c).position for c in (left, watching, email)] == [1, 2, 3]
    event = told(timeout=5)
    assert (event["event"], event["conversation"], event["position"]) == ("queue", watching.pk, 2)


def test_a_conversation_that_fits_nobody_does_not_hold_up_the_queue(mail_inbox, chat_inbox, bob):
    capacity(bob, 2)
    chat, email = arrive(chat_inbox), arrive(mail_inbox)  # nobody online yet
    online(bob)

    assert queue_assign(team_id=chat.team_id) == 1

    assert (assignee_of(chat), assignee_of(email)) == (None, bob)  # a chat weighs 3


def test_a_conversation_back_from_snooze_is_handed_out_at_once(mail_inbox, bob, tasks_run):
    conversation = arrive(mail_inbox)  # nobody online: it waits in the queue
    wake = timezone.now() + timedelta(hours=1)
    services.conversation_set_status(
        conversation=conversation, status="snoozed", snoozed_until=wake
    )
    with time_machine.travel(wake + timedelta(minutes=1)):
        online(bob)
        with tasks_run():
            assert services.snoozed_wake_due() == 1
    assert assignee_of(conversation) == bob  # not at the next sweep


def test_a_conversation_moved_to_another_team_joins_its_queue(
    mail_inbox, billing, charlie, bob, tasks_run
):
    online(charlie)
    conversation = arrive(mail_inbox)
    with tasks_run():
        services.conversation_set_team(conversation=conversation, team=billing, actor=bob)
    assert assignee_of(conversation) == charlie


def test_a_transfer_leaves_the_agent_only_if_they_are_in_the_new_team(
    client, mail_inbox, support, billing, charlie, bob, dana, tasks_run
):
    TeamMembership.objects.create(team=billing, user=dana)  # Dana is in both teams
    online(charlie)
    theirs, hers = arrive(mail_inbox), arrive(mail_inbox)
    services.conversation_assign(conversation=theirs, assignee=bob, actor=bob)
    services.conversation_assign(conversation=hers, assignee=dana, actor=dana)
    resolved = arrive(mail_inbox)
    services.conversation_assign(conversation=resolved, assignee=bob, actor=bob)
    services.conversation_set_status(conversation=resolved, status="resolved", actor=bob)
    client.force_login(bob)
    with tasks_run():
        for conversation in (theirs, hers, resolved):
            client.post(f"/inbox/{conversation.pk}/transfer", {"team": billing.pk})
    # Bob is not in Billing: Billing's queue gave it to Charlie. Dana is: she keeps hers. The
    # resolved one stays Bob's work.
    assert [assignee_of(c) for c in (theirs, hers, resolved)] == [charlie, dana, bob]
    client.force_login(charlie)
    page = client.get(f"/inbox/{theirs.pk}/").content.decode()
    assert "Assigned by Bob: nobody, on the transfer to another team" in page


def test_an_unassigned_conversation_waits_again(mail_inbox, bob, dana, tasks_run):
    online(bob)
    conversation = arrive(mail_inbox)
    online(dana)
    with tasks_run():
        services.conversation_assign(conversation=conversation, assignee=None, actor=bob)
    assert assignee_of(conversation) == dana  # Dana's turn; Bob had the last one


def test_an_agent_who_comes_online_is_given_the_waiting_conversations(
    mail_inbox, bob, dana, tasks_run
):
    waiting = [arrive(mail_inbox) for _ in range(3)]
    bob.last_seen_at = timezone.now()  # the inbox is open, but he is offline
    bob.save()

    with tasks_run():
        agent_availability_set(user=bob, availability="online")

    assert [assignee_of(c) for c in waiting] == [bob] * 3
    bob.refresh_from_db()
    assert bob.availability_changed_at is not None


def test_the_periodic_sweep_assigns_whatever_is_waiting(mail_inbox, bob, support):
    waiting = arrive(mail_inbox)
    online(bob)  # the agent's inbox opened: no service was told

    assert queues_sweep() == {"requeued": 0, "assigned": 1}
    assert assignee_of(waiting) == bob
    assert queues_sweep() == {"requeued": 0, "assigned": 0}  # idempotent


def test_a_team_without_auto_assignment_leaves_its_queue_to_the_agents(support, mail_inbox, bob):
    support.auto_assign = False
    support.save()
    online(bob)
    conversation = arrive(mail_inbox)
    assert conversation.assignee is None
    assert queues_sweep()["assigned"] == 0
    assert queue_status(conversation).position == 1


# --- Agents who go offline -------------------------------------------------------------------


def visiting(inbox) -> Conversation:
    """A live chat: a visitor with the widget open writes."""
    visitor = webchat.visitor_session(inbox=inbox)
    webchat.visitor_seen(visitor.pk, opened=1)
    received = webchat.visitor_message(visitor, text="Hello", client_id="c1")
    return Conversation.objects.get(pk=received.message.conversation_id)


@pytest.fixture
def bobs_chat_and_email(chat_inbox, mail_inbox, bob, dana):
    """Bob, alone online, takes a live chat and an email; then Dana comes online."""
    online(bob)
    chat, email = visiting(chat_inbox), arrive(mail_inbox)
    assert (chat.assignee, email.assignee) == (bob, bob)
    online(dana)
    return chat, email


def test_an_agent_going_offline_returns_live_chats_to_the_queue(
    client, bobs_chat_and_email, bob, dana, tasks_run
):
    chat, email = bobs_chat_and_email

    client.login(email=bob.email, password=PASSWORD)
    with tasks_run():  # Bob flips the inbox's switch to offline
        response = client.post(reverse("inbox:availability"), {"availability": "offline"})
    assert response.status_code == 302

    assert (assignee_of(chat), assignee_of(email)) == (dana, bob)  # the email can wait
    assigned = [event.data for event in chat.events.filter(kind="assigned").order_by("id")]
    assert [(data["assignee"], data.get("reason")) for data in assigned] == [
        (bob.pk, "routing"),
        (None, "offline"),
        (dana.pk, "queue"),
    ]
    page = client.get(reverse("inbox:conversation", args=[chat.pk])).content.decode()
    assert "Assigned: nobody, back to the queue: the agent went offline" in page
    assert "Assigned: Dana, from the team's queue" in page


def test_a_chat_whose_visitor_left_stays_with_its_agent(bobs_chat_and_email, bob, tasks_run):
    # It goes on by email now (the visitor left): nothing for the queue's next agent to
    # answer live, and its agent knows it.
    chat, _ = bobs_chat_and_email
    Visitor.objects.update(open_sockets=0)
    with tasks_run():
        agent_availability_set(user=bob, availability="offline")
    assert assignee_of(chat) == bob


def test_a_team_may_keep_chats_with_agents_who_go_offline(
    support, bobs_chat_and_email, bob, tasks_run
):
    support.requeue_offline_chats = False
    support.save()
    chat, _ = bobs_chat_and_email
    with tasks_run():
        agent_availability_set(user=bob, availability="offline")
    assert assignee_of(chat) == bob


def test_an_away_agent_keeps_their_chats(bobs_chat_and_email, bob, tasks_run):
    chat, _ = bobs_chat_and_email
    with tasks_run():
        agent_availability_set(user=bob, availability="away")
    assert queues_sweep()["requeued"] == 0
    assert assignee_of(chat) == bob


def test_chats_of_an_agent_whose_inbox_closed_return_to_the_queue(bobs_chat_and_email, bob, dana):
    chat, email = bobs_chat_and_email
    with time_machine.travel(timezone.now() + timedelta(minutes=4)):
        online(dana)  # Dana's inbox is still open; Bob's went quiet four minutes ago
        Visitor.objects.update(last_seen_at=timezone.now())  # the visitor's is open too
        assert queues_sweep() == {"requeued": 1, "assigned": 1}
    assert (assignee_of(chat), assignee_of(email)) == (dana, bob)


def test_what_a_deactivated_agent_held_goes_back_to_the_queue(
    client, mail_inbox, bobs_chat_and_email, bob, dana, alice
):
    """Bob leaves; the admin unticks Active, as the page suggests. Nobody can answer as him
    now: what he held is his team's again, and the next sweep hands it out. What he ended
    keeps his name."""
    chat, email = bobs_chat_and_email
    asked, done = arrive(mail_inbox), arrive(mail_inbox)
    for conversation in (asked, done):
        services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)
    services.conversation_set_status(
        conversation=asked, status=Conversation.Status.PENDING, actor=bob
    )
    resolve(done, bob)
    capacity(dana, 20)
    bob.is_active = False
    bob.save()

    assert queues_sweep() == {"requeued": 3, "assigned": 2}

    assert [assignee_of(c) for c in (chat, email, asked, done)] == [dana, dana, None, bob]
    client.force_login(alice)
    page = client.get(reverse("inbox:conversation", args=[email.pk])).content.decode()
    assert "Assigned: nobody, back to the queue: the agent was deactivated" in page
    assert queues_sweep() == {"requeued": 0, "assigned": 0}


# --- What a waiting customer is told ---------------------------------------------------------


def handled(inbox, minutes, now):
    """A conversation of `inbox` resolved `minutes` after it opened, earlier today."""
    conversation = arrive(inbox)
    Conversation.objects.filter(pk=conversation.pk).update(
        status=RESOLVED,
        assignee=None,
        created_at=now - timedelta(hours=3),
        resolved_at=now - timedelta(hours=3) + timedelta(minutes=minutes),
    )


def test_waiting_customers_learn_their_place_and_a_rough_wait(mail_inbox, bob, dana):
    now = timezone.now()
    for minutes in (10, 20, 30, 40, 50):
        handled(mail_inbox, minutes, now)
    first, second, third = arrive(mail_inbox), arrive(mail_inbox), arrive(mail_inbox)
    assert queue_status(third) == QueueStatus(position=3, expected_wait=None)  # nobody online

    capacity(bob, 1)
    capacity(dana, 1)
    online(bob, dana)
    assert queue_status(second).expected_wait == timedelta(0)  # both have room: at once

    queue_assign(team_id=first.team_id)  # bob and dana take one each
    # One conversation each at a time, 30 minutes apiece (the median): a place every 15.
    assert queue_status(third) == QueueStatus(position=1, expected_wait=timedelta(minutes=15))
    assert queue_status(third).as_dict() == {"position": 1, "expected_wait_seconds": 900}
    assert queue_status(first) == QueueStatus(position=None, expected_wait=None)


# --- The demo --------------------------------------------------------------------------------


def test_the_demo_routes_an_enterprise_refund_to_an_online_billing_agent(db):
    call_command("seed_demo", customers=0, stdout=StringIO())
    call_command("seed_demo", customers=0, stdout=StringIO())  # idempotent
    billing = Team.objects.get(slug="billing")
    waiting = Conversation.objects.get(customer__attributes__plan="enterprise")
    assert (waiting.team, waiting.priority, waiting.assignee) == (
        billing,
        Conversation.Priority.HIGH,
        None,  # nobody has the inbox open yet
    )
    assert set(waiting.tags.values_list("name", flat=True)) == {"refund", "enterprise"}

    hugo = User.objects.get(email="hugo@example.com")
    online(hugo)  # Hugo opens the inbox
    queues_sweep()
    assert assignee_of(waiting) == hugo

    # The next one is assigned as it arrives.
    support_email = Inbox.objects.get(name="Support email")
    identity = services.identity_get_or_create(kind=Channel.EMAIL, address="cfo@bigco.example")
    services.customer_update(
        customer=identity.customer, data={"attributes": {"plan": "enterprise"}}
    )
    received = receive(
        support_email, text="Please refund our last invoice", address="cfo@bigco.example"
    )
    conversation = Conversation.objects.get(pk=received.message.conversation_id)
    assert (conversation.team, conversation.priority, conversation.assignee) == (
        billing,
        Conversation.Priority.HIGH,
        hugo,
    )


# --- Many at once ----------------------------------------------------------------------------

WORKERS = 20


def arrive_together(inboxes, count):
    """`count` new conversations from WORKERS threads, each on its own database connection,
    released together: they race through message_receive on the database for real."""
    barrier, errors = threading.Barrier(WORKERS), []

    def work(numbers):
        try:
            barrier.wait(timeout=60)
            for n in numbers:
                inbox = inboxes[n % len(inboxes)]
                address = f"rush{n}@example.com" if inbox.kind == Channel.EMAIL else f"rush-{n}"
                receive(inbox, text="Hello, anyone there?", address=address)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=work, args=(range(worker, count, WORKERS),))
        for worker in range(WORKERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []


def loads(team) -> dict:
    """Each member's weighted open work."""
    load = {member.user_id: 0 for member in team.memberships.all()}
    for conversation in Conversation.objects.filter(status=OPEN, assignee__isnull=False):
        load[conversation.assignee_id] += team.weight(conversation.inbox.kind)
    return load


@pytest.fixture
def rush(transactional_db):
    """A team of five online agents, one shared with another team, and two inboxes."""
    team = Team.objects.create(name="Rush", slug="rush")
    agents = []
    for n in range(5):
        agent = User.objects.create_user(email=f"agent{n}@example.com")
        TeamMembership.objects.create(team=team, user=agent)
        agents.append(agent)
    online(*agents)
    email = Inbox.objects.create(name="Rush email", kind=Channel.EMAIL, default_team=team)
    chat = Inbox.objects.create(name="Rush chat", kind=Channel.WEBCHAT, default_team=team)
    return team, agents, email, chat


@pytest.mark.parametrize(("max_open", "assigned"), [(30, 100), (15, 75)])
def test_100_arrivals_at_once_spread_evenly_and_never_overfill_anyone(rush, max_open, assigned):
    team, agents, email, _ = rush
    TeamMembership.objects.filter(team=team).update(max_open=max_open)

    arrive_together([email], 100)

    counts = loads(team)
    assert max(counts.values()) <= max_open
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == assigned
    waiting = Conversation.objects.filter(team=team, assignee=None, status=OPEN).count()
    assert waiting == 100 - assigned


def test_100_mixed_arrivals_across_teams_sharing_an_agent_stay_within_capacity(rush):
    team, agents, email, chat = rush
    other = Team.objects.create(name="Overflow", slug="overflow")
    shared = agents[0]
    TeamMembership.objects.create(team=other, user=shared, max_open=9)
    other_email = Inbox.objects.create(
        name="Overflow email", kind=Channel.EMAIL, default_team=other
    )
    TeamMembership.objects.filter(team=team).update(max_open=12)

    arrive_together([email, chat, other_email], 100)

    counts = loads(team)  # the shared agent's work from both teams, in one count
    assert all(load <= 12 for load in counts.values()), counts
    # Every agent is nearly full: what is left waits rather than overfilling anyone.
    assert all(load >= 12 - 3 for user, load in counts.items() if user != shared.pk), counts
    assert Conversation.objects.filter(assignee=None, status=OPEN).exists()


def test_an_agent_resolves_and_goes_online_while_the_broker_is_down(
    server_without_redis, client, bob, api_inbox
):
    """Both nudge the team's queue, in a task: with Redis down the change stands and is
    answered as usual; queues_sweep assigns the waiting conversations once it is back. (A
    resolution also asks for the inbox's satisfaction survey, in a task too.)"""
    from routing.models import AutoReply

    AutoReply.objects.create(inbox=api_inbox, kind="satisfaction", body="Rate: {rating_link}")
    conversation = receive(api_inbox).message.conversation
    agent = signed_in_http(client, bob, server_without_redis)
    page = agent.get(f"/inbox/{conversation.number}/").text
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]*)"', page)[1]

    resolved = agent.post(
        f"/inbox/{conversation.number}/status",
        data={"csrfmiddlewaretoken": csrf, "status": "resolved"},
    )
    online = agent.post(
        "/inbox/availability", data={"csrfmiddlewaretoken": csrf, "availability": "online"}
    )

    assert (resolved.status_code, online.status_code) == (302, 302)
    conversation.refresh_from_db()
    bob.refresh_from_db()
    assert (conversation.status, bob.availability) == ("resolved", "online")
