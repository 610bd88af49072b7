"""Routing and assignment: which team answers a conversation, who in it, and when.

- `conversation_route`: a conversation that just opened goes through the routing rules, then to
  an online agent of its team with room. message_receive calls it inside its transaction,
  before agents are told about the conversation, so nobody ever sees it unrouted.
- `queue_assign`: a team's waiting conversations (open, unassigned) go to agents as capacity
  frees. Run after commit when a conversation leaves someone's load or joins a queue
  (`queue_nudge`), and for every team by the periodic `queues_sweep`, the safety net.
- `offline_chats_requeue`, `agent_availability_set`: live chats of agents who went offline go
  back to the queue, where the team asks for it; `deactivated_agents_release`: everything a
  deactivated agent still held does.
- `queue_status`: where a waiting customer stands and how long it may take, for the widget;
  `queue_places_tell` pushes the new places to waiting chat visitors after each queue_assign
  task and each sweep.

Online means availability "online" and a sign of life from the agent's open inbox within
AGENT_ONLINE_WINDOW (the widget's definition); away and offline agents are never picked.
Capacity is per agent: their open conversations, each weighing its channel's weight in the team
(a live chat 3, an email 1 by default), stay within the membership's `max_open`. Agents take
turns (round robin), skipping those without room or without a skill the conversation needs.

Concurrency: every automatic assignment first locks the team's membership rows and their
agents' user rows, in user id order, and only then counts the agents' load, in a statement of
its own. Under READ COMMITTED that statement sees everything committed by whoever held the locks
before, so conversations arriving together are handed out one after another: nobody goes over
capacity and turns are taken in order. Teams that share an agent wait on the same user row,
and the fixed order rules out deadlocks between them.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Case, Exists, IntegerField, OuterRef, Q, Value, When
from django.utils import timezone

from channels_adapters.webchat.chat import AGENT_ONLINE_WINDOW, visitors_here
from conversations.models import (
    Channel,
    Conversation,
    ConversationEvent,
    Inbox,
    Message,
    Notification,
    Tag,
    Visitor,
)
from conversations.realtime import customer_group, send_to_groups
from conversations.services import _notify, conversation_assign
from routing.models import Team, TeamMembership
from routing.rules import Decision, rules_decide, rules_load

log = logging.getLogger(__name__)

OPEN = Conversation.Status.OPEN
# A sweep or nudge assigns at most this many waiting conversations per team and run; the next
# run takes the rest.
QUEUE_BATCH = 100
# Expected waits are estimated from the team's recent conversations of the same channel.
HANDLING_LOOKBACK = timedelta(days=14)
HANDLING_SAMPLE = 50
HANDLING_MIN_SAMPLE = 5
HANDLING_DEFAULT = timedelta(minutes=10)


# --- Who is there ----------------------------------------------------------------------------


def agent_is_online(user, now: datetime) -> bool:
    return (
        user.is_active
        and user.availability == get_user_model().Availability.ONLINE
        and user.last_seen_at is not None
        and user.last_seen_at >= now - AGENT_ONLINE_WINDOW
    )


def _offline(now: datetime) -> Q:
    """Conversations whose assignee is offline: set so, or their inbox closed for longer than
    the online window (an away agent with the inbox open keeps their chats)."""
    return (
        Q(assignee__availability=get_user_model().Availability.OFFLINE)
        | Q(assignee__last_seen_at__lt=now - AGENT_ONLINE_WINDOW)
        | Q(assignee__last_seen_at__isnull=True)
    )


def _table(model) -> str:
    """A model's table name, quoted for the raw SQL of the hot paths below."""
    return connection.ops.quote_name(model._meta.db_table)


def _open_load(team: Team, user_ids) -> dict[int, int]:
    """The weighted open conversations of each agent in `user_ids`, as `team` weighs its
    channels. Raw SQL: it runs for every new conversation (see _Pool)."""
    load = dict.fromkeys(user_ids, 0)
    if not load:
        return load
    conversation, inbox = (_table(model) for model in (Conversation, Inbox))
    with connection.cursor() as cursor:
        cursor.execute(
            # Names come from the models; values go as parameters.
            f"SELECT c.assignee_id, i.kind, COUNT(*) FROM {conversation} c "  # noqa: S608
            f"JOIN {inbox} i ON i.id = c.inbox_id WHERE c.status = %s "
            f"AND c.assignee_id IN ({', '.join(['%s'] * len(load))}) "
            "GROUP BY c.assignee_id, i.kind",
            [OPEN.value, *load],
        )
        for user_id, kind, count in cursor.fetchall():
            load[user_id] += count * team.weight(kind)
    return load


