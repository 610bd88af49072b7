import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from conversations import services
from conversations.models import Notification
from helpdesk.asgi import application
from tests.conftest import receive

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(client, user) -> str:
    """`user`'s session, on a client of its own (`client` is not used): a second login on a
    shared client ends the first session, and the socket on it closes, as it should."""
    own = Client()
    own.force_login(user)
    return own.cookies["sessionid"].value


async def connect(session=None, origin="http://localhost"):
    headers = [(b"origin", origin.encode()), (b"host", b"localhost")]
    if session:
        headers.append((b"cookie", f"sessionid={session}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/agent/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_an_anonymous_socket_is_refused():
    communicator, connected, code = await connect()
    assert not connected
    assert code == 4401


async def test_a_foreign_origin_is_refused(client, bob):
    communicator, connected, _ = await connect(
        await database_sync_to_async(session_cookie)(client, bob), origin="https://evil.example"
    )
    assert not connected


async def test_team_agents_hear_of_their_conversations_and_outsiders_do_not(
    client, bob, charlie, chat_inbox
):
    bob_socket, ok, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    assert ok
    charlie_socket, ok, _ = await connect(
        await database_sync_to_async(session_cookie)(client, charlie)
    )
    assert ok

    received = await database_sync_to_async(receive)(chat_inbox, "Hello?")

    event = await bob_socket.receive_json_from(timeout=5)
    assert event["type"] == "conversation"
    assert event["event"] == "created"
    assert event["conversation"] == received.message.conversation_id
    assert event["message"] == received.message.pk
    assert await charlie_socket.receive_nothing(timeout=0.2)
    await bob_socket.disconnect()
    await charlie_socket.disconnect()


async def test_subscribing_needs_permission_to_see_the_conversation(
    client, bob, charlie, chat_inbox
):
    conversation = (await database_sync_to_async(receive)(chat_inbox)).message.conversation
    charlie_socket, _, _ = await connect(
        await database_sync_to_async(session_cookie)(client, charlie)
    )
    await charlie_socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    assert await charlie_socket.receive_json_from(timeout=5) == {
        "type": "error",
        "error": "No such conversation.",
    }

    # Once assigned to charlie, he may follow it, and hears of changes to it.
    await database_sync_to_async(services.conversation_assign)(
        conversation=conversation, assignee=charlie, actor=bob
    )
    assert (await charlie_socket.receive_json_from(timeout=5))["event"] == "assigned"
    await charlie_socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    answer = await charlie_socket.receive_json_from(timeout=5)
    if answer["type"] == "notification":  # "Bob assigned #n to you" may come first
        answer = await charlie_socket.receive_json_from(timeout=5)
    assert answer == {"type": "subscribed", "conversation": conversation.pk}
    await charlie_socket.disconnect()


async def test_unknown_actions_get_an_error(client, bob):
    socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    await socket.send_json_to({"action": "drop_tables"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "error"
    await socket.disconnect()


async def next_change(socket) -> dict:
    """The next conversation event, past notifications that may come between."""
    while (event := await socket.receive_json_from(timeout=5))["type"] != "conversation":
        pass
    return event


async def test_a_change_made_again_is_heard_again_and_each_change_once(
    client, bob, dana, chat_inbox
):
    """Dana follows the conversation on its page (its group and her team's): each change
    once, and High after Normal after High three times, not the second High taken for a copy."""
    conversation = (await database_sync_to_async(receive)(chat_inbox)).message.conversation
    socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, dana))
    await socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    assert (await socket.receive_json_from(timeout=5))["type"] == "subscribed"

    for priority in (3, 2, 3):
        await database_sync_to_async(services.conversation_set_priority)(
            conversation=conversation, priority=priority, actor=bob
        )
        await database_sync_to_async(services.conversation_tag)(
            conversation=conversation,
            add=["vip"] if priority == 3 else [],
            remove=["vip"] if priority == 2 else [],
            actor=bob,
        )
    heard = [await next_change(socket) for _ in range(6)]
    assert [(e["event"], e.get("priority")) for e in heard] == [
        ("priority", 3),
        ("tags", None),
        ("priority", 2),
        ("tags", None),
        ("priority", 3),
        ("tags", None),
    ]
    assert await socket.receive_nothing(timeout=0.2)
    await socket.disconnect()


async def test_the_team_a_conversation_leaves_hears_it_go(
    client, alice, bob, support, billing_inbox
):
    """Billing's conversation goes to Support, then back: Bob's list (Support) took it in and
    must drop it again."""
    conversation = (await database_sync_to_async(receive)(billing_inbox)).message.conversation
    socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    for team in (support, billing_inbox.default_team):
        await database_sync_to_async(services.conversation_set_team)(
            conversation=conversation, team=team, actor=alice
        )
    came, went = await next_change(socket), await next_change(socket)
    assert (came["event"], came["team"]) == ("team", support.pk)
    assert (went["event"], went["previous"]) == ("team", support.pk)
    await socket.disconnect()


async def test_a_deactivated_or_signed_out_agent_hears_no_more(client, bob, dana, chat_inbox):
    conversation = (await database_sync_to_async(receive)(chat_inbox)).message.conversation
    bob_socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    await database_sync_to_async(type(bob).objects.filter(pk=bob.pk).update)(is_active=False)
    await bob_socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    assert (await bob_socket.receive_output(timeout=5))["code"] == 4401

    await database_sync_to_async(client.force_login)(dana)
    dana_socket, _, _ = await connect(client.cookies["sessionid"].value)
    await database_sync_to_async(client.logout)()  # signed out in another tab
    await dana_socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    assert (await dana_socket.receive_output(timeout=5))["code"] == 4401


async def after_admin_hears_a_message(client, admin, inbox, address):
    """A customer writes again; returns once an admin's socket has the event, so that by
    then every socket that hears it has it too (one publish reaches all groups at once)."""
    admin_socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, admin))
    received = await database_sync_to_async(receive)(inbox, "Still there?", address=address)
    while (await next_change(admin_socket)).get("message") != received.message.pk:
        pass
    await admin_socket.disconnect()


