"""WebSocket consumers. They only deliver: every change is made through the services and
stored first, and events carry ids, so a client that reconnects catches up from the database."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404

from conversations.realtime import ADMINS_GROUP, agent_group, conversation_group, team_group
from conversations.selectors import conversation_get_for_agent

UNAUTHORIZED = 4401
TYPING_MODES = ("reply", "note")
# Conversation events after which an agent may no longer see the conversation.
SIGHT_CHANGES = ("team", "assigned", "unassigned")


class AgentConsumer(AsyncJsonWebsocketConsumer):
    """An agent's live connection: their own events, their teams' and, on request, those of
    conversations they open (checked with the same helper as the pages)."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=UNAUTHORIZED)
            return
        self.groups = await self._groups_for(user)
        self.subscriptions: set[int] = set()  # the conversations this socket has open
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    @database_sync_to_async
    def _groups_for(self, user) -> list[str]:
        groups = [agent_group(user.pk)]
        groups += [team_group(t) for t in user.team_memberships.values_list("team_id", flat=True)]
        if user.is_admin:
            groups.append(ADMINS_GROUP)
        return groups

    async def receive_json(self, content, **kwargs):
        action = content.get("action") if isinstance(content, dict) else None
        conversation_id = content.get("conversation") if isinstance(content, dict) else None
        if isinstance(conversation_id, str) and conversation_id.isdigit():
            conversation_id = int(conversation_id)
        elif not isinstance(conversation_id, int):
            conversation_id = None
        if action == "subscribe":
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

    async def _subscribe(self, conversation_id):
        try:
            await database_sync_to_async(conversation_get_for_agent)(
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
        await self.send_json(
            {
                "type": "presence",
                "conversation": conversation_id,
                "agent": event["agent"],
                "state": event["state"],
                **({"mode": event["mode"]} if "mode" in event else {}),
            }
        )

    async def notification_event(self, event):
        await self.send_json(
            {key: value for key, value in event.items() if key != "type"} | {"type": "notification"}
        )

    async def conversation_event(self, event):
        conversation_id = event.get("conversation")
        if event["event"] in SIGHT_CHANGES and conversation_id in self.subscriptions:
            # Sent to whoever could see it before the change: may this agent still?
            try:
                await database_sync_to_async(conversation_get_for_agent)(
                    user=self.scope["user"], conversation_id=conversation_id
                )
            except Http404:
                await self._leave(conversation_id)
        await self.send_json(
            {key: value for key, value in event.items() if key != "type"}
            | {"type": "conversation", "event": event["event"]}
        )
