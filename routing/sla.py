"""SLA clocks: how long a customer has waited on us, against the targets of their policy.

Each target being measured is a SlaClock row on the conversation:

- first response: starts with the customer's first message, stops at the first reply;
- next response: starts with a customer message that follows a reply, stops at the next one;
- resolution: starts when the conversation opens (or reopens), stops when it is resolved.

Clocks count business hours when their policy says so (the inbox's schedule, else its team's;
see routing.hours), and pause while the conversation is pending, which is how an agent says
"waiting on the customer": their reply resumes them. A first response never pauses: before
any reply nobody waits on the customer. Snoozing does not pause anything: a
conversation set aside is still ours to answer. A clock stopped before its target is met;
one that ran out is breached, and stays breached. Resolving a conversation without a reply
stops its response clocks as not measured; an agent reopening it sets the clock going again,
and a reply that never reached the customer does too, the time it stood still counted.

The conversation services call these functions inside their transaction, with the
conversation locked, and then save it: they keep `Conversation.sla_due_at` (the earliest
running target, which the inbox counts down and sorts by) in step. `sla_sweep`, run by the
periodic scheduler, warns before a target and records breaches, once each, and runs the
automations that react to them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Case, Min, Value, When
from django.utils import timezone

from conversations.models import Conversation, ConversationEvent, Message, Notification
from routing import hours
from routing.hours import add_business_time, business_seconds_between
from routing.models import (
    BusinessHours,
    SlaClock,
    SlaPolicy,
    TableCache,
    TeamMembership,
)

log = logging.getLogger(__name__)

Target = SlaClock.Target
Status = Conversation.Status
RESPONSES = (Target.FIRST_RESPONSE, Target.NEXT_RESPONSE)
# The sweep handles at most this many clocks of each kind per run; the next run takes the rest.
SWEEP_BATCH = 500


# Read on every customer message and reply: kept per process until a policy changes. The
# policies are shared between threads: read them, never change them.
_active_policies = TableCache(SlaPolicy, lambda: tuple(SlaPolicy.objects.filter(is_active=True)))


def policy_for(channel: str, priority: int, policies=None) -> SlaPolicy | None:
    """The most specific active policy for a channel and priority (see SlaPolicy)."""
    if policies is None:
        policies = _active_policies.get()
    fitting = [
        policy
        for policy in policies
        if policy.channel in ("", channel) and policy.priority in (None, priority)
    ]
    return max(
        fitting,
        key=lambda p: (p.priority is not None, p.channel != "", -p.pk),
        default=None,
    )


def sla_clock_rerun(conversation: Conversation, clock: SlaClock) -> None:
    """Work out again when a running clock falls due, counting from its `running_since` (the
    demo data, moved back in time, uses it). Not saved."""
    _Context(conversation, clock.running_since).run(clock, clock.policy)


class _Context:
    """What one change needs to know, read at most once: the policies and the schedule."""

    def __init__(self, conversation: Conversation, now: datetime):
        self.conversation = conversation
        self.now = now
        self._policies = None
        self._schedule = ...

    @property
    def policies(self) -> tuple[SlaPolicy, ...]:
        if self._policies is None:
            self._policies = _active_policies.get()
        return self._policies

    def schedule(self, business_hours_only: bool) -> BusinessHours | None:
        if not business_hours_only:
            return None
        if self._schedule is ...:
            conversation = self.conversation  # its team now, not its inbox's default team
            self._schedule = hours.schedule_for(conversation.inbox, conversation.team_id)
        return self._schedule

    def start(self, target: str, channel: str) -> SlaClock | None:
        policy = policy_for(channel, self.conversation.priority, self.policies)
        goal = policy.goal(target) if policy else None
        if goal is None:
            return None
        clock = SlaClock(
            conversation=self.conversation,
            policy=policy,
            target=target,
            channel=channel,
            goal_seconds=goal,
            business_hours_only=policy.business_hours_only,
            started_at=self.now,
        )
        self.run(clock, policy)
        return clock

    def counted(self, clock: SlaClock) -> float:
        """Seconds the clock has counted up to now."""
        if clock.running_since is None:
            return clock.elapsed_seconds
        schedule = self.schedule(clock.business_hours_only)
        return clock.elapsed_seconds + business_seconds_between(
            schedule, clock.running_since, self.now
        )

    def run(self, clock: SlaClock, policy: SlaPolicy | None) -> None:
        """(Re)start counting from now: work out when the rest of the target runs out."""
        clock.running_since = self.now
        remaining = clock.goal_seconds - clock.elapsed_seconds
        schedule = self.schedule(clock.business_hours_only)
        if remaining <= 0:  # already over: it stays due when it ran out
            clock.due_at = clock.breached_at or self.now
        else:
            clock.due_at = add_business_time(schedule, self.now, remaining)
        # The warning comes with as much of the target's time left as the policy says, counted
        # as the target is: 30 working minutes before a target due at 09:20 on Monday is 17:50
        # on Friday, while someone can still answer, not 08:50 on Monday before anyone is in.
        warn = policy.warn_minutes * 60 if policy else 0
        clock.warn_at = (
            add_business_time(schedule, self.now, max(0.0, remaining - warn))
            if clock.due_at and not clock.warned_at
            else None
        )

    def policy_now(self, clock: SlaClock) -> SlaPolicy | None:
        """The policy that measures `clock`'s target now (the conversation's priority may
        have changed), or None when none does."""
        policy = policy_for(clock.channel, self.conversation.priority, self.policies)
        return policy if policy and policy.goal(clock.target) is not None else None

    def follow_status(self, clock: SlaClock) -> bool:
        """Run or pause `clock` as the conversation's status says (pending pauses all but a
        first response: before any reply nobody waits on the customer). True if it changed."""
        conversation = self.conversation
        paused = conversation.status == Status.PENDING and clock.target != Target.FIRST_RESPONSE
        if paused and clock.running_since is not None:
            self.pause(clock)
        elif not paused and clock.running_since is None:
            self.run(clock, clock.policy)
        else:
            return False
        return True

    def pause(self, clock: SlaClock) -> None:
        clock.elapsed_seconds = self.counted(clock)
        clock.running_since = clock.due_at = clock.warn_at = None

    def stop(self, clock: SlaClock, *, answered: bool) -> None:
        ran_out = clock.due_at if clock.due_at and clock.due_at <= self.now else self.now
        clock.elapsed_seconds = self.counted(clock)
        clock.running_since = clock.due_at = clock.warn_at = None
        clock.stopped_at = self.now
        if clock.breached_at or clock.elapsed_seconds > clock.goal_seconds:
            # Over its target: breached, even when the sweep has not been round to say so.
            clock.outcome = SlaClock.Outcome.BREACHED
            clock.breached_at = clock.breached_at or ran_out
        else:
            clock.outcome = SlaClock.Outcome.MET if answered else SlaClock.Outcome.CANCELLED


def _unstopped(conversation: Conversation, *targets):
    clocks = SlaClock.objects.filter(conversation=conversation, stopped_at=None)
    return clocks.filter(target__in=targets) if targets else clocks


def sla_due_set(conversation: Conversation) -> None:
    """Set `conversation.sla_due_at` (not saved) from its running clocks."""
    conversation.sla_due_at = (
        SlaClock.objects.filter(conversation=conversation, stopped_at=None)
        .exclude(due_at=None)
        .aggregate(due=Min("due_at"))["due"]
    )


# --- What the conversation services call ----------------------------------------------------


def sla_customer_wrote(
    *,
    conversation: Conversation,
    message: Message,
    opened: bool,
    was_waiting: bool,
    previous_status: str,
    now: datetime,
) -> None:
    """A customer message arrived (already routed, when it opened the conversation). Starts
    what it starts and resumes what waited on the customer. Automatic mail (auto-replies, list
    mail) asks nothing of us and starts nothing."""
    from channels_adapters.registry import adapter_for  # which imports the services

    if message.metadata.get("automated"):
        return
    context = _Context(conversation, now)
    changed = []
    if not opened and previous_status == Status.PENDING:
        for clock in _unstopped(conversation).filter(running_since=None):
            context.run(clock, clock.policy)
            changed.append(clock)
    if opened or previous_status in Conversation.ENDED:
        changed.append(context.start(Target.RESOLUTION, conversation.inbox.kind))
    # No response target where agents cannot reply (an API inbox without its webhook): it
    # would breach, and alert the leads, every time, whatever anyone did.
    adapter = adapter_for(message.channel)
    if not was_waiting and adapter and adapter.replies_from(message.inbox):
        target = Target.NEXT_RESPONSE if conversation.first_response_at else Target.FIRST_RESPONSE
        if opened or not _unstopped(conversation, *RESPONSES).exists():
            changed.append(context.start(target, message.channel))
    changed = [clock for clock in changed if clock is not None]
    if not changed:
        return
    for clock in changed:
        clock.save()
    if opened:  # nothing else can run yet
        conversation.sla_due_at = min((c.due_at for c in changed if c.due_at), default=None)
    else:
        sla_due_set(conversation)


def sla_agent_replied(*, conversation: Conversation, now: datetime) -> None:
    """A reply reached (or is on its way to) the customer: the response clocks stop."""
    clocks = list(_unstopped(conversation, *RESPONSES))
    if not clocks:
        return
    context = _Context(conversation, now)
    for clock in clocks:
        context.stop(clock, answered=True)
        clock.save()
    sla_due_set(conversation)


def sla_status_changed(*, conversation: Conversation, previous: str, now: datetime) -> None:
    """Pending pauses the clocks (not a first response: before any reply, nothing waits on
    the customer, and pending would hide a breach); back to open resumes them; resolved or
    closed stops them."""
    status = conversation.status
    if status == previous:
        return
    context = _Context(conversation, now)
    for clock in _unstopped(conversation):
        if status in Conversation.ENDED:
            context.stop(clock, answered=clock.target == Target.RESOLUTION)
        elif not context.follow_status(clock):
            continue
        clock.save()
    if previous in Conversation.ENDED and status not in Conversation.ENDED:
        # Reopened: resolving it is a target again, as when the customer reopens it.
        clock = context.start(Target.RESOLUTION, conversation.inbox.kind)
        if clock is not None:
            context.follow_status(clock)
            clock.save()
    sla_due_set(conversation)


def sla_waiting_again(
    *, conversation: Conversation, since: datetime, now: datetime, stood_still_counts: bool
) -> None:
    """The customer waits on us again for what they wrote at `since`: the reply that stopped
    their response clock never reached them, or the conversation was resolved unanswered and
    an agent opened it again. That clock goes on. For a reply that never arrived, the time it
    stood still counts (the customer waited all along); for a reopening it does not (a
    "Thanks!" resolved overnight is not a night's wait). Nothing changes while a response
    clock runs, or where the policy no longer measures the target."""
    if _unstopped(conversation, *RESPONSES).exists():
        return
    clock = (
        SlaClock.objects.filter(conversation=conversation, target__in=RESPONSES)
        .filter(stopped_at__gte=since)
        .order_by("-stopped_at", "-pk")
        .first()
    )
    if clock is None:
        return
    context = _Context(conversation, now)
    policy = context.policy_now(clock)
    if policy is None:
        return
    _adopt(clock, policy)
    clock.running_since = clock.stopped_at if stood_still_counts else now
    clock.stopped_at, clock.outcome = None, ""
    clock.elapsed_seconds = context.counted(clock)
    clock.running_since = None  # its time counted: as paused, until the status says
    context.follow_status(clock)
    clock.save()
    sla_due_set(conversation)


def _adopt(clock: SlaClock, policy: SlaPolicy) -> None:
    """`clock` measured by `policy` from now on (its goal and its kind of hours)."""
    clock.policy, clock.goal_seconds = policy, policy.goal(clock.target)
    clock.business_hours_only = policy.business_hours_only


def sla_retarget(*, conversation: Conversation, now: datetime) -> None:
    """The priority or team changed: running clocks take the targets of the policy that now
    applies, and the schedule of the team that now answers. A target the new policy does not
    measure stops as not measured. Time already counted stays counted."""
    clocks = list(_unstopped(conversation))
    if not clocks:
        return
    context = _Context(conversation, now)
    for clock in clocks:
        policy = context.policy_now(clock)
        if policy is None:
            context.stop(clock, answered=False)
        else:
            running = clock.running_since is not None
            context.pause(clock)
            _adopt(clock, policy)
            if running:
                context.run(clock, policy)
        clock.save()
    sla_due_set(conversation)


# --- An admin changing the rules -------------------------------------------------------------


def sla_clocks_hold(clocks) -> list[SlaClock]:
    """Before an admin's change to a schedule or a policy is saved, in its transaction: the
    `clocks` not stopped take what they counted up to now under the rules they had. Give the
    result to sla_clocks_resume once the change is saved."""
    pending = clocks.filter(stopped_at=None)
    # Their conversations first, in id order, as every service locks one, then the clocks
    # (still not stopped: a reply may have stopped one meanwhile). One the sweep is alerting
    # on is skipped: it waits for its conversation, locked here, and has run out anyway.
    conversations = list(
        Conversation.objects.select_for_update()
        .filter(pk__in=pending.values("conversation_id"))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    held = list(
        pending.filter(conversation__in=conversations)
        .select_for_update(skip_locked=True, of=("self",))
        .select_related("conversation__inbox")
    )
    contexts = _Contexts(timezone.now())
    for clock in held:
        contexts.of(clock.conversation).pause(clock)
    return held


def sla_clocks_resume(held: list[SlaClock]) -> int:
    """The change is saved: the held clocks count on under the rules now in force (their
    conversation's policy and schedule), and their conversations' due times follow. A target
    the policies no longer measure stops as not measured. Returns how many went on."""
    if not held:
        return 0
    # Read again: the change may be to their inbox (its hours, its team).
    fresh = Conversation.objects.select_related("inbox").in_bulk(
        {clock.conversation_id for clock in held}
    )
    contexts = _Contexts(timezone.now())
    with TableCache.snapshot():
        for clock in held:
            context = contexts.of(fresh[clock.conversation_id])
            policy = context.policy_now(clock)
            if policy is None:
                context.stop(clock, answered=False)
            else:
                _adopt(clock, policy)
                context.follow_status(clock)
    SlaClock.objects.bulk_update(held, HELD_FIELDS, batch_size=500)
    due = dict(
        SlaClock.objects.filter(conversation__in=fresh, stopped_at=None)
        .exclude(due_at=None)
        .values("conversation")
        .annotate(due=Min("due_at"))
        .values_list("conversation", "due")
    )
    for conversation in fresh.values():
        conversation.sla_due_at = due.get(conversation.pk)
    Conversation.objects.bulk_update(fresh.values(), ["sla_due_at"], batch_size=500)
    from conversations.realtime import publish_conversations_changed

    # Open lists and pages show the new times at once.
    rows = [
        {
            "pk": conversation.pk,
            "team_id": conversation.team_id,
            "assignee_id": conversation.assignee_id,
            "inbox__default_team_id": conversation.inbox.default_team_id,
        }
        for conversation in fresh.values()
    ]
    publish_conversations_changed(rows, "sla")
    return len(held)


# What holding and resuming a clock may change.
HELD_FIELDS = [
    "policy",
    "goal_seconds",
    "business_hours_only",
    "elapsed_seconds",
    "running_since",
    "due_at",
    "warn_at",
    "breached_at",
    "stopped_at",
    "outcome",
]


class _Contexts:
    """A _Context per conversation, sharing schedules: many conversations keep the same."""

    def __init__(self, now: datetime):
        self.now, self.contexts, self.schedules = now, {}, {}

    def of(self, conversation: Conversation) -> _Context:
        context = self.contexts.get(conversation.pk)
        if context is None:
            context = self.contexts[conversation.pk] = _Context(conversation, self.now)
            inbox = conversation.inbox
            key = (inbox.business_hours_id, conversation.team_id or inbox.default_team_id)
            if key not in self.schedules:
                self.schedules[key] = hours.schedule_for(inbox, conversation.team_id)
            context._schedule = self.schedules[key]
        return context


# --- The sweep ---------------------------------------------------------------------------------


def sla_sweep(*, now: datetime | None = None) -> dict:
    """Warn about targets about to run out and record the ones that ran out. Each clock is
    handled once, under its row lock: a second sweep, in parallel or later, finds nothing."""
    now = now or timezone.now()
    due = SlaClock.objects.filter(stopped_at=None, breached_at=None, due_at__lte=now)
    soon = SlaClock.objects.filter(stopped_at=None, warned_at=None, warn_at__lte=now)
    breached = sum(_alert(pk, breach=True, now=now) for pk in _ids(due))
    warned = sum(_alert(pk, breach=False, now=now) for pk in _ids(soon))
    return {"warned": warned, "breached": breached}


def _ids(clocks) -> list[int]:
    return list(clocks.order_by("due_at").values_list("pk", flat=True)[:SWEEP_BATCH])


def _alert(clock_id: int, *, breach: bool, now: datetime) -> bool:
    from conversations.realtime import publish_conversation_event
    from conversations.services import _event, _notify
    from routing.automations import automations_run

    with transaction.atomic():
        clocks = SlaClock.objects.select_for_update(skip_locked=True).filter(
            pk=clock_id, stopped_at=None
        )
        clock = (
            clocks.filter(breached_at=None, due_at__lte=now)
            if breach
            else clocks.filter(warned_at=None, breached_at=None, warn_at__lte=now)
        ).first()
        if clock is None:
            return False  # stopped, done or being done by another sweep
        conversation = Conversation.objects.select_related("customer").get(pk=clock.conversation_id)
        clock.warned_at = clock.warned_at or now  # a breach makes a late warning pointless
        if breach:
            clock.breached_at = clock.due_at
        clock.save(update_fields=["warned_at", "breached_at"])
        state = "breached" if breach else "warning"
        _event(
            conversation,
            ConversationEvent.Kind.SLA,
            target=clock.target,
            state=state,
            due_at=clock.due_at.isoformat(),
        )
        leads = list(
            TeamMembership.objects.filter(
                team=conversation.team_id, is_lead=True, user__is_active=True
            ).values_list("user_id", flat=True)
        )
        if breach:
            recipients = [conversation.assignee_id, *leads]
        else:
            recipients = [conversation.assignee_id] if conversation.assignee_id else leads
        kind = Notification.Kind.SLA_BREACHED if breach else Notification.Kind.SLA_WARNING
        _notify(
            [pk for pk in recipients if pk],
            kind,
            conversation,
            text=_alert_text(clock, breach, now, conversation),
        )
        publish_conversation_event(conversation, "sla", target=clock.target, state=state)
        # In this transaction: the alert's record is what makes the automations fire once.
        automations_run(conversation=conversation, event="sla_breach" if breach else "sla_warning")
    log.info("SLA %s %s on conversation %s", clock.target, state, conversation.pk)
    return True


def _alert_text(clock: SlaClock, breach: bool, now: datetime, conversation) -> str:
    what = clock.get_target_display()
    if breach:
        return f"{what} target breached on #{clock.conversation_id}"
    schedule = _Context(conversation, now).schedule(clock.business_hours_only)
    left = business_seconds_between(schedule, now, clock.due_at)
    minutes = max(1, round(left / 60))
    # A warning at Friday's closing for a target due on Monday morning says it counts open time.
    later = " of business hours" if clock.due_at - now > timedelta(seconds=left + 60) else ""
    return f"{what} on #{clock.conversation_id} is due in {minutes} min{later}"


def sla_merged(*, source: Conversation, target: Conversation, now: datetime) -> None:
    """`source` was folded into `target`. Of each target the two measure, the clock that
    started first goes on in `target` (the customer has waited since then), running or
    paused as `target` is; the rest stop as not measured. Then `target`'s clocks take the
    policy of its priority, which the merge may have raised. Not saved."""
    clocks = SlaClock.objects.filter(conversation__in=[source, target], stopped_at=None)
    kept = {}
    if target.status not in Conversation.ENDED:
        for clock in clocks.order_by("started_at", "pk"):
            # One response owed, first or next: the customer's earliest question is it.
            kept.setdefault("response" if clock.target in RESPONSES else clock.target, clock)
    _cancel(clocks.exclude(pk__in=[clock.pk for clock in kept.values()]))
    context = _Context(target, now)
    for clock in kept.values():
        moved = clock.conversation_id != target.pk
        clock.conversation = target
        # Running or paused as the target is now: the merge may have reopened it.
        if context.follow_status(clock) or moved:
            clock.save()
    sla_retarget(conversation=target, now=now)
    sla_due_set(target)


def _cancel(clocks) -> int:
    """Stop `clocks` as not measured (breached, if they were)."""
    return clocks.update(
        stopped_at=timezone.now(),
        running_since=None,
        due_at=None,
        warn_at=None,
        outcome=Case(
            When(breached_at__isnull=False, then=Value(SlaClock.Outcome.BREACHED)),
            default=Value(SlaClock.Outcome.CANCELLED),
        ),
    )
