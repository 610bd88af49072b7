"""The agent inbox: the conversation list and the conversation page, server-rendered and kept
live by `static/inbox.js`, which re-fetches the live part of the page when the agent's socket
says something changed. Every view reads through `selectors` (who may see what) and writes
through `services`; a conversation an agent may not see is a 404, like one that does not exist.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import defaultdict
from datetime import datetime, timedelta
from functools import partial

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.postgres.search import SearchQuery, SearchVector
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import (
    Case,
    CharField,
    Count,
    Exists,
    F,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
    prefetch_related_objects,
)
from django.db.models.functions import Concat, Left
from django.http import FileResponse, Http404, HttpResponse, HttpResponseBadRequest, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from conversations import services
from conversations.customers import (
    READABLE_ADDRESSES,
    addresses_matching,
    customer_label,
    identities_to_write_to,
)
from conversations.models import (
    Attachment,
    CannedResponse,
    Channel,
    Conversation,
    ConversationEvent,
    Customer,
    Identity,
    Inbox,
    Message,
    SavedView,
    Tag,
    Visitor,
)
from conversations.selectors import (
    conversation_get_for_agent,
    conversations_visible_to,
    datetime_given,
    folded_contains,
    id_given,
    notifications_for,
    teams_of,
    worked_by,
)
from conversations.templatetags.sla import when
from helpdesk.models import User
from routing.automations import macros_for
from routing.models import ShortCache, Team, TeamMembership

PAGE_SIZE = 50
PREVIEW = 160  # characters of the last message under each row
HISTORY_SHOWN = 20  # the customer's other conversations beside a conversation
# What a row of the list shows or sorts by: the rest (a customer's notes and attributes, an
# inbox's credentials) stays in the database.
ROW_FIELDS = (
    "customer",  # its id: a customer with no name nor readable address goes by it
    "subject",
    "status",
    "priority",
    "assignee",
    "last_activity_at",
    "waiting_since",
    "sla_due_at",
    "snoozed_until",
)
Status = Conversation.Status
ACTIVE = (Status.OPEN, Status.PENDING)


# Views of the list: what each one holds for `user`, whose teams are `teams` (teams_of).
def _followed_by(user) -> Q:
    followed = Conversation.followers.through.objects.filter(user=user)
    return Q(pk__in=followed.values("conversation_id"))


VIEWS = {
    "mine": ("Mine", lambda user, teams: Q(assignee=user)),
    # An agent's unassigned ones: their teams' work waiting for someone (not one of their
    # inbox's that was transferred to another team); an admin's: everyone's.
    "unassigned": (
        "Unassigned",
        lambda user, teams: Q(assignee__isnull=True) & (Q() if user.is_admin else worked_by(teams)),
    ),
    "teams": ("My teams", lambda user, teams: worked_by(teams)),
    "following": ("Following", lambda user, teams: _followed_by(user)),
    "all": ("All", None),
}
# Sorts: the ordering, and the fields of the keyset cursor in that order.
SORTS = {
    "activity": ("Last activity", [("last_activity_at", True), ("id", True)]),
    # These two list only what they sort by: conversations waiting, or with an SLA target.
    # The labels say so: a list that quietly showed 1 of 4 would look like lost work.
    "waiting": (
        "Waiting on us, longest first (only those)",
        [("waiting_since", False), ("id", False)],
    ),
    "priority": ("Priority", [("priority", True), ("last_activity_at", True), ("id", True)]),
    "sla": ("SLA due first (only those with a target)", [("sla_due_at", False), ("id", False)]),
}


def _filtered(request, qs):
    """Apply the known filters only; anything else in the query string is ignored."""
    get = request.GET
    if get.get("status") in Status.values:
        qs = qs.filter(status=get["status"])
    elif get.get("status") != "any":
        qs = qs.filter(status__in=ACTIVE)
    if get.get("channel") in Channel.values:
        # The channel's inboxes as values: with a join to inboxes (or a subquery) the planner
        # cannot tell how few conversations a channel has, and walked the newest of all of
        # them for a page of a small one (50 ms for SMS at 100,000).
        kind = Inbox.objects.filter(kind=get["channel"]).values_list("pk", flat=True)
        qs = qs.filter(inbox_id__in=list(kind))
    if (inbox := id_given(get.get("inbox"))) is not None:
        qs = qs.filter(inbox_id=inbox)
    if (team := id_given(get.get("team"))) is not None:
        qs = qs.filter(team_id=team)
    if get.get("assignee") == "none":
        qs = qs.filter(assignee__isnull=True)
    elif (assignee := id_given(get.get("assignee"))) is not None:
        qs = qs.filter(assignee_id=assignee)
    if get.get("tag"):
        qs = qs.filter(tags__name=get["tag"][:50])
    if (priority := id_given(get.get("priority"))) is not None:
        qs = qs.filter(priority=priority)
    return qs


def _search(qs, query: str, order: list[str]) -> list[int]:
    """The first page of `qs` (in `order`) matching `query` in message text, subjects,
    customer names or addresses (emails, phone numbers), case and accents aside. On PostgreSQL
    the text is searched by words with its full-text index (migration 0021); on SQLite by
    substring.

    One query of one page per kind of match, not one OR: with "or a message matches" in an OR,
    PostgreSQL fetched every matching message first (83,000 for a common word at a million
    messages: ~150 ms). On its own the text match is a semi-join, and the planner either walks
    the newest conversations probing their messages (common word) or reads a rare word's few
    matches (see BENCHMARKS.md, inbox). The newest page of the union is in the union of each
    branch's newest page."""
    if connection.vendor == "postgresql":
        config = "threadline_folded"  # migration 0021
        words = SearchQuery(query, config=config, search_type="websearch")
        texts = Message.objects.annotate(document=SearchVector("text", config=config)).filter(
            document=words
        )
    else:
        texts = Message.objects.filter(folded_contains("text", query))
    by_text = qs.filter(Exists(texts.filter(conversation=OuterRef("pk"))))
    by_subject = qs.filter(folded_contains("subject", query))  # trigram index: migration 0020
    # The customers first, as values: behind a subquery the planner guessed that most
    # conversations match and walked all of them when none did.
    customers = Customer.objects.filter(folded_contains("name", query))
    customers = set(customers.values_list("pk", flat=True))
    customers.update(
        Identity.objects.filter(addresses_matching(query)).values_list("customer_id", flat=True)
    )
    by_customer = qs.filter(customer_id__in=customers)
    found: list[int] = []
    if (number := id_given(query.removeprefix("#"))) is not None:  # "#35" or "35": that one too
        found += qs.filter(pk=number).values_list("pk", flat=True)
    for branch in (by_text, by_subject, by_customer):
        found += branch.order_by(*order).values_list("pk", flat=True)[: PAGE_SIZE + 1]
    return found


