from datetime import time, timedelta
from zoneinfo import available_timezones

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _


class Team(models.Model):
    """A group of agents who answer the conversations of the inboxes assigned to them."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    business_hours = models.ForeignKey(
        "BusinessHours",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="teams",
        help_text=_(
            "When the team works. An inbox's own schedule wins over its team's; none means "
            "always open."
        ),
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="TeamMembership", related_name="teams", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class TeamMembership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_memberships"
    )
    is_lead = models.BooleanField(
        _("team lead"), default=False, help_text=_("Leads are told about SLA breaches.")
    )
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="team_membership_unique")
        ]

    def __str__(self):
        return f"{self.user} in {self.team}"


MIDNIGHT = time(0, 0)


class BusinessHours(models.Model):
    """A weekly schedule in one time zone, with closed days. Teams and inboxes point at one;
    SLA clocks, expected reply times and the widget's online/offline state read it through
    `routing.hours`."""

    name = models.CharField(max_length=100, unique=True)
    timezone = models.CharField(
        max_length=64,
        help_text=_("An IANA time zone name, such as Europe/Lisbon or America/New_York."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("business hours")
        verbose_name_plural = _("business hours")
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.timezone})"

    def clean(self):
        # The list of names, not just "ZoneInfo() loads it": that would also take the "right/"
        # zones (clocks that count leap seconds, out of step with everything else) and
        # "localtime" (whatever the machine happens to be set to).
        if self.timezone == "localtime" or self.timezone not in available_timezones():
            raise ValidationError(
                {
                    "timezone": _(
                        "Unknown time zone “%(name)s”. Use an IANA name such as Europe/Lisbon "
                        "(names are case-sensitive)."
                    )
                    % {"name": self.timezone}
                }
            )


class BusinessInterval(models.Model):
    """One opening on one weekday, in the schedule's local wall time."""

    class Weekday(models.IntegerChoices):
        MONDAY = 0, _("Monday")
        TUESDAY = 1, _("Tuesday")
        WEDNESDAY = 2, _("Wednesday")
        THURSDAY = 3, _("Thursday")
        FRIDAY = 4, _("Friday")
        SATURDAY = 5, _("Saturday")
        SUNDAY = 6, _("Sunday")

    schedule = models.ForeignKey(BusinessHours, on_delete=models.CASCADE, related_name="intervals")
    weekday = models.SmallIntegerField(choices=Weekday.choices)
    opens = models.TimeField()
    closes = models.TimeField(
        help_text=_(
            "Later than the opening time; 00:00 means midnight at the end of the day. An "
            "overnight shift is two intervals: 22:00–00:00 on one day and 00:00–06:00 on the next."
        )
    )

    class Meta:
        ordering = ["weekday", "opens"]

    def __str__(self):
        return f"{self.get_weekday_display()} {self.opens:%H:%M}–{self.closes:%H:%M}"

    @property
    def span(self) -> tuple[timedelta, timedelta]:
        """Opening and closing as offsets from the day's midnight, so 00:00 closing is 24 h."""
        closes = timedelta(hours=24) if self.closes == MIDNIGHT else _offset(self.closes)
        return _offset(self.opens), closes

    def clean(self):
        if self.opens is None or self.closes is None:
            return  # the field errors say what is missing
        opens, closes = self.span
        if closes <= opens:
            raise ValidationError(
                {
                    "closes": _(
                        "Closing time must be later than the opening time. Enter an overnight "
                        "shift as two intervals (e.g. 22:00–00:00 and 00:00–06:00)."
                    )
                }
            )


def _offset(at: time) -> timedelta:
    return timedelta(hours=at.hour, minutes=at.minute, seconds=at.second)


class Holiday(models.Model):
    """A closed day: the whole local date, in the schedule's time zone, is closed."""

    schedule = models.ForeignKey(BusinessHours, on_delete=models.CASCADE, related_name="holidays")
    date = models.DateField()
    name = models.CharField(max_length=100, blank=True)

    class Meta:
        verbose_name = _("closed day")
        ordering = ["date"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "date"], name="holiday_unique_date")
        ]

    def __str__(self):
        return f"{self.date:%Y-%m-%d} {self.name}".strip()
