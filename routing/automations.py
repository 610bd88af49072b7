"""Automations and macros: one vocabulary of actions, one executor, and what sets them off.

An automation's or macro's actions are a JSON list, done in order:

    [{"action": "add_tags", "tags": ["refund-issued"]},
     {"action": "reply", "canned": 4},
     {"action": "status", "status": "resolved"}]

| action      | keys                  | does                                                      |
|-------------|-----------------------|-----------------------------------------------------------|
| assign      | agent: id             | assign to this (active) agent                             |
| unassign    |                       | back to the team's queue                                  |
| team        | team: id              | move to this team                                         |
| priority    | priority: name        | low, normal, high or urgent                               |
| add_tags    | tags: names           | a list or "a, b"                                          |
| remove_tags | tags: names           |                                                           |
| reply       | canned: id            | send this canned response to the customer                 |
| note        | text                  | add an internal note                                      |
| status      | status                | open, pending, resolved or closed                         |
| snooze      | hours                 | snooze for this many hours                                |
| notify      | to, text (optional)   | an in-app notification to "assignee", "team_leads" or an  |
|             |                       | agent's id                                                |

Every action goes through `conversations.services`, so each leaves its usual event, real-time
update, notification and delivery; a `ConversationEvent` of kind automation (or macro) before
them names who did it, what was done and what was refused. Replies and notes fill the canned
response placeholders (`conversations.canned`): {agent.name} is the agent applying a macro;
for an automation, the conversation's assignee, else its team, else its inbox. Actions are
independent: one the services refuse (a customer who opted out, an agent since deactivated)
is skipped and its reason recorded, and the others still happen.

Triggers. The services call `automations_run(conversation=..., event=...)` where a change
happens, inside the transaction that makes it: a customer opened a conversation (after routing)
or replied, the status changed, it was assigned; the SLA sweeper calls it for "sla_warning" and
"sla_breach". Running in the same transaction is what makes them exact: the automations' changes
commit with the change that set them off, or not at all, and a job that runs twice makes no
second change for them to react to. A failure in an automation is logged and rolled back to a
savepoint; it never loses the change (or the customer's message) that triggered it. The
`idle` event ("pending for 3 days") comes from `automations_idle_sweep`, a periodic task.

Loops. Changes made by automations raise events of their own, handled in the same chain once
the current automation is done (breadth first): up to MAX_DEPTH events deep, and each automation
acts at most once per conversation in a chain, so two automations that undo each other stop
after one round each. A loop through the queue (an "assigned" automation that unassigns: the
queue, a task, assigns again and starts a new chain) is cut by a budget: an automation acts on
one conversation at most BURST_LIMIT times in BURST_WINDOW, after which it is stopped there and
the timeline says so.

Automations are compiled once per change and kept in the process, like routing rules (see
`routing.rules.rules_load`), so an edit in admin applies at once, without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from conversations import services
from conversations.canned import canned_fill, canned_render
from conversations.models import (
    CannedResponse,
    Conversation,
    ConversationEvent,
    Notification,
)
from conversations.realtime import publish_conversation_event
from conversations.selectors import can_see
from routing.models import (
    Automation,
    AutomationRun,
    Macro,
    RoutingRule,
    TableCache,
    Team,
    TeamMembership,
    tag_names,
)
from routing.rules import ID_MAX, PRIORITIES, Facts, Test, conditions_compile

log = logging.getLogger(__name__)

Event = Automation.Event
Status = Conversation.Status
# How far automations may set each other off: events raised by automations' changes are handled
# up to this many steps from the change that began the chain.
MAX_DEPTH = 3
# How often one automation may act on one conversation, across chains (see the docstring).
BURST_LIMIT = 5
BURST_WINDOW = timedelta(hours=1)
# Conversations the idle sweep checks per automation and run; the next run takes the rest.
IDLE_BATCH = 200
# A stay whose conditions did not hold is looked at again this often.
IDLE_RECHECK = timedelta(hours=1)
MAX_ACTIONS = 20
MAX_NOTE_CHARS = 5000
MAX_SNOOZE_HOURS = 24 * 365


# --- The vocabulary --------------------------------------------------------------------------


# What the id of an action names (a notification also goes to "assignee" or "team_leads").
REFERS = {"assign": "agent", "notify": "agent", "team": "team", "reply": "canned response"}


@dataclass(frozen=True)
class Action:
    """One action, checked and normalised: `value` is the id, name, number or tag names it
    takes, `text` a note's or notification's text."""

    kind: str
    value: object = None
    text: str = ""

    def __str__(self) -> str:
        return self.said()

    def said(self, name: Callable[[str, int], str] | None = None) -> str:
        """What it does, in words; `name(what, id)`, when given, says what an id names (an
        agent, a team, a canned response: see REFERS) instead of the bare id."""
        what = REFERS.get(self.kind) if isinstance(self.value, int) else None
        named = name(what, self.value) if what and name else ""
        match self.kind:
            case "unassign":
                return "unassign"
            case "assign":
                return f"assign to {named or f'agent {self.value}'}"
            case "team":
                return f"move to team {named or self.value}"
            case "priority":
                return f"priority {_priority_name(self.value)}"
            case "add_tags" | "remove_tags":
                verb = "tag" if self.kind == "add_tags" else "untag"
                return f"{verb} {', '.join(sorted(self.value))}"
            case "reply":
                return f"reply with {named or f'canned response {self.value}'}"
            case "note":
                return "add a note"
            case "status":
                return f"status {self.value}"
            case "snooze":
                return f"snooze {self.value:g} h"
            case _:
                return f"notify {named or str(self.value).replace('_', ' ')}"


def _priority_name(value: int) -> str:
    return next(name for name, number in PRIORITIES.items() if number == value)


def _id(spec: dict, key: str, what: str) -> int:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= ID_MAX:
        raise ValidationError(f'give the {what}\'s id as a number, e.g. {{"{key}": 3}}.')
    return value


def _parse_tags(spec: dict) -> frozenset[str]:
    value = spec.get("tags")
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = ",".join(value)
    names = tag_names(value) if isinstance(value, str) else frozenset()
    if not names or len(names) > 20:
        raise ValidationError('give 1 to 20 tag names, e.g. {"tags": ["refund", "vip"]}.')
    return names


def _parse_priority(spec: dict) -> int:
    name = str(spec.get("priority", "")).strip().lower()
    if name not in PRIORITIES:
        raise ValidationError(f"the priority is one of {', '.join(PRIORITIES)}.")
    return PRIORITIES[name]


STATUSES = (Status.OPEN, Status.PENDING, Status.RESOLVED, Status.CLOSED)


def _parse_status(spec: dict) -> str:
    status = spec.get("status")
    if status == Status.SNOOZED:
        raise ValidationError('use {"action": "snooze", "hours": ...} to snooze.')
    if status not in STATUSES:
        raise ValidationError(f"the status is one of {', '.join(STATUSES)}.")
    return status


def _parse_hours(spec: dict) -> float:
    hours = spec.get("hours")
    if isinstance(hours, bool) or not isinstance(hours, int | float):
        raise ValidationError('give the hours as a number, e.g. {"hours": 24}.')
    if not 0 < hours <= MAX_SNOOZE_HOURS:
        raise ValidationError(f"snooze for more than 0 and at most {MAX_SNOOZE_HOURS} hours.")
    return float(hours)


def _parse_text(spec: dict, *, required: bool, limit: int) -> str:
    text = spec.get("text", "")
    if not isinstance(text, str) or (required and not text.strip()):
        raise ValidationError('give the text, e.g. {"text": "Checked by the night shift."}.')
    if len(text) > limit:
        raise ValidationError(f"the text has at most {limit} characters.")
    return text.strip()


def _parse_recipient(spec: dict) -> str | int:
    to = spec.get("to")
    if to in ("assignee", "team_leads"):
        return to
    if isinstance(to, int) and not isinstance(to, bool) and to > 0:
        return to
    raise ValidationError('"to" is "assignee", "team_leads" or an agent\'s id.')


# Each action: the keys it takes besides "action", and how to read them into an Action.
PARSERS: dict[str, tuple[tuple[str, ...], Callable[[dict], Action]]] = {
    "assign": (("agent",), lambda s: Action("assign", _id(s, "agent", "agent"))),
    "unassign": ((), lambda s: Action("unassign")),
    "team": (("team",), lambda s: Action("team", _id(s, "team", "team"))),
    "priority": (("priority",), lambda s: Action("priority", _parse_priority(s))),
    "add_tags": (("tags",), lambda s: Action("add_tags", _parse_tags(s))),
    "remove_tags": (("tags",), lambda s: Action("remove_tags", _parse_tags(s))),
    "reply": (("canned",), lambda s: Action("reply", _id(s, "canned", "canned response"))),
    "note": (
        ("text",),
        lambda s: Action("note", text=_parse_text(s, required=True, limit=MAX_NOTE_CHARS)),
    ),
    "status": (("status",), lambda s: Action("status", _parse_status(s))),
    "snooze": (("hours",), lambda s: Action("snooze", _parse_hours(s))),
    "notify": (
        ("to", "text"),
        lambda s: Action("notify", _parse_recipient(s), _parse_text(s, required=False, limit=200)),
    ),
}

HELP = (
    'A list of actions done in order, each {"action": ..., ...}, e.g. '
    '[{"action": "add_tags", "tags": ["refund-issued"]}, {"action": "reply", "canned": 4}, '
    '{"action": "status", "status": "resolved"}]. Actions: assign (agent: id), unassign, '
    "team (team: id), priority (priority: low, normal, high or urgent), add_tags and "
    "remove_tags (tags: a list), reply (canned: a canned response's id), note (text), status "
    "(status: open, pending, resolved or closed), snooze (hours), notify (to: "
    '"assignee", "team_leads" or an agent\'s id; text, optional). Ids are listed below.'
)


def actions_compile(actions) -> tuple[Action, ...]:
    """The actions checked and read, or ValidationError with one message per bad action
    ("Action 2 (reply): ..."). Whether the ids name something is `actions_references_check`'s
    job: an agent deactivated later only skips that action when it runs."""
    if not isinstance(actions, list) or not actions:
        raise ValidationError(
            'Give at least one action: [{"action": "status", "status": "resolved"}].'
        )
    if len(actions) > MAX_ACTIONS:
        raise ValidationError(f"Give at most {MAX_ACTIONS} actions.")
    compiled, problems = [], []
    for number, spec in enumerate(actions, start=1):
        label = f"Action {number}"
        try:
            if not isinstance(spec, dict) or not isinstance(spec.get("action"), str):
                raise ValidationError('it must look like {"action": ..., ...}.')
            kind = spec["action"]
            label += f" ({kind})"
            if kind not in PARSERS:
                raise ValidationError(f"unknown action; use one of {', '.join(PARSERS)}.")
            keys, parse = PARSERS[kind]
            extra = set(spec) - {"action", *keys}
            if extra:
                raise ValidationError(f"unknown keys {', '.join(sorted(map(str, extra)))}.")
            compiled.append(parse(spec))
        except ValidationError as exc:
            problems += [f"{label}: {message}" for message in exc.messages]
    if problems:
        raise ValidationError(problems)
    return tuple(compiled)


def actions_references_check(actions: tuple[Action, ...]) -> list[str]:
    """Messages for ids that name no active agent, team or canned response."""
    found = {
        "agent": get_user_model().objects.filter(is_active=True),
        "team": Team.objects.all(),
        "canned response": CannedResponse.objects.all(),
    }
    problems = []
    for what in found:
        ids = {a.value for a in actions if _names(a, what)}
        if not ids:
            continue
        missing = ids - set(found[what].filter(pk__in=ids).values_list("pk", flat=True))
        if missing:
            active = "active " if what == "agent" else ""
            problems.append(f"No {active}{what} has the id {', '.join(map(str, sorted(missing)))}.")
    return problems


def actions_naming(what: str, pk: int) -> list[str]:
    """ "Automation “Night desk”", "Macro “Refund issued”": those whose actions name `pk` as
    `what` ("agent", "team" or "canned response"), for refusing to delete what they use."""
    using = []
    for model in (Automation, Macro):
        for name, actions in model.objects.values_list("name", "actions"):
            try:
                named = any(_names(a, what) and a.value == pk for a in actions_compile(actions))
            except ValidationError:
                continue  # it names nothing usable anyway
            if named:
                using.append(f"{model._meta.verbose_name.capitalize()} “{name}”")
    return using


def conditions_naming(what: str, pk: int) -> list[str]:
    """ "Routing rule “VIP”", "Automation “Night desk”": those whose conditions name `pk` as
    `what` ("agent" or "team"): deleted, it would leave them matching nothing, unsaid."""
    field = {"agent": "assignee", "team": "team"}[what]
    using = []
    for model in (RoutingRule, Automation):
        for name, conditions in model.objects.values_list("name", "conditions"):
            for condition in conditions if isinstance(conditions, list) else []:
                if not isinstance(condition, dict) or condition.get("field") != field:
                    continue
                value = condition.get("value")
                if pk == value or (isinstance(value, list) and pk in value):
                    using.append(f"{model._meta.verbose_name.capitalize()} “{name}”")
                    break
    return using


def _names(action: Action, what: str) -> bool:
    """Whether the action's value is the id of `what` (see REFERS)."""
    return REFERS.get(action.kind) == what and isinstance(action.value, int)