def _cursor_encode(conversation, fields) -> str:
    values = [getattr(conversation, name) for name, _ in fields]
    values = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode()


def _cursor_decode(cursor: str, fields) -> list | None:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        return None
    if not isinstance(values, list) or len(values) != len(fields):
        return None
    decoded = []
    for (name, _), value in zip(fields, values, strict=True):
        if name in ("id", "priority"):
            if not isinstance(value, int):
                return None
        else:
            value = datetime_given(value)
            if value is None:
                return None
        decoded.append(value)
    return decoded


def _after(fields, values) -> Q:
    """Rows strictly after the cursor in this ordering (keyset pagination: no OFFSET)."""
    (name, descending), *rest = fields
    beyond = Q(**{f"{name}__{'lt' if descending else 'gt'}": values[0]})
    if not rest:
        return beyond
    return beyond | (Q(**{name: values[0]}) & _after(rest, values[1:]))


# What a saved view may keep of the list's query string.
SAVED_VIEW_KEYS = (
    "view",
    "status",
    "channel",
    "inbox",
    "team",
    "assignee",
    "tag",
    "priority",
    "q",
    "sort",
)


def _kept_filters(query: QueryDict) -> QueryDict:
    """The list's filters in `query` that a saved view keeps: known keys with a value."""
    kept = QueryDict(mutable=True)
    for key in SAVED_VIEW_KEYS:
        if query.get(key):
            kept[key] = query[key][:200]
    return kept


@login_required
@require_POST
def saved_view_save(request):
    """Save the list's current filters under a name (the same name replaces them)."""
    name = request.POST.get("name", "").strip()[:60]
    kept = _kept_filters(QueryDict(request.POST.get("query", "")))
    if not name:
        messages.error(request, "A saved view needs a name.")
    else:
        SavedView.objects.update_or_create(
            user=request.user, name=name, defaults={"query": kept.urlencode()[:500]}
        )
        messages.success(request, f"Saved the view “{name}”.")
    return redirect(f"{reverse('inbox:list')}?{kept.urlencode()}")  # the same list either way


@login_required
@require_POST
def saved_view_delete(request, view_id: int):
    get_object_or_404(SavedView, pk=view_id, user=request.user).delete()
    return redirect("inbox:list")


def _list_seen() -> list[int]:
    """The newest message and conversation event of all, as the list knows them: its pings
    send them, and the socket says whether anything the agent may see changed since (an event
    lost while Redis was down: see AgentConsumer._catch_up_list). Every change to a
    conversation leaves one or the other."""
    return [
        model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        for model in (Message, ConversationEvent)
    ]


