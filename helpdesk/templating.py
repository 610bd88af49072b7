"""The Jinja2 environment, for the few templates rendered often enough for Django's template
engine to show: the inbox list (its rows on every page and live refresh, its filter and bulk
bars on every page). Everything else stays in Django's templates."""

from django.urls import reverse
from jinja2 import Environment, StrictUndefined

from conversations.templatetags.sla import ago, iso, sla_left, when


def environment(**options) -> Environment:
    # Customer content is escaped (as Django's backend sets anyway, said here where it counts);
    # a missing name is a mistake, not an empty string.
    options.update(undefined=StrictUndefined)
    options.pop("autoescape", None)
    env = Environment(**options, autoescape=True)
    env.filters.update(ago=ago, iso=iso, sla_left=sla_left, when=when)
    env.globals["url"] = lambda name, *args: reverse(name, args=args)
    return env
