"""Real-time notifications, published only once the change they announce is committed.

The database is the record; these events only tell open sockets that something changed, so a
client that misses one catches up from the database. Recipients are computed from the
conversation as it is when the event is sent, so a reassignment never leaks to the old team.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

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


def _agent_groups(conversation) -> list[str]:
    groups = [ADMINS_GROUP, conversation_group(conversation.pk)]
    team_ids = {conversation.team_id, conversation.inbox.default_team_id} - {None}
    groups += [team_group(team_id) for team_id in sorted(team_ids)]
    if conversation.assignee_id:
        groups.append(agent_group(conversation.assignee_id))
    return groups


def send_to_groups(groups, payload: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    send = async_to_sync(layer.group_send)
    for group in groups:
        try:
            send(group, payload)
        except Exception:  # a notification must never break the committed change
            log.exception("could not notify group %s", group)


def publish_conversation_event(conversation, event: str, **data) -> None:
    """Tell agents who may see `conversation` that `event` happened, after commit."""

    def send():
        conversation.refresh_from_db(fields=["team", "assignee", "status"])
        payload = {
            "type": "conversation.event",
            "event": event,
            "conversation": conversation.pk,
            **data,
        }
        send_to_groups(_agent_groups(conversation), payload)

    transaction.on_commit(send)


def publish_customer_event(customer_id: int, event: str, **data) -> None:
    """Tell the customer's own open sockets (the chat widget) about a change, after commit.

    Only ids go out; the widget reads the message through its own, filtered endpoint.
    """
    payload = {"type": "customer.event", "event": event, **data}
    transaction.on_commit(lambda: send_to_groups([customer_group(customer_id)], payload))
