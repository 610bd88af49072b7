"""Business hours: open/closed, next opening, open time between two instants and deadlines, in
the schedule's time zone across weekends, closed days and DST changes. Time is given explicitly
or travelled to, never slept."""

from datetime import UTC, date, datetime, time, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse

from conversations.models import Channel, Inbox
from routing import hours
from routing.models import BusinessHours, BusinessInterval, Holiday, Team

HOUR = 3600
WEEKDAYS = range(5)
SUNDAY = 6  # every DST change tested here falls on a Sunday


def utc(text: str) -> datetime:
    """An aware UTC instant from "YYYY-MM-DD HH:MM[:SS]"."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def make_schedule(zone="Europe/Lisbon", week=None, closed=(), name="Hours"):
    """A saved schedule, read back the way `schedule_for` reads it. `week` maps weekday numbers
    to lists of ("HH:MM", "HH:MM") intervals; `closed` lists ISO dates."""
    schedule = BusinessHours.objects.create(name=name, timezone=zone)
    BusinessInterval.objects.bulk_create(
        BusinessInterval(
            schedule=schedule,
            weekday=day,
            opens=time.fromisoformat(opens),
            closes=time.fromisoformat(closes),
        )
        for day, spans in (week or {}).items()
        for opens, closes in spans
    )
    Holiday.objects.bulk_create(
        Holiday(schedule=schedule, date=date.fromisoformat(day), name="closed") for day in closed
    )
    return BusinessHours.objects.prefetch_related("intervals", "holidays").get(pk=schedule.pk)


@pytest.fixture
def lisbon(db):
    """Support in Lisbon: Monday to Friday 09:00–18:00, closed on Christmas (a Friday).
    Lisbon is on UTC in winter (WET) and UTC+1 in summer (WEST)."""
    return make_schedule(
        "Europe/Lisbon", {day: [("09:00", "18:00")] for day in WEEKDAYS}, closed=["2026-12-25"]
    )


# --- is_open ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        ("2026-01-12 08:59:59", False),  # Monday, winter: local time is UTC
        ("2026-01-12 09:00", True),  # opening is inclusive
        ("2026-01-12 17:59:59", True),
        ("2026-01-12 18:00", False),  # closing is exclusive
        ("2026-07-13 07:59:59", False),  # Monday, summer: 08:59:59 local
        ("2026-07-13 08:00", True),  # 09:00 local
        ("2026-07-13 16:59:59", True),
        ("2026-07-13 17:00", False),  # 18:00 local
        ("2026-01-17 12:00", False),  # Saturday
        ("2026-01-18 12:00", False),  # Sunday
        ("2026-12-24 12:00", True),  # Thursday before Christmas
        ("2026-12-25 12:00", False),  # Christmas, a Friday
        ("2026-12-28 09:00", True),  # the Monday after
    ],
)
def test_it_is_open_from_opening_until_just_before_closing_on_working_days(lisbon, at, expected):
    assert hours.is_open(lisbon, utc(at)) is expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        ("2026-07-03 03:59:59", True),  # Thursday 23:59:59 in New York
        ("2026-07-03 04:00", False),  # Friday 00:00: the closed day begins
        ("2026-07-03 23:00", False),
        ("2026-07-04 03:59:59", False),  # still Friday in New York, Saturday in UTC
        ("2026-07-04 04:00", True),  # Saturday 00:00 in New York
    ],
)
def test_a_closed_day_is_the_whole_local_date_although_it_spans_two_utc_dates(db, at, expected):
    always = make_schedule(
        "America/New_York", {day: [("00:00", "00:00")] for day in range(7)}, closed=["2026-07-03"]
    )
    assert hours.is_open(always, utc(at)) is expected
    assert (
        hours.business_seconds_between(always, utc("2026-07-03 00:00"), utc("2026-07-05 00:00"))
        == (4 + 20) * HOUR
    )  # the UTC edges of the New York date, each side


def test_an_overnight_shift_is_two_intervals_and_one_open_period(db):
    nights = make_schedule(
        "Europe/Lisbon",
        {4: [("22:00", "00:00")], 5: [("00:00", "06:00")]},  # Friday night
    )
    assert hours.open_periods(nights, utc("2026-01-16 00:00"), utc("2026-01-18 00:00")) == [
        (utc("2026-01-16 22:00"), utc("2026-01-17 06:00"))
    ]
    assert hours.is_open(nights, utc("2026-01-16 23:59:59"))
    assert hours.is_open(nights, utc("2026-01-17 00:00"))
    assert not hours.is_open(nights, utc("2026-01-17 06:00"))


# --- DST -------------------------------------------------------------------------------------

# (zone, the Sunday clocks change, interval, the UTC period it becomes or None when empty)
DST_DAYS = [
    # Lisbon springs forward at 01:00 WET (UTC+0) to 02:00 WEST (UTC+1).
    ("Europe/Lisbon", "2026-03-29", "09:00", "17:00", "08:00", "16:00"),
    ("Europe/Lisbon", "2026-03-29", "00:30", "03:00", "00:30", "02:00"),  # 1.5 h, not 2.5 h
    ("Europe/Lisbon", "2026-03-29", "00:00", "00:00", "00:00", "23:00"),  # a 23-hour day
    ("Europe/Lisbon", "2026-03-29", "01:30", "04:00", "01:00", "03:00"),  # opens at the jump
    ("Europe/Lisbon", "2026-03-29", "01:15", "01:45", None, None),  # wholly skipped
    # Lisbon falls back at 02:00 WEST to 01:00 WET: 01:00–01:59 happens twice.
    ("Europe/Lisbon", "2026-10-25", "09:00", "17:00", "09:00", "17:00"),
    ("Europe/Lisbon", "2026-10-25", "00:30", "03:00", "-23:30", "03:00"),  # 3.5 h
    ("Europe/Lisbon", "2026-10-25", "00:00", "00:00", "-23:00", "24:00"),  # a 25-hour day
    ("Europe/Lisbon", "2026-10-25", "01:30", "04:00", "00:30", "04:00"),  # first 01:30
    ("Europe/Lisbon", "2026-10-25", "00:00", "01:30", "-23:00", "00:30"),  # first 01:30
    # New York springs forward at 02:00 EST (UTC-5) to 03:00 EDT (UTC-4).
    ("America/New_York", "2026-03-08", "09:00", "17:00", "13:00", "21:00"),
    ("America/New_York", "2026-03-08", "00:30", "03:00", "05:30", "07:00"),  # 1.5 h
    ("America/New_York", "2026-03-08", "02:30", "05:00", "07:00", "09:00"),  # opens at the jump
    # New York falls back at 02:00 EDT to 01:00 EST.
    ("America/New_York", "2026-11-01", "09:00", "17:00", "14:00", "22:00"),
    ("America/New_York", "2026-11-01", "00:30", "03:00", "04:30", "08:00"),  # 3.5 h
    ("America/New_York", "2026-11-01", "00:00", "01:30", "04:00", "05:30"),  # first 01:30
]


def _on(day: str, clock: str | None) -> datetime | None:
    """A UTC instant given as a clock time on `day`; "-23:30" is the evening before, "24:00"
    midnight after."""
    if clock is None:
        return None
    sign = -1 if clock.startswith("-") else 1
    h, m = clock.lstrip("-").split(":")
    offset = timedelta(hours=int(h), minutes=int(m))
    return utc(f"{day} 00:00") + (offset if sign > 0 else offset - timedelta(days=1))


@pytest.mark.parametrize(("zone", "day", "opens", "closes", "start", "end"), DST_DAYS)
def test_intervals_on_dst_days_follow_the_local_clock(db, zone, day, opens, closes, start, end):
    sundays = make_schedule(zone, {SUNDAY: [(opens, closes)]})
    start, end = _on(day, start), _on(day, end)
    window = (_on(day, "-12:00"), _on(day, "36:00"))

    periods = hours.open_periods(sundays, *window)

    assert periods == ([(start, end)] if start else [])
    assert hours.business_seconds_between(sundays, *window) == (
        (end - start).total_seconds() if start else 0
    )
    if start:
        assert not hours.is_open(sundays, start - timedelta(seconds=1))
        assert hours.is_open(sundays, start)
        assert hours.is_open(sundays, end - timedelta(seconds=1))
        assert not hours.is_open(sundays, end)
        assert hours.next_opening(sundays, window[0]) == start
        assert hours.add_business_time(sundays, window[0], 60) == start + timedelta(minutes=1)


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("Europe/Lisbon", "2026-03-29"),
        ("Europe/Lisbon", "2026-10-25"),
        ("America/New_York", "2026-03-08"),
        ("America/New_York", "2026-11-01"),
    ],
)
def test_a_nine_to_five_day_is_eight_hours_on_both_dst_days(db, zone, day):
    sundays = make_schedule(zone, {SUNDAY: [("09:00", "17:00")]})
    week = (_on(day, "00:00") - timedelta(days=3), _on(day, "00:00") + timedelta(days=4))
    assert hours.business_seconds_between(sundays, *week) == 8 * HOUR


def test_the_fall_back_hour_counts_as_its_first_occurrence(db):
    """Closing at 01:30 on the night 01:00–01:59 happens twice closes the first time the clock
    shows 01:30: the second 01:15, an hour later, is closed. The same rule for opening keeps
    touching intervals from overlapping, so no open time is counted twice."""
    closing = make_schedule("Europe/Lisbon", {SUNDAY: [("00:00", "01:30")]})
    assert hours.is_open(closing, utc("2026-10-25 00:15"))  # 01:15 WEST
    assert not hours.is_open(closing, utc("2026-10-25 01:15"))  # 01:15 WET, the second time

    touching = make_schedule(
        "Europe/Lisbon", {SUNDAY: [("00:00", "01:30"), ("01:30", "03:00")]}, name="Touching"
    )
    night = (utc("2026-10-24 00:00"), utc("2026-10-26 00:00"))
    assert hours.open_periods(touching, *night) == [
        (utc("2026-10-24 23:00"), utc("2026-10-25 03:00"))
    ]
    assert hours.business_seconds_between(touching, *night) == 4 * HOUR  # as the clock ran


def test_a_day_opens_when_its_clock_first_shows_it_even_if_the_clock_then_goes_back(db):
    """Goose Bay fell back at 00:01 (until 2011): on 2010-11-07 the clock showed Sunday 00:00
    ADT, then went back to Saturday 23:01 AST. Sunday's 00:00–06:00 had begun and stays open
    while the clock shows Saturday again."""
    sundays = make_schedule("America/Goose_Bay", {SUNDAY: [("00:00", "06:00")]})
    assert not hours.is_open(sundays, utc("2010-11-07 02:59:59"))  # Saturday 23:59:59 ADT
    assert hours.is_open(sundays, utc("2010-11-07 03:30"))  # Saturday 23:30 AST, again
    # Ending at Saturday 23:30 AST still takes in Sunday's first half hour.
    assert hours.open_periods(sundays, utc("2010-11-07 02:00"), utc("2010-11-07 03:30")) == [
        (utc("2010-11-07 03:00"), utc("2010-11-07 03:30"))
    ]


# --- open time between two instants ----------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected_hours"),
    [
        ("2026-01-16 12:00", "2026-01-19 12:00", 6 + 3),  # Friday noon to Monday noon
        ("2026-12-24 12:00", "2026-12-28 12:00", 6 + 3),  # across Christmas and a weekend
        ("2026-07-17 16:00", "2026-07-20 09:00", 1 + 1),  # summer: 17:00 to 10:00 local
        ("2026-01-17 00:00", "2026-01-19 00:00", 0),  # a weekend
        ("2026-01-12 00:00", "2026-01-19 00:00", 45),  # a week
        ("2026-12-21 00:00", "2026-12-28 00:00", 36),  # the week of Christmas
        ("2026-01-12 12:00", "2026-01-12 12:00", 0),  # nothing
        ("2026-01-12 13:00", "2026-01-12 12:00", 0),  # backwards
    ],
)
def test_it_counts_only_open_time(lisbon, start, end, expected_hours):
    assert hours.business_seconds_between(lisbon, utc(start), utc(end)) == expected_hours * HOUR


# --- deadlines -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "business_hours", "deadline"),
    [
        ("2026-01-16 17:00", 2, "2026-01-19 10:00"),  # Friday 17:00: 1 h Friday, 1 h Monday
        ("2026-01-16 18:00", 2, "2026-01-19 11:00"),  # Friday at closing: all of it on Monday
        ("2026-01-16 17:00", 1, "2026-01-16 18:00"),  # used up at closing: due at closing
        ("2026-12-24 17:00", 2, "2026-12-28 10:00"),  # across Christmas and a weekend
        ("2026-01-17 10:00", 1, "2026-01-19 10:00"),  # asked on a Saturday
        ("2026-01-12 10:00", 45, "2026-01-19 10:00"),  # a business week
        ("2026-07-17 16:00", 2, "2026-07-20 09:00"),  # summer: Friday 17:00 to Monday 10:00
        ("2026-01-17 10:00", 0, "2026-01-17 10:00"),  # no time at all
    ],
)
def test_a_deadline_counts_only_open_time(lisbon, start, business_hours, deadline):
    due = hours.add_business_time(lisbon, utc(start), business_hours * HOUR)
    assert due == utc(deadline)
    assert hours.business_seconds_between(lisbon, utc(start), due) == business_hours * HOUR


def test_a_deadline_needs_a_positive_amount(lisbon):
    with pytest.raises(ValueError, match="negative"):
        hours.add_business_time(lisbon, utc("2026-01-12 10:00"), -1)


# --- next opening ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("2026-01-17 10:00", "2026-01-19 09:00"),  # Saturday
        ("2026-01-16 18:00", "2026-01-19 09:00"),  # Friday at closing
        ("2026-01-12 08:00", "2026-01-12 09:00"),  # Monday before opening
        ("2026-01-12 10:00", "2026-01-12 10:00"),  # open now: now
        ("2026-12-24 18:30", "2026-12-28 09:00"),  # Thursday evening before Christmas
        ("2026-07-18 12:00", "2026-07-20 08:00"),  # summer Saturday: Monday 09:00 local
    ],
)
def test_next_opening_from_inside_a_closed_stretch(lisbon, after, expected):
    assert hours.next_opening(lisbon, utc(after)) == utc(expected)


def test_a_schedule_that_never_opens(db):
    empty = make_schedule("Europe/Lisbon", {})
    mondays = [(date(2026, 1, 12) + timedelta(weeks=n)).isoformat() for n in range(53)]
    closed_a_year = make_schedule(
        "Europe/Lisbon", {0: [("09:00", "18:00")]}, closed=mondays, name="Closed"
    )
    start = utc("2026-01-11 12:00")
    for schedule in (empty, closed_a_year):
        assert not hours.is_open(schedule, start)
        assert hours.next_opening(schedule, start) is None
        assert hours.add_business_time(schedule, start, HOUR) is None
        assert hours.business_seconds_between(schedule, start, start + timedelta(days=30)) == 0


def test_no_schedule_is_always_open():
    start, end = utc("2026-01-17 10:00"), utc("2026-01-18 10:00")  # a weekend
    assert hours.is_open(None, start)
    assert hours.next_opening(None, start) == start
    assert hours.open_periods(None, start, end) == [(start, end)]
    assert hours.business_seconds_between(None, start, end) == 24 * HOUR
    assert hours.add_business_time(None, start, 90) == start + timedelta(seconds=90)


def test_it_refuses_naive_datetimes(lisbon):
    with pytest.raises(ValueError, match="aware"):
        hours.is_open(lisbon, datetime(2026, 1, 12, 10))  # noqa: DTZ001 - the point of the test


def test_results_are_utc_whatever_zone_the_question_uses(lisbon):
    from zoneinfo import ZoneInfo

    tokyo_saturday = datetime(2026, 1, 17, 19, tzinfo=ZoneInfo("Asia/Tokyo"))
    opening = hours.next_opening(lisbon, tokyo_saturday)
    assert opening == utc("2026-01-19 09:00")
    assert opening.tzinfo is UTC


# --- which schedule an inbox uses ------------------------------------------------------------


@pytest.fixture
def inboxes(db, support):
    team_hours = make_schedule("Europe/Lisbon", {d: [("09:00", "18:00")] for d in WEEKDAYS})
    own_hours = make_schedule(
        "Europe/Madrid", {d: [("10:00", "16:00")] for d in WEEKDAYS}, name="B"
    )
    support.business_hours = team_hours
    support.save()
    return {
        "own": Inbox.objects.create(
            name="Chat", kind=Channel.WEBCHAT, default_team=support, business_hours=own_hours
        ),
        "team": Inbox.objects.create(name="Mail", kind=Channel.EMAIL, default_team=support),
        "own, no team": Inbox.objects.create(
            name="Shop", kind=Channel.API, business_hours=own_hours
        ),
        "none": Inbox.objects.create(name="SMS", kind=Channel.SMS),
        "team without hours": Inbox.objects.create(
            name="Page",
            kind=Channel.MESSENGER,
            default_team=Team.objects.create(name="Sales", slug="sales"),
        ),
    }


@pytest.mark.parametrize(
    ("inbox", "expected"),
    [
        ("own", "B"),
        ("team", "Hours"),
        ("own, no team", "B"),
        ("none", None),
        ("team without hours", None),
    ],
)
def test_an_inbox_s_own_schedule_wins_over_its_team_s(inboxes, inbox, expected):
    schedule = hours.schedule_for(inboxes[inbox])
    assert (schedule and schedule.name) == expected


def test_a_schedule_costs_three_queries_however_often_it_is_asked(
    inboxes, django_assert_num_queries
):
    start = utc("2026-01-12 00:00")
    with django_assert_num_queries(3):  # the schedule, its intervals, its closed days
        schedule = hours.schedule_for(inboxes["team"])
        answers = [hours.is_open(schedule, start + timedelta(minutes=17 * i)) for i in range(500)]
        hours.next_opening(schedule, start)
        hours.business_seconds_between(schedule, start, start + timedelta(days=365))
        hours.add_business_time(schedule, start, 500 * HOUR)
    assert True in answers and False in answers

    with django_assert_num_queries(0):
        assert hours.schedule_for(inboxes["none"]) is None


def test_changes_apply_on_the_next_read(inboxes):
    """No cache and no restart: the widget's next question sees what the admin just saved."""
    christmas = utc("2026-12-25 10:00")
    assert hours.is_open(hours.schedule_for(inboxes["team"]), christmas)
    Holiday.objects.create(schedule=inboxes["team"].default_team.business_hours, date="2026-12-25")
    assert not hours.is_open(hours.schedule_for(inboxes["team"]), christmas)