async def test_an_agent_moved_out_of_a_team_stops_hearing_it(
    client, alice, bob, support, chat_inbox
):
    from routing.models import TeamMembership

    bob_socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    first = (await database_sync_to_async(receive)(chat_inbox, address="v1")).message
    assert (await next_change(bob_socket))["conversation"] == first.conversation_id
    await bob_socket.send_json_to({"action": "subscribe", "conversation": first.conversation_id})
    while (await bob_socket.receive_json_from(timeout=5))["type"] != "subscribed":
        pass

    await database_sync_to_async(TeamMembership.objects.filter(user=bob).delete)()
    second = (await database_sync_to_async(receive)(chat_inbox, address="v2")).message
    # The socket learns who Bob is now when it next asks for something (or pings).
    await bob_socket.send_json_to({"action": "subscribe", "conversation": second.conversation_id})
    replies = []
    while (reply := await bob_socket.receive_json_from(timeout=5))["type"] != "error":
        replies.append(reply)
    assert reply["error"] == "No such conversation."
    # What the team was told of the second conversation before Bob's socket left the team's
    # group may still be on its way (ids only: the list asks the server anew). Nothing of
    # the first one.
    while not await bob_socket.receive_nothing(timeout=0.3):
        replies.append(await bob_socket.receive_json_from())
    assert first.conversation_id not in {r.get("conversation") for r in replies}
    await after_admin_hears_a_message(client, alice, chat_inbox, address="v1")
    assert await bob_socket.receive_nothing(timeout=0.1)
    await bob_socket.disconnect()


async def test_an_agent_who_loses_sight_of_an_open_conversation_stops_hearing_it(
    client, alice, bob, billing, chat_inbox
):
    # Bob's teams stay the same; an admin hands the inbox to Billing, and the conversation
    # Billing took from it is no longer Bob's to read.
    bob_socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    first = (await database_sync_to_async(receive)(chat_inbox, address="v1")).message
    await database_sync_to_async(services.conversation_set_team)(
        conversation=first.conversation, team=billing
    )
    await bob_socket.send_json_to({"action": "subscribe", "conversation": first.conversation_id})
    while (await bob_socket.receive_json_from(timeout=5))["type"] != "subscribed":
        pass

    chat_inbox.default_team = billing
    await database_sync_to_async(chat_inbox.save)()
    # His page still says it has the conversation on screen: no error, it is left.
    await bob_socket.send_json_to({"action": "read", "conversation": first.conversation_id})
    await bob_socket.send_json_to(
        {"action": "read", "conversation": first.conversation_id, "message": 0}
    )
    # The socket checks what Bob may see when he next asks for something (or pings).
    await bob_socket.send_json_to({"action": "subscribe", "conversation": first.conversation_id})
    while (reply := await bob_socket.receive_json_from(timeout=5))["type"] != "error":
        pass
    assert reply["error"] == "No such conversation."
    while not await bob_socket.receive_nothing(timeout=0.3):
        await bob_socket.receive_json_from()
    await after_admin_hears_a_message(client, alice, chat_inbox, address="v1")
    assert await bob_socket.receive_nothing(timeout=0.1)
    await bob_socket.disconnect()


