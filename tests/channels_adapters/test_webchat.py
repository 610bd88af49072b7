"""The chat widget's server side: sessions and identity, the visitor's socket rules, and the
email that follows a visitor who left."""

import importlib
import json
import re
import shutil
import subprocess
import threading
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.apps import apps as django_apps
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from channels_adapters.delivery import message_deliver
from channels_adapters.webchat import adapter as webchat
from channels_adapters.webchat import chat
from conversations import services
from conversations.models import (
    Channel,
    Conversation,
    ConversationEvent,
    Identity,
    Inbox,
    Message,
    Visitor,
)
from helpdesk.asgi import application
from tests.channels_adapters.test_email import customer_mail, pipe, reply_to
from tests.conftest import free_port, receive, wait_for

SITE = "https://shop.example"


@pytest.fixture
def widget(chat_inbox):
    chat_inbox.settings = {"allowed_origins": [SITE], "email_after_minutes": 5}
    chat_inbox.save()
    return chat_inbox


def start(client, inbox, origin=SITE, **body):
    return client.post(
        f"/widget/{inbox.widget_key}/session",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_ORIGIN=origin,
    )


def new_visitor(inbox, **kwargs) -> Visitor:
    return chat.visitor_session(inbox=inbox, **kwargs)


async def visitor_socket(inbox, token=None, origin=SITE, after=0, hello=True):
    communicator = WebsocketCommunicator(
        application,
        f"/ws/widget/{inbox.widget_key}/",
        headers=[(b"origin", origin.encode()), (b"host", b"help.example")],
    )
    connected, code = await communicator.connect()
    if connected and hello:
        await communicator.send_json_to({"action": "hello", "token": token, "after": after})
    return communicator, connected, code


# --- Sessions and identity -------------------------------------------------------------------


def test_a_visitor_gets_a_token_and_keeps_their_identity_with_it(client, widget):
    first = start(client, widget, language="pt-BR")
    assert first.status_code == 200
    assert first["Access-Control-Allow-Origin"] == SITE
    data = first.json()
    assert data["strings"]["send"] == "Enviar"  # in the visitor's language
    assert data["language"] == "pt"  # the widget writes dates in it too
    again = start(client, widget, token=data["token"]).json()
    assert chat.visitor_from_token(widget, again["token"]) == chat.visitor_from_token(
        widget, data["token"]
    )
    assert Visitor.objects.count() == 1
    assert Visitor.objects.get().identity.customer.language == "pt-BR"


def test_the_greeting_is_in_the_visitors_language_where_the_inbox_has_one(client, widget):
    def greeting(language):
        return start(client, widget, language=language).json()["settings"]["greeting"]

    assert greeting("es-MX") == "¡Hola! ¿En qué podemos ayudarte?"  # our default, translated
    widget.settings |= {
        "greeting": "Hi! Ask us about your order.",
        "greetings": {"es": "¡Hola! Pregúntanos por tu pedido.", "pt-BR": "Oi!", "pt": "Olá!"},
    }
    widget.save()
    assert greeting("es-MX") == "¡Hola! Pregúntanos por tu pedido."
    assert greeting("pt-BR") == "Oi!"
    assert greeting("pt-PT") == "Olá!"
    assert greeting("de-DE") == "Hi! Ask us about your order."  # none in German: the inbox's own
    # Only a Brazilian one: a visitor from Portugal reads it rather than the English one.
    widget.settings["greetings"] = {"pt-BR": "Oi!"}
    widget.save()
    assert greeting("pt-PT") == greeting("pt") == "Oi!"


def test_nul_characters_from_a_visitor_are_dropped(client, widget):
    # PostgreSQL refuses NUL in text: the session answered 500 and the line never arrived.
    data = start(client, widget, user={"name": "Eve\x00"}, page="https://shop.example/\x00")
    assert data.status_code == 200
    visitor = chat.visitor_from_token(widget, data.json()["token"])
    assert (visitor.identity.customer.name, visitor.page_url) == ("Eve", "https://shop.example/")
    chat.visitor_message(visitor, text="hi\x00 there", client_id="c1")
    assert Message.objects.get().text == "hi there"


def test_what_reorders_text_on_screen_is_dropped_from_a_visitors_name_and_files(client, widget):
    data = start(client, widget, user={"name": "Maria \u202enimda"})
    visitor = chat.visitor_from_token(widget, data.json()["token"])
    assert visitor.identity.customer.name == "Maria nimda"
    photo = services.InboundAttachment("invoice\u202efdp.png", "image/png", PNG)
    chat.visitor_message(visitor, text="see", client_id="c1", attachments=(photo,))
    assert Message.objects.get().attachments.get().filename == "invoicefdp.png"


def test_mail_from_an_address_a_visitor_typed_is_flagged_until_it_answers_our_mail(
    widget, email_inbox, bob, smtp_server
):
    # Anyone can type anyone's address in the widget: the owner's first mail then joined the
    # visitor's profile, and agents answered it with the chat's history in view, unwarned.
    visitor = chat.visitor_contact(new_visitor(widget), email="owner@example.org")
    talk = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    # The chat's reply token proves nothing of the address: anyone given a transcript has it.
    token = f"support+{talk.reply_token}@acme.example"
    pipe(email_inbox, customer_mail(frm="owner@example.org", to=token, body="Forged"))
    assert talk.messages.filter(text="Forged").exists()
    pipe(email_inbox, customer_mail(frm="owner@example.org", subject="My order"))
    fresh = Conversation.objects.exclude(pk=talk.pk).get()
    assert fresh.flag_reason.startswith(
        "owner@example.org was typed into the web chat and never confirmed: this mail may"
    )
    # An answer to a mail we sent to that very address shows its sender reads it: no flag
    # from then on.
    message_deliver(services.reply_send(conversation=fresh, author=bob, text="Which one?").pk)
    [sent] = smtp_server.messages()
    pipe(email_inbox, reply_to(sent, frm="owner@example.org"))
    assert Identity.objects.get(address="owner@example.org").verified
    pipe(email_inbox, customer_mail(frm="owner@example.org", subject="Another question"))
    latest = Conversation.objects.latest("id")
    assert (latest.subject, latest.flag_reason) == ("Another question", "")


def test_a_visitor_may_correct_their_email_but_not_collect_addresses(widget):
    visitor = new_visitor(widget)
    for n in range(3):
        visitor = chat.visitor_contact(visitor, email=f"me{n}@example.org")
    with pytest.raises(services.ValidationError, match="enough email addresses for one chat"):
        chat.visitor_contact(visitor, email="someone@example.org")
    assert chat.visitor_contact(visitor, email="me0@example.org").email == "me0@example.org"
    assert not Identity.objects.filter(address="someone@example.org").exists()


@pytest.mark.parametrize("language", ["pt", "fr", "es"])
def test_every_widget_string_ships_translated(language):
    from django.utils import translation

    from channels_adapters.webchat.views import _strings

    english = _strings()
    with translation.override(language):
        translated = _strings()
    untranslated = [key for key in english if translated[key] == english[key]]
    assert untranslated == []


def test_a_forged_or_foreign_token_gets_a_new_visitor(client, widget, chat_inbox):
    token = start(client, widget).json()["token"]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    start(client, widget, token=forged)
    other = services.Inbox.objects.create(
        name="Other site", kind=Channel.WEBCHAT, settings={"allowed_origins": [SITE]}
    )
    start(client, other, token=token)
    assert Visitor.objects.count() == 3  # neither was taken for the first visitor


def test_pages_on_sites_the_inbox_does_not_allow_are_refused(client, widget):
    response = start(client, widget, origin="https://evil.example")
    assert response.status_code == 403
    # Readable by the page, so that whoever embedded it there sees why in the console.
    assert response["Access-Control-Allow-Origin"] == "https://evil.example"
    assert response.json()["error"] == (
        "This site (https://evil.example) may not use this chat widget: an admin adds it to "
        "the inbox's allowed websites."
    )
    assert start(client, widget, origin="").status_code == 403
    assert Visitor.objects.count() == 0
    # Our own pages (the demo) always may.
    assert start(client, widget, origin="http://testserver").status_code == 200


