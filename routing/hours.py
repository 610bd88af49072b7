"""Business hours: when a schedule is open, as aware UTC instants.

SLA clocks, expected reply times and the widget's online/offline state all ask the same
questions, so they are answered here once. Every function works on a schedule loaded with its
intervals and closed days (`schedule_for` prefetches them): a year of SLA arithmetic or a widget
asking `is_open` for every visitor costs no query per day. A schedule of None is always open.

Wall time and DST. Intervals are wall-clock times in the schedule's zone, closed days are its
local dates. Each local day becomes UTC instants by one rule: a wall time means the first
instant at which the local clock shows that time or a later one. So

- a time that happens twice (the fall-back hour) is its first occurrence: closing at 01:30 on
  the night Lisbon goes from 02:00 back to 01:00 closes at 01:30 summer time, and the clock
  showing 01:15 again an hour later finds the door shut;
- a time that never happens (skipped by spring-forward) is the moment of the jump: opening at
  01:30 on the night Lisbon jumps from 01:00 to 02:00 opens at 02:00 summer time, and an
  interval wholly inside the skipped hour is empty that day.

The rule never reorders two times, so a day's intervals stay in order and disjoint and no open
second is counted twice or lost (reading skipped times the way Python does by default, shifted
forward by the gap, would turn 01:30–02:10 into 02:30–02:10). Days are as long as the clock makes
them: 09:00–17:00 is 8 h on both DST days, 00:30–03:00 is 1.5 h on a spring-forward night in
Lisbon and 3.5 h on a fall-back night.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from django.conf import settings

from routing.models import BusinessHours, TableCache, Team

if TYPE_CHECKING:
    from conversations.models import Inbox

ONE_DAY = timedelta(days=1)
# A schedule that stays closed this long is taken to never open (no intervals, or closed days
# covering a whole year): searches forward stop there instead of running forever.
LOOKAHEAD_DAYS = 366
LOOKAHEAD = timedelta(days=LOOKAHEAD_DAYS)

Period = tuple[datetime, datetime]


# Which schedule a team keeps and each schedule's time zone, for every message: kept per
# process until the tables change (TableCache), so no query when nobody set a schedule.
_team_schedules = TableCache(Team, lambda: dict(Team.objects.values_list("pk", "business_hours")))
_zones = TableCache(
    BusinessHours, lambda: dict(BusinessHours.objects.values_list("pk", "timezone"))
)


def schedule_id(inbox: Inbox, team_id: int | None) -> int | None:
    """The id of the schedule that answers for `inbox`'s conversations: the inbox's own, else
    the team's; None when neither has one."""
    return inbox.business_hours_id or _team_schedules.get().get(team_id)


def zone_of(schedule: int | None) -> ZoneInfo:
    """The time zone of the schedule with this id; the server's when there is none."""
    return ZoneInfo((schedule and _zones.get().get(schedule)) or settings.TIME_ZONE)


def schedule_load(schedule: int | None) -> BusinessHours | None:
    """The schedule with this id, with its intervals and closed days (three queries, none
    when there is no schedule), read fresh so that a change in admin applies at once and the
    functions below never query."""
    return _with_days().filter(pk=schedule).first() if schedule is not None else None


def schedule_for(inbox: Inbox, team_id: int | None = None) -> BusinessHours | None:
    """The schedule that answers for `inbox`'s conversations in team `team_id` (by default the
    inbox's own team): the inbox's, else the team's; None (always open) when neither has
    one. Read as schedule_load does."""
    if inbox.business_hours_id:
        return schedule_load(inbox.business_hours_id)
    if team_id := team_id or inbox.default_team_id:
        return _with_days().filter(teams=team_id).first()
    return None


def _with_days():
    return BusinessHours.objects.prefetch_related("intervals", "holidays")


def is_open(schedule: BusinessHours | None, at: datetime) -> bool:
    """Whether `at` falls in an open period: opening times count as open, closing times not."""
    if schedule is None:
        return True
    at = _utc(at)
    week = _Week.of(schedule)
    day = at.astimezone(week.zone).date()
    # Earlier days' periods have all ended by the time the clock shows `day`. The next day's can
    # have begun: where a change turned the clock back over midnight (America/Goose_Bay, at
    # 00:01 until 2011), Sunday opened before the clock went back to Saturday 23:01.
    return any(start <= at < end for start, end in week.periods(day, day + ONE_DAY))


def next_opening(schedule: BusinessHours | None, after: datetime) -> datetime | None:
    """The first instant at or after `after` when the schedule is open: `after` itself when it
    is open then; None when it stays closed for LOOKAHEAD_DAYS."""
    after = _utc(after)
    if schedule is None:
        return after
    week = _Week.of(schedule)
    for start, end in week.periods(after.astimezone(week.zone).date()):
        if end > after:
            return max(start, after)
    return None


