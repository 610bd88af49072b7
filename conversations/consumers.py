"""WebSocket consumers. They only deliver: every change is made through the services and
stored first, and events carry ids, so a client that reconnects catches up from the database."""

import asyncio
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync
from channels.consumer import get_handler_name
from channels.db import aclose_old_connections, database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.http import Http404
from django.utils import translation

from conversations.realtime import (
    ADMINS_GROUP,
    agent_group,
    conversation_group,
    conversation_payload,
    customer_group,
    team_group,
)
from conversations.selectors import conversation_get_for_agent, id_given
from conversations.services import without_nul

log = logging.getLogger(__name__)


def db(func):
    """Run `func` (database work) in a worker thread, closing stale connections around it.
    Not Channels' default single shared thread: that queues every socket of the process
    behind each other's queries. As many threads as the process has database connections."""
    return database_sync_to_async(func, thread_sensitive=False, executor=_database_threads())


@functools.cache
def _database_threads() -> ThreadPoolExecutor:
    from django.conf import settings

    size = settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {})
    size = size.get("max_size", 20) if isinstance(size, dict) else 20
    return ThreadPoolExecutor(max_workers=size, thread_name_prefix="socket-db")


class LiveConsumer(AsyncJsonWebsocketConsumer):
    # Set once the socket is closed: by us, by the client or by the server. A handler still at
    # work then (a group event, a slow hello under load) has nobody left to tell, and an ASGI
    # server refuses a frame after the close.
    closed = False

    async def send_json(self, content, close=False):
        if self.closed:
            return
        try:
            await super().send_json(content, close=close)
        except OSError:  # what ASGI servers raise for a client gone before its disconnect
            self.closed = True
        except RuntimeError as exc:
            # uvicorn closed the socket itself (a keepalive ping left unanswered while the
            # process was overloaded) and its disconnect has not reached this consumer yet.
            if "after sending 'websocket.close'" not in str(exc):
                raise
            self.closed = True

    async def close(self, code=None, reason=None):
        if not self.closed:
            self.closed = True
            await super().close(code=code, reason=reason)

    async def websocket_disconnect(self, message):
        # Channels' own, but leaving the groups may fail (Redis down) without skipping
        # disconnect(), which records that the socket closed.
        self.closed = True
        for group in self.groups:
            await self._leave_group(group)
        await self.disconnect(message["code"])
        await aclose_old_connections()
        raise StopConsumer()

    async def _leave_group(self, group: str):
        try:
            await self.channel_layer.group_discard(group, self.channel_name)
        except Exception:  # noqa: BLE001 - Redis down: the socket is gone either way
            log.warning("could not leave group %s", group)

    async def dispatch(self, message):
        # Channels closes stale connections before every handler, on that one shared thread;
        # our handlers reach the database only through db(), which does it in its own thread.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


UNAUTHORIZED = 4401
# An agent socket says the agent is there, and checks who they are now, at the page's pings
# (every 30 s) and no more often than this: a sign-out elsewhere closes it within half a minute.
ALIVE_EVERY = 25
TYPING_MODES = ("reply", "note")
# Conversation events after which an agent may no longer see the conversation.
SIGHT_CHANGES = ("team", "assigned", "unassigned", "erased")