def test_subdomain_patterns_match_subdomains_only(widget):
    widget.settings = {"allowed_origins": ["https://*.example.org"]}
    assert chat.origin_allowed(widget, "https://www.example.org", "help.example")
    assert not chat.origin_allowed(widget, "https://example.org.evil.net", "help.example")
    assert not chat.origin_allowed(widget, "http://www.example.org", "help.example")


def test_a_signed_user_id_links_the_visitor_to_that_customers_history(client, widget):
    earlier = receive(
        widget.__class__.objects.create(name="Mail", kind=Channel.EMAIL),
        "My order is late",
        address="ana@example.com",
        channel=Channel.EMAIL,
    )
    anonymous = start(client, widget).json()["token"]
    visitor = chat.visitor_from_token(widget, anonymous)
    chat.visitor_message(visitor, text="Hi, it's Ana again", client_id="c1")

    signed = {"id": "ana@example.com", "hash": chat.user_hash(widget, "ana@example.com")}
    data = start(client, widget, token=anonymous, user=signed).json()
    visitor = chat.visitor_from_token(widget, data["token"])
    ana = earlier.message.conversation.customer
    assert visitor.identified
    assert visitor.identity.customer == ana
    # What the visitor wrote before signing in went with them.
    assert Conversation.objects.filter(customer=ana).count() == 2

    # Another device: a new browser, the same signed user, the same history.
    other = chat.visitor_from_token(widget, start(client, widget, user=signed).json()["token"])
    assert other.identity.customer == ana
    assert chat.visitor_conversation(other) == chat.visitor_conversation(visitor)


def test_an_address_a_stranger_typed_first_does_not_open_the_users_chat_to_them(client, widget):
    # A stranger types Ana's address into their own chat before Ana ever wrote to us...
    stranger = chat.visitor_from_token(widget, start(client, widget).json()["token"])
    chat.visitor_message(stranger, text="Hello?", client_id="s1")
    stranger = chat.visitor_contact(stranger, email="ana@example.com")
    # ...then Ana signs in on the site, which vouches for her address, and chats.
    signed = {"id": "ana@example.com", "hash": chat.user_hash(widget, "ana@example.com")}
    ana = chat.visitor_from_token(widget, start(client, widget, user=signed).json()["token"])
    chat.visitor_message(ana, text="My reset code is 991234", client_id="a1")

    ana = chat.visitor_reload(ana)
    assert ana.identified and ana.identity.customer != stranger.identity.customer
    assert ana.identity.customer.identities.get(kind=Channel.EMAIL).address == "ana@example.com"
    # The stranger's browser shows the stranger's chat, and nothing of Ana's.
    shown = chat.visitor_conversation(chat.visitor_reload(stranger))
    assert [m.text for m in chat.visible_messages(shown)] == ["Hello?"]
    assert chat.visitor_email(chat.visitor_reload(stranger)) is None  # no replies go to Ana


def test_a_signed_in_users_chat_does_not_go_on_in_a_mail_forged_in_their_name(
    client, widget, email_inbox
):
    forged = (
        b"Authentication-Results: mx.acme.example; dmarc=fail header.from=example.com\r\n"
        + customer_mail(frm="ana@example.com", subject="Send my invoices here")
    )
    pipe(email_inbox, forged)
    signed = {"id": "ana@example.com", "hash": chat.user_hash(widget, "ana@example.com")}
    ana = chat.visitor_from_token(widget, start(client, widget, user=signed).json()["token"])
    assert chat.visitor_conversation(ana) is None  # not shown to her as her own
    mine = chat.visitor_message(ana, text="Hi, a question", client_id="a1").message
    assert mine.conversation.inbox == widget  # her chat opens one of its own


def test_a_link_from_our_mail_continues_the_chat_on_another_device_for_a_month(
    client, widget, settings
):
    settings.PUBLIC_URL = "https://help.acme.example"
    visitor = chat.visitor_from_token(widget, start(client, widget).json()["token"])
    chat.visitor_message(visitor, text="Is the kettle in stock?", client_id="c1")
    link = chat.resume_link(visitor)
    page, _, resume = link.partition("#threadline-chat=")
    assert page == f"https://help.acme.example/widget/{widget.widget_key}/"
    assert client.get(page.removeprefix("https://help.acme.example")).status_code == 200

    phone = start(client, widget, resume=resume).json()["token"]  # no token of its own
    assert chat.visitor_from_token(widget, phone) == visitor
    # A browser with a chat of its own keeps it: a link someone else sent does not replace it.
    mine = chat.visitor_from_token(widget, start(client, widget).json()["token"])
    chat.visitor_message(mine, text="My own question", client_id="m1")
    kept = start(client, widget, token=chat.visitor_token(mine), resume=resume).json()["token"]
    assert chat.visitor_from_token(widget, kept) == mine
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        later = start(client, widget, resume=resume).json()["token"]
        assert chat.visitor_from_token(widget, later) != visitor
    shop_b = Inbox.objects.create(
        name="Shop B", kind=Channel.WEBCHAT, settings={"allowed_origins": [SITE]}
    )
    elsewhere = start(client, shop_b, resume=resume).json()["token"]
    assert chat.visitor_from_token(shop_b, elsewhere).identity != visitor.identity
    # A user the site signs in is brought back by the site, not by a link in a mail.
    signed = {"id": "42", "hash": chat.user_hash(widget, "42")}
    user = chat.visitor_from_token(widget, start(client, widget, user=signed).json()["token"])
    assert chat.resume_link(user) == ""


def test_a_bad_user_hash_is_refused_and_changes_nothing(client, widget):
    response = start(client, widget, user={"id": "ana@example.com", "hash": "0" * 64})
    assert response.status_code == 403
    assert response.json()["error"] == "The user identity could not be verified."
    assert Visitor.objects.count() == 0


def test_a_sites_user_ids_are_its_own(client, widget):
    """User 42 of one site we serve is not user 42 of another: the second site's user was
    shown the first one's chats, and could write in them."""
    shop_b = Inbox.objects.create(
        name="Shop B", kind=Channel.WEBCHAT, settings={"allowed_origins": [SITE]}
    )

    def user_42(inbox):
        signed = {"id": "42", "hash": chat.user_hash(inbox, "42")}
        return chat.visitor_from_token(inbox, start(client, inbox, user=signed).json()["token"])

    ana = user_42(widget)
    chat.visitor_message(ana, text="My card ends 4242", client_id="a")
    bruno = user_42(shop_b)
    assert bruno.identity.customer != ana.identity.customer
    assert chat.visitor_conversation(bruno) is None
    assert chat.visitor_conversation(user_42(widget)).customer == ana.identity.customer


def test_a_sites_user_linked_before_ids_were_per_site_keeps_their_history(client, widget):
    """And only on the site that signed them in first: shop B's user 42, whom the old ids
    took for the same person, must stop reading Ana's chats."""
    migration = importlib.import_module("conversations.migrations.0029_site_users_per_inbox")
    shop_b = Inbox.objects.create(
        name="Shop B", kind=Channel.WEBCHAT, settings={"allowed_origins": [SITE]}
    )
    ana = new_visitor(widget)
    chat.visitor_message(ana, text="Before the upgrade", client_id="a")
    Identity.objects.create(customer=ana.identity.customer, kind=Channel.WEBCHAT, address="user:42")
    bruno = new_visitor(shop_b)
    # As the old ids linked them: Bruno's visitor joined Ana's customer when shop B said 42.
    Identity.objects.filter(pk=bruno.identity_id).update(customer=ana.identity.customer)
    Visitor.objects.filter(pk__in=[ana.pk, bruno.pk]).update(identified=True)

    migration.scope_site_users(django_apps, None)

    def user_42(inbox):
        signed = {"id": "42", "hash": chat.user_hash(inbox, "42")}
        return chat.visitor_from_token(inbox, start(client, inbox, user=signed).json()["token"])

    back = user_42(widget)
    assert back.identity.customer == ana.identity.customer
    assert [m.text for m in chat.visible_messages(chat.visitor_conversation(back))] == [
        "Before the upgrade"
    ]
    assert user_42(shop_b).identity.customer != ana.identity.customer