# What assignment reads of a member, their agent and team, in _Pool's statement.
MEMBER_COLUMNS = ("id", "team_id", "user_id", "max_open", "skills", "assigned_turn")
USER_COLUMNS = ("id", "email", "display_name", "is_active", "availability")
TEAM_COLUMNS = ("id", "auto_assign", "channel_weights")


class _Pool:
    """A team's members, locked, and the load of those online. Hands out conversations in
    turn to online members with room and the skills needed."""

    def __init__(self, team_id: int, now: datetime):
        # Membership and user rows are locked together, in user order. Once a locking
        # statement has waited for a row, PostgreSQL reads the newest version of every row it
        # locks, so the turns come back as the previous holder left them. The load is counted
        # in a statement of its own, after the lock, for the same reason (module docstring).
        # Raw SQL, like the count: the ORM's version of the two cost twice their round trips.
        users = get_user_model()
        memberships, agents, teams = (_table(model) for model in (TeamMembership, users, Team))
        columns = ", ".join(
            [f"m.{c}" for c in MEMBER_COLUMNS]
            + [f"u.{c}" for c in USER_COLUMNS]
            + [f"t.{c}" for c in TEAM_COLUMNS]
            # Online as agent_is_online says: the one value assignment needs of the clock.
            + ["u.availability = %s AND u.last_seen_at >= %s"]
        )
        lock = " FOR NO KEY UPDATE OF m, u" if connection.features.has_select_for_update else ""
        # Names come from the models; values go as parameters.
        sql = (
            f"SELECT {columns} FROM {memberships} m JOIN {agents} u ON u.id = m.user_id "  # noqa: S608
            f"JOIN {teams} t ON t.id = m.team_id WHERE m.team_id = %s AND u.is_active "
            f"ORDER BY m.user_id{lock}"
        )
        online_since = connection.ops.adapt_datetimefield_value(now - AGENT_ONLINE_WINDOW)
        with connection.cursor() as cursor:
            cursor.execute(sql, [users.Availability.ONLINE.value, online_since, team_id])
            rows = cursor.fetchall()
        members, online, alias = [], [], connection.alias
        user_at = len(MEMBER_COLUMNS)  # where each row's user columns start
        team_at = user_at + len(USER_COLUMNS)  # then the team's, then whether they are online
        for row in rows:
            member = TeamMembership.from_db(alias, MEMBER_COLUMNS, row[:user_at])
            member.user = users.from_db(alias, USER_COLUMNS, row[user_at:team_at])
            members.append(member)
            if row[-1]:
                online.append(member)
        self.team: Team | None = None
        if rows:
            pk, auto_assign, weights = rows[0][team_at:-1]
            weights = Team._meta.get_field("channel_weights").from_db_value(
                weights, None, connection
            )
            self.team = Team.from_db(alias, TEAM_COLUMNS, (pk, auto_assign, weights))
        # Skills anyone in the team has, online or not: a conversation tagged with one waits
        # for a member who has it rather than going to someone who does not.
        self.skills = frozenset().union(*(member.skill_set for member in members))
        self.turn = max((member.assigned_turn for member in members), default=0)
        self.online = online
        self.load = _open_load(self.team, (member.user_id for member in online))

    @property
    def assigning(self) -> bool:
        return bool(self.online) and self.team.auto_assign

    def has_room(self) -> bool:
        return any(self.load[member.user_id] < member.max_open for member in self.online)

    def pick(self, weight: int, tags: frozenset[str]) -> TeamMembership | None:
        needs = tags & self.skills
        fits = [
            member
            for member in self.online
            if self.load[member.user_id] + weight <= member.max_open and needs <= member.skill_set
        ]
        if not fits:
            return None
        chosen = min(fits, key=lambda member: (member.assigned_turn, member.user_id))
        self.turn += 1
        chosen.assigned_turn = self.turn
        self.load[chosen.user_id] += weight
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {_table(TeamMembership)} SET assigned_turn = %s WHERE id = %s",  # noqa: S608
                [self.turn, chosen.pk],
            )
        return chosen


