"""Presence and collision over the agent socket: who else has a conversation open, and who is
typing in it. Personas: bob and dana (Support), charlie (Billing, an outsider), alice (admin)."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.test import Client

from conversations import services
from conversations.realtime import customer_group
from tests.conftest import receive, signed_in
from tests.conversations.test_consumers import connect

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def session_of(user) -> str:
    client = Client()  # one each: a second login on a shared client ends the first session
    client.force_login(user)
    return client.cookies["sessionid"].value


async def opened(user, conversation_id):
    """`user`'s socket, subscribed to the conversation."""
    socket, connected, _ = await connect(await session_of(user))
    assert connected
    await socket.send_json_to({"action": "subscribe", "conversation": conversation_id})
    assert await socket.receive_json_from(timeout=5) == {
        "type": "subscribed",
        "conversation": conversation_id,
    }
    return socket


def presence(conversation_id, agent, state, **extra):
    return {
        "type": "presence",
        "conversation": conversation_id,
        "agent": {"id": agent.pk, "name": agent.name},
        "state": state,
        **extra,
    }


@pytest.fixture
def conversation(chat_inbox):
    return receive(chat_inbox, text="Where is my parcel?").message.conversation


@pytest.fixture
async def bob_and_dana(bob, dana, conversation):
    """Bob opens the conversation, then Dana: each learns that the other is there."""
    bob_socket = await opened(bob, conversation.pk)
    dana_socket = await opened(dana, conversation.pk)
    assert await bob_socket.receive_json_from(timeout=5) == presence(
        conversation.pk, dana, "viewing"
    )
    assert await dana_socket.receive_json_from(timeout=5) == presence(
        conversation.pk, bob, "viewing"
    )
    yield bob_socket, dana_socket
    await bob_socket.disconnect()
    await dana_socket.disconnect()


async def test_two_agents_see_each_other_view_and_type(bob_and_dana, dana, conversation):
    bob_socket, dana_socket = bob_and_dana
    for mode in ("reply", "note"):
        await dana_socket.send_json_to(
            {"action": "typing", "conversation": conversation.pk, "mode": mode}
        )
        assert await bob_socket.receive_json_from(timeout=5) == presence(
            conversation.pk, dana, "typing", mode=mode
        )
    assert await dana_socket.receive_nothing(timeout=0.2)  # no echo of her own


async def test_leaving_is_announced_on_unsubscribe_and_on_disconnect(
    bob_and_dana, bob, dana, conversation
):
    bob_socket, dana_socket = bob_and_dana
    await dana_socket.send_json_to({"action": "unsubscribe", "conversation": conversation.pk})
    assert (await dana_socket.receive_json_from(timeout=5))["type"] == "unsubscribed"
    assert await bob_socket.receive_json_from(timeout=5) == presence(conversation.pk, dana, "left")

    other = await opened(dana, conversation.pk)
    assert await bob_socket.receive_json_from(timeout=5) == presence(
        conversation.pk, dana, "viewing"
    )
    assert await other.receive_json_from(timeout=5) == presence(conversation.pk, bob, "viewing")
    await other.disconnect()
    assert await bob_socket.receive_json_from(timeout=5) == presence(conversation.pk, dana, "left")


async def test_an_agent_in_two_tabs_stays_present_when_one_closes(bob_and_dana, dana, conversation):
    bob_socket, dana_socket = bob_and_dana
    second_tab = await opened(dana, conversation.pk)
    assert (await second_tab.receive_json_from(timeout=5))["state"] == "viewing"
    assert await bob_socket.receive_nothing(timeout=0.2)  # Dana viewing again is no news
    await second_tab.disconnect()
    assert (await bob_socket.receive_json_from(timeout=5))["state"] == "left"
    assert await bob_socket.receive_json_from(timeout=5) == presence(
        conversation.pk, dana, "viewing"
    )
    assert await dana_socket.receive_nothing(timeout=0.2)


