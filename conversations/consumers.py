"""WebSocket consumers. They only deliver: every change is made through the services and
stored first, and events carry ids, so a client that reconnects catches up from the database."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404

from conversations.realtime import ADMINS_GROUP, agent_group, conversation_group, team_group
from conversations.selectors import conversation_get_for_agent

UNAUTHORIZED = 4401


class AgentConsumer(AsyncJsonWebsocketConsumer):
    """An agent's live connection: their own events, their teams' and, on request, those of
    conversations they open (checked with the same helper as the pages)."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=UNAUTHORIZED)
            return
        self.groups = await self._groups_for(user)
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
        if action in ("subscribe", "unsubscribe"):
            conversation_id = content.get("conversation")
            try:
                await database_sync_to_async(conversation_get_for_agent)(
                    user=self.scope["user"], conversation_id=conversation_id
                )
            except Http404:
                await self.send_json({"type": "error", "error": "No such conversation."})
                return
            group = conversation_group(int(conversation_id))
            if action == "subscribe":
                await self.channel_layer.group_add(group, self.channel_name)
                self.groups.append(group)
            else:
                await self.channel_layer.group_discard(group, self.channel_name)
            await self.send_json({"type": f"{action}d", "conversation": int(conversation_id)})
        else:
            await self.send_json({"type": "error", "error": "Unknown action."})

    async def notification_event(self, event):
        await self.send_json(
            {key: value for key, value in event.items() if key != "type"} | {"type": "notification"}
        )

    async def conversation_event(self, event):
        await self.send_json(
            {key: value for key, value in event.items() if key != "type"}
            | {"type": "conversation", "event": event["event"]}
        )