@login_required
def conversation_list(request):
    user = request.user
    view = request.GET.get("view", "mine" if not user.is_admin else "all")
    if view not in VIEWS or (view == "all" and not user.is_admin):
        view = "mine"
    sort = request.GET.get("sort") if request.GET.get("sort") in SORTS else "activity"
    teams = teams_of(user)  # asked by the views, the counts, the filter and bulk bars
    visible = conversations_visible_to(user, teams)
    fields = SORTS[sort][1]
    # Read before the rows: a change made while they are read is newer, and caught up again.
    seen = _list_seen()

    holds = VIEWS[view][1]
    conversations = _filtered(request, visible.filter(holds(user, teams)) if holds else visible)
    if sort == "waiting":
        conversations = conversations.filter(waiting_since__isnull=False)
    elif sort == "sla":  # only conversations with a clock running
        conversations = conversations.filter(sla_due_at__isnull=False)
    cursor = _cursor_decode(request.GET.get("after", ""), fields)
    if cursor:
        conversations = conversations.filter(_after(fields, cursor))
    order = [f"{'-' if desc else ''}{name}" for name, desc in fields]
    query = " ".join(request.GET.get("q", "").split())[:200]  # "Mateo  Smith" is Mateo Smith
    if query:
        conversations = conversations.filter(pk__in=_search(conversations, query, order))
    # An automatic acknowledgement would hide the question it answered.
    last_message = (
        Message.objects.filter(conversation=OuterRef("pk"))
        .exclude(direction=Message.Direction.SYSTEM)
        .exclude(metadata__has_key="automatic")
        .order_by("-id")
    )
    # A customer nobody has named yet goes by an address a person can read.
    address = Identity.objects.filter(
        customer=OuterRef("customer_id"), kind__in=READABLE_ADDRESSES
    ).order_by("id")
    page = list(
        conversations.only(*ROW_FIELDS)
        .annotate(
            # What a row shows of the customer, the inbox and the assignee, as columns:
            # select_related's three more model instances a row cost a third of the query.
            channel=F("inbox__kind"),
            who=Case(
                When(customer__name="", then=Subquery(address.values("address")[:1])),
                default=F("customer__name"),
            ),
            assignee_display_name=F("assignee__display_name"),
            assignee_email=F("assignee__email"),
            # The last message's direction, status and the start of its text (a long email is
            # not read whole for a preview line), in one probe: "outbound:failed:Hello…".
            preview=Subquery(
                last_message.values(
                    start=Concat(
                        "direction",
                        Value(":"),
                        "status",
                        Value(":"),
                        Left("text", PREVIEW + 1),
                        output_field=CharField(),
                    )
                )[:1]
            ),
        )
        .order_by(*order)[: PAGE_SIZE + 1]
    )
    more = len(page) > PAGE_SIZE
    page = page[:PAGE_SIZE]
    # Tag names in one query of pairs: prefetch_related("tags") built a queryset per row (9 ms).
    tag_names = defaultdict(list)
    pairs = Conversation.tags.through.objects.filter(conversation__in=[c.pk for c in page])
    for conversation_id, name in pairs.order_by("tag__name").values_list(
        "conversation_id", "tag__name"
    ):
        tag_names[conversation_id].append(name)
    # What each row shows, worked out here rather than by the template, whose `{% url %}` and
    # method calls cost ~0.1 ms a row. A conversation's page is the list's URL + its number;
    # the labels are translated once a page, not once a row.
    list_url = reverse("inbox:list")
    channels, statuses, priorities = (
        {value: str(label) for value, label in choices}
        for choices in (Channel.choices, Status.choices, Conversation.Priority.choices)
    )
    for conversation in page:
        conversation.url = f"{list_url}{conversation.pk}/"
        conversation.channel_label = channels[conversation.channel]
        if conversation.assignee_id:
            conversation.assignee_name = User.name_of(
                conversation.assignee_display_name, conversation.assignee_email
            )
        conversation.status_label = statuses[conversation.status]
        conversation.priority_label = priorities[conversation.priority]
        conversation.tag_names = tag_names[conversation.pk]
        direction, status, preview = (conversation.preview or "::").split(":", 2)
        conversation.preview_direction = direction
        conversation.preview_failed = status == Message.Status.FAILED
        conversation.preview = preview[: PREVIEW - 1] + "…" if len(preview) > PREVIEW else preview
    next_query = None
    if more:
        query = request.GET.copy()
        query["after"] = _cursor_encode(page[-1], fields)
        query.pop("partial", None)
        next_query = query.urlencode()

    widest = "all" if user.is_admin else "teams"
    wider_search = None
    if query and not page and view != widest:
        # Nothing in this view (Mine, by default): the same search where the agent sees most.
        wider = request.GET.copy()
        wider["view"] = widest
        wider.pop("after", None)
        wider.pop("partial", None)
        wider_search = (VIEWS[widest][0], wider.urlencode())

    context = {
        "conversations": page,
        "next_query": next_query,
        "wider_search": wider_search,
        "view": view,
        "sort": sort,
        # A dict with every key: a missing key of request.GET costs the template an exception.
        "filters": {key: request.GET.get(key, "") for key in SAVED_VIEW_KEYS},
        "seen": json.dumps(seen),
    }
    active = visible.filter(status__in=ACTIVE)
    # Counting inbox_id (never null), not id: the counts then read only the index of active
    # conversations (migration 0012), not the table.
    counts = active.aggregate(
        **{
            key: Count("inbox", filter=holds(user, teams) if holds else None)
            for key, (_, holds) in VIEWS.items()
            if holds or user.is_admin
        }
    )
    # The rows bring the counts along when they are refreshed live (inbox.js).
    context["counts"] = json.dumps(counts)
    rows = render_to_string("inbox/_rows.jinja", context, request, using="jinja2")
    if request.GET.get("partial") == "rows":
        return HttpResponse(rows)
    choices = _list_choices(user, teams)
    context.update(
        choices,
        rows=mark_safe(rows),  # noqa: S308 - rendered by Jinja2 with autoescaping
        views=[(key, label, counts[key]) for key, (label, _) in VIEWS.items() if key in counts],
        sorts=[(key, label) for key, (label, _) in SORTS.items()],
        bulk_actions=_bulk_actions(user, choices),
        statuses=Status.choices,
        channels=Channel.choices,
        priorities=Conversation.Priority.choices,
        saved_views=SavedView.objects.filter(user=user),
        # As a saved view keeps it (saved_view_save): the known filters that have a value,
        # so that the same filters applied through the form highlight the saved view.
        current_query=_kept_filters(request.GET).urlencode(),
    )
    context["body"] = mark_safe(  # noqa: S308 - rendered by Jinja2 with autoescaping
        render_to_string("inbox/_list.jinja", context, request, using="jinja2")
    )
    return render(request, "inbox/list.html", context)