# --- Doing them ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Signature:
    """Who {agent.name} is in an automation's reply: nobody typed it."""

    name: str


def _signature(conversation: Conversation, actor):
    if actor is not None:
        return actor
    if conversation.assignee_id:
        return conversation.assignee
    return _Signature(conversation.team.name if conversation.team_id else conversation.inbox.name)


def _do_assign(action, conversation, actor, source):
    agent = get_user_model().objects.filter(pk=action.value, is_active=True).first()
    if agent is None:
        raise ValidationError("not an active agent.")
    services.conversation_assign(
        conversation=conversation, assignee=agent, actor=actor, automation="" if actor else source
    )
    return f"assigned to {agent.name}"


def _do_unassign(action, conversation, actor, source):
    services.conversation_assign(
        conversation=conversation, assignee=None, actor=actor, automation="" if actor else source
    )
    return "unassigned"


def _do_team(action, conversation, actor, source):
    team = Team.objects.filter(pk=action.value).first()
    if team is None:
        raise ValidationError("there is no such team.")
    services.conversation_set_team(conversation=conversation, team=team, actor=actor)
    return f"moved to {team.name}"


def _do_priority(action, conversation, actor, source):
    services.conversation_set_priority(
        conversation=conversation, priority=action.value, actor=actor
    )
    return f"priority {_priority_name(action.value)}"


