"""What customers are told without an agent: how soon we usually answer, the acknowledgement
of a new conversation, the out-of-office reply and the satisfaction survey.

Expected reply time: set by hand on the inbox, else the median of its first responses of the
last two weeks as their SLA clocks counted them (business time, so "about 2 hours" means two
working hours), else the first-response target of its SLA policy, else unknown. For a
conversation, the median is of those the same team answered at the same priority, else of the
same team's, before the whole inbox's: an urgent refund routed to Billing is not told how long
Support's questions usually wait.

Automatic replies follow the inbox's templates (AutoReply), in the customer's language when
one is written for it. They never answer automatic mail (auto-replies, bounces, list mail:
the email adapter marks it `automated`), count as no response for the SLA, go out as
Auto-Submitted mail, and are sent at most once: an acknowledgement once per conversation (an
out-of-office reply at the opening stands for it), an out-of-office reply once per
conversation per closed period, and none within an hour of an agent's reply (they are
there). The checks and the send share one transaction under the conversation's lock, so a
task run twice sends once.

A satisfaction survey goes when a conversation an agent answered is resolved, once per
conversation and not after it was rated; its {rating_link} is a signed page (RATING_SALT)
where the customer rates it 1 to 5, as chat visitors do in the widget.
"""

from __future__ import annotations

import logging
import re
import statistics
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import formats, timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from redis.exceptions import RedisError

from conversations.models import (
    EXPECTED_REPLY_MAX,
    Channel,
    Conversation,
    ConversationEvent,
    Inbox,
    Message,
)
from routing.hours import add_business_time, is_open, next_opening, schedule_for
from routing.models import AutoReply, SlaClock, TableCache
from routing.sla import policy_for

log = logging.getLogger(__name__)

LOOKBACK = timedelta(days=14)
SAMPLE = 50
MIN_SAMPLE = 5
CACHE_SECONDS = 300


def expected_reply(
    inbox: Inbox, conversation: Conversation | None = None, *, now: datetime | None = None
) -> timedelta | None:
    """How soon the inbox usually answers a new conversation, or `conversation` as routing left
    it (see the module's docstring). Worked out at most every five minutes per inbox, team and
    priority."""
    if inbox.expected_reply_minutes is not None:  # one saved before it was bounded too
        return timedelta(minutes=min(inbox.expected_reply_minutes, EXPECTED_REPLY_MAX))
    team_id, priority = (
        (conversation.team_id, conversation.priority)
        if conversation
        else (None, Conversation.Priority.NORMAL)
    )
    key = f"routing:expected-reply:{inbox.pk}:{team_id}:{priority}"
    seconds = _cached(lambda: cache.get(key))
    if seconds is None:
        now = now or timezone.now()
        answered = list(
            SlaClock.objects.filter(
                conversation__inbox=inbox,
                target=SlaClock.Target.FIRST_RESPONSE,
                outcome__in=(SlaClock.Outcome.MET, SlaClock.Outcome.BREACHED),
                stopped_at__gte=now - LOOKBACK,
            )
            .order_by("-stopped_at")
            .values_list("elapsed_seconds", "conversation__team_id", "conversation__priority")[
                : SAMPLE * 20
            ]
        )
        # The closest kind of conversation with enough answers: team and priority, team, any.
        alike = [(team_id, priority), (team_id,), ()] if team_id is not None else [()]
        for kind in alike:
            samples = [row[0] for row in answered if row[1 : 1 + len(kind)] == kind][:SAMPLE]
            if len(samples) >= MIN_SAMPLE:
                seconds = statistics.median(samples)
                break
        else:
            policy = policy_for(inbox.kind, priority)
            goal = policy.goal(SlaClock.Target.FIRST_RESPONSE) if policy else None
            seconds = -1 if goal is None else goal  # -1: unknown, and cached as such
        _cached(lambda: cache.set(key, seconds, CACHE_SECONDS))
    return None if seconds < 0 else timedelta(seconds=seconds)


def _cached(action):
    """The cache only spares work: while it is down (Redis), the widget's session and the
    automatic replies work the answer out afresh rather than fail."""
    try:
        return action()
    except (RedisError, OSError):
        log.warning("the cache is down: expected reply times are worked out every time")
        return None