async def test_the_conversation_on_screen_is_read_with_what_it_notified(client, dana, chat_inbox):
    first = await database_sync_to_async(receive)(chat_inbox, text="Hello")
    conversation = first.message.conversation
    await database_sync_to_async(services.conversation_assign)(
        conversation=conversation, assignee=dana
    )
    unread = Notification.objects.filter(recipient=dana, read_at__isnull=True)
    assert await database_sync_to_async(unread.count)() == 1  # "assigned to you"

    socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, dana))
    await socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    # No customer message on screen yet (0): what she was notified of is read all the same.
    await socket.send_json_to({"action": "read", "conversation": conversation.pk, "message": 0})
    await socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    while (await socket.receive_json_from(timeout=5)).get("type") != "subscribed":
        pass
    while (await socket.receive_json_from(timeout=5)).get("type") != "subscribed":
        pass  # frames are handled in order: the read is done
    assert await database_sync_to_async(unread.count)() == 0
    await socket.disconnect()


def test_a_send_from_a_worker_thread_wakes_the_servers_socket_at_once():
    """Embedded mode (no Redis): the in-process layer's queues are the server's event loop's.
    A send from the worker's thread, made on a loop of its own, was seen only once the server
    loop woke for something else: a customer's email showed on a quiet inbox page seconds,
    or a minute, late."""
    import asyncio
    import threading

    from asgiref.sync import async_to_sync
    from channels.layers import InMemoryChannelLayer, get_channel_layer

    from conversations import realtime

    layer, loop = get_channel_layer(), asyncio.new_event_loop()
    if not isinstance(layer, InMemoryChannelLayer):
        pytest.skip("with Redis every process sends through its own publisher loop")
    subscribed, woken = threading.Event(), threading.Event()
    channel = async_to_sync(layer.new_channel)()

    async def socket():  # an agent's socket in their team's group, waiting
        await layer.group_add("team-7", channel)
        subscribed.set()
        await layer.receive(channel)
        woken.set()

    server = threading.Thread(target=loop.run_forever, daemon=True)
    realtime.serving_loop = loop
    try:
        server.start()
        asyncio.run_coroutine_threadsafe(socket(), loop)
        assert subscribed.wait(timeout=10)
        realtime.send_to_groups(["team-7"], {"type": "conversation.event"})  # the worker's
        # Bounds a hang only: the send wakes the socket at once, or never did before.
        assert woken.wait(timeout=10), "the socket was not woken"
    finally:
        realtime.serving_loop = None
        asyncio.run_coroutine_threadsafe(layer.group_discard("team-7", channel), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        server.join(timeout=10)
        loop.close()


def receive_while_redis_is_down(settings, inbox, text):
    """A customer message stored while the channel layer's Redis refuses connections: its
    event is never sent. Sockets already open keep their layer (and stay open)."""
    return while_redis_is_down(settings, lambda: receive(inbox, text))


def while_redis_is_down(settings, change):
    """`change()` made while the channel layer's Redis refuses connections: its events are
    never sent. Sockets already open keep their layer (and stay open)."""
    from channels.layers import channel_layers

    working = settings.CHANNEL_LAYERS
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:9/0"]},  # loopback port 9 refuses
        }
    }
    channel_layers.backends.clear()
    try:
        return change()
    finally:
        settings.CHANNEL_LAYERS = working
        channel_layers.backends.clear()


