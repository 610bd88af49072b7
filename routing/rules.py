"""Routing rules: what their conditions may say, checked when a rule is saved, and which rules
a new conversation matches. Automations (routing.automations) use the same conditions.

A rule's conditions are a JSON list; all of them must hold. Each names a field, an operator
and a value:

    [{"field": "text", "op": "contains", "value": ["refund", "chargeback"]},
     {"field": "customer.plan", "op": "is", "value": "enterprise"}]

| field                          | operators                               | value               |
|--------------------------------|-----------------------------------------|---------------------|
| channel                        | is, is_not, in, not_in                  | email, sms, webchat,|
|                                |                                         | messenger, whatsapp,|
|                                |                                         | api                 |
| inbox                          | is, is_not, in, not_in                  | inbox id(s)         |
| language                       | is, is_not, in, not_in                  | "pt" (also pt-BR)   |
| subject, text, subject_or_text | contains, not_contains, is, starts_with,| words or phrases;   |
|                                | like, not_like                          | like: "*order ?*"   |
| customer.<attribute>           | is, is_not, in, not_in, contains, gt,   | text, number, list  |
|                                | gte, lt, lte, exists, not_exists        |                     |
| time                           | between                                 | ["09:00", "17:30"]  |
| weekday                        | in, not_in                              | ["sat", "sun"]      |
| business_hours                 | is                                      | "open" or "closed"  |
| status                         | is, is_not, in, not_in                  | open, pending, ...  |
| priority                       | is, is_not, in, not_in, gt, gte, lt, lte| low, normal, high,  |
|                                |                                         | urgent              |
| team, assignee                 | is, is_not, in, not_in, exists,         | team or agent id(s) |
|                                | not_exists                              |                     |
| tags                           | contains, not_contains                  | tag name(s)         |
| hours_since_activity           | gt, gte, lt, lte                        | a number of hours   |

The last six read the conversation as it is when the conditions are checked: for a routing
rule, as it opened (its inbox's team, no tags yet); for an automation, as its event left it.
`tags contains` holds when the conversation has any of the tags, `not_contains` when it has
none of them. `text` is the message that opened the conversation for a routing rule, the
customer's latest message for an automation. `subject_or_text` holds when the subject or the
text does, each read whole (`not_contains` and `not_like`: when neither does).

Text is compared ignoring case. `contains` holds when any of the words or phrases appears as
whole words ("refund" matches "a refund?" but not "refunds": list both, or use like
"*refund*"); `like` matches the whole text against a pattern where * is any text and ? one
character. `time`, `weekday` and `business_hours` read the schedule that answers for the
conversation, as its SLA clocks and automatic replies do: its inbox's business hours, else its
team's (the inbox's team for a routing rule, the team it is in now for an automation), else
the server's clock. `time` includes its start and excludes its end, and wraps past midnight
when the end comes first (["22:00", "06:00"]).

Only these fields and operators exist, and values are compared in Python: nothing is turned
into SQL or evaluated. Matching stays linear in the text whatever an admin writes (no
ReDoS): word lists become one alternation of escaped literals, and fnmatch turns wildcard
patterns into atomic groups that never backtrack. Only the first TEXT_LIMIT characters of a
subject or message are looked at.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time
from functools import cached_property

from django.core.exceptions import ValidationError
from django.utils import timezone

from conversations.models import Channel, Conversation, Message
from conversations.selectors import ID_MAX
from routing.models import RoutingRule, TableCache, tag_names

log = logging.getLogger(__name__)

TEXT_LIMIT = 10_000
MAX_WORDS = 50
MAX_WORD_CHARS = 100
MAX_PATTERN_CHARS = 200
MAX_CONDITIONS = 20

CHOICE_OPS = ("is", "is_not", "in", "not_in")
TEXT_OPS = ("contains", "not_contains", "is", "starts_with", "like", "not_like")
ATTRIBUTE_OPS = (*CHOICE_OPS, "contains", "gt", "gte", "lt", "lte", "exists", "not_exists")
FIELDS = {
    "channel": CHOICE_OPS,
    "inbox": CHOICE_OPS,
    "language": CHOICE_OPS,
    "subject": TEXT_OPS,
    "text": TEXT_OPS,
    "subject_or_text": TEXT_OPS,
    "customer.<attribute>": ATTRIBUTE_OPS,
    "time": ("between",),
    "weekday": ("in", "not_in"),
    "business_hours": ("is",),
    "status": CHOICE_OPS,
    "priority": (*CHOICE_OPS, "gt", "gte", "lt", "lte"),
    "team": (*CHOICE_OPS, "exists", "not_exists"),
    "assignee": (*CHOICE_OPS, "exists", "not_exists"),
    "tags": ("contains", "not_contains"),
    "hours_since_activity": ("gt", "gte", "lt", "lte"),
}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _weekday(day) -> str:
    """ "mon" or "Monday" is Monday; "monkey" is nothing (it was, cut to three letters)."""
    day = str(day).strip().lower()
    return day[:3] if day in WEEKDAY_NAMES else day


HELP = (
    "A list of conditions that must all hold, each "
    '{"field": ..., "op": ..., "value": ...}, e.g. '
    '[{"field": "text", "op": "contains", "value": ["refund", "reembolso"]}, '
    '{"field": "customer.plan", "op": "is", "value": "enterprise"}]. Fields and operators: '
    + "; ".join(f"{field}: {', '.join(ops)}" for field, ops in FIELDS.items())
    + '. Values: channel names; inbox ids; language codes ("pt" also matches pt-BR); words or '
    "phrases for contains (whole words, any case); a pattern for like, * any text and ? one "
    'character; times ["09:00", "17:30"] in the time zone of the conversation\'s business '
    'hours (["22:00", "06:00"] wraps midnight); weekdays mon to sun; business_hours "open" or '
    '"closed"; statuses open, pending, snoozed, resolved, closed; priorities low, normal, '
    "high, urgent; team and agent ids (exists and not_exists take no value); tag names; hours "
    "as a number. Empty: every conversation."
)
PRIORITIES = {choice.label.lower(): choice.value for choice in Conversation.Priority}


class Facts:
    """What conditions look at, for one conversation. Each is read at most once, and only
    when a rule asks: a rule set without time conditions never looks up a time zone.
    `message` is the one that opened the conversation (routing); None for automations,
    which read the customer's latest message if a condition asks for text."""

    def __init__(self, conversation: Conversation, message: Message | None, now: datetime):
        self.conversation, self.now = conversation, now
        self.inbox: int = conversation.inbox_id
        if message is not None:
            self.message = message

    @cached_property
    def message(self) -> Message | None:
        return (
            self.conversation.messages.filter(direction=Message.Direction.INBOUND)
            .order_by("-id")
            .only("channel", "text")
            .first()
        )

    @cached_property
    def channel(self) -> str:
        return self.message.channel if self.message else self.conversation.inbox.kind

    @cached_property
    def subject(self) -> str:
        return self.conversation.subject[:TEXT_LIMIT].casefold()

    @cached_property
    def text(self) -> str:
        return self.message.text[:TEXT_LIMIT].casefold() if self.message else ""

    @cached_property
    def attributes(self) -> dict:
        attributes = self.conversation.customer.attributes
        return attributes if isinstance(attributes, dict) else {}

    @cached_property
    def language(self) -> str:
        return self.conversation.customer.language.casefold()

    @cached_property
    def tags(self) -> frozenset[str]:
        return frozenset(self.conversation.tags.values_list("name", flat=True))

    @cached_property
    def hours_since_activity(self) -> float:
        return (self.now - self.conversation.last_activity_at).total_seconds() / 3600

    # The hours of the team the conversation is in, as SLA clocks and automatic replies read
    # them: for a routing rule its inbox's team, for an automation the team it was routed to.
    @cached_property
    def team_id(self) -> int | None:
        return self.conversation.team_id or self.conversation.inbox.default_team_id

    @cached_property
    def local_now(self) -> datetime:
        from routing import hours

        schedule = hours.schedule_id(self.conversation.inbox, self.team_id)
        return self.now.astimezone(hours.zone_of(schedule))

    @cached_property
    def business_open(self) -> bool:
        from routing import hours

        return hours.is_open(hours.schedule_for(self.conversation.inbox, self.team_id), self.now)