def reply_time_text(delta: timedelta | None) -> str:
    """“2 hours”, rounded, in the active language, to follow “we usually reply within”."""
    if delta is None:
        return _("a few hours")
    minutes = delta.total_seconds() / 60
    if minutes <= 5:
        return _("a few minutes")
    if minutes < 55:
        count = max(10, 5 * round(minutes / 5))
        return ngettext("%(count)d minute", "%(count)d minutes", count) % {"count": count}
    hours = round(minutes / 60)
    if hours < 24:
        return ngettext("%(count)d hour", "%(count)d hours", hours) % {"count": hours}
    days = round(hours / 24)
    return ngettext("%(count)d day", "%(count)d days", days) % {"count": days}


# --- Automatic replies -------------------------------------------------------------------------


ANSWERING = (AutoReply.Kind.ACKNOWLEDGEMENT, AutoReply.Kind.OUT_OF_OFFICE)


def _templated_inboxes() -> dict[str, frozenset[int]]:
    inboxes: dict[str, set[int]] = {}
    for kind, inbox_id in AutoReply.objects.filter(is_active=True).values_list("kind", "inbox"):
        inboxes.setdefault(kind, set()).add(inbox_id)
    return {kind: frozenset(ids) for kind, ids in inboxes.items()}


# Asked of every customer message and every resolution: which inboxes have an active template
# of each kind, per process until one changes.
_templated = TableCache(AutoReply, _templated_inboxes)


def inboxes_with(*kinds: str) -> frozenset[int]:
    """The inboxes with an active template of any of `kinds`."""
    held = _templated.get()
    return frozenset().union(*(held.get(kind, ()) for kind in kinds))


def _unanswered(message: Message) -> bool:
    """Automatic mail; or an agent's forward of what a customer wrote them, which the agent
    answers as they see fit (the customer wrote to them, not to us)."""
    return bool(message.metadata.get("automated") or message.metadata.get("forwarded_by"))


def auto_reply_due(*, inbox: Inbox, message: Message) -> bool:
    """Whether a customer message may get an automatic reply at all (the task decides which,
    if any): not on web chat, never to what _unanswered says, only where templates exist."""
    return (
        inbox.kind != Channel.WEBCHAT
        and message.direction == Message.Direction.INBOUND
        and not _unanswered(message)
        and inbox.pk in inboxes_with(*ANSWERING)
    )


# An agent who wrote this recently is answering, closed or not: "we are closed" would
# contradict them, right under their reply.
AGENT_WROTE_WITHIN = timedelta(hours=1)


def _agent_just_wrote(message: Message) -> bool:
    return (
        message.conversation.messages.filter(
            direction=Message.Direction.OUTBOUND,
            author__isnull=False,
            created_at__gte=message.created_at - AGENT_WROTE_WITHIN,
            created_at__lte=message.created_at,
        )
        .exclude(status=Message.Status.FAILED)  # the customer never read it
        .exists()
    )


def auto_reply_send(*, message_id: int, opened: bool) -> Message | None:
    """Answer the customer message `message_id` by itself, if the inbox says so: closed → the
    out-of-office reply; a new conversation → the acknowledgement. Returns the reply, or None
    when none is due (or one went out already). Either way it is decided: no longer due for
    the sweep (raising, it stays due)."""
    reply = _auto_reply(message_id, opened)
    Message.objects.filter(pk=message_id).update(auto_reply_due_at=None)
    return reply