def _do_tags(action, conversation, actor, source):
    names = sorted(action.value)
    if action.kind == "add_tags":
        services.conversation_tag(conversation=conversation, add=names, actor=actor)
    else:
        services.conversation_tag(conversation=conversation, remove=names, actor=actor)
    return str(action)


def _do_reply(action, conversation, actor, source):
    canned = CannedResponse.objects.filter(pk=action.value).first()
    if canned is None:
        raise ValidationError("there is no such canned response.")
    text, unfilled = canned_fill(
        canned.body, conversation=conversation, agent=_signature(conversation, actor)
    )
    if unfilled:
        # An agent sees "{customer.first_name}" in the box and fixes it; a customer would not.
        raise ValidationError(
            f"nothing to put for {', '.join(f'{{{name}}}' for name in unfilled)} here, "
            "so it was not sent."
        )
    services.reply_send(conversation=conversation, author=actor, text=text)
    return f"replied with /{canned.shortcut}"


def _do_note(action, conversation, actor, source):
    text = canned_render(
        action.text, conversation=conversation, agent=_signature(conversation, actor)
    )
    # Signed by the automation when it wrote the note, not by the inbox.
    automation = "" if actor else source
    services.note_add(conversation=conversation, author=actor, text=text, automation=automation)
    return "added a note"


