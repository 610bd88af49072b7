"""How the inbox words times: SLA clocks (static/inbox.js words them the same way as they count
down, so keep the two in step) and ages. Plain string work: the list calls these 150 times a
page, where Django's `timesince` and `date` filters cost ~40 µs a call."""

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.dateformat import format as date_format

register = template.Library()

WHEN = "M j, H:i"  # "Nov 30, 14:05", in the agent's time zone


@register.filter
def span(seconds: float) -> str:
    """12 min, 3 h 5 min, 2 d 4 h: a length of time at the precision an agent needs."""
    minutes = max(0, round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@register.filter
def duration(seconds: float | None) -> str:
    """45 s, 12 min, 3 h 5 min: `span`, with seconds under a minute (a live chat's answer)."""
    if seconds is None:
        return "–"
    return f"{round(seconds)} s" if seconds < 59.5 else span(seconds)


@register.filter
def sla_left(due: datetime | None) -> str:
    """“due in 12 min” or “overdue 5 min”, from now."""
    if due is None:
        return ""
    seconds = (due - timezone.now()).total_seconds()
    return f"due in {span(seconds)}" if seconds >= 0 else f"overdue {span(-seconds)}"


@register.filter
def ago(moment: datetime | None) -> str:
    """just now, 12 min ago, 3 h ago, 5 d ago, or the date once it is a month old."""
    if moment is None:
        return ""
    minutes = int((timezone.now() - moment).total_seconds() // 60)
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 24 * 60:
        return f"{minutes // 60} h ago"
    if minutes < 30 * 24 * 60:
        return f"{minutes // (24 * 60)} d ago"
    return timezone.localtime(moment).strftime("%-d %b %Y")


@register.filter
def iso(moment: datetime | None) -> str:
    """The moment for a `datetime` attribute: ISO 8601 with its offset, for scripts to read."""
    return moment.isoformat() if moment else ""


@register.filter
def when(moment: datetime | None) -> str:
    """The moment as the inbox words it: "Nov 30, 14:05", in the agent's time zone."""
    return date_format(timezone.localtime(moment), WHEN) if moment else ""
