"""Canned responses: saved replies an agent inserts by typing `/shortcut` in the composer.

Placeholders are filled by a plain lookup in an allowlist, in one pass over the saved body.
Never the template engine or `str.format`: those would evaluate whatever the body or a
customer's name contains (`{{ settings.SECRET_KEY }}`, `{0.__class__}`). In one pass, a value
that itself looks like a placeholder (a customer named "{agent.name}") is left as it is.

A placeholder may say what to write when there is no value: `{customer.first_name|there}`
reads "Hi there," for a customer without a name, and an empty fallback,
`Hi {customer.first_name|},`, leaves the word out with the spaces before it ("Hi,").
"""

import re

from django.contrib.auth.decorators import login_required
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.http import JsonResponse

from conversations.models import CannedResponse, Conversation
from conversations.selectors import conversation_get_for_agent
from routing.models import TeamMembership

MAX_RESULTS = 10
# The spaces before it, its name, and its fallback after a "|" if it has one.
# (Not preceded by a space: a run of them is taken whole, once, not tried from each space.)
PLACEHOLDER = re.compile(r"(?<![ \t])([ \t]*)\{([a-z_]+\.[a-z_]+)(?:\|([^{}|\n]{0,60}))?\}")


def _first_name(name: str) -> str:
    return name.split()[0] if name.strip() else ""


def placeholder_values(*, conversation: Conversation, agent) -> dict[str, str]:
    """Each of CannedResponse.PLACEHOLDERS, for this conversation and agent."""
    customer_name = conversation.customer.name.strip()
    return {
        "customer.name": customer_name,
        "customer.first_name": _first_name(customer_name),
        "agent.name": agent.name,
        "agent.first_name": _first_name(agent.name),
        "conversation.number": str(conversation.number),
        "conversation.subject": conversation.subject,
    }


def canned_render(body: str, *, conversation: Conversation, agent) -> str:
    """The body with known placeholders filled. Unknown ones, and known ones with no value
    (a customer with no name), stay as typed, for the agent to see and fix before sending."""
    return canned_fill(body, conversation=conversation, agent=agent)[0]


def canned_fill(body: str, *, conversation: Conversation, agent) -> tuple[str, list[str]]:
    """canned_render's text, and the placeholders it had nothing for: what nobody is there to
    fix when no agent sends it (an automation's reply)."""
    values = placeholder_values(conversation=conversation, agent=agent)
    unfilled = []

    def fill(match) -> str:
        spaces, name, fallback = match.groups()
        value = (values[name] or fallback) if name in values else None
        if value is None:  # unknown, or nothing to put there and no fallback: as typed
            if name not in unfilled:
                unfilled.append(name)
            return match.group(0)
        return spaces + value if value else ""

    return PLACEHOLDER.sub(fill, body), unfilled


def canned_responses_for(user) -> QuerySet[CannedResponse]:
    """The ones everyone may use, and those of the user's teams."""
    teams = TeamMembership.objects.filter(user=user).values("team_id")
    return CannedResponse.objects.filter(Q(team__isnull=True) | Q(team__in=teams))


@login_required
def canned_search(request, number: int):
    """Up to ten responses matching `q` on shortcut or title, shortcut prefixes first, each
    rendered for this conversation and agent. JSON, for the composer's `/` menu."""
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    query = request.GET.get("q", "").strip()[:50]
    responses = canned_responses_for(request.user)
    if query:
        responses = responses.filter(Q(shortcut__icontains=query) | Q(title__icontains=query))
    responses = responses.annotate(
        rank=Case(
            When(shortcut__istartswith=query, then=Value(0)),
            default=Value(1),
            output_field=IntegerField(),
        )
    ).order_by("rank", "shortcut", "team_id")[:MAX_RESULTS]
    return JsonResponse(
        [
            {
                "id": response.pk,
                "shortcut": response.shortcut,
                "title": response.title,
                "body": canned_render(response.body, conversation=conversation, agent=request.user),
            }
            for response in responses
        ],
        safe=False,
    )