def _do_status(action, conversation, actor, source):
    services.conversation_set_status(conversation=conversation, status=action.value, actor=actor)
    return f"status {action.value}"


def _do_snooze(action, conversation, actor, source):
    until = timezone.now() + timedelta(hours=action.value)
    services.conversation_set_status(
        conversation=conversation, status=Status.SNOOZED, actor=actor, snoozed_until=until
    )
    return f"snoozed for {action.value:g} h"


def _do_notify(action, conversation, actor, source):
    if action.value == "assignee":
        if not conversation.assignee_id:
            raise ValidationError("nobody is assigned.")
        recipients = [conversation.assignee_id]
    elif action.value == "team_leads":
        recipients = list(
            TeamMembership.objects.filter(
                team_id=conversation.team_id, is_lead=True, user__is_active=True
            ).values_list("user_id", flat=True)
        )
        if not recipients:
            raise ValidationError("the conversation's team has no leads.")
    else:
        agent = get_user_model().objects.filter(pk=action.value, is_active=True).first()
        # Never point someone at a conversation they may not open.
        if not can_see(agent, conversation):
            raise ValidationError("not an active agent who sees it.")
        recipients = [agent.pk]
    text = f"{source}: {action.text}" if action.text else source
    services._notify(recipients, Notification.Kind.AUTOMATION, conversation, actor=actor, text=text)
    return str(action)