# --- validation and admin --------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone", ["Europe/Lisboa", "europe/lisbon", "../../etc/passwd", "right/UTC"]
)
def test_an_unknown_time_zone_is_refused(db, zone):
    with pytest.raises(ValidationError) as refused:
        BusinessHours(name="Hours", timezone=zone).full_clean()
    assert refused.value.message_dict["timezone"] == [
        f"Unknown time zone “{zone}”. Use an IANA name such as Europe/Lisbon "
        "(names are case-sensitive)."
    ]


@pytest.mark.parametrize(("opens", "closes"), [(time(9), time(9)), (time(18), time(9))])
def test_closing_must_come_after_opening(db, opens, closes):
    schedule = make_schedule()
    with pytest.raises(ValidationError) as refused:
        BusinessInterval(schedule=schedule, weekday=0, opens=opens, closes=closes).full_clean()
    assert "Closing time must be later than the opening time" in refused.value.messages[0]


def _form(intervals=(), holidays=(), zone="Europe/Lisbon", name="Support hours", schedule=None):
    """The admin page's POST: (weekday, opens, closes[, id]) rows and (date, name) rows."""
    data = {
        "name": name,
        "timezone": zone,
        "intervals-TOTAL_FORMS": len(intervals),
        "intervals-INITIAL_FORMS": sum(len(row) == 4 for row in intervals),
        "holidays-TOTAL_FORMS": len(holidays),
        "holidays-INITIAL_FORMS": 0,
    }
    for i, (weekday, opens, closes, *pk) in enumerate(intervals):
        data |= {
            f"intervals-{i}-weekday": weekday,
            f"intervals-{i}-opens": opens,
            f"intervals-{i}-closes": closes,
            f"intervals-{i}-id": pk[0] if pk else "",
            f"intervals-{i}-schedule": schedule.pk if schedule else "",
        }
    for i, (day, holiday) in enumerate(holidays):
        data |= {f"holidays-{i}-date": day, f"holidays-{i}-name": holiday}
    return data


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (
            _form([(0, "09:00", "13:00"), (0, "12:00", "18:00")]),
            "Monday: 09:00–13:00 overlaps 12:00–18:00.",
        ),
        (
            _form([(2, "08:00", "20:00"), (2, "10:00", "11:00"), (3, "10:00", "11:00")]),
            "Wednesday: 08:00–20:00 overlaps 10:00–11:00.",
        ),
        (
            _form([(4, "22:00", "00:00"), (4, "23:00", "23:30")]),  # 00:00 closes at midnight
            "Friday: 22:00–00:00 overlaps 23:00–23:30.",
        ),
        (_form([(0, "18:00", "09:00")]), "Closing time must be later than the opening time."),
        (
            _form([(0, "09:00", "18:00")], zone="Europe/Lisboa"),
            "Unknown time zone “Europe/Lisboa”.",
        ),
        (
            _form(holidays=[("2026-12-25", "Natal"), ("2026-12-25", "Christmas")]),
            "Please correct the duplicate data for date",
        ),
    ],
)
def test_the_admin_refuses_bad_schedules_with_a_clear_message(client, alice, form, message):
    client.force_login(alice)
    response = client.post(reverse("admin:routing_businesshours_add"), form)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not BusinessHours.objects.exists()


