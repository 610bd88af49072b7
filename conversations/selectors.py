"""Reads, and who may read what. Every entry point (page, API, socket) asks these helpers."""

from django.db.models import Q, QuerySet
from django.http import Http404

from conversations.models import Conversation


def conversations_visible_to(user) -> QuerySet[Conversation]:
    """Admins see everything; an agent sees conversations of their teams and their own."""
    conversations = Conversation.objects.all()
    if not (user and user.is_authenticated and user.is_active):
        return conversations.none()
    if user.is_admin:
        return conversations
    team_ids = list(user.team_memberships.values_list("team_id", flat=True))
    return conversations.filter(
        Q(team_id__in=team_ids) | Q(inbox__default_team_id__in=team_ids) | Q(assignee=user)
    )


def conversation_get_for_agent(*, user, conversation_id) -> Conversation:
    """The conversation if `user` may see it. Raises Http404 otherwise, so that a conversation
    someone may not see is indistinguishable from one that does not exist."""
    try:
        return (
            conversations_visible_to(user)
            .select_related("inbox", "customer", "team", "assignee")
            .get(pk=conversation_id)
        )
    except (Conversation.DoesNotExist, ValueError, TypeError):
        raise Http404("No such conversation") from None