DOERS = {
    "assign": _do_assign,
    "unassign": _do_unassign,
    "team": _do_team,
    "priority": _do_priority,
    "add_tags": _do_tags,
    "remove_tags": _do_tags,
    "reply": _do_reply,
    "note": _do_note,
    "status": _do_status,
    "snooze": _do_snooze,
    "notify": _do_notify,
}


def _current(conversation_id: int) -> Conversation | None:
    return (
        Conversation.objects.select_related("inbox", "customer", "team", "assignee")
        .filter(pk=conversation_id)
        .first()
    )


def _actions_do(chain: _Chain, conversation_id: int, actions, *, actor, source: str):
    """Do `actions` one by one, each in a savepoint: one refused is skipped with its reason,
    and whatever it had started (events it raised included) is undone. Once a reply is
    refused, resolving or closing is skipped too: the customer would be left unanswered in
    a conversation nobody sees any more. Returns what was done and what was skipped, as text
    for the timeline."""
    done, skipped = [], []
    unanswered = False
    for action in actions:
        if unanswered and action.kind == "status" and action.value in Conversation.ENDED:
            skipped.append(f"{_said(action)}: the reply before it was not sent")
            continue
        conversation = _current(conversation_id)  # as the previous action left it
        raised = len(chain.pending)
        try:
            with transaction.atomic():
                description = DOERS[action.kind](action, conversation, actor, source)
        except ValidationError as exc:
            del chain.pending[raised:]
            skipped.append(f"{_said(action)}: {' '.join(exc.messages)}")
            unanswered = unanswered or action.kind == "reply"
        except Exception:
            log.exception("%s: %s failed on conversation %s", source, action, conversation_id)
            del chain.pending[raised:]
            skipped.append(f"{_said(action)}: failed (the server log has the details)")
            unanswered = unanswered or action.kind == "reply"
        else:
            done.append(description)
    return done, skipped


def _said(action: Action) -> str:
    """A skipped action in words, naming what its id refers to, as agents know it ("reply
    with /refund", not "canned response 4"). Read only when one is skipped."""

    def name(what: str, pk: int) -> str:
        if what == "canned response":
            shortcut = CannedResponse.objects.filter(pk=pk).values_list("shortcut", flat=True)
            return f"/{shortcut[0]}" if shortcut else ""
        model = Team if what == "team" else get_user_model()
        found = model.objects.filter(pk=pk).first()
        return found.name if found else ""

    return action.said(name)


# --- Compiled automations, read once per change ----------------------------------------------


@dataclass(frozen=True)
class CompiledAutomation:
    pk: int
    name: str
    event: str
    tests: tuple[Test, ...]
    actions: tuple[Action, ...]
    idle_status: str
    idle_hours: int | None

    def matches(self, facts: Facts) -> bool:
        for test in self.tests:
            if not test(facts):
                return False
        return True