def test_after_the_user_logs_out_the_browser_no_longer_shows_their_history(client, widget):
    signed = {"id": "42", "hash": chat.user_hash(widget, "42")}
    token = start(client, widget, user=signed).json()["token"]
    chat.visitor_message(chat.visitor_from_token(widget, token), text="Private", client_id="c1")
    # The site's page no longer passes the user: a fresh, anonymous visitor.
    fresh = chat.visitor_from_token(widget, start(client, widget, token=token).json()["token"])
    assert not fresh.identified
    assert chat.visitor_conversation(fresh) is None


def test_an_email_that_is_someone_elses_is_not_linked(client, widget, bob):
    owner = receive(widget, "Hello", address="owner@example.com", channel=Channel.EMAIL)
    visitor = new_visitor(widget)
    chat.visitor_message(visitor, text="Hi", client_id="c1")
    visitor = chat.visitor_contact(visitor, email="owner@example.com")
    assert visitor.email == "owner@example.com"
    assert visitor.identity.customer != owner.message.conversation.customer
    assert chat.visitor_email(visitor) is None  # nothing is emailed there
    assert "another customer" in chat.visitor_conversation(visitor).flag_reason
    assert len(chat.visible_messages(chat.visitor_conversation(visitor))) == 1
    assert chat.email_pending(visitor)  # the widget says an agent checks it first
    # The owner's own next mail is theirs: a stranger typing it flags nothing of theirs.
    again = receive(
        widget,
        "More",
        address="owner@example.com",
        channel=Channel.EMAIL,
        force_new_conversation=True,
    )
    assert again.message.conversation.flag_reason == ""
    # The agent's page leads to the other profile, to merge once they know it is one person.
    client.force_login(bob)
    conversation = chat.visitor_conversation(visitor)
    page = client.get(f"/inbox/{conversation.pk}/").content.decode()
    link = f"/inbox/customers/{conversation.customer_id}/merge?q=owner%40example.com"
    assert f'<a href="{link}#merge">Find the profile with owner@example.com to merge</a>' in page
    owner_id = owner.message.conversation.customer_id
    assert f'<li data-candidate="{owner_id}">' in client.get(link).content.decode()


def test_an_email_of_someone_elses_given_before_the_first_message_flags_the_chat(client, widget):
    receive(widget, "Hello", address="carla@example.com", channel=Channel.EMAIL)
    # On another device, the pre-chat form comes before any conversation exists.
    visitor = chat.visitor_contact(new_visitor(widget), email="carla@example.com")
    conversation = chat.visitor_message(visitor, text="Hi again", client_id="c1").message
    assert "carla@example.com, the address of another customer" in (
        conversation.conversation.flag_reason
    )
    token = chat.visitor_token(visitor)
    shown = start(client, widget, token=token).json()["visitor"]
    assert (shown["email"], shown["email_pending"]) == ("carla@example.com", True)
    mine = chat.visitor_contact(new_visitor(widget), email="new@example.com")
    assert not chat.email_pending(mine)


def test_a_required_email_is_asked_for_before_the_first_message(widget):
    widget.settings = {**widget.settings, "prechat_email": "required"}
    widget.save()
    visitor = new_visitor(widget)
    with pytest.raises(services.ValidationError, match="email address first"):
        chat.visitor_message(visitor, text="Hi", client_id="c1")
    visitor = chat.visitor_contact(visitor, email="Ana@Example.com")
    assert chat.visitor_message(visitor, text="Hi", client_id="c1").created
    assert chat.visitor_email(visitor).address == "ana@example.com"


# --- The socket ------------------------------------------------------------------------------

pytestmark_socket = pytest.mark.django_db(transaction=True)


@pytestmark_socket
async def test_the_socket_refuses_foreign_origins_and_missing_or_forged_tokens(widget):
    _, connected, code = await visitor_socket(widget, origin="https://evil.example", hello=False)
    assert (connected, code) == (False, 4403)

    socket, connected, _ = await visitor_socket(widget, token="forged")
    assert connected
    assert (await socket.receive_output(timeout=5))["code"] == 4401

    socket, _, _ = await visitor_socket(widget, hello=False)
    await socket.send_json_to({"action": "message", "client_id": "c1", "text": "hi"})
    assert (await socket.receive_output(timeout=5))["code"] == 4401
    assert await database_sync_to_async(Message.objects.count)() == 0


@pytestmark_socket
async def test_a_signed_in_users_old_token_no_longer_opens_their_history(widget):
    def signed_in(at, client_id):
        with time_machine.travel(at, tick=False):
            visitor = chat.visitor_session(
                inbox=widget, user_id="42", user_hash_given=chat.user_hash(widget, "42")
            )
            chat.visitor_message(visitor, text="Private", client_id=client_id)
            return chat.visitor_token(visitor)

    now = timezone.now()
    # A token from this morning's page still opens the chat...
    fresh = await database_sync_to_async(signed_in)(now - timedelta(hours=2), "c1")
    socket, _, _ = await visitor_socket(widget, fresh)
    assert [m["text"] for m in (await socket.receive_json_from(timeout=5))["messages"]]
    await socket.disconnect()
    # ...one from two days ago (copied from a shared computer, say) does not,
    stale = await database_sync_to_async(signed_in)(now - timedelta(days=2), "c2")
    socket, _, _ = await visitor_socket(widget, stale)
    assert (await socket.receive_output(timeout=5))["code"] == 4401
    # ...and once the user signed out in that browser, neither does the fresh one.
    await database_sync_to_async(chat.visitor_session)(inbox=widget, token=fresh)
    socket, _, _ = await visitor_socket(widget, fresh)
    assert (await socket.receive_output(timeout=5))["code"] == 4401


@pytestmark_socket
async def test_a_widget_open_elsewhere_starts_over_when_its_link_is_opened(widget, settings):
    settings.PUBLIC_URL = "https://help.acme.example"

    def typed():
        visitor = chat.visitor_contact(new_visitor(widget), email="ana@example.com")
        chat.visitor_message(visitor, text="Where is my parcel?", client_id="a")
        return chat.visitor_token(visitor), chat.resume_link(visitor).partition("=")[2]

    token, resume = await database_sync_to_async(typed)()
    first, _, _ = await visitor_socket(widget, token)
    assert (await first.receive_json_from(timeout=5))["type"] == "ready"
    # The link opened in another browser: the first one's socket closes, and its widget
    # starts over as a new visitor (widget.js renews on 4401).
    moved = await database_sync_to_async(chat.visitor_session)(inbox=widget, resume=resume)
    assert (await first.receive_output(timeout=5))["code"] == 4401
    second, _, _ = await visitor_socket(widget, chat.visitor_token(moved))
    ready = await second.receive_json_from(timeout=5)
    assert [m["text"] for m in ready["messages"]] == ["Where is my parcel?"]
    await second.disconnect()


@pytestmark_socket
async def test_a_message_is_stored_once_however_often_it_is_resent(widget):
    visitor = await database_sync_to_async(new_visitor)(widget)
    token = chat.visitor_token(visitor)
    socket, _, _ = await visitor_socket(widget, token)
    ready = await socket.receive_json_from(timeout=5)
    assert ready["type"] == "ready" and ready["conversation"] is None

    await socket.send_json_to({"action": "message", "client_id": "c-1", "text": "Hello?"})
    ack = await socket.receive_json_from(timeout=5)
    assert ack["type"] == "ack"
    shown = await socket.receive_json_from(timeout=5)
    assert shown["type"] == "conversation"
    echoed = await socket.receive_json_from(timeout=5)
    assert echoed["message"]["id"] == ack["message"]
    assert echoed["message"]["text"] == "Hello?"
    # The connection drops before the ack arrives; the widget resends on a new socket.
    await socket.disconnect()
    socket, _, _ = await visitor_socket(widget, token, after=ack["message"])
    assert (await socket.receive_json_from(timeout=5))["messages"] == []
    await socket.send_json_to({"action": "message", "client_id": "c-1", "text": "Hello?"})
    assert (await socket.receive_json_from(timeout=5))["message"] == ack["message"]
    assert await database_sync_to_async(Message.objects.count)() == 1
    await socket.disconnect()