# --- A new conversation ----------------------------------------------------------------------


def conversation_route(*, conversation: Conversation, message: Message) -> list[ConversationEvent]:
    """Apply the routing rules to `conversation`, just opened by `message`, then assign it to
    an online member of its team with room (unless a rule named an assignee). Sets team,
    priority and assignee on `conversation` for the caller to save (message_receive saves it
    right after, in the one UPDATE it makes anyway); tags and the assignee's notification are
    written here. Returns an event for each change, naming its rule, for the caller to write
    with its own (message_receive writes all of a message's events in one INSERT).

    A failure here (a bug, a lock timeout) must not lose the customer's message: the routing
    is undone, logged, and the conversation stays in its inbox's team, where the periodic
    sweep assigns it."""
    now = timezone.now()
    try:
        with transaction.atomic():
            decision = rules_decide(rules_load(conversation.inbox_id), conversation, message, now)
            return _apply(conversation, decision, now)
    except Exception:
        log.exception("routing conversation %s failed; it waits in its team", conversation.pk)
        conversation.refresh_from_db(fields=["team", "priority", "assignee"])
        return []


def _apply(conversation: Conversation, decision: Decision, now: datetime) -> list:
    """Set what the rules decided on a conversation nobody else can see yet (its transaction
    has not committed). Done here rather than through conversation_set_team and friends:
    those lock, save and publish once each, about five round trips apiece, while this is
    events for the caller's INSERT, the caller's UPDATE, and the "created" notification
    announcing the result."""
    because = decision.because or {}
    events, assigned = [], False

    def record(kind, rule: str | None, **data):
        if rule:
            data["rule"] = rule
        events.append(ConversationEvent(conversation=conversation, kind=kind, data=data))

    if decision.team_id is not None and decision.team_id != conversation.team_id:
        record(
            ConversationEvent.Kind.TEAM,
            because.get("team_id"),
            previous=conversation.team_id,
            team=decision.team_id,
        )
        conversation.team_id = decision.team_id
    if decision.priority is not None and decision.priority != conversation.priority:
        record(
            ConversationEvent.Kind.PRIORITY,
            because.get("priority"),
            previous=conversation.priority,
            priority=decision.priority,
        )
        conversation.priority = decision.priority
    if added := _tags_add(conversation, decision.tags):
        record(ConversationEvent.Kind.TAGS, because.get("tags"), added=added, removed=[])

    assignee, rule, reason = None, because.get("assignee_id"), "rule"
    if decision.assignee_id is not None:
        assignee = get_user_model().objects.filter(pk=decision.assignee_id, is_active=True).first()
    if assignee is None and conversation.assignee_id is None and conversation.team_id:
        rule, reason = None, "routing"
        pool = _Pool(conversation.team_id, now)
        if pool.assigning:
            # A conversation opened just now has only the tags the rules gave it.
            member = pool.pick(pool.team.weight(conversation.inbox.kind), decision.tags)
            assignee = member.user if member else None
    if assignee is not None and assignee.pk != conversation.assignee_id:
        record(
            ConversationEvent.Kind.ASSIGNED,
            rule,
            previous=conversation.assignee_id,
            assignee=assignee.pk,
            assignee_name=assignee.name,
            reason=reason,
        )
        conversation.assignee, assigned = assignee, True

    if assigned:
        _notify([assignee.pk], Notification.Kind.ASSIGNED, conversation)
    return events