def _automations_compile() -> dict[str, tuple[CompiledAutomation, ...]]:
    by_event: dict[str, list[CompiledAutomation]] = {}
    for automation in Automation.objects.filter(is_active=True).order_by("position", "id"):
        try:
            compiled = CompiledAutomation(
                pk=automation.pk,
                name=automation.name,
                event=automation.event,
                tests=conditions_compile(automation.conditions),
                actions=actions_compile(automation.actions),
                idle_status=automation.idle_status,
                idle_hours=automation.idle_hours,
            )
        except ValidationError:  # saved around admin's checks: skip it, loudly
            log.error("automation %s is invalid; skipped", automation.pk)
            continue
        by_event.setdefault(automation.event, []).append(compiled)
    return {event: tuple(items) for event, items in by_event.items()}


_automations = TableCache(Automation, _automations_compile)


def automations_load() -> dict[str, tuple[CompiledAutomation, ...]]:
    """The active automations by event, in order, compiled once per change (TableCache)."""
    return _automations.get()


# --- Chains: events, the automations they set off, and theirs in turn ------------------------


@dataclass
class _Chain:
    """Events waiting to be handled (conversation id, event, depth), the automations that acted
    on which conversation, and the depth of the event being handled now: the changes its
    automations make raise events one deeper."""

    pending: list[tuple[int, str, int]] = field(default_factory=list)
    fired: set[tuple[int, int]] = field(default_factory=set)
    depth: int = 0
    automations: dict[str, tuple[CompiledAutomation, ...]] = field(default_factory=dict)


# Set while a chain runs in this thread, so that services called by its actions add their
# events to it instead of starting chains of their own.
_running: ContextVar[_Chain | None] = ContextVar("automation_chain", default=None)

TRIGGERS = frozenset(Event.values) - {Event.IDLE}


def automations_run(*, conversation: Conversation, event: str | Iterable[str]) -> None:
    """Run the automations for `event` on `conversation`: call it inside the transaction that
    made the change, once that change is written. Several events raised by one change (a
    reply that reopened the conversation: customer_replied and status_changed) form one chain.
    Called by an automation's own action, the events join the running chain instead. An
    automation's failure is logged, never raised: the caller's change stands. Only an unknown
    event raises (ValueError: a bug in the caller)."""
    events = [event] if isinstance(event, str) else list(event)
    unknown = set(events) - TRIGGERS
    if unknown:
        raise ValueError(f"Not an automation event: {sorted(unknown)}")  # a caller's bug
    chain = _running.get()
    if chain is not None:
        chain.pending += [(conversation.pk, name, chain.depth + 1) for name in events]
        return
    try:
        automations = automations_load()
        if not any(automations.get(name) for name in events):
            return  # most events of most conversations: one small query, no savepoint
        with transaction.atomic():
            pending = [(conversation.pk, name, 0) for name in events]
            _chain_run(_Chain(pending=pending, automations=automations))
    except Exception:
        log.exception("automations for %s on conversation %s failed", events, conversation.pk)


def _chain_run(chain: _Chain, first: Callable[[_Chain], None] | None = None) -> None:
    """Do `first` (a macro, an idle automation), then handle the chain's events in order,
    including those raised on the way, down to MAX_DEPTH."""
    token = _running.set(chain)
    try:
        chain.automations = chain.automations or automations_load()
        if first is not None:
            first(chain)
        handled = 0
        while handled < len(chain.pending):
            conversation_id, event, depth = chain.pending[handled]
            handled += 1
            if not chain.automations.get(event):
                continue
            if depth > MAX_DEPTH:
                log.warning(
                    "automations: %s on conversation %s is %s steps deep; not followed",
                    event,
                    conversation_id,
                    depth,
                )
                continue
            chain.depth = depth
            try:
                with transaction.atomic():
                    _event_handle(chain, conversation_id, event)
            except Exception:
                log.exception(
                    "automations for %s on conversation %s failed", event, conversation_id
                )
    finally:
        _running.reset(token)


