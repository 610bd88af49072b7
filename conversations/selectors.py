"""Reads, and who may read what. Every entry point (page, API, socket) asks these helpers."""

from django.db.models import Q, QuerySet
from django.http import Http404

from conversations.models import Conversation, Customer


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


def customers_visible_to(user) -> QuerySet[Customer]:
    """Admins see every live profile; an agent sees the customers of conversations they may
    see. Profiles merged into another are left out: their successor stands for them."""
    customers = Customer.objects.filter(merged_into=None)
    if not (user and user.is_authenticated and user.is_active):
        return customers.none()
    if user.is_admin:
        return customers
    return customers.filter(pk__in=conversations_visible_to(user).values("customer_id"))


def customer_get_for_agent(*, user, customer_id) -> Customer:
    """The customer if `user` may see them, else Http404 (as if they did not exist). The id of
    a profile merged into another gives that other one, so old links keep working: callers
    compare the pk they get with the one they asked for."""
    visible = customers_visible_to(user)
    try:
        for _ in range(10):  # merges form a short chain; the bound guards against a cycle
            if customer := visible.filter(pk=customer_id).first():
                return customer
            customer_id = (
                Customer.objects.filter(pk=customer_id)
                .values_list("merged_into_id", flat=True)
                .first()
            )
            if customer_id is None:
                break
    except (ValueError, TypeError):
        pass
    raise Http404("No such customer")