def _tags_add(conversation: Conversation, names: frozenset[str]) -> list[str]:
    if not names:
        return []
    through = Conversation.tags.through
    quote = connection.ops.quote_name
    # Tags the rules name nearly always exist: linked in one statement, without reading them
    # first (the ORM has no INSERT ... SELECT). Table and column names come from the models.
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_table(through)} "  # noqa: S608
            f"({quote(through._meta.get_field('conversation').column)}, "
            f"{quote(through._meta.get_field('tag').column)}) "
            f"SELECT %s, id FROM {_table(Tag)} "
            f"WHERE name IN ({', '.join(['%s'] * len(names))}) ON CONFLICT DO NOTHING",
            [conversation.pk, *sorted(names)],
        )
        linked = cursor.rowcount
    if linked < len(names):  # a tag's first use
        missing = names - set(conversation.tags.values_list("name", flat=True))
        tags = [Tag.objects.get_or_create(name=name)[0] for name in sorted(missing)]
        through.objects.bulk_create(
            [through(conversation_id=conversation.pk, tag_id=tag.pk) for tag in tags],
            ignore_conflicts=True,
        )
    return sorted(names)


def _tags_of(conversation_ids) -> dict[int, frozenset[str]]:
    pairs = Conversation.tags.through.objects.filter(conversation_id__in=conversation_ids)
    tags: dict[int, set[str]] = {}
    for conversation_id, name in pairs.values_list("conversation_id", "tag__name"):
        tags.setdefault(conversation_id, set()).add(name)
    return {pk: frozenset(names) for pk, names in tags.items()}


# --- The queue -------------------------------------------------------------------------------


# A conversation in its team's queue: open, nobody's, and not folded into another.
IN_QUEUE = Q(status=OPEN, assignee=None, merged_into=None)


def _waiting(team_id: int, now: datetime | None = None):
    """The team's queue. Served in QUEUE_ORDER: the most urgent first; within a priority live
    chats, whose customer watches the widget, ahead of mail and messages that can wait a
    little; then the oldest. A chat whose visitor has left waits like mail: the answer
    reaches them by email (see webchat.follow_up), and whoever is still there goes first."""
    watched = Visitor.objects.filter(
        visitors_here(now or timezone.now()),
        inbox_id=OuterRef("inbox_id"),
        identity__customer_id=OuterRef("customer_id"),
    )
    return Conversation.objects.filter(IN_QUEUE, team_id=team_id).annotate(
        chat=Case(
            When(Q(inbox__kind=Channel.WEBCHAT) & Exists(watched), then=Value(1)),
            default=Value(0),
            output_field=IntegerField(),
        )
    )


QUEUE_ORDER = ("-priority", "-chat", "created_at", "id")


def queue_assign(*, team_id: int, limit: int = QUEUE_BATCH) -> int:
    """Give the team's waiting conversations, in QUEUE_ORDER, to online
    members with room; returns how many were assigned. A conversation that fits nobody (a
    live chat when everyone has room for an email only, a skill nobody online has) does not
    hold up those behind it. Safe to run any time and at once in several workers: members are
    locked, and a waiting conversation another run holds is skipped."""
    assigned = 0
    with transaction.atomic():
        pool = _Pool(team_id, timezone.now())
        if not pool.assigning or not pool.has_room():
            return 0
        waiting = list(
            _waiting(team_id)
            .select_for_update(of=("self",), skip_locked=True)
            .select_related("inbox")
            .order_by(*QUEUE_ORDER)[:limit]
        )
        tags = _tags_of([conversation.pk for conversation in waiting])
        for conversation in waiting:
            weight = pool.team.weight(conversation.inbox.kind)
            member = pool.pick(weight, tags.get(conversation.pk, frozenset()))
            if member is None:
                continue
            conversation_assign(conversation=conversation, assignee=member.user, reason="queue")
            assigned += 1
            if not pool.has_room():
                break
    return assigned


def queue_nudge(team_id: int | None) -> None:
    """Someone's capacity freed, or a conversation joined the team's queue: assign waiting
    conversations in a task, once the current transaction commits. With the broker down the
    change that nudged stands (robust: the failure is logged) and queues_sweep assigns them."""
    if team_id is None:
        return
    from routing.tasks import queue_assign as task

    transaction.on_commit(lambda: task.delay(team_id), robust=True)