def _event_handle(chain: _Chain, conversation_id: int, event: str) -> None:
    facts = None
    for automation in chain.automations[event]:
        if (automation.pk, conversation_id) in chain.fired:
            continue
        if facts is None:  # read again after an automation acted: it may have changed
            conversation = _current(conversation_id)
            if conversation is None or conversation.merged_into_id:
                return
            facts = Facts(conversation, None, timezone.now())
        if not automation.matches(facts):
            continue
        chain.fired.add((automation.pk, conversation_id))
        _automation_act(chain, automation, facts.conversation, event)
        facts = None


def _automation_act(chain, automation: CompiledAutomation, conversation, trigger: str) -> None:
    data = {"automation": automation.pk, "name": automation.name, "trigger": trigger}
    if trigger != Event.IDLE and _over_budget(automation.pk, conversation.pk):
        log.warning(
            "automation %s stopped on conversation %s: a loop?", automation.pk, conversation.pk
        )
        data["stopped"] = (
            f"it acted {BURST_LIMIT} times on this conversation within "
            f"{BURST_WINDOW.total_seconds() / 3600:g} h; a loop?"
        )
        ConversationEvent.objects.create(
            conversation=conversation, kind=ConversationEvent.Kind.AUTOMATION, data=data
        )
        publish_conversation_event(conversation, "automation", automation=automation.pk)
        return
    record = ConversationEvent.objects.create(
        conversation=conversation, kind=ConversationEvent.Kind.AUTOMATION, data=data
    )
    done, skipped = _actions_do(
        chain, conversation.pk, automation.actions, actor=None, source=automation.name
    )
    record.data = {**data, "done": done, "skipped": skipped}
    record.save(update_fields=["data"])
    publish_conversation_event(conversation, "automation", automation=automation.pk)


def _over_budget(automation_id: int, conversation_id: int) -> bool:
    recent = ConversationEvent.objects.filter(
        conversation_id=conversation_id,
        kind=ConversationEvent.Kind.AUTOMATION,
        data__automation=automation_id,
        created_at__gte=timezone.now() - BURST_WINDOW,
    )
    return recent.count() >= BURST_LIMIT


# --- Idle: "pending for 3 days" --------------------------------------------------------------

# The events that put a conversation in its current status; the newest one says since when.
STATUS_KINDS = (
    ConversationEvent.Kind.CREATED,
    ConversationEvent.Kind.STATUS,
    ConversationEvent.Kind.REOPENED,
)


def _in_status_since():
    return Subquery(
        ConversationEvent.objects.filter(conversation=OuterRef("pk"), kind__in=STATUS_KINDS)
        .order_by("-id")
        .values("created_at")[:1]
    )


def automations_idle_sweep(*, now: datetime | None = None, limit: int = IDLE_BATCH) -> int:
    """Run idle automations on conversations that have been in their status long enough: at
    most once per automation and stay (a conversation that leaves the status and comes back
    starts a new stay). A stay whose conditions do not hold is looked at again every
    IDLE_RECHECK while it lasts ("open a day and still unassigned" holds once it is sent back
    to the queue). Safe to run often, twice at once, or late: a stay acted on or lately
    checked is skipped, and each check is recorded in the transaction that acts. Returns how
    many acted."""
    now = now or timezone.now()
    acted = 0
    for automation in automations_load().get(Event.IDLE, ()):
        try:
            due = _idle_due(automation, now, limit)
        except Exception:  # one broken automation (saved around admin's checks) stops no other
            log.exception("idle automation %s could not look for conversations", automation.pk)
            continue
        for conversation_id, since in due:
            try:
                acted += _idle_check(automation, conversation_id, since, now)
            except Exception:  # the next run tries it again; the others go on
                log.exception(
                    "idle automation %s on conversation %s failed", automation.pk, conversation_id
                )
    return acted


def _settled(now: datetime) -> Q:
    """The runs that close a stay for now: it was acted on, or looked at within IDLE_RECHECK."""
    return Q(matched=True) | Q(ran_at__gt=now - IDLE_RECHECK)