async def test_an_outsider_cannot_subscribe_type_or_overhear(
    bob_and_dana, charlie, dana, conversation
):
    bob_socket, dana_socket = bob_and_dana
    layer = get_channel_layer()
    customer_channel = await layer.new_channel("test.")
    await layer.group_add(customer_group(conversation.customer_id), customer_channel)

    charlie_socket, _, _ = await connect(await session_of(charlie))
    await charlie_socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    assert (await charlie_socket.receive_json_from(timeout=5))["type"] == "error"
    await charlie_socket.send_json_to(
        {"action": "typing", "conversation": conversation.pk, "mode": "reply"}
    )
    assert await charlie_socket.receive_json_from(timeout=5) == {
        "type": "error",
        "error": "Not subscribed.",
    }
    assert await bob_socket.receive_nothing(timeout=0.2)

    await dana_socket.send_json_to(
        {"action": "typing", "conversation": conversation.pk, "mode": "reply"}
    )
    assert (await bob_socket.receive_json_from(timeout=5))["state"] == "typing"
    assert await charlie_socket.receive_nothing(timeout=0.2)
    with pytest.raises(asyncio.TimeoutError):  # the customer's sockets hear none of it
        await asyncio.wait_for(layer.receive(customer_channel), 0.2)
    await charlie_socket.disconnect()


async def test_typing_needs_a_known_mode(bob_and_dana, conversation):
    _, dana_socket = bob_and_dana
    await dana_socket.send_json_to(
        {"action": "typing", "conversation": conversation.pk, "mode": "<script>"}
    )
    assert (await dana_socket.receive_json_from(timeout=5))["error"] == "Unknown typing mode."


async def test_an_agent_who_loses_sight_of_it_leaves(alice, bob, support, billing, billing_inbox):
    conversation = await database_sync_to_async(
        lambda: receive(billing_inbox, address="shop-1").message.conversation
    )()
    # Transferred to Support, so bob sees it; then handed back to Billing.
    await database_sync_to_async(services.conversation_set_team)(
        conversation=conversation, team=support
    )
    alice_socket = await opened(alice, conversation.pk)
    bob_socket = await opened(bob, conversation.pk)
    await bob_socket.receive_json_from(timeout=5)  # alice is viewing
    while (await alice_socket.receive_json_from(timeout=5)).get("type") != "presence":
        pass  # bob is viewing

    await database_sync_to_async(services.conversation_set_team)(
        conversation=conversation, team=billing, actor=alice
    )
    while (event := await alice_socket.receive_json_from(timeout=5))["type"] != "presence":
        assert event["event"] == "team"
    assert event == presence(conversation.pk, bob, "left")
    await bob_socket.send_json_to(
        {"action": "typing", "conversation": conversation.pk, "mode": "reply"}
    )
    while (event := await bob_socket.receive_json_from(timeout=5))["type"] != "error":
        assert event["type"] == "conversation"
    assert event["error"] == "Not subscribed."
    await alice_socket.disconnect()
    await bob_socket.disconnect()


def test_a_teammate_sees_who_is_viewing_and_typing_in_the_browser(
    asgi_server, browser, bob, dana, chat_inbox
):
    """Real Chromium, real uvicorn: bob and dana open one conversation; dana types."""
    from playwright.sync_api import expect

    conversation = receive(chat_inbox, text="Refund for order 7781?").message.conversation
    url = f"{asgi_server}/inbox/{conversation.pk}/"
    mine = signed_in(browser, asgi_server, bob)
    mine.goto(url)
    theirs = signed_in(browser, asgi_server, dana)
    theirs.goto(url)

    status = mine.locator("[data-presence]")
    assert status.get_attribute("aria-live") == "polite"
    mine.wait_for_selector("[data-presence] >> text=Dana is viewing")
    theirs.wait_for_selector("[data-presence] >> text=Bob is viewing")

    theirs.type("#reply-text", "Approved, refunding now")
    mine.wait_for_selector("[data-presence] >> text=Dana is typing a reply…")
    # With no more keys, it falls back to viewing after a few seconds.
    mine.wait_for_selector("[data-presence] >> text=Dana is viewing", timeout=10_000)

    theirs.close()
    expect(status).to_be_empty()  # she left