@pytestmark_socket
async def test_a_blocked_visitor_is_told_their_message_was_not_taken(widget):
    def blocked():
        visitor = new_visitor(widget)
        first = chat.visitor_message(visitor, text="spam", client_id="s-1").message
        services.customer_block(customer=first.conversation.customer, actor=None)
        return visitor

    visitor = await database_sync_to_async(blocked)()
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    await socket.receive_json_from(timeout=5)  # ready
    await socket.send_json_to({"action": "message", "client_id": "s-2", "text": "more spam"})
    refused = await socket.receive_json_from(timeout=5)
    assert refused["type"] == "error" and refused["client_id"] == "s-2"
    assert refused["error"] == "This sender is blocked: the message was not taken."
    assert await database_sync_to_async(Message.objects.count)() == 1
    await socket.disconnect()


@pytestmark_socket
async def test_a_waiting_visitor_sees_their_place_in_line_move_and_who_joins(widget, bob, dana):
    from routing.models import TeamMembership

    def queued():  # Dana is online but full; two chats already wait, their visitors there
        dana.availability, dana.last_seen_at = "online", timezone.now()
        dana.save()
        TeamMembership.objects.filter(user=dana).update(max_open=0)
        for n in range(2):
            earlier = new_visitor(widget)
            chat.visitor_message(earlier, text=f"earlier {n}", client_id="x")
            chat.visitor_seen(earlier.pk, opened=1)
        return new_visitor(widget)

    visitor = await database_sync_to_async(queued)()
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    await socket.receive_json_from(timeout=5)  # ready
    await socket.send_json_to({"action": "message", "client_id": "c-1", "text": "Hello?"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "ack"
    shown = await socket.receive_json_from(timeout=5)
    assert shown["conversation"]["queue"] == {"position": 3, "expected_wait_seconds": None}
    await socket.receive_json_from(timeout=5)  # the message itself

    def first_in_line_answered_elsewhere():
        from routing.tasks import queue_assign

        first = Conversation.objects.filter(assignee=None).order_by("created_at", "id").first()
        services.conversation_set_status(conversation=first, status="resolved", actor=bob)
        queue_assign(first.team_id)  # the task that change enqueued, as the worker runs it

    await database_sync_to_async(first_in_line_answered_elsewhere)()
    moved = await socket.receive_json_from(timeout=5)
    assert moved == {
        "type": "queue",
        "conversation": shown["conversation"]["id"],
        "position": 2,
        "expected_wait_seconds": None,
    }

    def bob_takes_it():
        conversation = Conversation.objects.get(pk=shown["conversation"]["id"])
        services.conversation_assign(conversation=conversation, assignee=bob, actor=bob)

    await database_sync_to_async(bob_takes_it)()
    joined = await socket.receive_json_from(timeout=5)
    assert joined == {"type": "joined", "conversation": shown["conversation"]["id"], "agent": "Bob"}
    await socket.disconnect()


@pytestmark_socket
async def test_a_reconnect_catches_up_without_gap_or_duplicate(widget, bob):
    visitor = await database_sync_to_async(new_visitor)(widget)
    token = chat.visitor_token(visitor)
    first = await database_sync_to_async(chat.visitor_message)(visitor, text="1", client_id="a")
    conversation = first.message.conversation

    def agent_writes():
        reply = services.reply_send(conversation=conversation, author=bob, text="2")
        services.note_add(conversation=conversation, author=bob, text="internal: refund?")
        message_deliver(reply.pk)
        return reply

    reply = await database_sync_to_async(agent_writes)()
    # The widget had seen message 1 before it dropped.
    socket, _, _ = await visitor_socket(widget, token, after=first.message.pk)
    ready = await socket.receive_json_from(timeout=5)
    assert [m["text"] for m in ready["messages"]] == ["2"]
    assert ready["messages"][0] == {**ready["messages"][0], "from": "agent", "author": "Bob"}
    assert ready["messages"][0]["id"] == reply.pk
    await socket.disconnect()


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, which it may stop (never the shared one): (URL,
    process)."""
    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:  # blocks until it says it is ready; no timer involved
        if "Ready to accept connections" in line:
            break
    yield f"redis://127.0.0.1:{port}/0", process
    process.terminate()
    process.wait(timeout=30)


@pytestmark_socket
async def test_a_visitor_who_types_while_redis_is_down_goes_on_chatting(
    widget, own_redis, settings
):
    """Typing is only a notification: with Redis down it is lost, and the socket, through
    which the visitor's messages still reach the database, stays (and, once closed, is
    counted closed)."""
    from channels.layers import channel_layers

    url, redis = own_redis
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [url]},
        }
    }
    channel_layers.backends.clear()
    visitor = await database_sync_to_async(new_visitor)(widget)
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    assert (await socket.receive_json_from(timeout=5))["type"] == "ready"
    await socket.send_json_to({"action": "message", "client_id": "a", "text": "Hello"})
    while (await socket.receive_json_from(timeout=5))["type"] != "message":
        pass

    redis.terminate()
    redis.wait(timeout=30)
    await socket.send_json_to({"action": "typing", "typing": True, "draft": "Still"})
    await socket.send_json_to({"action": "message", "client_id": "b", "text": "Still there?"})

    ack = await socket.receive_json_from(timeout=5)
    assert (ack["type"], ack["client_id"]) == ("ack", "b")
    stored = await database_sync_to_async(Message.objects.get)(pk=ack["message"])
    assert stored.text == "Still there?"
    await socket.disconnect()
    # Its groups could not be left, but its closing is recorded: the visitor is not "here".
    await database_sync_to_async(visitor.refresh_from_db)()
    assert visitor.open_sockets == 0


@pytestmark_socket
async def test_agent_replies_and_typing_reach_the_visitor_live_and_notes_never(widget, bob, client):
    from tests.conversations.test_consumers import connect, session_cookie

    visitor = await database_sync_to_async(new_visitor)(widget)
    received = await database_sync_to_async(chat.visitor_message)(visitor, text="Hi", client_id="a")
    conversation = received.message.conversation
    socket, _, _ = await visitor_socket(
        widget, chat.visitor_token(visitor), after=received.message.pk
    )
    await socket.receive_json_from(timeout=5)  # ready

    agent, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    await agent.send_json_to({"action": "subscribe", "conversation": conversation.pk})
    assert (await agent.receive_json_from(timeout=5))["type"] == "subscribed"
    await agent.send_json_to({"action": "typing", "conversation": conversation.pk, "mode": "note"})
    await agent.send_json_to({"action": "typing", "conversation": conversation.pk, "mode": "reply"})
    assert await socket.receive_json_from(timeout=5) == {"type": "typing", "agent": "Bob"}

    def agent_writes():
        services.note_add(conversation=conversation, author=bob, text="internal")
        reply = services.reply_send(conversation=conversation, author=bob, text="Hello Ana")
        message_deliver(reply.pk)

    await database_sync_to_async(agent_writes)()
    joined = await socket.receive_json_from(timeout=5)  # answering an unassigned chat takes it
    assert (joined["type"], joined["agent"]) == ("joined", "Bob")
    live = await socket.receive_json_from(timeout=5)
    assert live["type"] == "message" and live["message"]["text"] == "Hello Ana"
    assert await socket.receive_nothing(timeout=0.3)
    await socket.disconnect()
    await agent.disconnect()


@pytestmark_socket
async def test_agents_see_the_visitors_draft_only_where_the_inbox_allows_it(widget, bob, client):
    from tests.conversations.test_consumers import connect, session_cookie

    visitor = await database_sync_to_async(new_visitor)(widget)
    received = await database_sync_to_async(chat.visitor_message)(visitor, text="Hi", client_id="a")
    conversation_id = received.message.conversation_id
    agent, _, _ = await connect(await database_sync_to_async(session_cookie)(client, bob))
    await agent.send_json_to({"action": "subscribe", "conversation": conversation_id})
    await agent.receive_json_from(timeout=5)

    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    await socket.receive_json_from(timeout=5)
    assert (await agent.receive_json_from(timeout=5))["widget"] == "opened"
    await socket.send_json_to({"action": "typing", "typing": True, "draft": "my card was"})
    typing = await agent.receive_json_from(timeout=5)
    assert typing == {
        "type": "visitor_typing",
        "conversation": conversation_id,
        "typing": True,
        "draft": "",
    }
    await socket.disconnect()

    widget.settings = {**widget.settings, "typing_preview": True}
    await database_sync_to_async(widget.save)()
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    await socket.receive_json_from(timeout=5)
    assert [(await agent.receive_json_from(timeout=5))["widget"] for _ in "12"] == [
        "closed",
        "opened",
    ]
    await socket.send_json_to({"action": "typing", "typing": True, "draft": "my card was"})
    assert (await agent.receive_json_from(timeout=5))["draft"] == "my card was"
    await socket.disconnect()
    await agent.disconnect()


@pytestmark_socket
async def test_a_visitor_reads_only_their_own_conversation(widget):
    mine = await database_sync_to_async(new_visitor)(widget)
    theirs = await database_sync_to_async(new_visitor)(widget)
    await database_sync_to_async(chat.visitor_message)(theirs, text="secret", client_id="a")
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(mine))
    ready = await socket.receive_json_from(timeout=5)
    assert ready["conversation"] is None and ready["messages"] == []
    other = await database_sync_to_async(chat.visitor_conversation)(theirs)
    await socket.send_json_to({"action": "end", "conversation": other.pk})
    assert (await socket.receive_json_from(timeout=5))["error"] == "No such conversation."
    await socket.send_json_to({"action": "rate", "conversation": other.pk, "rating": 1})
    assert (await socket.receive_json_from(timeout=5))["error"] == "No such conversation."
    assert (await database_sync_to_async(Conversation.objects.get)(pk=other.pk)).rating is None
    await socket.disconnect()


@pytestmark_socket
async def test_floods_and_oversized_frames_are_refused(widget, settings):
    visitor = await database_sync_to_async(new_visitor)(widget)
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    await socket.receive_json_from(timeout=5)
    answers = []
    with time_machine.travel(timezone.now(), tick=False):  # fifteen at one instant
        for n in range(15):
            await socket.send_json_to({"action": "message", "client_id": f"c{n}", "text": f"{n}"})
        while len([a for a in answers if a["type"] in ("ack", "error")]) < 15:
            answers.append(await socket.receive_json_from(timeout=5))
        # The other frames that write (a rating here; an email given, a transcript) spend
        # the same allowance: 100 ratings a second made 100 timeline entries.
        chat_id = (await database_sync_to_async(Conversation.objects.get)()).pk
        await socket.send_json_to({"action": "rate", "conversation": chat_id, "rating": 1})
        answer = await socket.receive_json_from(timeout=5)
        while answer["type"] != "error":
            answer = await socket.receive_json_from(timeout=5)
        assert answer == {
            "type": "error",
            "action": "rate",
            "error": "Too many requests; wait a moment.",
        }
        rated = ConversationEvent.objects.filter(kind=ConversationEvent.Kind.RATED)
        assert not await database_sync_to_async(rated.exists)()
    refused = [a for a in answers if a["type"] == "error"]
    assert [a["client_id"] for a in refused] == ["c10", "c11", "c12", "c13", "c14"]
    assert refused[0]["retry"] is True
    assert await database_sync_to_async(Message.objects.count)() == 10

    await socket.send_to(text_data="x" * 70_000)
    assert (await socket.receive_output(timeout=5))["code"] == 1009

    settings.WEBCHAT_CONNECTIONS_PER_MINUTE = 2
    with time_machine.travel(timezone.now(), tick=False):  # all within one minute
        results = [await visitor_socket(widget, hello=False) for _ in range(3)]
    assert [connected for _, connected, _ in results].count(False) >= 1
    assert results[-1][2] == 4429


@pytestmark_socket
async def test_a_socket_the_server_closed_is_sent_nothing_more(widget, bob):
    """What a handler still had under way when the server closed the socket is dropped: an
    ASGI server refuses a frame after the close (and logs an error for each)."""
    visitor = await database_sync_to_async(new_visitor)(widget)
    received = await database_sync_to_async(chat.visitor_message)(
        visitor, text="Hello?", client_id="a"
    )
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    assert (await socket.receive_json_from(timeout=5))["messages"][0]["text"] == "Hello?"
    await socket.send_to(text_data="x" * 70_000)
    assert (await socket.receive_output(timeout=5))["code"] == 1009

    # The agent's answer still reaches the socket's groups until the server has let it go.
    reply = await database_sync_to_async(services.reply_send)(
        conversation=received.message.conversation, author=bob, text="Hi, how can I help?"
    )
    await database_sync_to_async(message_deliver)(reply.pk)
    assert await socket.receive_nothing(timeout=0.5)


# --- Ending, rating, transcript, going asynchronous ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_reply_follows_a_visitor_who_left_by_email_and_their_answer_comes_back(
    client, widget, bob, email_inbox, smtp_server
):
    visitor = new_visitor(widget)
    visitor = chat.visitor_contact(visitor, name="Ana", email="ana@example.com")
    received = chat.visitor_message(visitor, text="Can I change my order?", client_id="a")
    conversation = received.message.conversation
    # Someone copied on the conversation's mail (here, a mail from her address copied them).
    colleague = services.identity_get_or_create(kind=Channel.EMAIL, address="liam@corp.example")
    conversation.participants.add(colleague)
    chat.visitor_seen(visitor.pk, opened=1)
    chat.visitor_seen(visitor.pk, opened=-1)  # she closed the page

    reply = services.reply_send(conversation=conversation, author=bob, text="Yes, until noon.")
    message_deliver(reply.pk)
    # Not yet: she may be back in a minute.
    assert webchat.follow_up(conversation.pk) is None
    with time_machine.travel(timezone.now() + timedelta(minutes=6)):
        emailed = webchat.follow_up(conversation.pk)
        assert webchat.follow_up(conversation.pk) is None  # twice sends once
    message_deliver(emailed.pk)
    [mail] = smtp_server.messages()
    assert mail["To"] == "ana@example.com"
    assert mail["Cc"] is None  # what was said in the chat goes to her alone
    # Her first words, not "Re:" to a mail she never sent, nor the name of our inbox.
    assert mail["Subject"] == f"Can I change my order? [#{conversation.pk}]"
    body = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert body.startswith("You have not seen our reply in the chat yet, so here it is:")
    assert "Bob:\nYes, until noon." in body
    assert conversation.reply_token in mail["Reply-To"]
    assert mail["Auto-Submitted"] is None  # Bob's words, not a robot's: her rules must not hide it
    assert conversation.events.filter(kind=ConversationEvent.Kind.CHAT, data__state="async")
    # That line says where replies go now: no "channel switched" as if Bob had chosen email.
    assert not conversation.events.filter(kind=ConversationEvent.Kind.CHANNEL).exists()
    client.force_login(bob)
    page = client.get(f"/inbox/{conversation.pk}/").content.decode()
    assert f'<a class="muted" href="#m{emailed.pk}">not seen in the chat: emailed</a>' in page

    # Her answer by email lands in the same conversation, and the widget shows it.
    answer = services.message_receive(
        inbox=email_inbox,
        inbound=services.InboundMessage(
            channel=Channel.EMAIL,
            address="ana@example.com",
            text="Great, please make it blue.",
            conversation=conversation,
        ),
    )
    assert answer.message.conversation == conversation
    shown = [m.text for m in chat.visible_messages(chat.visitor_conversation(visitor))]
    assert shown == ["Can I change my order?", "Yes, until noon.", "Great, please make it blue."]


@pytest.mark.django_db(transaction=True)
def test_her_address_given_on_a_new_device_mails_her_the_way_back_to_her_earlier_chat(
    client, bob, widget, email_inbox, smtp_server, embedded_worker, settings
):
    settings.PUBLIC_URL = "https://help.acme.example"
    # On her laptop, Ana asked something, left her address, and got an answer.
    laptop = chat.visitor_contact(new_visitor(widget), email="ana@example.com")
    asked = chat.visitor_message(laptop, text="Where is order 7781?", client_id="a").message
    services.reply_send(conversation=asked.conversation, author=bob, text="It left today.")

    async def give_address(token, email):
        socket, _, _ = await visitor_socket(widget, token)
        assert (await socket.receive_json_from(timeout=5))["type"] == "ready"
        await socket.send_json_to({"action": "contact", "email": email})
        answer = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return answer

    # On her phone, a fresh widget knows nothing of it; she gives the same address.
    phone = new_visitor(widget)
    answer = async_to_sync(give_address)(chat.visitor_token(phone), "ana@example.com")
    # The widget says a link is on its way if the address chatted here: it says no more.
    assert answer == {"type": "contact", "email": "ana@example.com", "pending": True}
    [mail] = wait_for(smtp_server.messages, what="the mail with the link")
    assert mail["To"] == "ana@example.com"
    body = mail.get_body().get_content().replace("\r\n", "\n")
    assert body.startswith("This address was given in our chat in another browser.")
    assert "Where is order 7781?" in body and "It left today." in body
    # The link opens the laptop's chat wherever she reads the mail: her phone, say.
    resume = re.search(r"on any device: \S+#threadline-chat=(\S+)", body).group(1)
    token = start(client, widget, resume=resume).json()["token"]
    assert chat.visitor_from_token(widget, token) == laptop
    assert start(client, widget, resume=resume).json()["visitor"]["email"] == "ana@example.com"
    # Her agent's timeline says why she was mailed.
    client.force_login(bob)
    page = client.get(f"/inbox/{asked.conversation_id}/").content.decode()
    assert "the address was given in a chat in another browser" in page

    # Giving it again mails nothing more until that chat goes on; nor does an address whose
    # customer never chatted here (Liam only ever wrote by email).
    async_to_sync(give_address)(chat.visitor_token(phone), "ana@example.com")
    receive(widget, "Hello", address="liam@example.com", channel=Channel.EMAIL)
    other = new_visitor(widget)
    answer = async_to_sync(give_address)(chat.visitor_token(other), "liam@example.com")
    assert answer["pending"] is True
    # Without a public address for this server there is no link to give: none is promised.
    settings.PUBLIC_URL = ""
    third = new_visitor(widget)
    async_to_sync(give_address)(chat.visitor_token(third), "ana@example.com")
    mailed = ConversationEvent.objects.filter(data__why="continue")
    assert [event.data["to"] for event in mailed] == ["ana@example.com"]
    assert len(smtp_server.messages()) == 1


@pytest.mark.django_db(transaction=True)
def test_a_reply_the_visitor_read_is_not_emailed(widget, bob, email_inbox, smtp_server):
    visitor = chat.visitor_contact(new_visitor(widget), email="ana@example.com")
    conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    reply = services.reply_send(conversation=conversation, author=bob, text="Hello")
    message_deliver(reply.pk)
    chat.messages_mark_read(conversation, by_customer=True, up_to=reply.pk)
    reply.refresh_from_db()
    assert reply.status == Message.Status.READ
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        assert webchat.follow_ups_due() == 0
        assert webchat.follow_up(conversation.pk) is None


def test_a_visitor_cannot_end_or_rate_a_chat_nobody_has_answered(widget, bob):
    # "End the chat" before any answer resolved the question and hid it from the agents.
    visitor = new_visitor(widget)
    conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    assert chat.conversation_json(conversation)["answered"] is False
    with pytest.raises(services.ValidationError, match="Nobody has answered yet"):
        chat.chat_end(conversation)
    with pytest.raises(services.ValidationError, match="nothing to rate"):
        chat.conversation_rate(conversation, rating=5)
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.OPEN and conversation.rating is None

    services.reply_send(conversation=conversation, author=bob, text="Hello")
    conversation.refresh_from_db()
    assert chat.conversation_json(conversation)["answered"] is True
    chat.chat_end(conversation)
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.RESOLVED


def test_ending_rating_and_the_transcript(widget, bob, email_inbox, smtp_server, settings):
    settings.PUBLIC_URL = "https://help.acme.example"
    visitor = new_visitor(widget, zone="Europe/Lisbon")
    assert visitor.identity.customer.timezone == "Europe/Lisbon"  # what her browser said
    visitor = chat.visitor_contact(visitor, email="ana@example.com")
    conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    services.reply_send(conversation=conversation, author=bob, text="Hello Ana")
    photo = services.InboundAttachment("scratch.png", "image/png", PNG)
    chat.visitor_message(visitor, text="", client_id="f", attachments=(photo,))
    chat.chat_end(conversation)
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.RESOLVED
    with pytest.raises(services.ValidationError):
        chat.conversation_rate(conversation, rating=6)
    chat.conversation_rate(conversation, rating=5, comment="Quick and kind")
    conversation.refresh_from_db()
    assert (conversation.rating, conversation.rating_comment) == (5, "Quick and kind")

    assert chat.conversation_json(conversation)["transcript"] is False
    event = chat.transcript_request(visitor, conversation)
    # Asked for: a widget opened later says it is on its way rather than offering it again.
    assert chat.conversation_json(conversation)["transcript"] is True
    assert webchat.transcript_send(event.pk)
    assert not webchat.transcript_send(event.pk)  # once
    # Asked again with nothing new said: refused, not another mail to the address.
    with pytest.raises(services.ValidationError, match="already on its way to ana@example.com"):
        chat.transcript_request(visitor, conversation)
    [mail] = smtp_server.messages()
    body = mail.get_body().get_content()
    # In her browser's time zone (Lisbon: UTC in winter, WEST in summer), from our domain.
    first = conversation.messages.order_by("id").first().created_at
    local = first.astimezone(ZoneInfo("Europe/Lisbon"))
    assert f"[{local:%Y-%m-%d %H:%M} {local.tzname()}] You:" in body
    assert mail["Message-ID"].endswith("@acme.example>")
    assert mail["To"] == "ana@example.com"
    assert "Hi" in body and "Hello Ana" in body
    assert "You:\n[File: scratch.png]" in body.replace("\r\n", "\n")  # not an empty line
    assert mail["From"] == f"{widget.name} <{email_inbox.address}>"
    assert conversation.reply_token in mail["Reply-To"]  # her answer lands in this chat
    # Or she goes on in the chat on her phone: the link opens this visitor's chat there.
    link = re.search(r"on any device: (\S+)#threadline-chat=(\S+)", body)
    assert link.group(1) == f"https://help.acme.example/widget/{widget.widget_key}/"
    assert chat.visitor_resumed(widget, link.group(2)) == visitor

    # The next message starts a new conversation.
    again = chat.visitor_message(visitor, text="One more thing", client_id="b")
    assert again.message.conversation != conversation


def test_the_chat_is_no_way_to_mail_a_stranger_or_read_their_answers(
    client, widget, bob, email_inbox, smtp_server, settings
):
    """Anyone can type an address into the chat. Writing a line and asking for the transcript
    again sent our mail there as often as one liked, headed by the visitor's own words; and
    the typist read whatever the address's owner wrote after opening the mail's link."""
    settings.PUBLIC_URL = "https://help.acme.example"
    token = start(client, widget).json()["token"]
    typist = chat.visitor_contact(chat.visitor_from_token(widget, token), email="eve@example.com")
    bait = "Your account is locked, log in at https://evil.example"
    conversation = chat.visitor_message(typist, text=bait, client_id="a").message.conversation
    assert webchat.transcript_send(chat.transcript_request(typist, conversation).pk)
    chat.visitor_message(typist, text="Once more", client_id="b")
    with pytest.raises(services.ValidationError, match="already on its way"):
        chat.transcript_request(typist, conversation)
    [mail] = smtp_server.messages()
    assert mail["Subject"] == f"Transcript of your chat with {widget.name} [#{conversation.pk}]"
    body = mail.get_body().get_content()
    assert body.startswith("You asked for this in our chat. If not, ignore this email.")

    # The address's owner opens the link: the chat goes on in their browser, and the token
    # the typist holds opens nothing any more. The link works for the month, in the next
    # browser too, which then holds the chat alone.
    resume = re.search(r"#threadline-chat=(\S+)", body).group(1)
    owner = start(client, widget, resume=resume).json()["token"]
    assert chat.visitor_from_token(widget, owner) == typist
    assert chat.visitor_from_token(widget, token) is None
    laptop = start(client, widget, resume=resume).json()["token"]
    assert chat.visitor_from_token(widget, laptop) == typist
    assert chat.visitor_from_token(widget, owner) is None

    # Once an agent answered, the chat went on: the transcript may be asked for again.
    services.reply_send(conversation=conversation, author=bob, text="Hello")
    assert webchat.transcript_send(chat.transcript_request(typist, conversation).pk)


@pytest.mark.django_db(transaction=True)
def test_two_transcript_requests_at_once_send_one_mail(widget, bob):
    """A double click, or the widget open in two tabs: the second request waits for the
    first to be written, then is told the transcript is on its way, rather than both
    reading "nothing sent yet" and mailing it twice."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite takes one writer at a time: there is no race to see")
    visitor = chat.visitor_contact(new_visitor(widget), email="ana@example.com")
    conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    second = []

    def ask_again(lock_timeout):
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:  # wait this long for a row lock, no more
                    cursor.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
                second.append(chat.transcript_request(visitor, conversation))
        except Exception as exc:  # noqa: BLE001 - what the request met, asserted below
            second.append(exc)
        finally:
            connection.close()

    with transaction.atomic():
        first = chat.transcript_request(visitor, conversation)
        # The first is written but not committed: the second waits for it.
        waiting = threading.Thread(target=ask_again, args=("200ms",))
        waiting.start()
        waiting.join()
        assert isinstance(second[0], OperationalError), second
    again = threading.Thread(target=ask_again, args=("10s",))
    again.start()
    again.join()
    assert "already on its way to ana@example.com" in str(second[1])
    transcripts = conversation.events.filter(kind="chat", data__state="transcript")
    assert list(transcripts) == [first]