async def test_an_open_conversation_catches_up_on_a_message_whose_event_was_lost(
    client, bob, chat_inbox, settings
):
    first = (await database_sync_to_async(receive)(chat_inbox, "Hello?")).message
    bob_socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    conversation = first.conversation_id
    await bob_socket.send_json_to({"action": "subscribe", "conversation": conversation})
    while (await bob_socket.receive_json_from(timeout=5))["type"] != "subscribed":
        pass

    lost = (
        await database_sync_to_async(receive_while_redis_is_down)(
            settings, chat_inbox, "Are you there?"
        )
    ).message
    assert await bob_socket.receive_nothing(timeout=0.3)

    # The page's next ping names the newest message it shows: the socket says what it lacks.
    await bob_socket.send_json_to(
        {"action": "ping", "conversation": conversation, "seen": first.pk}
    )
    assert await next_change(bob_socket) == {
        "type": "conversation",
        "event": "message",
        "conversation": conversation,
        "message": lost.pk,
    }
    await bob_socket.send_json_to({"action": "ping", "conversation": conversation, "seen": lost.pk})
    assert await bob_socket.receive_nothing(timeout=0.3)
    await bob_socket.disconnect()


async def test_a_list_catches_up_on_a_change_whose_event_was_lost(
    client, bob, charlie, chat_inbox, settings
):
    """The list pings with the newest message and event it knew of: a change made since to a
    conversation the agent may see is told (the list fetches itself again); one the agent may
    not see is not."""
    from tests.conftest import person

    conversation = (
        await database_sync_to_async(receive)(chat_inbox, "Hello?")
    ).message.conversation
    seen = await database_sync_to_async(list_seen)()
    bob_socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    charlie_socket, _, _ = await connect(
        await database_sync_to_async(session_cookie)(client, charlie)
    )

    def resolve_while_redis_is_down():
        erin = person("Erin")  # another admin, in another server process
        while_redis_is_down(
            settings,
            lambda: services.conversation_set_status(
                conversation=conversation, status="resolved", actor=erin
            ),
        )

    await database_sync_to_async(resolve_while_redis_is_down)()
    assert await bob_socket.receive_nothing(timeout=0.3)

    await bob_socket.send_json_to({"action": "ping", "conversation": None, "list": seen})
    assert await next_change(bob_socket) == {
        "type": "conversation",
        "event": "changed",
        "conversation": None,
    }
    # Once the list has fetched itself, it knows the newest: nothing more to tell.
    now = await database_sync_to_async(list_seen)()
    await bob_socket.send_json_to({"action": "ping", "conversation": None, "list": now})
    assert await bob_socket.receive_nothing(timeout=0.3)
    # Charlie's team cannot see it: his list is not told.
    await charlie_socket.send_json_to({"action": "ping", "conversation": None, "list": seen})
    assert await charlie_socket.receive_nothing(timeout=0.3)
    await bob_socket.disconnect()
    await charlie_socket.disconnect()


def list_seen() -> list[int]:
    from conversations.views import _list_seen

    return _list_seen()


async def test_a_customers_change_reaches_the_agents_who_see_their_conversations(
    client, bob, charlie, chat_inbox
):
    """Edited, blocked or given an address: the open conversation pages and the lists of
    those who may see the customer's conversations hear it; an outsider does not."""
    conversation = (await database_sync_to_async(receive)(chat_inbox, "Hi")).message.conversation
    bob_socket, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    await bob_socket.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    while (await bob_socket.receive_json_from(timeout=5))["type"] != "subscribed":
        pass
    charlie_socket, _, _ = await connect(
        await database_sync_to_async(session_cookie)(client, charlie)
    )
    customer = conversation.customer

    changes = (
        lambda: services.customer_update(customer=customer, data={"name": "Jo Lee"}, actor=bob),
        lambda: services.customer_block(customer=customer, actor=bob),
        lambda: services.identity_add(
            customer=customer, kind="email", address="jo@example.com", actor=bob
        ),
    )
    for change in changes:
        await database_sync_to_async(change)()
        heard = [await next_change(bob_socket), await next_change(bob_socket)]
        # Its page, and the list (once, whatever the customer's conversations).
        assert {(e["event"], e["conversation"]) for e in heard} == {
            ("customer", conversation.pk),
            ("customer", None),
        }
    assert await charlie_socket.receive_nothing(timeout=0.3)
    await bob_socket.disconnect()
    await charlie_socket.disconnect()
