"""Reports: how the team is doing over the last 7, 30 or 90 days.

Volume by channel, first response and resolution times, SLA targets met or breached, customer
ratings, and the same per agent. Built on what every conversation records as it goes
(first_response_at, resolved_at, rating, and its SLA clocks), over the conversations the agent
may see: an agent sees their teams' figures, an admin everyone's, through the same selector as
the inbox. Times are wall-clock; the SLA figures count business hours where the policy does.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.db.models import (
    BooleanField,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
)
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from conversations.models import Channel, Conversation, ConversationEvent
from conversations.selectors import conversations_visible_to, id_given
from routing.models import SlaClock, Team

PERIODS = (7, 30, 90)
SATISFIED = 4  # ratings of 4 and 5 count as satisfied, as CSAT is usually reported


@dataclass
class Times:
    """Median and 90th percentile of some durations, in seconds, and how many there were."""

    count: int = 0
    median: float | None = None
    p90: float | None = None

    @classmethod
    def of(cls, durations: list[timedelta]) -> Times:
        if not durations:
            return cls()
        seconds = sorted(duration.total_seconds() for duration in durations)
        p90 = seconds[min(len(seconds) - 1, int(len(seconds) * 0.9))]
        return cls(len(seconds), statistics.median(seconds), p90)


@dataclass
class Ratings:
    count: int = 0
    average: float | None = None
    satisfied_percent: int | None = None

    @classmethod
    def of(cls, ratings: list[int]) -> Ratings:
        if not ratings:
            return cls()
        satisfied = sum(rating >= SATISFIED for rating in ratings)
        return cls(len(ratings), sum(ratings) / len(ratings), round(100 * satisfied / len(ratings)))


@dataclass
class SlaTarget:
    label: str
    met: int
    breached: int

    @property
    def met_percent(self) -> int | None:
        total = self.met + self.breached
        return round(100 * self.met / total) if total else None


def report(conversations, since) -> dict:
    """The figures for `conversations` (a queryset) over [since, now)."""
    opened = conversations.filter(created_at__gte=since)
    resolved = conversations.filter(resolved_at__gte=since)
    by_channel = [
        (Channel(kind).label, count)
        for kind, count in opened.values_list("inbox__kind")
        .annotate(count=Count("id"))
        .order_by("-count", "inbox__kind")
    ]
    # (assignee, how long) pairs, the subtraction done by the database: one pass each.
    first = list(
        opened.exclude(first_response_at=None)
        .annotate(took=_since_created("first_response_at"))
        .values_list("assignee_id", "took")
    )
    closed = list(
        resolved.annotate(took=_since_created("resolved_at")).values_list("assignee_id", "took")
    )
    rated_now = ConversationEvent.objects.filter(
        conversation=OuterRef("pk"), kind=ConversationEvent.Kind.RATED, created_at__gte=since
    )
    rated = list(
        conversations.filter(Exists(rated_now))
        .exclude(rating=None)
        .values_list("assignee_id", "rating")
    )
    clocks = SlaClock.objects.filter(conversation__in=conversations.values("pk"))
    ended = clocks.filter(
        Q(outcome=SlaClock.Outcome.MET, stopped_at__gte=since)
        | Q(breached_at__gte=since)
        | Q(outcome=SlaClock.Outcome.BREACHED, stopped_at__gte=since)
    )
    outcomes = {
        (target, breached): count
        for target, breached, count in ended.annotate(
            breached=ExpressionWrapper(
                Q(outcome=SlaClock.Outcome.BREACHED) | Q(breached_at__isnull=False),
                output_field=BooleanField(),
            )
        )
        .values_list("target", "breached")
        .annotate(count=Count("id"))
        .order_by()
    }
    return {
        "opened": sum(count for _, count in by_channel),
        "by_channel": by_channel,
        "resolved": len(closed),
        "waiting": conversations.filter(
            status__in=(Conversation.Status.OPEN, Conversation.Status.PENDING)
        ).count(),
        "unanswered": conversations.filter(
            status=Conversation.Status.OPEN, first_response_at=None
        ).count(),
        "first_response": Times.of([took for _, took in first]),
        "resolution": Times.of([took for _, took in closed]),
        "ratings": Ratings.of([rating for _, rating in rated]),
        "sla": [
            SlaTarget(label, outcomes.get((target, False), 0), outcomes.get((target, True), 0))
            for target, label in SlaClock.Target.choices
        ],
        "agents": _by_agent(closed, first, rated),
    }


def _since_created(field: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(field) - F("created_at"), output_field=DurationField())


def _by_agent(closed, first, rated) -> list[dict]:
    """Per assignee: conversations resolved and their median resolution time, the median first
    response of the conversations opened in the period they now hold, and the ratings given
    in the period to the conversations they hold. Those nobody holds come last, as
    "Unassigned", so that the rows add up to the totals above them."""
    from helpdesk.models import User

    rows: dict[int | None, dict] = {}
    for key, pairs in (("times", closed), ("first", first), ("ratings", rated)):
        for assignee_id, value in pairs:
            rows.setdefault(assignee_id, {"times": [], "first": [], "ratings": []})[key].append(
                value
            )
    names = {user.pk: user.name for user in User.objects.filter(pk__in=rows.keys() - {None})}
    names[None] = "Unassigned"
    agents = [
        {
            "name": names.get(pk, "?"),
            "unassigned": pk is None,
            "resolved": len(row["times"]),
            "resolution": Times.of(row["times"]),
            "first_response": Times.of(row["first"]),
            "ratings": Ratings.of(row["ratings"]),
        }
        for pk, row in rows.items()
    ]
    return sorted(agents, key=lambda a: (a["unassigned"], -a["resolved"], a["name"]))


@login_required
@require_GET
def reports(request):
    days = id_given(request.GET.get("days"))
    days = days if days in PERIODS else PERIODS[0]
    conversations = conversations_visible_to(request.user).filter(
        merged_into=None,
        customer__blocked_at=None,  # spam is not work
    )
    teams = Team.objects.order_by("name")
    if not request.user.is_admin:
        teams = teams.filter(memberships__user=request.user)
    team_id = request.GET.get("team", "")
    team = teams.filter(pk=id_given(team_id)).first()
    if team is not None:
        conversations = conversations.filter(team=team)
    since = timezone.now() - timedelta(days=days)
    context = {
        "days": days,
        "periods": PERIODS,
        "teams": teams,
        "team": team,
        "since": since,
        **report(conversations, since),
    }
    return render(request, "inbox/reports.html", context)