def offline_chats_requeue(*, user=None, now: datetime | None = None) -> int:
    """Open live chats assigned to agents who are offline go back to their team's queue, in
    teams that ask for it; only `user`'s when given. Returns how many. Live: the visitor has
    the widget open now (chat.visitor_here); a chat whose visitor left goes on by email, at
    the pace of email, with the agent who knows it."""
    from channels_adapters.webchat.chat import visitors_here

    now = now or timezone.now()
    here = Visitor.objects.filter(
        visitors_here(now), identity__customer=OuterRef("customer"), inbox=OuterRef("inbox")
    )
    chats = Conversation.objects.filter(
        _offline(now),
        Exists(here),
        status=OPEN,
        inbox__kind=Channel.WEBCHAT,
        assignee__isnull=False,
        team__requeue_offline_chats=True,
    )
    if user is not None:
        chats = chats.filter(assignee=user)
    return _unassign_each(chats, reason="offline")


def deactivated_agents_release() -> int:
    """Conversations still in hand (open, pending, snoozed) of agents since deactivated go
    back to their team's queue: nobody can sign in as them to answer, and the customer's
    reply, the SLA warning and the queue would all wait on them. Ended ones keep their name.
    Returns how many."""
    held = Conversation.objects.filter(
        status__in=Conversation.WORKING, assignee__is_active=False, merged_into=None
    )
    return _unassign_each(held, reason="deactivated")


def _unassign_each(conversations, *, reason: str) -> int:
    """Back to the queue, each in its own transaction, up to 500 a run (the next takes the
    rest); returns how many."""
    done = 0
    for pk in list(conversations.values_list("pk", flat=True)[:500]):
        with transaction.atomic():
            # Checked again under the lock: the agent may be back, or someone took it.
            conversation = conversations.select_for_update(of=("self",)).filter(pk=pk).first()
            if conversation is not None:
                conversation_assign(conversation=conversation, assignee=None, reason=reason)
                done += 1
    return done


def queues_sweep() -> dict:
    """The periodic safety net: live chats of offline agents and whatever deactivated agents
    held back to the queue, then every team's waiting conversations to whoever is online with
    room. Idempotent."""
    requeued = offline_chats_requeue() + deactivated_agents_release()
    teams = (
        Conversation.objects.filter(IN_QUEUE, team__auto_assign=True)
        .order_by()
        .values_list("team_id", flat=True)
        .distinct()
    )
    assigned = 0
    for team_id in list(teams):
        assigned += queue_assign(team_id=team_id)
        try:
            queue_places_tell(team_id)  # also for arrivals, which nudge nobody
        except Exception:  # noqa: BLE001 - telling is a courtesy: the next team still gets served
            log.exception("could not tell team %s's waiting visitors their places", team_id)
    return {"requeued": requeued, "assigned": assigned}


def agent_availability_set(*, user, availability: str) -> None:
    """Set an agent's availability. Going offline returns their live chats to the queue (in
    teams that ask for it); going online lets their teams' queues assign to them. The inbox's
    availability switch calls this; the periodic sweep catches changes made elsewhere (admin),
    and an agent whose inbox closed, within a sweep after the online window."""
    User = get_user_model()  # noqa: N806 - the model
    if availability not in User.Availability.values:
        raise ValidationError(f"Unknown availability {availability!r}.")
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(
            availability=availability, availability_changed_at=timezone.now()
        )
        if availability == User.Availability.OFFLINE:
            offline_chats_requeue(user=user)
        elif availability == User.Availability.ONLINE:
            for team_id in user.team_memberships.values_list("team_id", flat=True):
                queue_nudge(team_id)


# --- What a waiting customer is told ---------------------------------------------------------


@dataclass(frozen=True)
class QueueStatus:
    """`position` 1 is next in line; None when the conversation is not waiting (it has an
    agent, or is not open). `expected_wait` is None when nobody in the team is online to
    take it (the widget then shows its offline promise, e.g. "we reply in a few hours")."""

    position: int | None
    expected_wait: timedelta | None

    def as_dict(self) -> dict:
        wait = self.expected_wait
        return {
            "position": self.position,
            "expected_wait_seconds": None if wait is None else round(wait.total_seconds()),
        }