Test = Callable[[Facts], bool]


@dataclass(frozen=True)
class CompiledRule:
    """A rule read once into plain values and predicates (see rules_load)."""

    pk: int
    name: str
    inbox_id: int | None
    stop: bool
    tests: tuple[Test, ...]
    team_id: int | None
    priority: int | None
    tags: frozenset[str]
    assignee_id: int | None

    def matches(self, facts: Facts) -> bool:
        for test in self.tests:  # a loop, not all(genexpr): 200 rules a message add up
            if not test(facts):
                return False
        return True


@dataclass
class Decision:
    """What the matching rules say: their actions folded in order (later ones replace team,
    priority and assignee; tags add up), with the name of the rule behind each."""

    team_id: int | None = None
    priority: int | None = None
    assignee_id: int | None = None
    tags: frozenset[str] = frozenset()
    because: dict[str, str] | None = None  # action -> rule name


def rules_decide(
    rules: tuple[CompiledRule, ...], conversation: Conversation, message: Message, now=None
) -> Decision:
    """Fold the actions of the rules (of this inbox, see rules_load) that match."""
    facts = Facts(conversation, message, now or timezone.now())
    decision, because = Decision(), {}
    for rule in rules:
        if not rule.matches(facts):
            continue
        for action in ("team_id", "priority", "assignee_id"):
            if getattr(rule, action) is not None:
                setattr(decision, action, getattr(rule, action))
                because[action] = rule.name
        if rule.tags:
            decision.tags |= rule.tags
            because["tags"] = ", ".join(filter(None, [because.get("tags"), rule.name]))
        if rule.stop:
            break
    decision.because = because
    return decision