def _auto_reply(message_id: int, opened: bool) -> Message | None:
    message = Message.objects.select_related("conversation__customer", "inbox", "identity").get(
        pk=message_id
    )
    conversation, inbox = message.conversation, message.inbox
    if _unanswered(message) or conversation.merged_into_id:
        return None
    templates = list(AutoReply.objects.filter(inbox=inbox, is_active=True, kind__in=ANSWERING))
    # The schedule of the team that answers, as the SLA clock counts: routing may have
    # sent the conversation to a team that keeps other hours than the inbox's own.
    schedule = schedule_for(inbox, conversation.team_id)
    closed = not is_open(schedule, message.created_at)
    opens_at, until = None, ""
    kinds = {template.kind for template in templates}
    if AutoReply.Kind.OUT_OF_OFFICE in kinds and closed and not _agent_just_wrote(message):
        kind = AutoReply.Kind.OUT_OF_OFFICE
        opens_at = next_opening(schedule, message.created_at)
        until = opens_at.isoformat() if opens_at else "never"
    elif AutoReply.Kind.ACKNOWLEDGEMENT in kinds and opened:
        kind = AutoReply.Kind.ACKNOWLEDGEMENT
    else:
        return None
    wait = expected_reply(inbox, conversation)
    if kind == AutoReply.Kind.ACKNOWLEDGEMENT:
        # The usual time counted in the team's open hours, as its SLA clock counts: from the
        # opening when it is closed, and past the closing that comes first. (An out-of-office
        # reply says when we open, and its "{expected_reply}" follows that.)
        if wait is not None:
            due = add_business_time(schedule, message.created_at, wait.total_seconds())
            wait = due - message.created_at if due is not None else wait
        elif closed and (opening := next_opening(schedule, message.created_at)) is not None:
            wait = opening - message.created_at
    customer = conversation.customer
    template = _template_for([t for t in templates if t.kind == kind], customer.language)
    if template is None:
        return None

    with transaction.atomic():
        conversation = Conversation.objects.select_for_update(of=("self",)).get(pk=conversation.pk)
        sent = ConversationEvent.objects.filter(
            conversation=conversation, kind=ConversationEvent.Kind.AUTO_REPLY
        )
        if kind == AutoReply.Kind.OUT_OF_OFFICE:
            sent = sent.filter(data__until=until)
        if sent.exists():
            return None
        return _automatic_send(
            conversation,
            template,
            lambda: {
                "expected_reply": reply_time_text(wait),
                "opens_at": _local(opens_at, schedule) if opens_at else _opening_unknown(kind),
                "inbox": inbox.name,
            },
            identity=message.identity,
            until=until,
        )


def _automatic_send(conversation, template: AutoReply, words, *, identity=None, **recorded):
    """Send `template` filled in (with `words()`: a wait, a date, made in the template's
    language; one written without a language is in the site's, whatever the customer reads)
    and record it, in the caller's transaction; None when the channel refuses it now."""
    from conversations.services import _event, reply_send

    values = dict.fromkeys(AutoReply.PLACEHOLDERS, "")
    with translation.override(template.language or settings.LANGUAGE_CODE):
        values |= {"number": str(conversation.pk), "name": conversation.customer.name, **words()}
    try:
        reply = reply_send(
            conversation=conversation,
            author=None,
            text=_render(template.body, **values),
            identity=identity,
            automatic=template.kind,
        )
    except ValidationError as exc:  # opted out, or the channel cannot send: nothing to do
        log.info("no %s for conversation %s: %s", template.kind, conversation.pk, exc.messages[0])
        return None
    _event(
        conversation,
        ConversationEvent.Kind.AUTO_REPLY,
        reply=template.kind,
        message=reply.pk,
        **recorded,
    )
    return reply


RATING_SALT = "satisfaction-survey"
RATING_LINK_DAYS = 30


def rating_link(conversation: Conversation) -> str:
    from django.core import signing
    from django.urls import reverse

    token = signing.dumps(conversation.pk, salt=RATING_SALT)
    return settings.PUBLIC_URL + reverse("rate", args=[token])


def satisfaction_survey_send(*, conversation_id: int) -> Message | None:
    """The inbox's survey to the customer of a conversation just resolved: only when an agent
    answered it, once, and not once it is rated (a chat's visitor rates it in the widget).
    Not before the conversation's replies are settled (sent or failed): the survey must not
    reach the customer before the answer it asks about, still queued or retrying when the
    agent resolved. Until then it stays due, and the sweep asks again."""
    conversation = Conversation.objects.select_related("inbox", "customer").get(pk=conversation_id)
    due = conversation.survey_due_at
    unsettled = conversation.messages.filter(
        direction=Message.Direction.OUTBOUND,
        status__in=(Message.Status.QUEUED, Message.Status.SENDING),
    )
    if conversation.status == Conversation.Status.RESOLVED and unsettled.exists():
        return None
    survey = _survey(conversation)
    # Decided for this resolution; one since (reopened and resolved again) stays due.
    Conversation.objects.filter(pk=conversation.pk, survey_due_at=due).update(survey_due_at=None)
    return survey