def _idle_due(automation: CompiledAutomation, now: datetime, limit: int) -> list:
    """(conversation id, since when) of those in the automation's status long enough, not
    acted on in this stay nor checked in the last IDLE_RECHECK."""
    checked = AutomationRun.objects.filter(
        _settled(now),
        automation_id=automation.pk,
        conversation=OuterRef("pk"),
        period=OuterRef("since"),
    )
    return list(
        Conversation.objects.filter(status=automation.idle_status, merged_into=None)
        .annotate(since=_in_status_since())
        .filter(since__lte=now - timedelta(hours=automation.idle_hours))
        .exclude(Exists(checked))
        .order_by("since", "pk")
        .values_list("pk", "since")[:limit]
    )


def _idle_check(automation: CompiledAutomation, conversation_id: int, since, now) -> bool:
    with transaction.atomic():
        # Checked again under the lock: the customer may have replied since the query.
        locked = (
            Conversation.objects.select_for_update(of=("self",))
            .filter(pk=conversation_id)
            .values_list("status", flat=True)
            .first()
        )
        still = (
            ConversationEvent.objects.filter(conversation_id=conversation_id, kind__in=STATUS_KINDS)
            .order_by("-id")
            .values_list("created_at", flat=True)
            .first()
        )
        if locked != automation.idle_status or still != since:
            return False
        stay = AutomationRun.objects.filter(
            automation_id=automation.pk, conversation_id=conversation_id, period=since
        )
        # Under the conversation's lock: a second sweep waits here, then finds it done.
        if stay.filter(_settled(now)).exists():
            return False
        if not stay.update(ran_at=now):
            AutomationRun.objects.create(
                automation_id=automation.pk,
                conversation_id=conversation_id,
                period=since,
                matched=False,
                ran_at=now,
            )
        conversation = _current(conversation_id)
        if not automation.matches(Facts(conversation, None, now)):
            return False
        stay.update(matched=True)

        def act(chain: _Chain) -> None:
            chain.fired.add((automation.pk, conversation_id))
            _automation_act(chain, automation, conversation, Event.IDLE)

        _chain_run(_Chain(), first=act)
    return True


# --- Macros ----------------------------------------------------------------------------------


def macros_for(user) -> QuerySet[Macro]:
    """The macros `user` may apply: everyone's and their teams' (admins: all)."""
    macros = Macro.objects.filter(is_active=True)
    if user.is_admin:
        return macros
    teams = TeamMembership.objects.filter(user=user).values("team_id")
    return macros.filter(Q(team__isnull=True) | Q(team__in=teams))


@dataclass
class Applied:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    repeated: bool = False  # the same click arrived twice: applied once


def macro_apply(*, macro: Macro, conversation: Conversation, actor, once: str = "") -> Applied:
    """Do the macro's actions on `conversation` as `actor` (who must be allowed both: see
    macros_for and conversation_get_for_agent), then the automations its changes trigger.
    Refused actions are skipped and listed in the result, for the agent to see. `once`, a
    token the page gave this click, makes a double click (or a resent form) apply it once:
    the customer must not get the same canned reply twice."""
    actions = actions_compile(macro.actions)  # ValidationError if saved around admin's checks
    outcome = Applied()

    def apply(chain: _Chain) -> None:
        record = ConversationEvent.objects.create(
            conversation=conversation, kind=ConversationEvent.Kind.MACRO, actor=actor
        )
        done, skipped = _actions_do(chain, conversation.pk, actions, actor=actor, source=macro.name)
        record.data = {"macro": macro.pk, "name": macro.name, "done": done, "skipped": skipped}
        if once:
            record.data["once"] = once[:64]
        record.save(update_fields=["data"])
        publish_conversation_event(conversation, "macro", macro=macro.pk)
        outcome.done.extend(done)
        outcome.skipped.extend(skipped)

    with transaction.atomic():
        # One macro at a time on a conversation, and the repeat check after the lock: the
        # second of two clicks waits for the first to commit, then sees it.
        Conversation.objects.select_for_update(of=("self",)).filter(pk=conversation.pk).first()
        if (
            once
            and conversation.events.filter(
                kind=ConversationEvent.Kind.MACRO, data__once=once[:64]
            ).exists()
        ):
            outcome.repeated = True
            return outcome
        _chain_run(_Chain(), first=apply)
    return outcome