# --- Reading rules: compiled once per change, not per message --------------------------------


def _rule_set() -> tuple[tuple[CompiledRule, ...], dict]:
    """Every active rule, compiled, and room for each inbox's share of them."""
    return tuple(_compiled(RoutingRule.objects.filter(is_active=True))), {}


_rules = TableCache(RoutingRule, _rule_set)


def rules_load(inbox_id: int) -> tuple[CompiledRule, ...]:
    """The active rules for conversations of the inbox, in order: its own and everyone's.
    Compiled once per change of any rule (TableCache), for one small query per message."""
    rules, by_inbox = _rules.get()
    if inbox_id not in by_inbox:  # a race here only computes the same tuple twice
        by_inbox[inbox_id] = tuple(rule for rule in rules if rule.inbox_id in (None, inbox_id))
    return by_inbox[inbox_id]


def _compiled(rules):
    for rule in rules.order_by("position", "id"):
        try:
            tests = conditions_compile(rule.conditions)
        except ValidationError:  # saved around admin's checks: skip it, loudly
            log.error("routing rule %s has invalid conditions; skipped", rule.pk)
            continue
        yield CompiledRule(
            pk=rule.pk,
            name=rule.name,
            inbox_id=rule.inbox_id,
            stop=rule.stop,
            tests=tests,
            team_id=rule.team_id,
            priority=rule.priority,
            tags=tag_names(rule.tags),
            assignee_id=rule.assignee_id,
        )


# --- Conditions ------------------------------------------------------------------------------


def conditions_compile(conditions) -> tuple[Test, ...]:
    """Predicates for a rule's conditions, or ValidationError with one message per bad
    condition ("Condition 2 (customer.plan): ...")."""
    if not isinstance(conditions, list):
        raise ValidationError("Conditions must be a list: [] or [{...}, {...}].")
    if len(conditions) > MAX_CONDITIONS:
        raise ValidationError(f"A rule has at most {MAX_CONDITIONS} conditions.")
    tests, problems = [], []
    for number, condition in enumerate(conditions, start=1):
        label = f"Condition {number}"
        try:
            if not isinstance(condition, dict):
                raise ValidationError('it must look like {"field": ..., "op": ..., "value": ...}.')
            label += f" ({condition.get('field')})" if condition.get("field") else ""
            extra = set(condition) - {"field", "op", "value"}
            if extra:
                raise ValidationError(f"unknown keys {', '.join(sorted(map(str, extra)))}.")
            tests.append(_condition(condition.get("field"), condition.get("op"), condition))
        except ValidationError as exc:
            problems += [f"{label}: {message}" for message in exc.messages]
    if problems:
        raise ValidationError(problems)
    return tuple(tests)


def _condition(field, op, condition) -> Test:
    if not isinstance(field, str) or not field:
        raise ValidationError(f"a field is needed, one of {', '.join(FIELDS)}.")
    attribute = ""
    if field.startswith("customer."):
        attribute, kind = field.removeprefix("customer."), "customer.<attribute>"
        if not attribute or len(attribute) > 100:
            raise ValidationError("name the attribute, e.g. customer.plan.")
    elif field in FIELDS:
        kind = field
    else:
        raise ValidationError(f"unknown field; use one of {', '.join(FIELDS)}.")
    if op not in FIELDS[kind]:
        raise ValidationError(f"unknown operator {op!r}; use one of {', '.join(FIELDS[kind])}.")
    value = condition.get("value")
    if kind == "customer.<attribute>":
        return _attribute(attribute, op, value)
    if kind in ("subject", "text", "subject_or_text"):
        return _text(kind, op, value)
    if kind == "time":
        return _time(value)
    if kind == "weekday":
        days = _choices(value, op, WEEKDAYS, "weekday", _weekday)
        indexes = {WEEKDAYS.index(day) for day in days}
        return _negate(op, lambda facts: facts.local_now.weekday() in indexes)
    if kind == "business_hours":
        if value not in ("open", "closed"):
            raise ValidationError('the value is "open" or "closed".')
        return lambda facts: facts.business_open is (value == "open")
    if kind in _CONVERSATION_FIELDS:
        return _CONVERSATION_FIELDS[kind](op, value)
    if kind == "channel":
        channels = _choices(value, op, Channel.values, "channel")
        return _negate(op, lambda facts: facts.channel in channels)
    if kind == "inbox":
        ids = _choices(value, op, None, "inbox id", lambda v: _id(v, "inbox id"))
        return _negate(op, lambda facts: facts.inbox in ids)
    languages = _choices(value, op, None, "language code", _language)
    return _negate(
        op, lambda facts: any(_same_language(facts.language, wanted) for wanted in languages)
    )