def _timeline(conversation) -> list[tuple[str, object]]:
    items = [
        ("message", m)
        for m in conversation.messages.select_related("author", "identity", "inbox")
        .prefetch_related("attachments")
        .order_by("id")
    ]
    events = list(conversation.events.select_related("actor").order_by("id"))
    _events_describe(events)
    items += [("event", e) for e in events]
    return sorted(items, key=lambda item: (item[1].created_at, item[0] == "message"))


def _events_describe(events) -> None:
    """What a team, status, priority, tags or channel change changed to, as `detail` (team
    names read now, in one query: the event keeps the id, the name may have changed since)."""
    Kind = ConversationEvent.Kind  # noqa: N806 - the enum
    team_ids = {e.data.get("team") for e in events if e.kind == Kind.TEAM}
    teams = dict(Team.objects.filter(pk__in=team_ids - {None}).values_list("pk", "name"))
    priorities = dict(Conversation.Priority.choices)
    statuses = dict(Status.choices)
    channels = dict(Channel.choices)
    for event in events:
        data = event.data
        if event.kind == Kind.TEAM:
            event.detail = teams.get(data.get("team"), "no team")
        elif event.kind == Kind.STATUS:
            event.detail = str(statuses.get(data.get("status"), data.get("status"))).lower()
            if until := datetime_given(data.get("snoozed_until")):
                event.detail += f" until {when(until)}"
            if data.get("reason") == "undelivered":
                event.detail += ", as a reply was not delivered"
        elif event.kind == Kind.PRIORITY:
            event.detail = str(priorities.get(data.get("priority"), data.get("priority")))
        elif event.kind == Kind.TAGS:
            changes = [f"+{n}" for n in data.get("added", [])]
            changes += [f"−{n}" for n in data.get("removed", [])]
            event.detail = " ".join(changes)
        elif event.kind == Kind.MERGED:  # both ends say where the messages went
            if data.get("target"):
                event.detail = f"into #{data['target']}"
            elif data.get("source"):
                event.detail = f"#{data['source']} into this one"
        elif event.kind == Kind.REOPENED and data.get("reason") == "merged":
            event.detail = "an open conversation was merged into it"
        elif event.kind == Kind.CHANNEL:
            previous, channel = (data.get(key) for key in ("previous", "channel"))
            event.detail = f"{channels.get(previous, previous)} → {channels.get(channel, channel)}"


def _visitors(conversation) -> list:
    """The customer's chat visitors, with whether they have the widget open right now."""
    from channels_adapters.webchat.chat import visitor_here

    visitors = list(
        Visitor.objects.filter(identity__customer=conversation.customer_id)
        .select_related("inbox")
        .order_by("-last_seen_at")[:5]
    )
    for visitor in visitors:
        visitor.here = visitor_here(visitor)
    return visitors