def open_periods(schedule: BusinessHours | None, start: datetime, end: datetime) -> list[Period]:
    """The open stretches within [start, end), in UTC, in order. Stretches that touch (an
    overnight shift entered as 22:00–00:00 and 00:00–06:00) come back as one."""
    start, end = _utc(start), _utc(end)
    if start >= end:
        return []
    if schedule is None:
        return [(start, end)]
    week = _Week.of(schedule)
    first = start.astimezone(week.zone).date()
    last = end.astimezone(week.zone).date() + ONE_DAY  # see is_open
    return [
        (max(opens, start), min(closes, end))
        for opens, closes in week.periods(first, last)
        if opens < end and closes > start
    ]


def business_seconds_between(
    schedule: BusinessHours | None, start: datetime, end: datetime
) -> float:
    """Open seconds in [start, end): what an SLA clock counts. Wall-clock seconds for no
    schedule; 0 when `end` is not after `start`."""
    return sum(
        ((closes - opens).total_seconds() for opens, closes in open_periods(schedule, start, end)),
        0.0,
    )


def add_business_time(
    schedule: BusinessHours | None, start: datetime, seconds: float
) -> datetime | None:
    """The deadline `seconds` of open time after `start`: the earliest instant by which that
    much open time has passed (so a target used up exactly at closing time is due at closing
    time, not at the next opening). None when the schedule stays closed for LOOKAHEAD_DAYS
    before that much open time has passed."""
    if seconds < 0:
        raise ValueError("seconds must not be negative")
    start, remaining = _utc(start), timedelta(seconds=seconds)
    if schedule is None or not remaining:
        return start + remaining
    week = _Week.of(schedule)
    for opens, closes in week.periods(start.astimezone(week.zone).date()):
        if closes <= start:
            continue
        opens = max(opens, start)
        if opens + remaining <= closes:
            return opens + remaining
        remaining -= closes - opens
    return None


@dataclass(frozen=True)
class _Week:
    """A schedule read once into plain values: per weekday its (opens, closes) as offsets from
    local midnight, sorted; and the closed local dates."""

    zone: ZoneInfo
    days: tuple[tuple[tuple[timedelta, timedelta], ...], ...]
    closed: frozenset[date]

    @classmethod
    def of(cls, schedule: BusinessHours) -> _Week:
        days: list[list[tuple[timedelta, timedelta]]] = [[] for _ in range(7)]
        for interval in schedule.intervals.all():
            days[interval.weekday].append(interval.span)
        return cls(
            zone=ZoneInfo(schedule.timezone),
            days=tuple(tuple(sorted(spans)) for spans in days),
            closed=frozenset(holiday.date for holiday in schedule.holidays.all()),
        )

    def day(self, day: date) -> list[Period]:
        if day in self.closed:
            return []
        midnight = datetime.combine(day, time())
        periods = []
        for opens, closes in self.days[day.weekday()]:
            start, end = (
                _instant(midnight + opens, self.zone),
                _instant(midnight + closes, self.zone),
            )
            if start < end:  # empty when wholly inside a skipped hour
                periods.append((start, end))
        return periods

    def periods(self, first: date, last: date | None = None) -> Iterator[Period]:
        """Open periods of the local days first..last, in order, overlapping or touching ones
        merged. Without `last`, goes on until LOOKAHEAD_DAYS pass without an opening: callers
        stop when they have what they need."""
        if not any(self.days):
            return
        current: Period | None = None
        day, idle = first, 0
        while day <= last if last is not None else idle < LOOKAHEAD_DAYS:
            periods = self.day(day)
            idle = 0 if periods else idle + 1
            for start, end in periods:
                if current and start <= current[1]:
                    current = (current[0], max(current[1], end))
                else:
                    if current:
                        yield current
                    current = (start, end)
            day += ONE_DAY
            if last is None and current and current[1] - current[0] > LOOKAHEAD:
                break  # open round the clock: the period goes on, callers need no more of it
        if current:
            yield current


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant at which the clock in `zone` shows `wall` or later, in UTC (see the
    module docstring for why)."""
    first = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the earlier of two occurrences
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # `wall` was skipped. Read with the offset after the jump (fold=1) it lands before the jump;
    # with the offset before it (fold=0, `first`) after the jump. Find the jump in between; zone
    # transitions fall on whole seconds.
    before, after = int(wall.replace(tzinfo=zone, fold=1).timestamp()), int(first.timestamp())
    offset_after = first.astimezone(zone).utcoffset()
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset_after:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"an aware datetime is needed, got {value!r}")
    return value.astimezone(UTC)