def _negate(op: str, test: Test) -> Test:
    if op in ("is_not", "not_in", "not_contains", "not_like", "not_exists"):
        return lambda facts: not test(facts)
    return test


def _choices(value, op, allowed, what, normalize=str) -> frozenset:
    """The value of is/in-style operators as a set: one value for is, a list for in."""
    if op in ("is", "is_not"):
        if isinstance(value, list | dict) or value in (None, ""):
            raise ValidationError(f"{op} takes one {what}; use in for a list.")
        values = [value]
    else:
        if not isinstance(value, list) or not value:
            raise ValidationError(f"{op} takes a list of {what}s, e.g. [...].")
        values = value
    normalized = set()
    for item in values:
        item = normalize(item)
        if allowed is not None and item not in allowed:
            raise ValidationError(f"{item!r} is not a {what}; use {', '.join(allowed)}.")
        normalized.add(item)
    return frozenset(normalized)


def _language(value) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", value):
        raise ValidationError(f"{value!r} is not a language code such as pt or pt-BR.")
    return value.casefold()


def _same_language(actual: str, wanted: str) -> bool:
    return actual == wanted or actual.startswith(wanted + "-")


def _words(value) -> list[str]:
    words = value if isinstance(value, list) else [value]
    if not words or len(words) > MAX_WORDS:
        raise ValidationError(f"give 1 to {MAX_WORDS} words or phrases.")
    cleaned = []
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValidationError("words and phrases must be non-empty text.")
        if len(word) > MAX_WORD_CHARS:
            raise ValidationError(f"a word or phrase has at most {MAX_WORD_CHARS} characters.")
        cleaned.append(word.strip().casefold())
    return cleaned


def _word_pattern(words: list[str]) -> re.Pattern:
    # Escaped literals only, so the engine never backtracks more than one word's length.
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def _text(field: str, op: str, value) -> Test:
    match = _text_match(op, value)
    if field == "subject_or_text":
        # Either of them, each read whole: "starts with urgent" holds for a mail whose body
        # does, whatever its subject (and the not_ operators hold when neither does).
        return _negate(op, lambda facts: match(facts.subject) or match(facts.text))
    return _negate(op, lambda facts: match(getattr(facts, field)))


def _text_match(op: str, value) -> Callable[[str], bool]:
    """Whether one text (already casefolded) is what `op` and `value` ask, not negated."""
    if op in ("contains", "not_contains"):
        pattern = _word_pattern(_words(value))
        return lambda text: pattern.search(text) is not None
    if op in ("like", "not_like"):
        if not isinstance(value, str) or not value or len(value) > MAX_PATTERN_CHARS:
            raise ValidationError(f"give a pattern of 1 to {MAX_PATTERN_CHARS} characters.")
        # fnmatch's translation uses atomic groups for *, so no input makes it backtrack.
        pattern = re.compile(fnmatch.translate(value.casefold()))
        return lambda text: pattern.match(text.strip()) is not None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_PATTERN_CHARS:
        raise ValidationError(f"give a text of 1 to {MAX_PATTERN_CHARS} characters.")
    wanted = value.strip().casefold()
    if op == "is":
        return lambda text: text.strip() == wanted
    return lambda text: text.lstrip().startswith(wanted)


