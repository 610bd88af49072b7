"""Reads, and who may read what. Every entry point (page, API, socket) asks these helpers."""

import unicodedata
from typing import NamedTuple

from django.db.models import CharField, Exists, Func, OuterRef, Q, QuerySet, Value
from django.db.models.lookups import Contains
from django.http import Http404
from django.utils.dateparse import parse_datetime

from conversations.models import Conversation, Customer, Notification
from routing.models import TeamMembership


class Teams(NamedTuple):
    """The ids of an agent's teams, and of the inboxes those teams answer by default."""

    teams: frozenset[int]
    inboxes: frozenset[int]


class Folded(Func):
    """Text as a search compares it: upper case, accents off, so "jose" finds "José" and
    "PROBLEME" finds "problème". threadline_fold: on PostgreSQL an SQL function over
    unaccent, indexed with trigrams (migration 0020); on SQLite `fold`, registered on each
    connection (helpdesk.apps)."""

    function = "threadline_fold"
    output_field = CharField()


def fold(text: str) -> str:
    """Folded's work in Python, for SQLite: the letters without their marks, upper case."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def folded_contains(field: str, query: str) -> Contains:
    """`field` contains `query`, case and accents aside (see Folded): a filter."""
    return Contains(Folded(field), Folded(Value(query)))


ID_MAX = 2**63 - 1  # the largest id the databases' keys hold


def id_given(value) -> int | None:
    """The id (or number) a query string or form names, else None. `str.isdigit` lets "²"
    through, which int() refuses, and a long run of digits overflowed SQLite's integers: both
    were 500s for a mistyped link."""
    value = str(value or "")
    if not (value.isascii() and value.isdigit() and len(value) < 20):
        return None
    return number if (number := int(value)) <= ID_MAX else None


def datetime_given(value):
    """The date and time a form or link gives, else None: "2026-13-45T10:00" looks like one
    to parse_datetime, whose ValueError was a 500."""
    try:
        return parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        return None


def conversations_visible_to(user, teams: Teams | None = None) -> QuerySet[Conversation]:
    """Admins see everything; an agent sees conversations of their teams and their own.
    `teams`: what teams_of(user) gave, for a caller that needs it again."""
    conversations = Conversation.objects.all()
    if not (user and user.is_authenticated and user.is_active):
        return conversations.none()
    if user.is_admin:
        return conversations
    teams = teams if teams is not None else teams_of(user)
    return conversations.filter(in_teams(teams) | Q(assignee=user))


def can_see(user, conversation) -> bool:
    """Whether `user` may see `conversation` (by conversations_visible_to's rule)."""
    return bool(user) and conversations_visible_to(user).filter(pk=conversation.pk).exists()


def teams_of(user) -> Teams:
    """Read in one query, and used as values (in_teams): behind subqueries the planner could
    not see how teams and inboxes relate, and listing the email of a team that never gets any
    walked every conversation. Not kept on the user: a socket's user lives for hours."""
    rows = TeamMembership.objects.filter(user=user).values_list("team_id", "team__inboxes")
    return Teams(
        frozenset(team for team, _ in rows), frozenset(inbox for _, inbox in rows if inbox)
    )


def in_teams(teams: Teams) -> Q:
    """Conversations of those teams: routed to one of them, or in an inbox one of them
    answers by default."""
    return Q(team_id__in=teams.teams) | Q(inbox_id__in=teams.inboxes)


def worked_by(teams: Teams) -> Q:
    """Conversations that are those teams' work: routed to one of them, or to no team in an
    inbox one of them answers by default. Narrower than in_teams, what they may see: one
    transferred to another team stays readable to the inbox's team, and is not its work."""
    return Q(team_id__in=teams.teams) | Q(team__isnull=True, inbox_id__in=teams.inboxes)


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


def customer_data(customer: Customer) -> tuple[dict, list]:
    """Everything held about `customer` that a request for their data covers, as plain JSON
    values: the profile, the addresses, every conversation they are the customer of with each
    message (internal notes included, marked as such: whoever answers the request decides what
    to hand over), and what they wrote into other customers' conversations. Also returns
    (attachment, name in the archive) pairs for the files."""
    from conversations.models import Attachment, Message

    def when(moment):
        return moment.isoformat() if moment else None

    conversations = list(
        customer.conversations.select_related("inbox").order_by("created_at", "pk")
    )
    # Theirs, and what they wrote into other customers' conversations (a CC'd reply).
    messages = (
        Message.objects.filter(Q(conversation__in=conversations) | Q(identity__customer=customer))
        .select_related("author", "identity")
        .order_by("created_at", "pk")
    )
    attachments: dict[int, list[Attachment]] = {}
    for attachment in Attachment.objects.filter(message__in=messages).exclude(file=""):
        attachments.setdefault(attachment.message_id, []).append(attachment)
    files, by_conversation, elsewhere = [], {c.pk: [] for c in conversations}, []
    for message in messages:
        # A customer's file name never becomes a path: in the archive, a file goes by its id.
        stored = [
            (attachment, f"attachments/{attachment.pk}{_extension(attachment.filename)}")
            for attachment in attachments.get(message.pk, [])
        ]
        files += stored
        by_conversation.get(message.conversation_id, elsewhere).append(
            {
                "id": message.pk,
                "conversation": message.conversation_id,
                "at": when(message.created_at),
                "direction": message.direction,
                "channel": message.channel,
                "address": message.identity.address if message.identity else None,
                "agent": message.author.name if message.author else None,
                "text": message.text,
                "status": message.status,
                "attachments": [
                    {"name": a.filename, "type": a.content_type, "file": name} for a, name in stored
                ],
            }
        )
    data = {
        "customer": {
            "id": customer.pk,
            "name": customer.name,
            "language": customer.language,
            "timezone": customer.timezone,
            "attributes": customer.attributes,
            "notes": customer.notes,
            "created_at": when(customer.created_at),
            "blocked_at": when(customer.blocked_at),
        },
        "addresses": [
            {
                "kind": identity.kind,
                "address": identity.address,
                "name": identity.display_name,
                "last_seen_at": when(identity.last_seen_at),
                "opted_out_at": when(identity.opted_out_at),
            }
            for identity in customer.identities.order_by("pk")
        ],
        "conversations": [
            {
                "number": conversation.pk,
                "inbox": conversation.inbox.name,
                "subject": conversation.subject,
                "status": conversation.status,
                "created_at": when(conversation.created_at),
                "resolved_at": when(conversation.resolved_at),
                "rating": conversation.rating,
                "rating_comment": conversation.rating_comment,
                "messages": by_conversation[conversation.pk],
            }
            for conversation in conversations
        ],
        "messages_in_others_conversations": elsewhere,
    }
    return data, files


def _extension(filename: str) -> str:
    """ ".pdf" for "invoice.pdf": letters and digits only, else nothing."""
    suffix = filename.rpartition(".")[2] if "." in filename else ""
    return f".{suffix.lower()}" if suffix.isalnum() and len(suffix) <= 10 else ""


def notifications_for(user) -> QuerySet[Notification]:
    """The agent's notifications about conversations they may still see: one moved to
    another team is neither listed nor counted behind the bell."""
    # EXISTS per notification, not IN: the planner turned IN into a scan of every conversation
    # the agent may see, on every page (the bell), however few notifications there were.
    visible = conversations_visible_to(user).filter(pk=OuterRef("conversation_id"))
    return Notification.objects.filter(Exists(visible), recipient=user)