def test_an_agent_writing_after_the_chat_ended_is_answered_in_that_chat(widget, bob):
    visitor = new_visitor(widget)
    conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    services.reply_send(conversation=conversation, author=bob, text="Hello!")
    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        chat.chat_end(conversation)
    conversation.refresh_from_db()
    assert chat.conversation_json(conversation)["live"] is False  # rating and transcript

    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        services.reply_send(conversation=conversation, author=bob, text="Keep the box, please.")
        conversation.refresh_from_db()
        assert chat.conversation_json(conversation)["live"] is True  # the widget can answer
        answer = chat.visitor_message(visitor, text="Sure, I will", client_id="b").message
    assert answer.conversation == conversation
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.OPEN


@pytestmark_socket
async def test_a_reply_by_email_shows_in_the_open_widget_at_once(widget, bob, email_inbox):
    # The customer came back to the chat; the agent answered on their email. The widget
    # showed the reply only after a reload.
    visitor = await database_sync_to_async(new_visitor)(widget)
    visitor = await database_sync_to_async(chat.visitor_contact)(visitor, email="ana@example.com")
    received = await database_sync_to_async(chat.visitor_message)(visitor, text="Hi", client_id="a")
    conversation = received.message.conversation
    socket, _, _ = await visitor_socket(
        widget, chat.visitor_token(visitor), after=received.message.pk
    )
    await socket.receive_json_from(timeout=5)  # ready

    def email_reply():
        email = conversation.customer.identities.get(kind=Channel.EMAIL)
        return services.reply_send(
            conversation=conversation, author=bob, text="Sent by email", identity=email
        )

    reply = await database_sync_to_async(email_reply)()
    frame = await socket.receive_json_from(timeout=5)
    while frame["type"] != "message":
        frame = await socket.receive_json_from(timeout=5)
    assert frame["message"]["id"] == reply.pk
    assert (frame["message"]["text"], frame["message"]["channel"]) == ("Sent by email", "email")
    await socket.disconnect()