def _attribute(name: str, op: str, value) -> Test:
    missing = object()

    def read(facts: Facts):
        return facts.attributes.get(name, missing)

    if op in ("exists", "not_exists"):
        if value is not None:
            raise ValidationError(f"{op} takes no value.")
        return _negate(op, lambda facts: read(facts) not in (missing, None, ""))
    if op in ("gt", "gte", "lt", "lte"):
        if _number(value) is None:
            raise ValidationError(f"{op} compares with a number.")
        bound, compare = _number(value), _COMPARE[op]
        return lambda facts: (n := _number(read(facts))) is not None and compare(n, bound)
    if op == "contains":
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValidationError("contains takes one word, phrase or number.")
        pattern = _word_pattern(_words(str(value)))

        def contains(facts):
            actual = read(facts)
            if isinstance(actual, list):
                return any(_same_value(item, value) for item in actual)
            return isinstance(actual, str) and pattern.search(actual.casefold()) is not None

        return contains
    values = _choices(value, op, None, "value", _scalar)
    return _negate(op, lambda facts: any(_same_value(read(facts), wanted) for wanted in values))


_COMPARE = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _scalar(value):
    if not isinstance(value, str | int | float | bool):
        raise ValidationError(f"{value!r} is not a text, number or true/false.")
    return value


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _same_value(actual, wanted) -> bool:
    """Equal as numbers when both are numbers (10 and "10.0"), else as text ignoring case
    ("Enterprise" and "enterprise", true and "true")."""
    if isinstance(actual, list | dict) or actual is None:
        return False
    a, b = _number(actual), _number(wanted)
    if a is not None and b is not None:
        return a == b
    return _text_of(actual) == _text_of(wanted)


def _text_of(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().casefold()


def _time(value) -> Test:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ValidationError('between takes two times, e.g. ["09:00", "17:30"].')
    try:
        start, end = (time.fromisoformat(v) for v in value)
    except ValueError:
        raise ValidationError('times are written HH:MM, e.g. ["09:00", "17:30"].') from None
    if start == end:
        raise ValidationError("the start and end times must differ.")

    def between(facts: Facts) -> bool:
        now = facts.local_now.time().replace(tzinfo=None)
        if start < end:
            return start <= now < end
        return now >= start or now < end  # wraps past midnight

    return between


# --- The conversation's own state (automations mostly) ---------------------------------------


def _status(op, value) -> Test:
    statuses = _choices(value, op, Conversation.Status.values, "status", lambda v: str(v).lower())
    return _negate(op, lambda facts: facts.conversation.status in statuses)


def _priority_value(value) -> int:
    name = str(value).strip().lower()
    if name not in PRIORITIES:
        raise ValidationError(f"{value!r} is not a priority; use {', '.join(PRIORITIES)}.")
    return PRIORITIES[name]


def _priority(op, value) -> Test:
    if op in _COMPARE:
        if isinstance(value, list | dict):
            raise ValidationError(f'{op} compares with one priority, e.g. "high".')
        bound, compare = _priority_value(value), _COMPARE[op]
        return lambda facts: compare(facts.conversation.priority, bound)
    priorities = _choices(value, op, None, "priority", _priority_value)
    return _negate(op, lambda facts: facts.conversation.priority in priorities)


def _reference(field: str, what: str):
    """team and assignee: by id, or whether there is one at all."""

    def compile(op, value) -> Test:
        def read(facts):
            return getattr(facts.conversation, f"{field}_id")

        if op in ("exists", "not_exists"):
            if value is not None:
                raise ValidationError(f"{op} takes no value.")
            return _negate(op, lambda facts: read(facts) is not None)
        ids = _choices(value, op, None, what, lambda v: _id(v, what))
        return _negate(op, lambda facts: read(facts) in ids)

    return compile


def _id(value, what: str) -> int:
    """An id a condition names: a whole number the database's keys can hold (a longer one
    was a 500 when admin looked it up), named in the error as JSON writes it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= ID_MAX:
        article = "an" if what[0] in "aeiou" else "a"
        shown = json.dumps(value, ensure_ascii=False)[:60]
        raise ValidationError(f"{shown} is not {article} {what} (a number).")
    return value


def _tags(op, value) -> Test:
    names = tag_names(",".join(value) if isinstance(value, list) else str(value or ""))
    if not names or (isinstance(value, list) and not all(isinstance(v, str) for v in value)):
        raise ValidationError('give one or more tag names, e.g. ["refund", "vip"].')
    return _negate(op, lambda facts: not names.isdisjoint(facts.tags))


def _hours_since_activity(op, value) -> Test:
    bound = _number(value)
    if bound is None or bound < 0:
        raise ValidationError(f"{op} compares with a number of hours, e.g. 48.")
    compare = _COMPARE[op]
    return lambda facts: compare(facts.hours_since_activity, bound)


_CONVERSATION_FIELDS = {
    "status": _status,
    "priority": _priority,
    "team": _reference("team", "team id"),
    "assignee": _reference("assignee", "agent id"),
    "tags": _tags,
    "hours_since_activity": _hours_since_activity,
}