def _conversation_context(request, conversation, reply_once: str = "", **extra) -> dict:
    """What the conversation page shows. `reply_once`: the client id of a reply sent back to
    the agent (held, or refused), so that sending it from there still sends it once."""
    # The customer's identities once, for the composer and the sidebar alike.
    prefetch_related_objects([conversation.customer], "identities")
    timeline = _timeline(conversation)
    seen = max((obj.pk for kind, obj in timeline if kind == "message"), default=0)
    seen_event = max((obj.pk for kind, obj in timeline if kind == "event"), default=0)
    identities = identities_to_write_to(conversation.customer, conversation=conversation)
    default = services.identity_for_reply(conversation)
    team_ids = {conversation.team_id, conversation.inbox.default_team_id} - {None}
    clocks = list(conversation.sla_clocks.order_by("-id")[:6])[::-1]
    visitors = _visitors(conversation)
    for identity in conversation.customer.identities.all():  # the objects `identities` holds
        # A chat address is as present as its visitors: "on the site now" in the composer's
        # "Send on" too, and last seen when its widget last said so, not when it last wrote.
        theirs = [visitor for visitor in visitors if visitor.identity_id == identity.pk]
        identity.here = any(visitor.here for visitor in theirs)
        moments = [identity.last_seen_at, *(visitor.last_seen_at for visitor in theirs)]
        identity.seen_at = max((moment for moment in moments if moment), default=None)
    # An email a visitor gave that is another customer's: agents merge the two profiles once
    # they know it is one person, and the page takes them to that profile (chat._flag_...).
    emails = {i.address for i in conversation.customer.identities.all() if i.kind == Channel.EMAIL}
    elsewhere = next((v.email for v in visitors if v.email and v.email not in emails), "")
    # Who may see it (see selectors.conversations_visible_to): the team's agents, the admins
    # and the assignee; the Assignee field and the note's @mentions offer them. Read only by
    # the whole page (one query, shared): a live refresh of the timeline needs neither.
    agents = (
        User.objects.filter(is_active=True)
        .filter(
            Q(team_memberships__team_id__in=team_ids)
            | Q(role=User.Role.ADMIN)
            | Q(pk=conversation.assignee_id)
        )
        .distinct()
        .order_by("display_name", "email")
    )
    return {
        "conversation": conversation,
        "timeline": timeline,
        "seen": seen,
        "seen_event": seen_event,
        "identities": identities,
        "customer_label": customer_label(conversation.customer),
        "default_identity": default.pk if default else None,
        # Whoever holds it now (from another team, say) too: the field must show them, or a
        # click on Assign would take it from them.
        "agents": agents,
        # By the handle a note names them with (services.MENTION: their email's local part).
        # A callable, which the template calls when it shows the composer.
        "mentionable": lambda: [
            {"handle": handle, "name": agent.name}
            for agent in agents
            if agent.pk != request.user.pk
            for handle in [agent.email.split("@")[0].lower()]
            if services.MENTION.fullmatch(f"@{handle}")  # what a note can name
        ],
        "statuses": Status.choices,
        "priorities": Conversation.Priority.choices,
        # A callable too: read when the page shows the side panel.
        "followers": lambda: list(
            conversation.followers.filter(is_active=True).order_by("display_name", "email")
        ),
        "tags": conversation.tags.all(),
        "all_tags": Tag.objects.all(),
        "teams": Team.objects.all(),
        "visitors": visitors,
        # Whom the customer's mail copied (Cc): email replies go to them too.
        "copied": conversation.participants.filter(kind=Channel.EMAIL).order_by("address"),
        "email_elsewhere": elsewhere,
        "sla_clocks": clocks,
        # Two "next response" clocks of different goals read as a mistake without their
        # channels (the customer wrote by chat, then by email).
        "sla_channels": len({clock.channel for clock in clocks}) > 1,
        "macros": macros_for(request.user),
        # Sent with a macro's click, so that a double click applies it once.
        "macro_once": secrets.token_urlsafe(16),
        # The composer's too: a form sent twice (a double click, a resend) sends one reply.
        "reply_once": reply_once or secrets.token_urlsafe(16),
        "chat_live": conversation.inbox.kind == Channel.WEBCHAT
        and conversation.status in Conversation.WORKING,
        # The customer's other conversations this agent may see, for the sidebar and the
        # merge form: numbers and subjects of another team's conversations stay hidden.
        # Merged into this one: drafts begun there follow (static/inbox.js).
        "merged_from": list(
            Conversation.objects.filter(merged_into=conversation).values_list("pk", flat=True)
        ),
        "history": list(
            conversations_visible_to(request.user)
            .filter(customer=conversation.customer)
            .exclude(pk=conversation.pk)
            .select_related("inbox")
            .only("subject", "status", "last_activity_at", "merged_into", "inbox__kind")
            .order_by("-last_activity_at", "-id")[:HISTORY_SHOWN]
        ),
        **extra,
    }


@login_required
def conversation_detail(request, number: int):
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    # After a note the composer stays on notes (see conversation_reply).
    context = _conversation_context(request, conversation, draft_mode=request.GET.get("mode"))
    if request.GET.get("partial") == "timeline":
        return render(request, "inbox/_timeline.html", context)
    services.notifications_mark_read(request.user, conversation)
    return render(request, "inbox/conversation.html", context)


@login_required
def notification_list(request):
    """The agent's recent notifications, newest first; unread ones stand out. Only
    conversations the agent may still see are listed."""
    notifications = list(
        notifications_for(request.user)
        .select_related("conversation__customer", "actor", "message")
        .order_by("-id")[:50]
    )
    if request.method == "POST":
        services.notifications_mark_read(request.user)
        return redirect("inbox:notifications")
    if request.GET.get("partial") == "rows":  # the live refresh (static/inbox.js)
        return render(request, "inbox/_notifications.html", {"notifications": notifications})
    return render(request, "inbox/notifications.html", {"notifications": notifications})


def _newer_than(conversation, seen: int, user) -> list[Message]:
    """Messages the page did not show when the agent started typing: the customer's, or a
    teammate's reply or note. The agent's own do not count."""
    return list(
        conversation.messages.filter(pk__gt=seen)
        .exclude(direction=Message.Direction.SYSTEM)
        .exclude(author=user)
        .order_by("id")
    )


# Changes that decide whether a reply is still the agent's to send, and what it does.
HANDLING_CHANGES = (
    ConversationEvent.Kind.STATUS,
    ConversationEvent.Kind.ASSIGNED,
    ConversationEvent.Kind.TEAM,
)