def _survey(conversation: Conversation) -> Message | None:
    answered = conversation.messages.filter(
        direction=Message.Direction.OUTBOUND, author__isnull=False
    ).exclude(status=Message.Status.FAILED)
    if (
        conversation.status != Conversation.Status.RESOLVED
        or conversation.merged_into_id
        or conversation.rating is not None
        or conversation.inbox.kind in AutoReply.SILENT_INBOXES
        or not settings.PUBLIC_URL  # nowhere the customer could follow a link to
        or not answered.exists()
    ):
        return None
    templates = AutoReply.objects.filter(
        inbox=conversation.inbox, is_active=True, kind=AutoReply.Kind.SATISFACTION
    )
    template = _template_for(list(templates), conversation.customer.language)
    if template is None:
        return None
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update(of=("self",)).get(pk=conversation.pk)
        asked = conversation.events.filter(
            kind=ConversationEvent.Kind.AUTO_REPLY, data__reply=AutoReply.Kind.SATISFACTION
        )
        if asked.exists():
            return None
        words = {"inbox": conversation.inbox.name, "rating_link": rating_link(conversation)}
        return _automatic_send(conversation, template, lambda: words)


def replies_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Enqueue again the automatic replies and surveys that are due and whose task was lost
    (the broker was down at commit, a worker died): due longer than SWEEP_STUCK_AFTER_SECONDS
    and at most SWEEP_LOOKBACK_HOURS, so nothing old goes out after an outage or a deploy.
    Safe beside a task still running: each decides under the conversation's lock and
    records what it sent, so it sends once."""
    from routing.tasks import auto_reply, satisfaction_survey

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SWEEP_STUCK_AFTER_SECONDS)
    since = now - timedelta(hours=settings.SWEEP_LOOKBACK_HOURS)
    messages = list(
        Message.objects.filter(auto_reply_due_at__lt=cutoff, auto_reply_due_at__gte=since)
        .order_by("auto_reply_due_at")
        .values_list("pk", "conversation_id")[:1000]
    )
    for pk, conversation_id in messages:
        # Whether it opened its conversation, as the receiving service knew: nothing before it.
        opened = not Message.objects.filter(conversation_id=conversation_id, pk__lt=pk).exists()
        auto_reply.delay(pk, opened)
    surveys = list(
        Conversation.objects.filter(survey_due_at__lt=cutoff, survey_due_at__gte=since)
        .order_by("survey_due_at")
        .values_list("pk", flat=True)[:1000]
    )
    for pk in surveys:
        satisfaction_survey.delay(pk)
    if messages or surveys:
        log.warning(
            "sweep re-enqueued %d automatic replies and %d surveys", len(messages), len(surveys)
        )
    return {"auto_replies": len(messages), "surveys": len(surveys)}


def _opening_unknown(kind: str) -> str:
    """{opens_at} with no opening to name: an acknowledgement goes while we are open; an
    out-of-office reply, closed with no opening in sight (a schedule left empty)."""
    return _("further notice") if kind == AutoReply.Kind.OUT_OF_OFFICE else _("now")


def _template_for(templates: list[AutoReply], language: str) -> AutoReply | None:
    """The customer's language, else its base language (pt for pt-BR, or the other way
    round), else the template without a language, else the site's language."""
    from conversations.services import in_language

    by_language = {t.language.lower(): t for t in templates}
    return (
        in_language(by_language, language)
        or by_language.get("")
        or by_language.get(settings.LANGUAGE_CODE.split("-")[0])
    )


def _render(body: str, **values: str) -> str:
    """Fill in the placeholders. One with nothing to say goes with the spaces before it, so an
    unnamed customer reads "Hi," rather than "Hi ,"; an unknown placeholder stays as written."""

    def fill(match):
        value = values.get(match.group(2))
        if value is None:
            return match.group(0)
        return match.group(1) + value if value else ""

    return re.sub(r"([ \t]*){(\w+)}", fill, body)


def _local(at: datetime, schedule) -> str:
    """“Monday 5 January, 09:00 WET”, in the schedule's time zone (named: the customer may
    live in another) and the active language."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(schedule.timezone) if schedule else timezone.get_default_timezone()
    local = at.astimezone(zone)
    when = f"{formats.date_format(local, 'l j F')}, {formats.time_format(local, 'H:i')}"
    return f"{when} {local.tzname()}"