def test_the_admin_saves_touching_intervals_and_moves_them_in_one_save(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("admin:routing_businesshours_add"),
        _form(
            [(0, "09:00", "12:00"), (0, "13:00", "18:00"), (4, "22:00", "00:00")],
            holidays=[("2026-12-25", "Natal")],
        ),
    )
    assert response.status_code == 302
    schedule = BusinessHours.objects.get()
    morning, afternoon, night = schedule.intervals.all()
    assert night.closes == time(0)

    # 09–12 becomes 09–10 and 13–18 becomes 10–18: each row against the other's old times
    # would overlap; together they only touch.
    response = client.post(
        reverse("admin:routing_businesshours_change", args=[schedule.pk]),
        _form(
            [(0, "09:00", "10:00", morning.pk), (0, "10:00", "18:00", afternoon.pk)],
            schedule=schedule,
        ),
    )
    assert response.status_code == 302, response.content.decode()
    assert [(i.opens, i.closes) for i in schedule.intervals.filter(weekday=0)] == [
        (time(9), time(10)),
        (time(10), time(18)),
    ]


@pytest.mark.parametrize(
    ("now", "state"),
    [
        ("2026-01-12 10:00", "open now"),
        ("2026-01-17 10:00", "closed, opens Mon 09:00 Europe/Lisbon"),
        ("2026-07-17 17:30", "closed, opens Mon 09:00 Europe/Lisbon"),  # 18:30 local
        ("2026-12-24 18:00", "closed, opens Mon 09:00 Europe/Lisbon"),  # Christmas on Friday
    ],
)
def test_the_admin_list_shows_whether_each_schedule_is_open_now(client, alice, lisbon, now, state):
    with time_machine.travel(utc(now), tick=False):
        client.force_login(alice)  # inside: a session from before the trip could expire on it
        html = client.get(reverse("admin:routing_businesshours_changelist")).content.decode()
    assert state in html