@pytestmark_socket
async def test_a_chat_resolved_or_reopened_by_status_tells_the_open_widget(widget, bob):
    visitor = await database_sync_to_async(new_visitor)(widget)
    received = await database_sync_to_async(chat.visitor_message)(visitor, text="Hi", client_id="a")
    conversation = received.message.conversation
    socket, _, _ = await visitor_socket(
        widget, chat.visitor_token(visitor), after=received.message.pk
    )
    assert (await socket.receive_json_from(timeout=5))["conversation"]["live"] is True

    def status(value):
        services.conversation_set_status(conversation=conversation, status=value, actor=bob)

    # Resolved from the status menu (or a macro, or "e"), not by "End chat": the widget stops
    # taking messages in it and offers the rating, as when the chat is ended.
    await database_sync_to_async(status)(Conversation.Status.RESOLVED)
    assert await socket.receive_json_from(timeout=5) == {
        "type": "ended",
        "conversation": conversation.pk,
    }
    await database_sync_to_async(status)(Conversation.Status.OPEN)
    told = await socket.receive_json_from(timeout=5)
    assert told["type"] == "conversation"
    assert (told["conversation"]["id"], told["conversation"]["live"]) == (conversation.pk, True)
    # Pending keeps the chat going: nothing to tell.
    await database_sync_to_async(status)(Conversation.Status.PENDING)
    assert await socket.receive_nothing(timeout=0.3)
    await socket.disconnect()