def queue_status(conversation: Conversation, *, now: datetime | None = None) -> QueueStatus:
    """Where `conversation` stands in its team's queue, and a rough wait (see _Outlook)."""
    now = now or timezone.now()
    conversation = Conversation.objects.select_related("inbox", "team").get(pk=conversation.pk)
    team = conversation.team
    if conversation.status != OPEN or conversation.assignee_id or conversation.merged_into_id:
        return QueueStatus(None, None)
    if team is None:
        return QueueStatus(1, None)
    priority, created = conversation.priority, conversation.created_at
    waiting = _waiting(team.pk, now)
    chat = waiting.filter(pk=conversation.pk).values_list("chat", flat=True).first() or 0
    same = Q(priority=priority, chat=chat)
    ahead = (  # those before it in QUEUE_ORDER
        waiting.filter(
            Q(priority__gt=priority)
            | Q(priority=priority, chat__gt=chat)
            | same & Q(created_at__lt=created)
            | same & Q(created_at=created, pk__lt=conversation.pk)
        ).count()
    )
    return _Outlook(team, now).status(ahead + 1, conversation.inbox.kind)


def queue_places_tell(team_id: int, *, now: datetime | None = None) -> int:
    """Tell each visitor waiting on a live chat in the team's queue their place and wait, which
    move whenever a conversation ahead is taken, resolved or moved, or a more urgent one comes
    in: run after each queue_assign. The first QUEUE_BATCH places are told; those behind hear
    theirs when they open the chat. Returns how many were told."""
    now = now or timezone.now()
    queue = list(
        _waiting(team_id, now)
        .order_by(*QUEUE_ORDER)
        .values_list("pk", "inbox__kind", "customer_id")[:QUEUE_BATCH]
    )
    team = Team.objects.filter(pk=team_id).first()
    if team is None or not any(kind == Channel.WEBCHAT for _, kind, _ in queue):
        return 0  # nobody waits on a live chat: no outlook to work out
    outlook = _Outlook(team, now)
    sends = [
        (
            [customer_group(customer_id)],
            {
                "type": "customer.event",
                "event": "queue",
                "conversation": pk,
                **outlook.status(position, kind).as_dict(),
            },
        )
        for position, (pk, kind, customer_id) in enumerate(queue, start=1)
        if kind == Channel.WEBCHAT
    ]
    if sends:
        transaction.on_commit(lambda: send_to_groups(*sends[0], *sends[1:]))
    return len(sends)


class _Outlook:
    """How fast a team's queue moves now. Conversations up to the room online members have
    go at once; beyond that, a place frees every (median handling time / conversations the
    online members hold at once), where handling time is from opening to resolution of the
    team's last HANDLING_SAMPLE conversations of the channel in HANDLING_LOOKBACK
    (HANDLING_DEFAULT with fewer than HANDLING_MIN_SAMPLE). Skills are not taken into
    account. A few small queries, once for any number of places."""

    def __init__(self, team: Team, now: datetime):
        self.team, self.now = team, now
        self.members = [
            member
            for member in TeamMembership.objects.filter(team=team).select_related("user")
            if agent_is_online(member.user, now)
        ]
        self._handling: dict[str, timedelta] = {}

    @cached_property
    def load(self) -> dict[int, int]:
        return _open_load(self.team, (member.user_id for member in self.members))

    def status(self, position: int, kind: str) -> QueueStatus:
        weight = self.team.weight(kind)
        at_once = sum(member.max_open // weight for member in self.members)
        if not self.team.auto_assign or not at_once:
            return QueueStatus(position, None)
        room = sum(
            max(0, member.max_open - self.load[member.user_id]) // weight for member in self.members
        )
        if position <= room:
            return QueueStatus(position, timedelta(0))
        if kind not in self._handling:
            self._handling[kind] = _median_handling(self.team, kind, self.now)
        return QueueStatus(position, self._handling[kind] * (position - room) / at_once)


def _median_handling(team: Team, kind: str, now: datetime) -> timedelta:
    spans = (
        Conversation.objects.filter(
            team=team,
            inbox__kind=kind,
            status__in=Conversation.ENDED,
            merged_into=None,
            resolved_at__gte=now - HANDLING_LOOKBACK,
        )
        .order_by("-resolved_at")
        .values_list("created_at", "resolved_at")[:HANDLING_SAMPLE]
    )
    durations = [resolved - created for created, resolved in spans]
    if len(durations) < HANDLING_MIN_SAMPLE:
        return HANDLING_DEFAULT
    return statistics.median(durations)
