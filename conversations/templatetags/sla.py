"""How the inbox words SLA clocks. static/inbox.js words them the same way as they count down,
so keep the two in step."""

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()


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
