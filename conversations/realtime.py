"""Real-time notifications, published only once the change they announce is committed.

The database is the record; these events only tell open sockets that something changed, so a
client that misses one catches up from the database. Recipients are computed from the
conversation as it is when the event is sent, so a reassignment never leaks to the old team.
"""

import asyncio
import logging
import os
import threading
import uuid

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import connection, transaction

from conversations.models import Conversation, Inbox

log = logging.getLogger(__name__)

ADMINS_GROUP = "admins"


def conversation_group(conversation_id: int) -> str:
    return f"conversation.{conversation_id}"


def team_group(team_id: int) -> str:
    return f"team.{team_id}"


def agent_group(user_id: int) -> str:
    return f"agent.{user_id}"


def customer_group(customer_id: int) -> str:
    return f"customer.{customer_id}"


def _agent_groups(conversation_id, *, team_id, assignee_id, inbox__default_team_id) -> list[str]:
    groups = [ADMINS_GROUP, conversation_group(conversation_id)]
    groups += [team_group(t) for t in sorted({team_id, inbox__default_team_id} - {None})]
    if assignee_id:
        groups.append(agent_group(assignee_id))
    return groups


class _Publisher:
    """One event loop per process, on its own thread, that sends for synchronous code (workers,
    views, commands). Outside an ASGI server `async_to_sync` makes a new loop for every call,
    and channels-redis a new connection for every loop: ~4 ms a send, where this is ~0.3 ms."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid = 0

    @classmethod
    def run(cls, coroutine) -> None:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid():  # a forked worker starts its own
                cls._loop, cls._pid = asyncio.new_event_loop(), os.getpid()
                threading.Thread(
                    target=cls._loop.run_forever, name="realtime-publisher", daemon=True
                ).start()
        asyncio.run_coroutine_threadsafe(coroutine, cls._loop).result(timeout=30)


# The ASGI server's event loop (helpdesk.asgi's lifespan sets it). The in-process layer's
# queues are that loop's: a socket waiting on one is woken by a send made on that loop, and a
# send made on another (a worker's thread, a command) is seen only once the loop wakes for
# something else, which on a quiet page can be a minute later.
serving_loop: asyncio.AbstractEventLoop | None = None


def _layer_for(groups):
    """The channel layer, or None when nobody can be listening: none configured, or the
    in-process layer (no Redis) without a socket in any of `groups` (None: in any group; a
    worker or a command of its own, which no socket reaches)."""
    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer) and not (
        layer.groups if groups is None else any(g in layer.groups for g in groups)
    ):
        return None
    return layer


def send_to_groups(groups, payload: dict, *more: tuple[list[str], dict]) -> None:
    """Send `payload` to `groups` (and each further (groups, payload) pair) in one hop into an
    event loop."""
    sends = ((groups, payload), *more)
    layer = _layer_for([group for targets, _ in sends for group in targets])
    if layer is None:
        return

    async def send_all():
        for targets, message in sends:
            for group in targets:
                try:
                    await layer.group_send(group, message)
                except Exception:  # a notification must never break the committed change
                    log.exception("could not notify group %s", group)

    if isinstance(layer, InMemoryChannelLayer):  # its queues belong to the server's loop
        loop = serving_loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            async_to_sync(send_all)()  # no server in this process, or already on its loop
        else:
            try:
                asyncio.run_coroutine_threadsafe(send_all(), loop).result(timeout=30)
            except Exception:  # the server stopping: a notification never breaks the change
                log.exception("could not notify groups %s", [g for g, _ in sends])
    else:
        _Publisher.run(send_all())


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _recipients(conversation_id: int) -> dict | None:
    """Who may see the conversation as it is now: its team, assignee and inbox's default team.
    Raw SQL on every event: the ORM's query costs several times its round trip."""
    conversation, inbox = (model._meta for model in (Conversation, Inbox))
    with connection.cursor() as cursor:
        cursor.execute(
            # Names come from the models; the id goes as a parameter.
            f"SELECT c.team_id, c.assignee_id, i.default_team_id FROM {conversation.db_table} c "  # noqa: S608
            f"JOIN {inbox.db_table} i ON i.id = c.inbox_id WHERE c.id = %s",
            [conversation_id],
        )
        row = cursor.fetchone()
    names = ("team_id", "assignee_id", "inbox__default_team_id")
    return dict(zip(names, row, strict=True)) if row else None