def _changed_since(conversation, seen_event: int | None, user) -> list[ConversationEvent]:
    """Who resolved, reassigned or transferred the conversation since the page the agent
    writes on showed it (by someone else, or by the system: routing, an automation). None
    when the form does not say what it showed (an older page)."""
    if seen_event is None:
        return []
    return list(
        conversation.events.filter(pk__gt=seen_event, kind__in=HANDLING_CHANGES)
        .exclude(actor=user)
        .order_by("id")
    )


REPEAT_WITHIN = timedelta(minutes=10)


def _written_already(conversation, user, text: str, mode: str) -> list[Message]:
    """The agent's own reply (or note) with this very text of the last REPEAT_WITHIN. Not
    "since the page was shown": a page the browser gave back counts what it shows as seen
    (in a live chat, what arrives does), the reply just sent included."""
    if not text.strip():
        return []
    direction = Message.Direction.NOTE if mode == "note" else Message.Direction.OUTBOUND
    mine = conversation.messages.filter(
        author=user, direction=direction, created_at__gte=timezone.now() - REPEAT_WITHIN
    ).exclude(status=Message.Status.FAILED)  # sending a failed one again is meant
    return [message for message in mine if message.text.strip() == text.strip()]


@login_required
@require_POST
def conversation_reply(request, number: int):
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    text = request.POST.get("text", "")
    mode = request.POST.get("mode", "reply")
    template = request.POST.get("template", "")[:512] if mode == "reply" else ""
    seen = id_given(request.POST.get("seen")) or 0
    once = request.POST.get("client_id", "")[:64]
    if once and conversation.messages.filter(client_id=once).exists():
        # Sent already (the answer to the first try was lost, and the browser sent it again):
        # neither held as stale nor sent twice.
        return _after_writing(conversation, mode)
    # A page sent back cannot keep chosen files (browsers do not allow it): it names them.
    reattach = [upload.name for upload in request.FILES.getlist("files")]
    # A note answers nobody, so it is never stale; a reply is.
    arrived = _newer_than(conversation, seen, request.user) if mode != "note" else []
    # Resolved, reassigned or transferred by someone else meanwhile: the reply would go out
    # on a conversation that is no longer what the agent saw (a resolved one stays resolved;
    # one unassigned meanwhile would become theirs). Held once, said, for them to decide.
    changed = []
    if mode != "note":
        seen_event = id_given(request.POST.get("seen_event"))
        changed = _changed_since(conversation, seen_event, request.user)
    repeated = []
    if not (arrived or changed or request.POST.get("again") == "1"):  # "again": from a held page
        repeated = _written_already(conversation, request.user, text, mode)
    if arrived or changed or repeated:
        # Never answer a stale view: show what arrived, marked, with the draft kept. The page
        # now shows it, so sending again from there sends the reply as it is. Likewise the
        # agent's own message with this very text, sent since the page was shown: they went
        # Back after sending, and the browser gave them the text and a new page to send from.
        context = _conversation_context(
            request,
            conversation,
            draft=text,
            draft_mode=mode,
            draft_template=template,
            stale="repeated" if repeated else "changed" if changed else "arrived",
            reattach=reattach,
            reply_once=once,
        )
        arrived = {("message", message.pk) for message in arrived or repeated}
        arrived |= {("event", event.pk) for event in changed}
        for kind, item in context["timeline"]:
            item.is_new = (kind, item.pk) in arrived
        context["changes"] = [
            _change_said(item)
            for kind, item in context["timeline"]
            if kind == "event" and item.is_new
        ]
        return render(request, "inbox/conversation.html", context, status=409)
    try:
        attachments = services.uploads_check(request.FILES.getlist("files"))
        if mode == "note":
            note = services.note_add(
                conversation=conversation,
                author=request.user,
                text=text,
                attachments=attachments,
                client_id=once,
            )
            if note.mentions_missed:
                names = ", ".join(f"@{handle}" for handle in note.mentions_missed)
                messages.warning(
                    request,
                    f"Nobody was told of {names}: no agent who may see this conversation "
                    "goes by that name (the part of their email before the @).",
                )
        else:
            text = _placeholders_filled(text, conversation, request.user)
            identity = None
            if (pk := id_given(request.POST.get("identity"))) is not None:
                identity = conversation.customer.identities.filter(pk=pk).first()
                if identity is None:
                    raise ValidationError("That address is not this customer's.")
            services.reply_send(
                conversation=conversation,
                author=request.user,
                text=text,
                identity=identity,
                client_id=once,
                attachments=attachments,
                template=template,
            )
    except ValidationError as exc:
        if isinstance(exc, services.FileRefused):  # not that one again: the error says why
            reattach = [u.name for u in request.FILES.getlist("files") if u is not exc.upload]
        context = _conversation_context(
            request,
            conversation,
            draft=text,
            draft_mode=mode,
            draft_template=template,
            error="; ".join(exc.messages),
            reattach=reattach,
            reply_once=once,
        )
        return render(request, "inbox/conversation.html", context, status=400)
    return _after_writing(conversation, mode)