class AgentConsumer(LiveConsumer):
    """An agent's live connection: their own events, their teams' and, on request, those of
    conversations they open (checked with the same helper as the pages)."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=UNAUTHORIZED)
            return
        self.groups = await db(_groups_for)(user)
        self.own_groups = list(self.groups)  # the agent's, their teams' and admins'
        self.subscriptions: set[int] = set()  # the conversations this socket has open
        self.recent: dict[str, None] = {}  # events lately passed on, oldest first
        # What the page was last told of each other agent, per conversation: "viewing" twice
        # is no news (two agents opening at once each hear the other's announcement and reply).
        self.told: dict[tuple[int, int], str] = {}
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        self.seen_at = 0.0
        await self._alive()

    async def _alive(self):
        """Say the agent has the inbox open (for the widget's "online") and take who they are
        now (see _refresh), at most every ALIVE_EVERY seconds: the page pings while open."""
        now = time.monotonic()
        if now - self.seen_at >= ALIVE_EVERY:
            self.seen_at = now
            if await self._refresh():
                await db(_agent_seen)(self.scope["user"].pk)

    async def _refresh(self) -> bool:
        """Take the agent as they are now: closed (4401) once deactivated or signed out, in
        their teams' groups as they are now, out of conversations they may no longer see.
        False when the socket was closed."""
        opened = set(self.subscriptions)
        user, groups, visible = await db(_agent_now)(self.scope, opened)
        if user is None:
            await self.close(code=UNAUTHORIZED)
            return False
        self.scope["user"] = user
        for group in set(self.own_groups) - set(groups):
            self.groups.remove(group)
            await self.channel_layer.group_discard(group, self.channel_name)
        for group in set(groups) - set(self.own_groups):
            self.groups.append(group)
            await self.channel_layer.group_add(group, self.channel_name)
        self.own_groups = groups
        # Checked every time, not only when their teams changed: an admin may have moved an
        # inbox to another team, or a conversation may have been erased.
        for conversation_id in opened - visible:
            await self._leave(conversation_id)
        return True

    async def receive_json(self, content, **kwargs):
        action = content.get("action") if isinstance(content, dict) else None
        conversation_id = content.get("conversation") if isinstance(content, dict) else None
        if isinstance(conversation_id, bool) or not isinstance(conversation_id, str | int):
            conversation_id = None
        conversation_id = id_given(conversation_id)
        if action == "ping":
            await self._alive()
            await self._catch_up(conversation_id, content.get("seen"))
            await self._catch_up_list(content.get("list"))
        elif action == "read":
            # The agent has the conversation on screen: the customer's messages are read.
            if conversation_id in self.subscriptions and isinstance(content.get("message"), int):
                try:
                    await db(_agent_read)(self.scope["user"], conversation_id, content["message"])
                except Http404:  # no longer theirs to see (an inbox handed to another team)
                    await self._leave(conversation_id)
        elif action == "subscribe":
            await self._subscribe(conversation_id)
        elif action == "unsubscribe":
            await self._unsubscribe(conversation_id)
        elif action == "typing":
            # Only about a conversation this socket subscribed to, which was checked then.
            mode = content.get("mode")
            if conversation_id not in self.subscriptions:
                await self.send_json({"type": "error", "error": "Not subscribed."})
            elif mode not in TYPING_MODES:
                await self.send_json({"type": "error", "error": "Unknown typing mode."})
            else:
                await self._announce(conversation_id, "typing", mode=mode)
        else:
            await self.send_json({"type": "error", "error": "Unknown action."})

    async def _catch_up(self, conversation_id, seen):
        """The page pings with the newest message it shows: a newer one whose event never came
        (stored while Redis was down; the layer only notifies, and this socket stayed open
        across the outage) is told now, and the page fetches it."""
        if conversation_id not in self.subscriptions or type(seen) is not int:
            return
        if newest := await db(_newest_message_after)(conversation_id, seen):
            await self.send_json(
                {"type": "conversation", "event": "message", "conversation": conversation_id}
                | {"message": newest}
            )

    async def _catch_up_list(self, seen):
        """A list pings with the newest message and event of all when it was last fetched
        (views._list_seen): if one the agent may see came since, and its event never did (the
        socket stayed open across a Redis outage), the list is told to fetch itself again."""
        if not (isinstance(seen, list) and len(seen) == 2 and all(type(i) is int for i in seen)):
            return
        if await db(_list_changed_after)(self.scope["user"], *seen):
            await self.send_json({"type": "conversation", "event": "changed", "conversation": None})

    async def _subscribe(self, conversation_id):
        if not await self._refresh():
            return
        try:
            await db(conversation_get_for_agent)(
                user=self.scope["user"], conversation_id=conversation_id
            )
        except Http404:
            await self.send_json({"type": "error", "error": "No such conversation."})
            return
        conversation_id = int(conversation_id)
        group = conversation_group(conversation_id)
        if conversation_id not in self.subscriptions:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups.append(group)
            self.subscriptions.add(conversation_id)
        await self.send_json({"type": "subscribed", "conversation": conversation_id})
        # Those already there answer with their own "viewing" (see presence_event).
        await self._announce(conversation_id, "viewing", reply_to=self.channel_name)

    async def _unsubscribe(self, conversation_id):
        # No permission check: leaving is always allowed, also after losing sight of it.
        if conversation_id in self.subscriptions:
            await self._leave(conversation_id)
        await self.send_json({"type": "unsubscribed", "conversation": conversation_id})

    async def _leave(self, conversation_id: int):
        group = conversation_group(conversation_id)
        self.subscriptions.discard(conversation_id)
        self.told = {key: state for key, state in self.told.items() if key[0] != conversation_id}
        if group in self.groups:
            self.groups.remove(group)
        await self.channel_layer.group_discard(group, self.channel_name)
        await self._announce(conversation_id, "left")

    async def disconnect(self, code):
        # The base class has already left every group; a send needs no membership.
        for conversation_id in list(getattr(self, "subscriptions", ())):
            await self._announce(conversation_id, "left")

    # --- Presence: who else has a conversation open, and who is typing in it ---------------
    # Nothing is stored: each socket announces itself to the conversation's group when it
    # subscribes, and those already there answer it directly. With several ASGI processes the
    # channel layer (Redis) carries both, so no process needs to know the others' sockets.

    async def _announce(self, conversation_id: int, state: str, **extra):
        user = self.scope["user"]
        await self.channel_layer.group_send(
            conversation_group(conversation_id),
            {
                "type": "presence.event",
                "conversation": conversation_id,
                "agent": {"id": user.pk, "name": user.name},
                "state": state,
                "sender": self.channel_name,
                **extra,
            },
        )

    async def presence_event(self, event):
        conversation_id = event["conversation"]
        if conversation_id not in self.subscriptions or event["sender"] == self.channel_name:
            return
        if event["agent"]["id"] == self.scope["user"].pk:
            # The same agent in another tab: not news to them. If that tab left, this one is
            # still here: say so, or the others would drop the agent.
            if event["state"] == "left":
                await self._announce(conversation_id, "viewing")
            return
        if event.get("reply_to"):
            user = self.scope["user"]
            await self.channel_layer.send(
                event["reply_to"],
                {
                    "type": "presence.event",
                    "conversation": conversation_id,
                    "agent": {"id": user.pk, "name": user.name},
                    "state": "viewing",
                    "sender": self.channel_name,
                },
            )
        key, state = (conversation_id, event["agent"]["id"]), event["state"]
        if state == "viewing" and self.told.get(key) == state:
            return
        self.told[key] = state
        await self.send_json(
            {
                "type": "presence",
                "conversation": conversation_id,
                "agent": event["agent"],
                "state": state,
                **({"mode": event["mode"]} if "mode" in event else {}),
            }
        )

    async def notification_event(self, event):
        await self.send_json(
            {key: value for key, value in event.items() if key != "type"} | {"type": "notification"}
        )

    async def conversation_event(self, event):
        # Sent to every group that may see the conversation (team, assignee, the conversation
        # itself...): a socket in several of them gets one copy of each publish.
        key = event["event_id"]  # every publish has one: realtime.conversation_payload
        if key in self.recent:
            return
        self.recent[key] = None
        if len(self.recent) > 256:
            self.recent.pop(next(iter(self.recent)))
        conversation_id = event.get("conversation")
        if event["event"] in SIGHT_CHANGES and conversation_id in self.subscriptions:
            # Sent to whoever could see it before the change: may this agent still?
            try:
                await db(conversation_get_for_agent)(
                    user=self.scope["user"], conversation_id=conversation_id
                )
            except Http404:
                await self._leave(conversation_id)
        await self.send_json(
            {key: value for key, value in event.items() if key not in ("type", "event_id")}
            | {"type": "conversation", "event": event["event"]}
        )

    async def visitor_typing(self, event):
        if event["conversation"] in self.subscriptions:
            await self.send_json(
                {
                    "type": "visitor_typing",
                    "conversation": event["conversation"],
                    "typing": event["typing"],
                    "draft": event.get("draft", ""),
                }
            )


def _groups_for(user) -> list[str]:
    groups = [agent_group(user.pk)]
    groups += [team_group(t) for t in user.team_memberships.values_list("team_id", flat=True)]
    if user.is_admin:
        groups.append(ADMINS_GROUP)
    return groups


def _agent_now(scope, subscriptions: set[int]) -> tuple[object | None, list[str], set[int]]:
    """The socket's agent as they are now, with their groups and which of the conversations
    the socket has open they may still see; (None, [], set()) once they may no longer be
    here: deactivated, signed out, or signed out everywhere by a new password."""
    from django.contrib.auth import HASH_SESSION_KEY, get_user_model
    from django.utils.crypto import constant_time_compare

    from conversations.selectors import conversations_visible_to

    session = scope.get("session")
    user = get_user_model().objects.filter(pk=scope["user"].pk, is_active=True).first()
    if (
        user is None
        or session is None
        or not session.exists(session.session_key)
        or not constant_time_compare(
            session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()
        )
    ):
        return None, [], set()
    visible = conversations_visible_to(user).filter(pk__in=subscriptions)
    visible = set(visible.values_list("pk", flat=True)) if subscriptions else set()
    return user, _groups_for(user), visible


def _newest_message_after(conversation_id: int, seen: int) -> int | None:
    from conversations.models import Message

    newer = Message.objects.filter(conversation_id=conversation_id, pk__gt=seen)
    return newer.order_by("-pk").values_list("pk", flat=True).first()


def _list_changed_after(user, message: int, event: int) -> bool:
    """Whether a conversation `user` may see has a message or event newer than these ids, or
    any conversation was moved to another team or assignee since (one that left the agent's
    sight leaves their list: it is only told to refresh, which shows nothing of it)."""
    from conversations.models import ConversationEvent, Message
    from conversations.selectors import conversations_visible_to

    visible = conversations_visible_to(user)
    Kind = ConversationEvent.Kind  # noqa: N806 - the enum
    moved = Q(kind__in=(Kind.TEAM, Kind.ASSIGNED))
    return (
        Message.objects.filter(pk__gt=message, conversation__in=visible).exists()
        or ConversationEvent.objects.filter(pk__gt=event)
        .filter(Q(conversation__in=visible) | moved)
        .exists()
    )


def _agent_seen(user_id: int) -> None:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    get_user_model().objects.filter(pk=user_id).update(last_seen_at=timezone.now())


def _agent_read(user, conversation_id: int, up_to: int) -> None:
    """The agent has the conversation on screen: the customer's messages up to `up_to` (0:
    none yet) are read, and so is what the agent was notified of about it."""
    from channels_adapters.webchat.chat import messages_mark_read
    from conversations.services import notifications_mark_read

    conversation = conversation_get_for_agent(user=user, conversation_id=conversation_id)
    if up_to:
        messages_mark_read(conversation, by_customer=False, up_to=up_to)
    notifications_mark_read(user, conversation)


# --- The chat widget's socket ------------------------------------------------------------------

# Close codes: the token was missing or not valid; the page's origin may not use this widget;
# too many connections from one address; a frame larger than any message may be.
FORBIDDEN_ORIGIN = 4403
TOO_MANY = 4429
TOO_BIG = 1009
FRAME_MAX_BYTES = 64 * 1024
HELLO_WITHIN_SECONDS = 10
# A visitor may send a burst of this many messages, then one per MESSAGE_EVERY seconds.
MESSAGE_BURST = 10
MESSAGE_EVERY = 1.0
TYPING_EVERY = 0.5
# The channel name of a visitor socket opened while the channel layer could not make one.
UNLISTENED = "unlistened"


class VisitorConsumer(LiveConsumer):
    """A widget visitor's live connection. The page's origin must be one the inbox allows; the
    first frame carries the visitor's signed token (not the URL, which logs keep). The socket
    only sends what the visitor's own customer may read, fetched from the database after an
    id cursor, so a reconnect catches up with no gap and no duplicate."""

    async def __call__(self, scope, receive, send):
        """Channels' own, except that the socket opens while the channel layer cannot make
        its channel (Redis down): a visitor's messages reach the database through it, which
        matters more than agents' replies arriving live (the next socket catches up on them
        from the database). Agents' sockets do not: their page says it is not live."""
        self.scope, self.base_send = scope, send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources = [receive]
        try:
            self.channel_name = await self.channel_layer.new_channel()
            sources.append(functools.partial(self.channel_layer.receive, self.channel_name))
        except Exception:  # noqa: BLE001 - the layer is down: a socket that only writes
            log.warning("visitor socket opened without the channel layer (is Redis down?)")
            self.channel_name = UNLISTENED
        try:
            await await_many_dispatch(sources, self.dispatch)
        except StopConsumer:
            pass

    async def connect(self):
        from channels_adapters.webchat import chat

        self.visitor = None
        self.hello_timer = None
        self.cursor = 0  # the last message id this socket has sent
        self.conversation_id = None  # the conversation whose group it listens to
        self.shown = None  # the conversation the widget shows
        key = self.scope["url_route"]["kwargs"]["key"]
        self.inbox = await db(chat.widget_inbox)(key)
        headers = dict(self.scope.get("headers", []))
        origin = headers.get(b"origin", b"").decode("latin-1")
        host = headers.get(b"host", b"").decode("latin-1")
        if self.inbox is None or not chat.origin_allowed(self.inbox, origin, host):
            await self.close(code=FORBIDDEN_ORIGIN)
            return
        address = (self.scope.get("client") or ("unknown",))[0]
        if not await db(chat.rate_allowed)("sockets", address):
            await self.close(code=TOO_MANY)
            return
        self.settings = chat.widget_settings(self.inbox)
        self.allowance = float(MESSAGE_BURST)
        self.allowance_at = time.time()
        self.typed_at = 0.0
        await self.accept()
        self.hello_timer = asyncio.get_running_loop().call_later(
            HELLO_WITHIN_SECONDS, lambda: asyncio.ensure_future(self._hello_missing())
        )

    async def _hello_missing(self):
        if self.visitor is None:
            await self.close(code=UNAUTHORIZED)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if bytes_data is not None or len(text_data or "") > FRAME_MAX_BYTES:
            await self.close(code=TOO_BIG)
            return
        try:
            content = without_nul(json.loads(text_data))
        except ValueError:
            await self.send_json({"type": "error", "error": "Frames are JSON objects."})
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "error": "Frames are JSON objects."})
            return
        action = content.get("action")
        if action == "hello":
            await self._hello(content)
        elif self.visitor is None:
            await self.close(code=UNAUTHORIZED)
        elif action == "message":
            await self._message(content)
        elif action == "typing":
            await self._typing(content)
        elif action in ("read", "ping", "end", "rate", "transcript", "contact"):
            await self._act(action, content)
        else:
            await self.send_json({"type": "error", "error": "Unknown action."})

    async def _hello(self, content):
        from channels_adapters.webchat import chat

        if self.visitor is not None:
            return
        self.hello_timer.cancel()  # it came in time, however long the reading takes
        visitor = await db(chat.visitor_from_token)(self.inbox, content.get("token"))
        if visitor is None:
            await self.close(code=UNAUTHORIZED)
            return
        self.visitor, self.key = visitor, visitor.key
        after = content.get("after")
        self.cursor = after if isinstance(after, int) and after >= 0 else 0
        self.customer_group = customer_group(visitor.identity.customer_id)
        try:
            await self.channel_layer.group_add(self.customer_group, self.channel_name)
        except Exception:  # noqa: BLE001 - Redis down: replies show on the next connection
            log.warning("visitor socket not live: could not join %s", self.customer_group)
        self.groups.append(self.customer_group)
        await db(chat.visitor_seen)(visitor.pk, opened=1)
        ready = await db(self._state)(full=True)  # reads the visitor again
        if self.visitor.key != self.key:
            # Given a new key between reading the token and joining the group (visitor_rekey),
            # whose "rekeyed" this socket missed.
            await self.close(code=UNAUTHORIZED)
            return
        # In the visitor's language, as the session's strings were (the reply time is words).
        self.language = chat.supported_language(visitor.identity.customer.language)
        ready["availability"] = self.availability = await db(self._availability)(fresh=True)
        self.shown = ready["conversation"]["id"] if ready["conversation"] else None
        await self.send_json({"type": "ready", **ready})
        await self._tell_agents("opened")

    async def _tell_agents(self, widget: str):
        """Agents with the visitor's conversation open see "on the site now" come and go. Only
        its own group: the lists do not show it."""
        if self.conversation_id:
            event = conversation_payload(self.conversation_id, "visitor", widget=widget)
            await self._notify_agents(event)

    async def _notify_agents(self, event: dict):
        """Tell the agents on the conversation (typing, the widget opened or closed). Lost
        while Redis is down, and never worth the socket: the visitor's messages still go
        into the database through it."""
        try:
            await self.channel_layer.group_send(conversation_group(self.conversation_id), event)
        except Exception:  # noqa: BLE001 - a notification; the chat goes on
            log.warning("could not tell agents of conversation %s", self.conversation_id)

    def _state(self, full: bool) -> dict:
        """The messages after the cursor (sync: runs in a thread). `full` looks the visitor's
        conversation up afresh (on hello, and when an event names another conversation: a new
        one, or the visitor identified and merged); else it is the one this socket follows."""
        from channels_adapters.webchat import chat

        conversation, looked_up = self.conversation_id, full or self.conversation_id is None
        if looked_up:
            self.visitor = chat.visitor_reload(self.visitor)
            conversation = chat.visitor_conversation(self.visitor)
            if conversation is not None and conversation.pk != self.conversation_id:
                self._follow(conversation.pk)
        messages = []
        if conversation is not None:
            messages = [
                chat.message_json(m) for m in chat.visible_messages(conversation, after=self.cursor)
            ]
            if messages:
                self.cursor = messages[-1]["id"]
        return {
            "conversation": chat.conversation_json(conversation) if looked_up else None,
            "messages": messages,
        }

    def _follow(self, conversation_id: int):
        """Listen to the conversation's group (agents typing), leaving the previous one."""
        previous, self.conversation_id = self.conversation_id, conversation_id
        try:
            if previous:
                async_to_sync(self.channel_layer.group_discard)(
                    conversation_group(previous), self.channel_name
                )
            async_to_sync(self.channel_layer.group_add)(
                conversation_group(conversation_id), self.channel_name
            )
        except Exception:  # noqa: BLE001 - Redis down: typing is lost, the chat goes on
            log.warning("visitor socket could not follow conversation %s", conversation_id)

    def _spend(self) -> bool:
        """One from the socket's allowance (MESSAGE_BURST at once, then one every
        MESSAGE_EVERY seconds) for what writes: a message, an email given, a rating, a
        transcript, ending the chat. False when it is spent."""
        now = time.time()
        self.allowance = min(
            MESSAGE_BURST, self.allowance + (now - self.allowance_at) / MESSAGE_EVERY
        )
        self.allowance_at = now
        if self.allowance < 1:
            return False
        self.allowance -= 1
        return True

    async def _message(self, content):
        from channels_adapters.webchat import chat

        client_id = content.get("client_id")
        if not self._spend():
            error = {"type": "error", "client_id": client_id, "retry": True}
            await self.send_json(error | {"error": "Too many messages; wait a moment."})
            return

        def store():  # and read what the widget lacks, in one trip to a thread
            received = chat.visitor_message(
                self.visitor,
                text=content.get("text"),
                client_id=client_id,
                conversation_id=self.conversation_id,
            )
            return received, self._state(full=received.message.conversation_id != self.shown)

        try:
            received, state = await db(store)()
        except ValidationError as exc:
            # Refused as it is (blocked, too long...): sending it again would not help.
            error = {"type": "error", "client_id": client_id, "error": exc.messages[0]}
            await self.send_json(error | {"retry": False})
            return
        await self.send_json(
            {"type": "ack", "client_id": client_id, "message": received.message.pk}
        )
        await self._show(state)

    async def _typing(self, content):
        now = time.time()
        typing = bool(content.get("typing"))
        if (typing and now - self.typed_at < TYPING_EVERY) or not self.conversation_id:
            return
        self.typed_at = now
        draft = content.get("draft") if self.settings["typing_preview"] else ""
        await self._notify_agents(
            {
                "type": "visitor.typing",
                "conversation": self.conversation_id,
                "typing": typing,
                "draft": (draft or "")[:500] if isinstance(draft, str) and typing else "",
            }
        )

    async def _act(self, action, content):
        if action not in ("ping", "read") and not self._spend():
            error = {
                "type": "error",
                "action": action,
                "error": "Too many requests; wait a moment.",
            }
            await self.send_json(error)
            return
        result = await db(self._act_sync)(action, content)
        if result is not None:
            await self.send_json(result)
        if action == "ping" and self.channel_name == UNLISTENED:
            # No events reach this socket (opened while Redis was down): the widget's pings
            # bring what agents wrote since, from the database.
            await self._show(await db(self._state)(full=True))

    def _availability(self, fresh: bool = False) -> dict:
        from channels_adapters.webchat import chat

        with translation.override(self.language):
            return chat.availability(self.inbox) if fresh else chat.availability_now(self.inbox)

    def _act_sync(self, action, content) -> dict | None:
        from channels_adapters.webchat import chat

        if action == "ping":
            chat.visitor_seen(self.visitor.pk)
            # Agents go offline, hours end: an open widget hears it within one ping.
            availability = self._availability()
            if availability == self.availability:
                return None
            self.availability = availability
            return {"type": "availability", "availability": availability}
        if action == "contact":
            try:
                self.visitor = chat.visitor_contact(
                    self.visitor,
                    name=str(content.get("name") or ""),
                    email=str(content.get("email") or ""),
                )
            except ValidationError as exc:
                return {"type": "error", "action": action, "error": exc.messages[0]}
            pending = chat.email_pending(self.visitor)
            if pending:  # another customer's address: perhaps theirs, on another device
                chat.continue_link_send(self.visitor, self.visitor.email)
            # Whether a link went is not said: the typist learns nothing of the address.
            return {"type": "contact", "email": self.visitor.email, "pending": pending}
        conversation = chat.visitor_conversation(self.visitor)
        if conversation is None or conversation.pk != content.get("conversation"):
            return {"type": "error", "action": action, "error": "No such conversation."}
        try:
            if action == "read":
                up_to = content.get("message")
                if isinstance(up_to, int):
                    chat.messages_mark_read(conversation, by_customer=True, up_to=up_to)
                return None
            if action == "end":
                chat.chat_end(conversation)
            elif action == "rate":
                chat.conversation_rate(
                    conversation, rating=content.get("rating"), comment=content.get("comment")
                )
            elif action == "transcript":
                chat.transcript_request(self.visitor, conversation)
        except ValidationError as exc:
            return {"type": "error", "action": action, "error": exc.messages[0]}
        return {"type": "done", "action": action, "conversation": conversation.pk}

    async def _show(self, state):
        if state["conversation"] and state["conversation"]["id"] != self.shown:
            self.shown = state["conversation"]["id"]
            await self.send_json({"type": "conversation", "conversation": state["conversation"]})
        for message in state["messages"]:
            await self.send_json({"type": "message", "message": message})

    async def customer_event(self, event):
        """Something changed for this customer: read it from the database, unless this socket
        has already sent it (the visitor's own message, read back when it was stored)."""
        if event.get("event") == "rekeyed" and event.get("visitor") == self.visitor.pk:
            # The chat went on in another browser, or the user signed out: this token is
            # void. A socket opened with the new key since then stays.
            from channels_adapters.webchat import chat

            if (await db(chat.visitor_reload)(self.visitor)).key != self.key:
                await self.close(code=UNAUTHORIZED)
            return
        if event.get("event") in ("message", "ended"):
            known = event.get("conversation") == self.conversation_id
            if not (known and event["event"] == "message" and event["message"] <= self.cursor):
                await self._show(await db(self._state)(full=not known))
            if event["event"] == "ended":
                await self.send_json({"type": "ended", "conversation": event["conversation"]})
        elif event.get("event") == "reopened" and event.get("conversation") == self.conversation_id:
            # An agent opened the ended chat again: the widget takes messages in it once more.
            self.shown = None
            await self._show(await db(self._state)(full=True))
        elif event.get("event") in ("joined", "queue"):
            # An agent took the chat, or its place in the queue moved: as said, for this chat.
            if event.get("conversation") == self.conversation_id:
                fields = {
                    key: value for key, value in event.items() if key not in ("type", "event")
                }
                await self.send_json({"type": event["event"], **fields})
        elif event.get("event") == "read" and event.get("by") == "agent":
            await self.send_json(
                {"type": "read", "conversation": event["conversation"], "up_to": event["up_to"]}
            )

    async def presence_event(self, event):
        """An agent in the conversation: only "typing a reply" reaches the visitor, by first
        name, and only when the inbox shows agent typing."""
        if (
            event.get("state") == "typing"
            and event.get("mode") == "reply"
            and self.settings["show_agent_typing"]
        ):
            name = event["agent"]["name"].split(" ")[0]
            await self.send_json({"type": "typing", "agent": name})

    async def conversation_event(self, event):
        pass  # agents' business: the visitor hears through customer events

    async def visitor_typing(self, event):
        pass  # their own typing, echoed by the conversation's group

    async def disconnect(self, code):
        from channels_adapters.webchat import chat

        if self.hello_timer:
            self.hello_timer.cancel()
        if self.conversation_id:
            await self._leave_group(conversation_group(self.conversation_id))
        if self.visitor is not None:
            await db(chat.visitor_seen)(self.visitor.pk, opened=-1)
            await self._tell_agents("closed")