def conversation_payload(conversation_id: int, event: str, **data) -> dict:
    """What agents' sockets get of a conversation's `event`. Its event_id says which publish
    it is: a socket in several of the groups sent to passes on one copy of each, and a change
    made twice (High, Normal, High) is two events, not a copy."""
    return {
        "type": "conversation.event",
        "event": event,
        "conversation": conversation_id,
        "event_id": uuid.uuid4().hex,
        **data,
    }


def publish_conversation_event(
    conversation, event: str, *, customer_event: dict | None = None, **data
) -> None:
    """Tell agents who may see `conversation` that `event` happened, after commit; with
    `customer_event`, tell the customer's own sockets too (ids only: the widget reads the
    message through its own, filtered endpoint)."""

    def send():
        if _layer_for(None) is None:
            return
        # Recipients from the conversation as it is now, not as it was when the change began.
        current = _recipients(conversation.pk)
        if current is None:
            return
        payload = conversation_payload(conversation.pk, event, **data)
        more = []
        if customer_event is not None:
            more.append(
                (
                    [customer_group(conversation.customer_id)],
                    {"type": "customer.event", **customer_event},
                )
            )
        groups = _agent_groups(conversation.pk, **current)
        if event == "team" and (left := data.get("previous")):
            # The team it left: its lists and counts drop the conversation.
            groups = list(dict.fromkeys([*groups, team_group(left)]))
        send_to_groups(groups, payload, *more)

    transaction.on_commit(send)


def _row_groups(row: dict) -> list[str]:
    """_agent_groups of a row as publish_conversations_erased takes them."""
    return _agent_groups(row["pk"], **{k: v for k, v in row.items() if k != "pk"})


def publish_conversations_erased(rows) -> None:
    """Tell the agents who could see these conversations that they are gone, after commit.
    `rows`: dicts of pk, team_id, assignee_id and inbox__default_team_id, read before the
    conversations were deleted (publish_conversation_event reads them after commit)."""
    sends = [(_row_groups(row), conversation_payload(row["pk"], "erased")) for row in rows]
    if sends:
        transaction.on_commit(lambda: send_to_groups(*sends[0], *sends[1:]))


def publish_conversations_changed(rows, event: str) -> None:
    """Tell agents, after commit and in one hop, that `event` changed many conversations at
    once (an admin's change of hours or targets moved their SLA clocks): each conversation's
    open pages hear of their own, and each list (team, assignee, admins) once, which is all a
    list needs to refresh. `rows`: dicts as for publish_conversations_erased."""
    sends, lists = [], {}
    for row in rows:
        own = conversation_group(row["pk"])
        sends.append(([own], conversation_payload(row["pk"], event)))
        lists.update(dict.fromkeys(group for group in _row_groups(row) if group != own))
    if sends:
        sends.append((list(lists), conversation_payload(None, event)))
        transaction.on_commit(lambda: send_to_groups(*sends[0], *sends[1:]))


def publish_customer_changed(customer_id: int) -> None:
    """Tell the agents who may see one of `customer_id`'s conversations that the customer
    changed (edited, merged, blocked, given an address), after commit: each conversation's
    open pages refresh their customer card, and each list (which shows the customer's name)
    once. Recipients are read then, as publish_conversation_event does."""

    def send():
        if _layer_for(None) is None:
            return
        rows = Conversation.objects.filter(customer_id=customer_id).values(
            "pk", "team_id", "assignee_id", "inbox__default_team_id"
        )
        sends, lists = [], {}
        for row in rows:
            own = conversation_group(row["pk"])
            sends.append(([own], conversation_payload(row["pk"], "customer")))
            lists.update(dict.fromkeys(group for group in _row_groups(row) if group != own))
        if sends:
            sends.append((list(lists), conversation_payload(None, "customer")))
            send_to_groups(*sends[0], *sends[1:])

    transaction.on_commit(send)


def publish_customer_event(customer_id: int, event: str, **data) -> None:
    """Tell the customer's own open sockets (the chat widget) about a change, after commit.

    Only ids go out; the widget reads the message through its own, filtered endpoint.
    """
    payload = {"type": "customer.event", "event": event, **data}
    transaction.on_commit(lambda: send_to_groups([customer_group(customer_id)], payload))


def publish_notifications(user_ids, **payload) -> None:
    """Push a notification to each agent's own sockets once the transaction commits."""
    groups = [agent_group(pk) for pk in user_ids]
    transaction.on_commit(lambda: send_to_groups(groups, {"type": "notification.event", **payload}))