def _change_said(event) -> str:
    """A HANDLING_CHANGES event, as the held reply's notice says it (described by
    _events_describe, as the timeline was)."""
    who = event.actor.name if event.actor else "Routing"
    if event.kind == ConversationEvent.Kind.STATUS:
        return f"{who} set its status to {event.detail}"
    if event.kind == ConversationEvent.Kind.ASSIGNED:
        return f"{who} assigned it to {event.data.get('assignee_name') or 'nobody'}"
    return f"{who} transferred it to {event.detail}"


def _placeholders_filled(text: str, conversation, agent) -> str:
    """A reply with canned placeholders filled in, as inserting the response does (the
    customer may have been named since, the agent may have typed one); one with nothing to
    put there ("Hi {customer.first_name},": no name) is refused, for the agent to fill in or
    take out: the customer never reads it."""
    from conversations.canned import canned_fill

    filled, unfilled = canned_fill(text, conversation=conversation, agent=agent)
    unfilled = [f"{{{name}}}" for name in unfilled if name in CannedResponse.PLACEHOLDERS]
    if unfilled:
        raise ValidationError(
            f"Fill in or remove {', '.join(unfilled)} before sending: there is nothing to put "
            "there (a customer without a name, say)."
        )
    return filled


def _after_writing(conversation, mode: str):
    page = reverse("inbox:conversation", args=[conversation.pk])
    # After a note, the next line is likely another note: it must not go to the customer
    # because the composer went back to replies.
    return redirect(f"{page}?mode=note" if mode == "note" else page)


BULK_MAX = 100  # conversations changed by one bulk action (a page shows 50)
# The statuses the list's bulk bar sets: (what the option says, what the result says).
BULK_STATUSES = {
    Status.RESOLVED: ("Resolve", "Resolved"),
    Status.CLOSED: ("Close", "Closed"),
    Status.OPEN: ("Reopen", "Reopened"),
    Status.PENDING: ("Mark pending", "Marked pending"),
}


def _bulk_actions(user, choices) -> list[tuple[str, list[tuple[str, str]]]]:
    """What the list's bulk bar offers, grouped: (group, [(action, label)])."""
    return [
        (
            "Assign",
            [("assign:me", "Assign to me"), ("assign:none", "Unassign")]
            + [
                (f"assign:{pk}", f"Assign to {name}")
                for pk, name in choices["agents"]
                if pk != user.pk
            ],
        ),
        ("Status", [(f"status:{value}", verb) for value, (verb, _) in BULK_STATUSES.items()]),
        (
            "Priority",
            [
                (f"priority:{value}", f"Priority {label}")
                for value, label in Conversation.Priority.choices
            ],
        ),
        ("Tag", [(f"tag:{name}", f"Tag “{name}”") for name in choices["tags"]]),
    ]


# What the filter and bulk bars offer (tags, inboxes, teams, agents) changes rarely and is the
# same on every page of the same teams: each process keeps it for 10 s (~2 ms and four queries
# a page), and forgets it as soon as one of those tables is saved in this process.
_choices = ShortCache(10, Tag, Inbox, Team, TeamMembership, User)


def _list_choices(user, teams) -> dict:
    def build():
        agents = User.objects.filter(is_active=True)
        team_rows = Team.objects.all()
        if not user.is_admin:
            agents = agents.filter(team_memberships__team_id__in=teams.teams).distinct()
            team_rows = team_rows.filter(pk__in=teams.teams)
        agents = agents.order_by("display_name", "email").only("display_name", "email")
        return {
            # Names only: an inbox's credentials and a team's settings are JSON, decoded for
            # nothing otherwise.
            "teams": list(team_rows.only("name")),
            "inboxes": list(Inbox.objects.filter(is_active=True).only("name", "kind")),
            "tags": list(Tag.objects.values_list("name", flat=True)),
            "agents": [(agent.pk, agent.name) for agent in agents],
        }

    return _choices.get("admin" if user.is_admin else teams.teams, build)


def _bulk_change(user, action: str, value: str):
    """The change one bulk action makes to each conversation (a service, waiting for its
    `conversation`) and how its result is worded; None for an action we do not know."""
    if action == "assign":
        if value in ("me", "none"):
            assignee = user if value == "me" else None
        else:
            pk = id_given(value)
            if (assignee := User.objects.filter(pk=pk, is_active=True).first()) is None:
                return None
        return partial(services.agent_assign, assignee=assignee, actor=user), "Assigned"
    if action == "status" and value in BULK_STATUSES:
        change = partial(services.conversation_set_status, status=value, actor=user)
        return change, BULK_STATUSES[value][1]
    if action == "priority" and id_given(value) is not None:
        change = partial(services.conversation_set_priority, priority=id_given(value), actor=user)
        return change, "Changed the priority of"
    if action == "tag" and value.strip():
        change = partial(services.conversation_tag, add=[value], actor=user)
        return change, f"Tagged “{value.strip().lower()[:50]}”:"
    return None