def test_the_admin_list_names_the_date_of_an_opening_a_week_or_more_away(client, alice):
    august = [f"2026-08-{day:02d}" for day in range(1, 32)]
    make_schedule("Europe/Lisbon", {d: [("09:00", "18:00")] for d in WEEKDAYS}, closed=august)
    with time_machine.travel(utc("2026-07-31 18:00"), tick=False):
        client.force_login(alice)
        html = client.get(reverse("admin:routing_businesshours_changelist")).content.decode()
    assert "closed, opens Tue 1 Sep 09:00 Europe/Lisbon" in html


# --- demo data -------------------------------------------------------------------------------


def test_the_demo_has_business_hours_and_keeps_an_admin_s_changes(db):
    call_command("seed_demo", customers=0, stdout=StringIO())
    support = hours.schedule_for(Inbox.objects.get(name="Support email"))
    billing = hours.schedule_for(Inbox.objects.get(name="Billing email"))
    assert (support.name, support.timezone) == ("Support hours", "Europe/Lisbon")
    assert (billing.name, billing.timezone) == ("Billing hours", "Europe/Madrid")
    assert hours.is_open(support, utc("2026-12-07 17:59"))  # Monday 17:59 in Lisbon
    assert not hours.is_open(support, utc("2026-12-08 10:00"))  # Imaculada Conceição
    assert hours.is_open(billing, utc("2026-12-08 09:00"))  # 10:00 in Madrid
    assert not hours.is_open(billing, utc("2026-12-08 15:00"))  # 16:00 in Madrid

    # An admin takes Billing's hours off the team and drops Support's Monday.
    Team.objects.filter(slug="billing").update(business_hours=None)
    support.intervals.filter(weekday=0).delete()
    call_command("seed_demo", customers=0, stdout=StringIO())

    assert BusinessHours.objects.count() == 2
    assert BusinessInterval.objects.filter(schedule__name="Support hours").count() == 4
    assert Holiday.objects.filter(schedule__name="Support hours").count() == 4
    assert Team.objects.get(slug="billing").business_hours is None


def test_a_schedule_open_round_the_clock_answers_at_once(db):
    always = make_schedule(
        "Europe/Lisbon",
        {day: [("00:00", "00:00")] for day in range(7)},
        closed=["2026-01-01"],
    )
    now = utc("2026-03-10 12:00")
    assert hours.is_open(always, now)
    assert hours.next_opening(always, now) == now
    assert hours.add_business_time(always, now, HOUR) == now + timedelta(seconds=HOUR)