def test_availability_is_online_only_with_an_agent_there_in_business_hours(widget, bob):
    assert chat.availability(widget)["online"] is False
    bob.availability = "online"
    bob.last_seen_at = timezone.now()
    bob.save()
    assert chat.availability(widget)["online"] is True
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        assert chat.availability(widget)["online"] is False  # his inbox is not open any more


@pytestmark_socket
async def test_an_open_widget_hears_when_the_last_agent_goes_offline(widget, bob):
    def bob_is(availability):
        bob.availability, bob.last_seen_at = availability, timezone.now()
        bob.save()

    await database_sync_to_async(bob_is)("online")
    visitor = await database_sync_to_async(new_visitor)(widget)
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    assert (await socket.receive_json_from(timeout=5))["availability"]["online"] is True

    await socket.send_json_to({"action": "ping"})  # nothing changed: nothing said
    assert await socket.receive_nothing(timeout=0.3)
    await database_sync_to_async(bob_is)("offline")
    await socket.send_json_to({"action": "ping"})
    told = await socket.receive_json_from(timeout=5)
    assert told["type"] == "availability"
    assert told["availability"]["online"] is False
    await socket.disconnect()


def test_an_agent_who_signs_out_is_no_longer_online_to_customers(client, widget, bob):
    bob.availability, bob.last_seen_at = "online", timezone.now()
    bob.save()
    assert chat.availability_now(widget)["online"] is True
    client.force_login(bob)
    client.post("/logout/")
    assert chat.availability_now(widget)["online"] is False  # not three minutes later


@pytestmark_socket
async def test_the_open_widget_says_when_we_reply_in_the_visitors_language(widget):
    """The session said "20 minutos"; the socket's first frame then said "20 minutes"."""

    def visitors():
        widget.expected_reply_minutes = 20
        widget.save()
        return [chat.visitor_token(new_visitor(widget, language=lang)) for lang in ("en", "es")]

    english, spanish = await database_sync_to_async(visitors)()
    for token, said in ((english, "20 minutes"), (spanish, "20 minutos")):
        socket, _, _ = await visitor_socket(widget, token)
        assert (await socket.receive_json_from(timeout=5))["availability"]["reply_time"] == said
        await socket.send_json_to({"action": "ping"})  # the same, in its language: not said
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()


def test_the_agent_sees_the_visitor_and_can_end_the_chat(client, widget, bob):
    visitor = chat.visitor_contact(
        new_visitor(widget, page_url="https://shop.example/cart"), email="ana@example.com"
    )
    conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    chat.visitor_seen(visitor.pk, opened=1)
    client.force_login(bob)
    page = client.get(f"/inbox/{conversation.pk}/").content.decode()
    assert "on the site now" in page
    assert "https://shop.example/cart" in page
    assert "End chat" in page

    response = client.post(f"/inbox/{conversation.pk}/end-chat")
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.RESOLVED
    page = client.get(f"/inbox/{conversation.pk}/").content.decode()
    assert "ended by the agent" in page
    assert "End chat" not in page