@login_required
@require_POST
def conversation_bulk(request):
    """One action on the conversations picked in the list, each through the same service as
    its own page, each on its own: one that refuses (merged, say) does not stop the rest."""
    user = request.user
    # Back to the same list: its view, filters and sort, and the page the agent was on (its
    # cursor: the list shows from there what is now there). Not page 1, 50 rows away.
    query = QueryDict(request.POST.get("query", ""))
    kept = _kept_filters(query)
    if _cursor_decode(query.get("after", ""), SORTS.get(kept.get("sort"), SORTS["activity"])[1]):
        kept["after"] = query["after"]
    back = f"{reverse('inbox:list')}?{kept.urlencode()}"
    numbers = set(filter(None, map(id_given, request.POST.getlist("conversations"))))
    action, _, value = request.POST.get("action", "").partition(":")
    bulk = _bulk_change(user, action, value)
    if bulk is None:
        return HttpResponseBadRequest("Unknown bulk action.")
    if not numbers or len(numbers) > BULK_MAX:
        messages.error(request, f"Pick between 1 and {BULK_MAX} conversations.")
        return redirect(back)
    change, done = bulk
    conversations = list(conversations_visible_to(user).filter(pk__in=numbers).order_by("pk"))
    refused, changed = [], []
    for conversation in conversations:
        try:
            change(conversation=conversation)
        except ValidationError as exc:
            refused.append(f"#{conversation.pk}: {'; '.join(exc.messages)}")
        else:
            changed.append(f"#{conversation.pk}")
    if changed:
        # Which ones, by number: those that no longer match the list have left it.
        plural = "s" if len(changed) > 1 else ""
        messages.success(
            request, f"{done} {len(changed)} conversation{plural}: {', '.join(changed)}."
        )
    if missing := len(numbers) - len(conversations):
        messages.error(request, f"{missing} of the conversations picked could not be found.")
    if refused:
        messages.error(request, "Not changed: " + " ".join(refused))
    return redirect(back)


def _act(request, number: int, action) -> object:
    """Run a service on a conversation the agent may see; its refusal becomes a message."""
    conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
    try:
        action(conversation)
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect("inbox:conversation", number=conversation.pk)


@login_required
@require_POST
def conversation_assign(request, number: int):
    value = request.POST.get("assignee", "")
    if value == "me":
        assignee = request.user
    elif id_given(value) is not None:
        assignee = get_object_or_404(User, pk=id_given(value), is_active=True)
    elif value == "":
        assignee = None
    else:
        return HttpResponseBadRequest("Unknown assignee.")
    return _act(
        request,
        number,
        partial(services.agent_assign, assignee=assignee, actor=request.user),
    )


@login_required
@require_POST
def conversation_status(request, number: int):
    status = request.POST.get("status", "")
    until = None
    if status == Status.SNOOZED:
        until = datetime_given(request.POST.get("snoozed_until", ""))
        if until is not None and timezone.is_naive(until):
            until = timezone.make_aware(until)
    elif request.POST.get("snoozed_until"):  # a time picked for nothing: say so, change nothing
        conversation = conversation_get_for_agent(user=request.user, conversation_id=number)
        messages.error(request, "A snooze time goes with the status Snoozed; nothing changed.")
        return redirect("inbox:conversation", number=conversation.pk)
    return _act(
        request,
        number,
        lambda c: services.conversation_set_status(
            conversation=c, status=status, actor=request.user, snoozed_until=until
        ),
    )


@login_required
@require_POST
def conversation_priority(request, number: int):
    value = id_given(request.POST.get("priority"))
    if value is None:
        return HttpResponseBadRequest("Unknown priority.")
    return _act(
        request,
        number,
        lambda c: services.conversation_set_priority(
            conversation=c, priority=value, actor=request.user
        ),
    )


@login_required
@require_POST
def message_retry(request, message_id: int):
    from channels_adapters.delivery import message_retry as retry

    message = get_object_or_404(Message, pk=message_id)
    return _act(request, message.conversation_id, lambda c: retry(message=message))


@login_required
def attachment_download(request, attachment_id: int):
    """Only to someone who may see the conversation; always as a download, never rendered."""
    attachment = get_object_or_404(Attachment.objects.select_related("message"), pk=attachment_id)
    conversation_get_for_agent(
        user=request.user, conversation_id=attachment.message.conversation_id
    )
    if not attachment.file:
        raise Http404("This file has not been fetched.")
    return attachment_as_download(attachment)


def attachment_as_download(attachment: Attachment) -> FileResponse:
    """A stored file as a download under its own name and type, never rendered in place."""
    response = FileResponse(
        attachment.file.open("rb"),
        as_attachment=True,
        filename=attachment.filename,
        content_type=attachment.content_type,
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_POST
def availability_set(request):
    from routing.services import agent_availability_set

    value = request.POST.get("availability", "")
    if value not in User.Availability.values:
        return HttpResponseBadRequest("Unknown availability.")
    # Through routing: going offline hands live chats back, going online takes from queues.
    agent_availability_set(user=request.user, availability=value)
    back = request.headers.get("Referer", "")
    if url_has_allowed_host_and_scheme(back, {request.get_host()}, request.is_secure()):
        return redirect(back)
    return redirect("inbox:list")
