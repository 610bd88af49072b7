"""Real server processes: a visitor on one ASGI process and an agent on another see each
other live, through Redis (the PostgreSQL + Redis leg of .ci/run), and a server whose Redis is
down still takes new chats."""

import json

import httpx
import pytest
import time_machine
from websockets.sync.client import connect

from channels_adapters.webchat import chat
from conversations import services
from conversations.models import Message
from tests.conftest import start_asgi_server


def frames(socket, until, timeout=20):
    """Frames from `socket` up to the first one `until` accepts (which is returned last)."""
    seen = []
    while True:
        seen.append(json.loads(socket.recv(timeout=timeout)))
        if until(seen[-1]):
            return seen


@pytest.fixture
def two_servers(transactional_db, settings, redis_url):
    started = [start_asgi_server(settings, REDIS_URL=redis_url) for _ in range(2)]
    yield [base for _, base in started]
    for process, _ in started:
        process.terminate()
        process.wait(timeout=30)


def test_a_visitor_and_an_agent_on_different_processes_chat_live(
    two_servers, client, bob, chat_inbox
):
    visitor_server, agent_server = two_servers
    visitor = chat.visitor_session(inbox=chat_inbox)
    first = chat.visitor_message(visitor, text="Hello from process A", client_id="a")
    conversation = first.message.conversation
    client.force_login(bob)
    session = client.cookies["sessionid"].value

    agent_url = agent_server.replace("http", "ws") + "/ws/agent/"
    widget_url = visitor_server.replace("http", "ws") + f"/ws/widget/{chat_inbox.widget_key}/"
    cookie = {"Cookie": f"sessionid={session}"}
    with (
        connect(agent_url, origin=agent_server, additional_headers=cookie) as agent,
        connect(widget_url, origin=visitor_server) as widget,
    ):
        agent.send(json.dumps({"action": "subscribe", "conversation": conversation.pk}))
        frames(agent, lambda f: f["type"] == "subscribed")

        widget.send(
            json.dumps(
                {"action": "hello", "token": chat.visitor_token(visitor), "after": first.message.pk}
            )
        )
        assert frames(widget, lambda f: f["type"] == "ready")[-1]["messages"] == []

        # The visitor writes on process A: the agent on process B hears of it.
        widget.send(json.dumps({"action": "message", "client_id": "b", "text": "Anyone there?"}))
        ack = frames(widget, lambda f: f["type"] == "ack")[-1]
        heard = frames(agent, lambda f: f.get("event") == "message")[-1]
        assert heard["message"] == ack["message"]

        # The agent types on B: the visitor on A sees it, by first name only.
        agent.send(
            json.dumps({"action": "typing", "conversation": conversation.pk, "mode": "reply"})
        )
        assert frames(widget, lambda f: f["type"] == "typing")[-1] == {
            "type": "typing",
            "agent": "Bob",
        }

        # The visitor types on A: the agent on B sees it.
        widget.send(json.dumps({"action": "typing", "typing": True, "draft": "secret draft"}))
        typing = frames(agent, lambda f: f["type"] == "visitor_typing")[-1]
        assert typing["conversation"] == conversation.pk and typing["draft"] == ""


def test_a_new_visitor_starts_a_chat_and_writes_while_redis_is_down(
    server_without_redis, chat_inbox, bob
):
    """The session is counted by the process itself and the socket opens without the channel
    layer: what the visitor writes is stored, and the agent's answer comes with a ping."""
    base = server_without_redis
    started = httpx.post(
        f"{base}/widget/{chat_inbox.widget_key}/session", json={}, headers={"Origin": base}
    )
    assert started.status_code == 200

    widget_url = base.replace("http", "ws") + f"/ws/widget/{chat_inbox.widget_key}/"
    with connect(widget_url, origin=base) as widget:
        widget.send(json.dumps({"action": "hello", "token": started.json()["token"]}))
        assert frames(widget, lambda f: f["type"] == "ready")[-1]["conversation"] is None
        widget.send(json.dumps({"action": "message", "client_id": "a", "text": "Is anyone in?"}))
        ack = frames(widget, lambda f: f["type"] == "ack")[-1]

        stored = Message.objects.select_related("conversation").get(pk=ack["message"])
        assert (stored.text, stored.conversation.inbox) == ("Is anyone in?", chat_inbox)
        # Bob answers; no event can tell the socket, so the widget's next ping brings it.
        services.reply_send(conversation=stored.conversation, author=bob, text="Bob here.")
        widget.send(json.dumps({"action": "ping"}))
        shown = frames(widget, lambda f: f["type"] == "message" and f["message"]["from"] == "agent")
        assert shown[-1]["message"]["text"] == "Bob here."


def test_new_chats_are_still_limited_while_redis_is_down(cache_down, client, chat_inbox, settings):
    settings.WEBCHAT_CONNECTIONS_PER_MINUTE = 2
    url, origin = f"/widget/{chat_inbox.widget_key}/session", "http://testserver"

    with time_machine.travel("2026-12-03 10:00:05Z", tick=False):
        answers = [
            client.post(url, {}, content_type="application/json", HTTP_ORIGIN=origin)
            for _ in range(3)
        ]

    assert [a.status_code for a in answers] == [200, 200, 429]