def test_send_on_says_the_chat_visitor_is_on_the_site_or_when_they_were(client, widget, bob):
    # The chat address was "last seen 14 min ago" (when Ana last wrote) while the panel
    # beside it said she was on the site now.
    visitor = new_visitor(widget)
    conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    client.force_login(bob)
    start = timezone.now()
    with time_machine.travel(start + timedelta(minutes=14), tick=False):
        chat.visitor_seen(visitor.pk, opened=1)  # she comes back to the shop
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Web chat (on the site now)</option>" in page
        assert "last seen" not in page
        chat.visitor_seen(visitor.pk, opened=-1)  # and leaves
    with time_machine.travel(start + timedelta(minutes=20), tick=False):
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Web chat (last seen 6 min ago)</option>" in page  # her visit, not her message
        assert "data-ago>6 min ago</time>" in page  # aged by the page from here on


@pytestmark_socket
async def test_an_agent_with_the_chat_open_sees_the_visitor_come_and_go(widget, bob):
    from django.test import Client

    from tests.conversations.test_consumers import connect
    from tests.conversations.test_presence import session_of

    visitor = await database_sync_to_async(new_visitor)(widget)
    first = await database_sync_to_async(chat.visitor_message)(visitor, text="Hi", client_id="a")
    conversation_id = first.message.conversation_id
    agent, _, _ = await connect(await session_of(bob))
    await agent.send_json_to({"action": "subscribe", "conversation": conversation_id})
    assert (await agent.receive_json_from(timeout=5))["type"] == "subscribed"

    def side_panel():  # what the page's live refresh puts in place
        client = Client()
        client.force_login(bob)
        timeline = client.get(f"/inbox/{conversation_id}/?partial=timeline").content.decode()
        return timeline.split("<template data-visitors>")[1]

    for widget_is, shown in (("opened", "on the site now"), ("closed", "last seen")):
        if widget_is == "opened":
            socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
            await socket.receive_json_from(timeout=5)  # ready
        else:
            await socket.disconnect()
        told = await agent.receive_json_from(timeout=5)
        assert (told["type"], told["event"]) == ("conversation", "visitor")
        assert (told["conversation"], told["widget"]) == (conversation_id, widget_is)
        assert shown in await database_sync_to_async(side_panel)()
    await agent.disconnect()


# --- Files and proactive messages ------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def upload(client, inbox, token, name, content, origin=SITE, client_id="f1"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        f"/widget/{inbox.widget_key}/upload",
        {
            "token": token,
            "client_id": client_id,
            "file": SimpleUploadedFile(name, content, content_type="image/png"),
        },
        HTTP_ORIGIN=origin,
    )


def test_a_visitor_sends_an_image_and_sees_its_preview(client, widget):
    token = start(client, widget).json()["token"]
    response = upload(client, widget, token, "photo.png", PNG)
    assert response.status_code == 201
    message = Message.objects.get(pk=response.json()["message"])
    [shown] = chat.message_json(message)["attachments"]
    assert shown["image"] is True and shown["name"] == "photo.png"
    preview = client.get(shown["url"])
    assert preview.status_code == 200
    assert preview["Content-Type"] == "image/png"
    assert preview["X-Content-Type-Options"] == "nosniff"
    # The same upload again (a retry after a drop) stores nothing new.
    assert upload(client, widget, token, "photo.png", PNG).json()["message"] == message.pk
    assert Message.objects.count() == 1


def test_uploads_are_judged_by_their_bytes_and_size_and_need_a_token(client, widget, settings):
    token = start(client, widget).json()["token"]
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    refused = upload(client, widget, token, "cute.png", svg)
    assert refused.status_code == 415
    assert "Only images" in refused.json()["error"]
    assert upload(client, widget, "forged", "photo.png", PNG).status_code == 401
    assert (
        upload(client, widget, token, "photo.png", PNG, origin="https://evil.example").status_code
        == 403
    )
    big = PNG + b"\x00" * services.UPLOAD_MAX_BYTES
    assert upload(client, widget, token, "big.png", big).status_code == 413
    assert Message.objects.count() == 0
    # A text file is taken as text, whatever name it has.
    text = upload(client, widget, token, "notes.txt", "Olá, segue o recibo".encode())
    assert text.status_code == 201
    assert Message.objects.get().attachments.get().content_type == "text/plain"


def test_a_visitor_sending_files_in_a_loop_is_slowed_down(client, widget):
    token = start(client, widget).json()["token"]
    with time_machine.travel(timezone.now().replace(second=0), tick=False):
        sent = [
            upload(client, widget, token, f"shot{i}.png", PNG, client_id=f"f{i}").status_code
            for i in range(12)
        ]
        assert sent == [201] * 10 + [429] * 2
        assert Message.objects.count() == 10
        assert upload(client, widget, token, "more.png", PNG, client_id="f12").json() == {
            "error": "Too many files at once; wait a minute."
        }
    with time_machine.travel(timezone.now().replace(second=0) + timedelta(minutes=1)):
        assert upload(client, widget, token, "later.png", PNG, client_id="f13").status_code == 201


def test_the_script_says_its_charset_for_shops_whose_pages_are_not_utf8(client):
    response = client.get("/widget.js")
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    assert "·".encode() in b"".join(response.streaming_content)


def test_media_links_are_signed(client, widget):
    assert client.get("/widget/media/forged").status_code == 404


@pytest.mark.django_db(transaction=True)
async def test_an_agent_writes_first_and_the_open_widget_shows_it(widget, bob):
    visitor = await database_sync_to_async(new_visitor)(widget, name="Ana")
    socket, _, _ = await visitor_socket(widget, chat.visitor_token(visitor))
    assert (await socket.receive_json_from(timeout=5))["conversation"] is None

    def agent_starts():
        conversation = services.conversation_start(
            customer=visitor.identity.customer,
            identity=visitor.identity,
            author=bob,
            text="Hi Ana, can I help you find a size?",
        )
        message_deliver(conversation.messages.get().pk)
        return conversation

    conversation = await database_sync_to_async(agent_starts)()
    shown = await socket.receive_json_from(timeout=5)
    assert shown == {
        "type": "conversation",
        "conversation": {
            "id": conversation.pk,
            "live": True,
            "answered": True,  # Bob wrote: the visitor may end and rate this chat
            "rating": None,
            "queue": None,
            "transcript": False,
        },
    }  # Bob has it: no queue to wait in
    message = await socket.receive_json_from(timeout=5)
    assert message["message"]["text"] == "Hi Ana, can I help you find a size?"
    await socket.disconnect()


def test_new_visitors_from_one_address_are_limited(client, widget, settings):
    settings.WEBCHAT_CONNECTIONS_PER_MINUTE = 2
    with time_machine.travel(timezone.now(), tick=False):  # all within one minute
        tokens = [start(client, widget).json()["token"] for _ in range(2)]
        refused = start(client, widget)
    assert refused.status_code == 429
    assert Visitor.objects.count() == 2
    # A visitor coming back with their token is not a new one.
    assert start(client, widget, token=tokens[0]).status_code == 200


def test_visitors_who_never_wrote_leave_no_profile_behind(widget):
    silent = new_visitor(widget)
    wrote = new_visitor(widget)
    chat.visitor_message(wrote, text="Hi", client_id="a")
    gave_email = chat.visitor_contact(new_visitor(widget), email="ana@example.com")
    with time_machine.travel(timezone.now() + timedelta(days=10)):
        assert webchat.silent_visitors_prune() == 0  # they may come back
    with time_machine.travel(timezone.now() + timedelta(days=31)):
        assert webchat.silent_visitors_prune() == 1
    assert not Visitor.objects.filter(pk=silent.pk).exists()
    assert not services.Customer.objects.filter(pk=silent.identity.customer_id).exists()
    assert Visitor.objects.filter(pk__in=[wrote.pk, gave_email.pk]).count() == 2
