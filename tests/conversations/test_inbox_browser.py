"""The agent inbox in real headless Chromium against the real ASGI server (uvicorn, WebSockets,
its embedded Celery worker), with a real SMTP server for mail. Playwright's waits end when the
page shows the awaited state; the timeout only bounds a test that would otherwise hang."""

import json
import urllib.request
import uuid
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest
from django.http import QueryDict
from playwright.sync_api import expect

from conversations import services
from conversations.models import Channel, Identity, Message
from routing.models import TeamMembership
from tests.channels_adapters.test_webchat_browser import post_mime
from tests.conftest import receive, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_assigning_shows_up_in_the_assignees_list_live(asgi_server, browser, bob, dana, chat_inbox):
    conversation = receive(chat_inbox, text="My parcel is lost", name="Jo").message.conversation
    theirs = signed_in(browser, asgi_server, dana)
    theirs.goto(f"{asgi_server}/inbox/?view=mine")
    assert theirs.locator(".rows li[data-conversation]").count() == 0
    assert theirs.inner_text('[data-count="mine"]') == "0"

    mine = signed_in(browser, asgi_server, bob)
    mine.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    mine.select_option("#assignee", str(dana.pk))
    mine.click('form[action$="/assign"] button')
    mine.wait_for_selector("text=Assigned by Bob: Dana")

    # Dana's page was not reloaded: her socket said something changed.
    row = theirs.wait_for_selector(f'.rows li[data-conversation="{conversation.pk}"]')
    assert "My parcel is lost" in row.inner_text()
    assert theirs.inner_text('[data-count="mine"]') == "1"  # the view counts follow


def test_a_teammates_changes_show_on_an_open_conversation_page(
    asgi_server, browser, bob, dana, chat_inbox
):
    conversation = receive(chat_inbox, text="Is my order lost?").message.conversation
    theirs = signed_in(browser, asgi_server, dana)
    theirs.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    expect(theirs.locator("[data-chat-end]")).to_be_visible()
    theirs.select_option("#priority", "3")  # Dana is changing the priority, not yet saved

    mine = signed_in(browser, asgi_server, bob)
    mine.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    mine.select_option("#assignee", str(bob.pk))
    mine.click('form[action$="/assign"] button')
    mine.select_option("#status", "resolved")
    mine.click('form[action$="/status"] button')
    mine.wait_for_selector("#live .badge.status-resolved")

    # Dana's page, not reloaded, says what Bob did, and keeps the field she was editing.
    theirs.wait_for_selector("#live .badge.status-resolved >> text=Resolved")
    expect(theirs.locator("#status")).to_have_value("resolved")
    expect(theirs.locator("#assignee")).to_have_value(str(bob.pk))
    assert theirs.input_value("#priority") == "3"
    expect(theirs.locator("[data-chat-end]")).to_be_hidden()  # a resolved chat is over

    mine.fill("#tag-add", "vip")
    mine.press("#tag-add", "Enter")
    theirs.wait_for_selector("aside ul.tags >> text=vip")  # tags follow too


def test_a_customer_message_moves_the_conversation_up_live(asgi_server, browser, bob, api_inbox):
    older = receive(api_inbox, text="First question", address="a@x.example").message
    receive(api_inbox, text="Second question", address="b@x.example")
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/?view=teams")
    first = page.locator(".rows li[data-conversation]").first
    assert first.get_attribute("data-conversation") != str(older.conversation_id)
    # The agent picked a row with the keyboard and is typing a search meanwhile.
    page.locator("h1, .listing").first.click()
    page.keyboard.press("j")
    page.click("input[name=q]")
    page.keyboard.type("Any")

    body = json.dumps({"id": "m-3", "from": "a@x.example", "text": "Anyone there? ¿Hola?"}).encode()
    request = urllib.request.Request(  # noqa: S310 - our own test server
        f"{asgi_server}/channels/api/{api_inbox.pk}/messages",
        data=body,
        headers={"Authorization": f"Bearer {api_inbox.secret}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:  # noqa: S310 - our own test server
        assert response.status == 202

    page.wait_for_selector(
        f'.rows li[data-conversation="{older.conversation_id}"]:first-child >> text=¿Hola?'
    )
    # The refresh kept the selected row and left the focus where the agent was typing.
    assert page.locator(".rows li.selected").count() == 1
    page.keyboard.type("one")
    assert page.input_value("input[name=q]") == "Anyone"


def test_a_live_refresh_keeps_the_focus_where_the_agent_tabbed_to(
    asgi_server, browser, bob, chat_inbox, api_inbox
):
    """An agent working by keyboard tabs to a row (not j/k): every change anyone made
    replaced the list and sent their focus back to the top of the page."""
    older = receive(chat_inbox, text="Order 1 is late", address="v1").message.conversation
    receive(chat_inbox, text="Order 2 is late", address="v2")
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/?view=teams")
    row = f'.rows li[data-conversation="{older.pk}"]'
    page.focus(f"{row} .pick")
    page.keyboard.press("Tab")  # from the row's box to its link
    expect(page.locator(f"{row} a")).to_be_focused()

    arrive(asgi_server, api_inbox, "Me too", "v3@example.com")
    page.wait_for_selector(".rows li >> text=Me too")
    expect(page.locator(f"{row} a")).to_be_focused()  # the same row, now the third
    page.keyboard.press("Shift+Tab")
    expect(page.locator(f"{row} .pick")).to_be_focused()

    arrive(asgi_server, api_inbox, "Still waiting", "v4@example.com")
    page.wait_for_selector(".rows li >> text=Still waiting")
    expect(page.locator(f"{row} .pick")).to_be_focused()
    page.keyboard.press("Space")  # picks the row it shows
    expect(page.locator(f"{row} .pick")).to_be_checked()


def test_what_arrives_while_the_agent_types_does_not_push_the_reply_box_away(
    asgi_server, browser, bob, api_inbox
):
    """Each message arriving above the reply box pushed it (and the line being typed) down
    the screen, out of sight after a few: the browser could not keep it in place, since the
    refresh replaces the timeline it holds on to."""
    for n in range(6):
        message = receive(api_inbox, text=f"Line {n} " + "of a long story " * 30, address="jo")
    conversation = message.message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.set_viewport_size({"width": 1000, "height": 600})
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.click("#reply-text")
    page.keyboard.type("Let me check")
    where = page.locator("#reply-text").bounding_box()["y"]
    assert 0 < where < 600

    arrive(asgi_server, api_inbox, "Are you there? " * 20, "jo")
    page.wait_for_selector(".timeline >> text=Are you there?")
    assert page.locator("#reply-text").bounding_box()["y"] == pytest.approx(where, abs=2)
    expect(page.locator("#reply-text")).to_be_focused()


def test_a_new_conversation_does_not_move_the_row_under_the_pointer(
    asgi_server, browser, bob, chat_inbox, api_inbox
):
    """A conversation arriving at the top pushed every row down under the agent's pointer,
    about to click one: the click opened its neighbour."""
    for n in range(6):
        receive(chat_inbox, text=f"Order {n} is late", address=f"v{n}")
    page = signed_in(browser, asgi_server, bob)
    page.set_viewport_size({"width": 1000, "height": 400})
    page.goto(f"{asgi_server}/inbox/?view=teams")
    second = page.locator(".rows li[data-conversation]").nth(1).get_attribute("data-conversation")
    row = page.locator(f'.rows li[data-conversation="{second}"]')
    row.hover()
    where = row.bounding_box()["y"]

    arrive(asgi_server, api_inbox, "Me too", "v9@example.com")
    page.wait_for_selector(".rows li >> text=Me too")
    assert row.bounding_box()["y"] == pytest.approx(where, abs=2)


def test_a_screen_reader_hears_what_arrives_in_the_open_conversation(
    asgi_server, browser, bob, api_inbox
):
    """The timeline is replaced whole when something arrives, so it cannot be a live region:
    an agent on a screen reader never learnt that the customer had written."""
    conversation = receive(api_inbox, text="My order is late", address="jo").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    notice = page.locator("[data-arrived]")
    assert notice.get_attribute("aria-live") == "polite"

    arrive(asgi_server, api_inbox, "Any news about order 4410?", "jo")
    expect(notice).to_have_text("Message from jo: Any news about order 4410?")
    page.check('[name=mode][value="note"]')
    page.fill("#reply-text", "Checking with the warehouse")
    page.press("#reply-text", "Control+Enter")  # the agent's own note is no news to them
    page.wait_for_selector(".message.note >> text=Checking with the warehouse")
    expect(page.locator("[data-arrived]")).to_have_text("")


def test_a_right_to_left_name_and_subject_keep_their_order_in_the_list(
    asgi_server, browser, bob, api_inbox
):
    """An Arabic name beside an Arabic subject read as one right-to-left run: the list
    showed the subject first and the name after it."""
    name, subject = "محمد الأحمد", "10441 استرداد"
    receive(api_inbox, text="مرحبا", address="m@x.example", name=name, subject=subject)
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/?view=teams")
    name = page.locator(".rows .who").bounding_box()
    subject = page.locator(".rows .subject").bounding_box()
    assert name["x"] + name["width"] < subject["x"]  # the name, then · and the subject


def test_x_and_j_act_on_the_row_the_agent_tabbed_to(asgi_server, browser, bob, chat_inbox):
    """x picked the row highlighted with j/k before, or none, never the row that had the
    focus, and j went on from that one too."""
    for n in range(3):
        receive(chat_inbox, text=f"Order {n} is late", address=f"v{n}")
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/?view=teams")
    rows = page.locator(".rows li[data-conversation]")
    page.keyboard.press("j")  # the first row highlighted
    page.focus(".rows li[data-conversation]:nth-child(2) .pick")
    page.keyboard.press("Tab")  # on to the second row's link
    page.keyboard.press("x")
    expect(rows.nth(1).locator(".pick")).to_be_checked()
    expect(rows.nth(0).locator(".pick")).not_to_be_checked()
    page.keyboard.press("j")
    expect(rows.nth(2).locator("a")).to_be_focused()


def test_a_then_enter_assigns_without_the_button(asgi_server, browser, bob, dana, chat_inbox):
    """The shortcut "a" goes to the Assignee menu, but Enter there did nothing: the agent
    had to find the Assign button with Tab."""
    conversation = receive(chat_inbox, text="My parcel is lost").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.keyboard.press("a")
    expect(page.locator("#assignee")).to_be_focused()
    page.select_option("#assignee", str(dana.pk))
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Assigned by Bob: Dana")
    conversation.refresh_from_db()
    assert conversation.assignee == dana


def test_after_a_side_panel_action_the_focus_is_back_in_its_field(
    asgi_server, browser, bob, dana, chat_inbox
):
    """The side panel's forms reload the page, which came back with the focus at its top:
    ten Tabs and more back to where the keyboard user was."""
    conversation = receive(chat_inbox, text="My parcel is lost").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.keyboard.press("a")
    page.select_option("#assignee", str(dana.pk))
    page.keyboard.press("Tab")  # on to the Assign button
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Assigned by Bob: Dana")
    expect(page.locator("#assignee")).to_be_focused()
    page.focus("#tag-add")
    page.keyboard.type("refund")
    page.keyboard.press("Enter")
    page.wait_for_selector("aside ul.tags >> text=refund")
    expect(page.locator("#tag-add")).to_be_focused()  # ready for the next tag
    page.locator("h1").click()
    page.keyboard.press("e")  # a shortcut: the focus stays on nothing, for the next one
    page.wait_for_selector("#live .badge.status-resolved")
    expect(page.locator("#tag-add")).not_to_be_focused()


def test_answer_a_chat_customer_by_email(
    asgi_server, browser, bob, chat_inbox, email_inbox, smtp_server
):
    conversation = receive(chat_inbox, text="Can you email me the invoice?", name="Jo").message
    conversation = conversation.conversation
    email = Identity.objects.create(
        customer=conversation.customer, kind=Channel.EMAIL, address="jo@example.com"
    )
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.select_option("[data-channel-picker]", str(email.pk))
    assert "threaded with the customer" in page.inner_text("[data-hint]")
    page.fill("#reply-text", "Here it is: invoice 10436 is in your account.")
    page.press("#reply-text", "Control+Enter")

    # Stored, sent by the server's worker to the SMTP server, and the page, live, says "Sent".
    page.wait_for_selector(".message.outbound .badge >> text=Sent")
    reply = Message.objects.get(direction="outbound")
    assert (reply.channel, reply.inbox, reply.status) == ("email", email_inbox, "sent")
    (mail,) = smtp_server.messages()
    assert mail["To"] == "jo@example.com"
    assert "invoice 10436" in mail.get_body(("plain",)).get_content()
    assert "Channel switched by Bob: Web chat → Email" in page.inner_text(".timeline")


def test_search_finds_a_message_by_a_word_in_its_text(asgi_server, browser, alice, chat_inbox):
    receive(chat_inbox, text="The blender arrived broken", address="v1", name="Ana")
    receive(chat_inbox, text="Where is my invoice?", address="v2", name="Rui")
    page = signed_in(browser, asgi_server, alice)
    page.fill("input[name=q]", "blender")
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**q=blender**")
    rows = page.locator(".rows li[data-conversation]")
    assert rows.count() == 1
    assert "Ana" in rows.first.inner_text()


def test_after_the_shortcuts_dialog_enter_opens_the_picked_row(
    asgi_server, browser, alice, chat_inbox, api_inbox
):
    # A live refresh while the dialog was open replaced the focused row: closing the dialog
    # left focus nowhere, and Enter opened nothing.
    conversation = receive(chat_inbox, text="Where is my parcel?", address="v1").message
    page = signed_in(browser, asgi_server, alice)
    page.goto(f"{asgi_server}/inbox/?view=all")
    page.keyboard.press("j")
    page.keyboard.press("?")
    expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
    arrive(asgi_server, api_inbox, "Me too", "v2@example.com")
    page.wait_for_selector(".rows li >> text=Me too")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    # Focus on nothing (the dialog's close handing it back comes a moment after Escape, and
    # a click on the page's background does the same): Enter still opens the picked row.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/inbox/{conversation.conversation_id}/")


def test_the_one_key_shortcuts_can_be_turned_off(asgi_server, browser, bob, chat_inbox):
    """Typed (or said to speech input) while the focus is not in the reply box, "hello"
    resolved the conversation at its "e": one-key shortcuts must be able to be turned off."""
    conversation = receive(chat_inbox, text="My parcel is lost").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.click("[data-shortcuts]")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    dialog.get_by_label("Turn off the one-key shortcuts").check()
    page.keyboard.press("Escape")
    page.reload()  # kept in this browser

    page.locator("h1").click()
    page.keyboard.type("hello")
    expect(page.locator("#reply-text")).not_to_be_focused()
    with page.expect_navigation():  # anything "e" set off would have gone before this
        page.click('form[action$="/priority"] button')
    conversation.refresh_from_db()
    assert conversation.status == "open"
    page.click("[data-shortcuts]")
    expect(dialog.get_by_label("Turn off the one-key shortcuts")).to_be_checked()


def test_a_mention_in_a_note_notifies_the_teammate_live(
    asgi_server, browser, bob, dana, charlie, chat_inbox
):
    conversation = receive(chat_inbox, text="Refund for order 7781?").message.conversation
    theirs = signed_in(browser, asgi_server, dana)
    assert theirs.locator("[data-unread]").is_hidden()

    mine = signed_in(browser, asgi_server, bob)
    mine.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    mine.locator("h1").click()
    mine.keyboard.press("?")  # the shortcuts, in a dialog that Escape closes
    expect(mine.get_by_role("dialog", name="Keyboard shortcuts")).to_contain_text("internal note")
    mine.keyboard.press("e")  # behind the dialog: nothing is resolved
    mine.keyboard.press("Escape")
    expect(mine.get_by_role("dialog")).to_be_hidden()
    mine.keyboard.press("n")  # the note shortcut: note mode, the text box focused
    assert mine.is_checked('[name=mode][value="note"]')
    assert mine.is_disabled("[data-channel-picker]")  # a note goes to no channel
    assert "Only agents see notes" in mine.inner_text("[data-hint]")
    # "@" suggests who may read the note: Dana, not Charlie of Billing, nor Bob himself.
    mine.keyboard.type("@")
    suggested = mine.get_by_role("listbox", name="Agents to mention")
    expect(suggested.get_by_role("option")).to_have_text(["@dana Dana"])
    mine.keyboard.type("da")
    mine.keyboard.press("Enter")  # picks her, and the note goes on
    expect(suggested).to_be_hidden()
    expect(mine.locator("#reply-text")).to_have_value("@dana ")
    mine.keyboard.type("can you approve this refund?")
    mine.press("#reply-text", "Control+Enter")
    mine.wait_for_selector(".message.note >> text=can you approve")

    conversation.refresh_from_db()
    assert conversation.status == "open"
    theirs.wait_for_selector("[data-unread]:not([hidden]) >> text=1")
    theirs.click("[data-notifications]")
    assert "Bob mentioned you" in theirs.inner_text(".rows")
    assert Message.objects.get(direction="note").status == ""


def test_a_teammate_named_in_a_reply_is_pointed_out_before_sending(
    asgi_server, browser, bob, dana, chat_inbox
):
    """A reply starting "@dana can you approve this?", meant as a note, went to the
    customer without a word: the composer now says so while it can still be changed."""
    conversation = receive(chat_inbox, text="Refund for order 7781?").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.keyboard.press("r")
    page.keyboard.type("@dana can you approve this refund?")
    hint = page.locator("[data-hint]")
    expect(hint).to_contain_text("@dana is a teammate, and this reply goes to the customer")
    page.keyboard.press("Escape")
    page.check('[name=mode][value="note"]')
    expect(hint).to_have_text("Only agents see notes; @name tells a teammate.")
    expect(hint).not_to_have_class("hint error")
    page.check('[name=mode][value="reply"]')
    page.fill("#reply-text", "Write to support@example.com or @acme on Twitter.")
    expect(hint).not_to_contain_text("teammate")  # nobody's handle


def test_news_about_the_conversation_on_screen_does_not_ring_the_bell(
    asgi_server, browser, dana, api_inbox
):
    conversation = receive(api_inbox, text="Where is my parcel?", address="jo@example.com")
    conversation = conversation.message.conversation
    services.conversation_assign(conversation=conversation, assignee=dana)
    theirs = signed_in(browser, asgi_server, dana)
    theirs.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    expect(theirs.locator("[data-unread]")).to_be_hidden()

    arrive(asgi_server, api_inbox, "Any news about it?")  # Dana's customer replied: she is told
    theirs.wait_for_selector(".timeline .message.inbound >> text=Any news about it?")
    # The page hears a message after the notification before it: once it shows the next
    # one, the bell has had its chance to ring.
    arrive(asgi_server, api_inbox, "Hello?")
    theirs.wait_for_selector(".timeline .message.inbound >> text=Hello?")
    expect(theirs.locator("[data-unread]")).to_be_hidden()  # she is reading it already
    theirs.click("[data-notifications]")
    expect(theirs.locator(".rows")).to_contain_text("replied")
    # Read, not new (the page's "read" may reach the server just after this request).
    for _ in range(20):
        if not theirs.locator(".rows .unread").count():
            break
        theirs.reload()
    expect(theirs.locator(".rows .unread")).to_have_count(0)


def test_notification_tones_share_one_audio_context(asgi_server, browser, dana, api_inbox):
    """Each notification's tone opened an audio context of its own and never closed it: an
    audio thread each, hundreds by the end of a working day in a busy inbox."""
    conversation = receive(api_inbox, text="Where is my parcel?", address="jo@example.com")
    services.conversation_assign(conversation=conversation.message.conversation, assignee=dana)
    page = signed_in(browser, asgi_server, dana)
    page.add_init_script(
        """
        const Real = window.AudioContext;
        window.audioContexts = 0;
        window.AudioContext = class extends Real {
          constructor(...args) { super(...args); window.audioContexts += 1; }
        };
        """
    )
    page.goto(f"{asgi_server}/inbox/?view=teams")
    unread = "Number(document.querySelector('[data-unread]').textContent)"
    before = page.evaluate(unread)
    for n in range(1, 4):  # Dana's customer writes, three times: she hears of each
        arrive(asgi_server, api_inbox, f"Any news? ({n})")
        page.wait_for_function(f"() => {unread} >= {before + n}")
    assert page.evaluate("window.audioContexts") == 1


def test_the_notifications_page_lists_a_new_one_live(asgi_server, browser, dana, api_inbox):
    """The bell counted a new notification, but the page listing them did not show it
    until it was reloaded."""
    conversation = receive(api_inbox, text="Where is my parcel?", address="jo@example.com")
    services.conversation_assign(conversation=conversation.message.conversation, assignee=dana)
    page = signed_in(browser, asgi_server, dana)
    page.goto(f"{asgi_server}/inbox/notifications")
    page.focus(".rows li a")  # the agent is on the newest one
    shown = page.locator(".rows li").count()

    arrive(asgi_server, api_inbox, "Any news about order 4410?")
    expect(page.locator(".rows li").first).to_contain_text("Any news about order 4410?")
    expect(page.locator(".rows li")).to_have_count(shown + 1)
    expect(page.locator(".rows li").nth(1).locator("a")).to_be_focused()  # still on it


def test_the_inbox_shows_times_in_the_agents_time_zone(asgi_server, browser, bob, chat_inbox):
    conversation = receive(chat_inbox, text="Hello?").message.conversation
    page = signed_in(browser, asgi_server, bob, timezone_id="Asia/Kolkata")  # UTC+5:30
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")  # the browser has said its zone
    shown = page.locator(".timeline .event time").first
    opened = conversation.events.order_by("id").first().created_at
    assert shown.inner_text().endswith(f"{opened.astimezone(ZoneInfo('Asia/Kolkata')):%H:%M}")


def test_picked_conversations_stay_picked_through_a_live_refresh_and_resolve_together(
    asgi_server, browser, bob, chat_inbox, api_inbox
):
    first = receive(chat_inbox, text="Order 1 is late", address="v1").message.conversation
    second = receive(chat_inbox, text="Order 2 is late", address="v2").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/?view=teams")
    expect(page.locator("[data-bulk] button")).to_be_disabled()  # nothing picked yet
    page.check(f'.rows li[data-conversation="{first.pk}"] .pick')  # the older, second row
    page.keyboard.press("j")  # highlights the top row, the newer conversation
    page.keyboard.press("x")  # and picks it
    expect(page.locator("[data-picked]")).to_have_text("2 selected")

    # A third customer writes: the list refreshes live, and the picks survive it.
    arrive(asgi_server, api_inbox, "Me too", "v3@example.com")
    page.wait_for_selector(".rows li >> text=Me too")
    expect(page.locator(".pick:checked")).to_have_count(2)

    page.select_option("#bulk-action", "status:resolved")
    page.click("[data-bulk] button")
    page.wait_for_selector(f".flash >> text=Resolved 2 conversations: #{first.pk}, #{second.pk}.")
    for conversation in (first, second):
        conversation.refresh_from_db()
        assert conversation.status == "resolved"
    expect(page.locator(".rows li[data-conversation]")).to_have_count(1)  # "Me too" is left


def test_a_live_refresh_that_fails_once_is_tried_again(asgi_server, browser, bob, api_inbox):
    """A busy server's one failed answer (a 502 from the proxy, a dropped connection) left
    the list stale until the next event, which on a quiet afternoon may be an hour."""
    page = signed_in(browser, asgi_server, bob)
    page.add_init_script(
        'document.addEventListener("threadline:refreshed", () => { window.refreshed = true; })'
    )
    page.goto(f"{asgi_server}/inbox/?view=teams")
    page.wait_for_function("() => window.refreshed")  # the socket is open: it fetched once
    expect(page.locator(".rows li[data-conversation]")).to_have_count(0)
    failed = []

    def fail_once(route):
        if failed:
            return route.continue_()
        failed.append(route.request.url)
        return route.fulfill(status=502, body="Bad gateway")

    page.route("**/inbox/?*partial=rows*", fail_once)
    arrive(asgi_server, api_inbox, "Is anyone there?")
    page.wait_for_selector(".rows li >> text=Is anyone there?")
    assert len(failed) == 1


def test_signed_out_in_another_tab_the_next_live_change_goes_to_the_sign_in_page(
    asgi_server, browser, bob, api_inbox
):
    """The live list fetched the sign-in page in place of its rows: the login form showed in
    the middle of the inbox until the socket's once-a-minute check closed it."""
    page = signed_in(browser, asgi_server, bob)
    page.add_init_script(
        'document.addEventListener("threadline:refreshed", () => { window.refreshed = true; })'
    )
    page.goto(f"{asgi_server}/inbox/?view=teams")
    page.wait_for_function("() => window.refreshed")  # the socket is open: it fetched once
    other = page.context.new_page()  # another tab of the same browser
    other.goto(f"{asgi_server}/inbox/")
    other.get_by_role("button", name="Sign out").click()
    other.wait_for_url("**/login/**")

    arrive(asgi_server, api_inbox, "Is anyone there?")
    page.wait_for_url(f"{asgi_server}/login/?next=%2Finbox%2F%3Fview%3Dteams")
    expect(page.locator("#id_username")).to_have_count(1)


def test_a_conversation_out_of_reach_says_so_at_its_next_change(
    asgi_server, browser, bob, api_inbox
):
    """Bob left the Support team while its conversation was on his screen: the page went on
    showing it, silently no longer brought up to date."""
    asked = receive(api_inbox, text="Where is my parcel?", address="jo@example.com")
    conversation = asked.message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.add_init_script(
        'document.addEventListener("threadline:refreshed", () => { window.refreshed = true; })'
    )
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.wait_for_function("() => window.refreshed")
    bob.team_memberships.all().delete()

    arrive(asgi_server, api_inbox, "Hello?")
    expect(page.get_by_role("alert")).to_have_text(
        "You can no longer see this conversation: what is shown is as it was. Back to the inbox"
    )
    expect(page.locator("#live")).not_to_contain_text("Hello?")
    expect(page.get_by_role("link", name="Back to the inbox")).to_have_attribute("href", "/inbox/")
    # Back in the team (a mistaken removal undone): the page is live again, and says so.
    TeamMembership.objects.create(team=api_inbox.default_team, user=bob)
    arrive(asgi_server, api_inbox, "Still there?")
    expect(page.locator("#live")).to_contain_text("Still there?")
    expect(page.get_by_role("alert")).to_have_count(0)


def arrive(server, inbox, text, sender="jo@example.com"):
    """A customer's message posted to the server's API channel, as an integration would: the
    server's own worker stores it and tells the open pages. (A message stored by this test
    process reaches no page in the SQLite leg, where no channel layer spans processes: it
    showed only when the page happened to fetch the list after it.)"""
    request = urllib.request.Request(  # noqa: S310 - our own test server
        f"{server}/channels/api/{inbox.pk}/messages",
        data=json.dumps({"id": uuid.uuid4().hex, "from": sender, "text": text}).encode(),
        headers={"Authorization": f"Bearer {inbox.secret}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:  # noqa: S310 - our own test server
        assert response.status == 202


def mail_in(server, inbox, conversation, text, sender="jo@example.com"):
    """A customer's email in `conversation` (by its number in the subject), posted to the
    server's MIME endpoint as an MTA would: the server's own worker stores it and tells the
    open pages (in this leg no channel layer spans processes)."""
    mail = EmailMessage()
    mail["From"], mail["To"] = sender, inbox.address
    mail["Subject"] = f"Re: Order [#{conversation.pk}]"
    mail.set_content(text)
    assert post_mime(server, inbox, bytes(mail)) == 202


def test_send_on_follows_the_channel_the_customer_moved_to(
    asgi_server, browser, bob, chat_inbox, email_inbox
):
    # The picker kept "Web chat" after the visitor went on by email; Send then answered in a
    # chat nobody had open.
    conversation = receive(chat_inbox, text="Hi from the chat", address="v1").message.conversation
    services.identity_add(
        customer=conversation.customer, kind=Channel.EMAIL, address="jo@example.com"
    )
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    expect(page.locator("#identity option:checked")).to_contain_text("Web chat")
    mail_in(asgi_server, email_inbox, conversation, "I left the site, write to me here")
    page.wait_for_selector(".timeline >> text=I left the site, write to me here")
    expect(page.locator("#identity option:checked")).to_contain_text("Email")
    expect(page.locator("[data-hint]")).to_have_text(
        "Sent by email, threaded with the customer's mail."
    )


def test_a_held_reply_keeps_what_arrived_marked_and_its_files(
    asgi_server, browser, bob, email_inbox, smtp_server, tmp_path
):
    first = receive(email_inbox, text="Is it shipped?", address="jo@example.com")
    conversation = first.message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.fill("#reply-text", "Yes, this morning: here is the receipt.")
    receipt = tmp_path / "receipt.txt"
    receipt.write_text("Order 10436, shipped")
    page.set_input_files("[name=files]", str(receipt))
    mail_in(asgi_server, email_inbox, conversation, "Actually, cancel it")
    page.wait_for_selector(".timeline >> text=Actually, cancel it")  # live, draft kept
    page.press("#reply-text", "Control+Enter")

    # Held, without a reload: what arrived is marked new, and stays so through the next live
    # refresh; the draft and its file are still there.
    expect(page.locator("[data-stale]")).to_be_visible()
    mail_in(asgi_server, email_inbox, conversation, "Or not, I am not sure")
    page.wait_for_selector(".timeline >> text=Or not, I am not sure")
    expect(page.locator("li.message.new")).to_have_count(1)
    assert "Actually, cancel it" in page.inner_text("li.message.new")
    assert page.input_value("#reply-text") == "Yes, this morning: here is the receipt."
    assert not Message.objects.filter(direction="outbound").exists()

    # Send again: held once more for the message that came meanwhile, then sent, file and all.
    page.press("#reply-text", "Control+Enter")
    expect(page.locator("li.message.new")).to_have_count(2)
    page.press("#reply-text", "Control+Enter")
    page.wait_for_selector(".message.outbound .badge >> text=Sent")
    (reply,) = Message.objects.filter(direction="outbound")
    assert [a.filename for a in reply.attachments.all()] == ["receipt.txt"]


def test_a_draft_survives_the_side_panel_and_is_sent_once(asgi_server, browser, bob, chat_inbox):
    conversation = receive(chat_inbox, text="My parcel is lost", address="v1").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.click('[name=mode][value="note"]')
    page.fill("#reply-text", "Check with the carrier first")
    page.select_option("#priority", "3")
    with page.expect_navigation():
        page.click('form[action$="/priority"] button')  # the whole page reloads
    page.wait_for_selector(".timeline >> text=Priority")
    assert page.input_value("#reply-text") == "Check with the carrier first"
    expect(page.locator('[name=mode][value="note"]')).to_be_checked()

    # Two sends in a row (an impatient double Ctrl+Enter) make one note; then the box is empty,
    # also on the next visit.
    with page.expect_navigation():
        page.evaluate(
            "() => { const f = document.querySelector('[data-composer]');"
            " f.requestSubmit(); f.requestSubmit(); }"
        )
    page.wait_for_selector(".message.note >> text=Check with the carrier first")
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    assert page.input_value("#reply-text") == ""
    assert Message.objects.filter(direction="note").count() == 1


def test_a_draft_follows_into_another_tab_of_the_same_conversation(
    asgi_server, browser, bob, chat_inbox
):
    """The conversation open in two tabs: the other showed an empty box, and a key typed
    there replaced the draft, so that a reload of the first brought back only that key."""
    conversation = receive(chat_inbox, text="My parcel is lost", address="v1").message.conversation
    first = signed_in(browser, asgi_server, bob)
    first.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    second = first.context.new_page()
    second.goto(f"{asgi_server}/inbox/{conversation.pk}/")

    first.click('[name=mode][value="note"]')
    first.click("#reply-text")
    first.keyboard.type("Check with the carrier first")
    expect(second.locator("#reply-text")).to_have_value("Check with the carrier first")
    expect(second.locator('[name=mode][value="note"]')).to_be_checked()
    second.click("#reply-text")
    second.keyboard.press("End")
    second.keyboard.type(", then refund")
    first.reload()
    expect(first.locator("#reply-text")).to_have_value("Check with the carrier first, then refund")

    first.press("#reply-text", "Control+Enter")  # sent from the first: the second empties
    first.wait_for_selector(".message.note >> text=then refund")
    expect(second.locator("#reply-text")).to_have_value("")


def test_back_after_sending_then_send_asks_before_sending_it_twice(
    asgi_server, browser, bob, chat_inbox
):
    conversation = receive(chat_inbox, text="Refund?", address="v1").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.fill("#reply-text", "Refunded today.")
    with page.expect_navigation():
        page.click("[data-composer] button[type=submit]")
    page.wait_for_selector(".message.outbound >> text=Refunded today.")
    # Back to the page as it was before sending (kept by the browser, its client id with
    # it), and Send: it went already, and goes once.
    page.go_back()
    page.wait_for_selector("#reply-text")
    if not page.input_value("#reply-text"):
        page.fill("#reply-text", "Refunded today.")
    with page.expect_navigation():
        page.click("[data-composer] button[type=submit]")
    assert conversation.messages.filter(text="Refunded today.").count() == 1
    # The page loaded anew (a new client id), the same text in the box: held, saying so.
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.fill("#reply-text", "Refunded today.")
    with page.expect_navigation():
        page.click("[data-composer] button[type=submit]")
    expect(page.locator("[data-stale]")).to_contain_text("you already sent this same reply")
    # The page sent back says its own address: reloading it does not post the form again.
    assert page.url == f"{asgi_server}/inbox/{conversation.pk}/"
    assert page.input_value("#reply-text") == "Refunded today."
    assert conversation.messages.filter(text="Refunded today.").count() == 1
    with page.expect_navigation():  # meant: sent again
        page.click("[data-composer] button[type=submit]")
    page.wait_for_selector(".message.outbound >> nth=1")
    assert conversation.messages.filter(text="Refunded today.").count() == 2


def test_a_name_or_subject_of_one_long_word_does_not_push_the_page_sideways(
    asgi_server, browser, bob, mail_inbox
):
    long = "Aurelianomaximilianodelostremedios" * 6
    pdf = services.InboundAttachment(f"{long}.pdf", "application/pdf", b"%PDF-1.4 ...")
    conversation = receive(
        mail_inbox, text="Hi", address="a@example.com", name=long, subject=long, attachments=(pdf,)
    ).message.conversation
    page = signed_in(browser, asgi_server, bob)
    wider = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    for path in (
        "?view=unassigned",
        f"{conversation.pk}/",
        f"customers/{conversation.customer_id}/",
    ):
        page.goto(f"{asgi_server}/inbox/{path}")
        page.wait_for_selector(f"text={long[:30]}")
        assert page.evaluate(wider) <= 0, path


def test_at_200_percent_zoom_the_list_starts_on_the_first_screen(
    asgi_server, browser, bob, chat_inbox
):
    """A 1280x900 laptop window at 200% zoom is 640x450: the side bar's views, saved views
    and inboxes, each a line under its heading, took all of it, and no conversation showed
    without scrolling."""
    receive(chat_inbox, text="My parcel is lost", address="v1")
    page = signed_in(browser, asgi_server, bob)
    page.set_viewport_size({"width": 640, "height": 450})
    page.goto(f"{asgi_server}/inbox/?view=teams")
    row = page.locator(".rows li[data-conversation]").first.bounding_box()
    assert row["y"] + 40 <= 450  # its number, customer and badges at least
    wider = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(wider) <= 0
    # All still there: the inboxes scroll into view along the line, the headings are read.
    page.get_by_role("link", name="Website chat").focus()
    assert page.get_by_role("link", name="Website chat").bounding_box()["x"] < 640
    assert page.get_by_role("heading", name="Inboxes").count() == 1


def test_a_draft_moves_to_the_conversation_its_own_was_merged_into(
    asgi_server, browser, alice, bob, chat_inbox
):
    """Bob writes in #A while Alice merges #A into #B: his page says so, and what he wrote
    waits in #B's reply box, after the draft he had begun there."""
    source = receive(chat_inbox, text="Parcel lost", address="v1").message.conversation
    services.conversation_set_status(conversation=source, status="closed")
    target = receive(chat_inbox, text="Any news?", address="v1").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{target.pk}/")
    page.fill("#reply-text", "Checking with the carrier.")
    page.goto(f"{asgi_server}/inbox/{source.pk}/")
    page.fill("#reply-text", "Here is your tracking number")
    theirs = signed_in(browser, asgi_server, alice)
    theirs.goto(f"{asgi_server}/inbox/{source.pk}/")
    theirs.fill("#reply-text", "Alice's half reply")
    with page.expect_navigation():
        theirs.fill("#merge-into", str(target.pk))
        theirs.check("#merge [name=confirm]")
        theirs.click("#merge button")
    expect(page.locator("[data-merged-into]")).to_contain_text(
        f"What you were writing waits in #{target.pk}'s reply box."
    )
    # Alice, who merged, is on the conversation that has it all now, and stays there.
    expect(theirs.get_by_text(f"#{source.pk} was merged into this conversation")).to_be_visible()
    theirs.wait_for_load_state("networkidle")
    assert theirs.evaluate("location.pathname") == f"/inbox/{target.pk}/"
    expect(theirs.locator("#reply-text")).to_have_value("Alice's half reply")  # it came along
    expect(page.locator("#reply-text")).to_have_count(0)
    page.goto(f"{asgi_server}/inbox/{target.pk}/")
    assert page.input_value("#reply-text") == (
        "Checking with the carrier.\n\nHere is your tracking number"
    )


def test_a_reply_sent_just_before_a_merge_does_not_come_back_as_a_draft(
    asgi_server, browser, alice, bob, chat_inbox
):
    """Bob pressed Send in #A (the composer kept the text, marked as going out) and the reply
    went, but the page that would show it never loaded: the merge landed first. The reply
    moved to #B with the messages; its text must not wait there to be sent twice."""
    source = receive(chat_inbox, text="Parcel lost", address="v1").message.conversation
    services.conversation_set_status(conversation=source, status="closed")
    target = receive(chat_inbox, text="Any news?", address="v1").message.conversation
    services.reply_send(conversation=source, author=bob, text="Tracking: 123", client_id="c-1")
    services.conversation_merge(source=source, target=target, actor=alice)
    page = signed_in(browser, asgi_server, bob)
    page.evaluate(
        "(key) => localStorage.setItem(key, JSON.stringify("
        "{text: 'Tracking: 123', mode: 'reply', at: Date.now(), sending: 'c-1'}))",
        f"threadline:draft:{bob.pk}:{source.pk}",
    )
    page.goto(f"{asgi_server}/inbox/{source.pk}/")
    expect(page.locator("[data-merged-into]")).not_to_contain_text("What you were writing")
    page.goto(f"{asgi_server}/inbox/{target.pk}/")
    assert page.input_value("#reply-text") == ""


def test_walking_the_availability_with_the_keyboard_changes_it_only_on_enter(
    asgi_server, browser, bob
):
    page = signed_in(browser, asgi_server, bob)
    with page.expect_navigation():
        page.select_option("#availability", "away")  # picked with the mouse: applied at once
    expect(page.locator("#availability")).to_have_value("away")
    bob.refresh_from_db()
    assert bob.availability == "away"

    page.focus("#availability")
    page.keyboard.press("ArrowDown")  # on the way somewhere: nothing happens yet
    expect(page.locator("#availability")).to_have_value("offline")
    bob.refresh_from_db()
    assert bob.availability == "away"
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator("#availability")).to_have_value("online")
    bob.refresh_from_db()
    assert bob.availability == "online"


def test_a_customers_picture_shows_in_the_timeline(asgi_server, browser, bob, chat_inbox):
    from conversations.services import InboundAttachment
    from tests.channels_adapters.test_webchat_browser import PNG

    photo = InboundAttachment("scratch.png", "image/png", PNG)
    receipt = InboundAttachment("receipt.pdf", "application/pdf", b"%PDF-1.4\n%%EOF\n")
    conversation = receive(
        chat_inbox, text="It arrived scratched", attachments=(photo, receipt)
    ).message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    picture = page.locator(".attachments img.picture")
    expect(picture).to_have_count(1)  # the picture, not the PDF
    expect(picture).to_have_js_property("naturalWidth", 1)  # loaded, under the page's CSP
    expect(page.locator(".attachments a", has_text="scratch.png")).to_be_visible()


def test_what_a_sender_hid_stays_hidden_and_what_the_agent_opened_stays_open(
    asgi_server, browser, bob, dana, mail_inbox
):
    from tests.channels_adapters.test_email import pipe

    newsletter = (
        "From: Ana <ana@example.com>\r\nTo: support@acme.example\r\nSubject: Order 5521\r\n"
        "Message-ID: <n1@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n"
        '<div style="display: none !important; max-height: 0">Preview: 20% off today</div>'
        "<p>My order 5521 never came.</p>"
        '<span style="color: red; font-weight: bold">Please help.</span>'
    )
    pipe(mail_inbox, newsletter.encode())
    conversation = mail_inbox.conversations.get()
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    page.get_by_text("As the sender formatted it").click()

    # A teammate's change refreshes Bob's page live while he reads the mail.
    theirs = signed_in(browser, asgi_server, dana)
    theirs.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    theirs.select_option("#priority", "3")
    theirs.click('form[action$="/priority"] button')
    expect(page.locator("#priority")).to_have_value("3")

    # innerText is what the page shows: the hidden preheader is not in it.
    opened, shown = page.locator(".formatted .html").evaluate(
        "html => [html.closest('details').open, html.innerText]"
    )
    assert opened
    assert "My order 5521 never came." in shown
    assert "Please help." in shown  # a style that hides nothing hides nothing
    assert "20% off" not in shown


def test_a_view_is_saved_with_the_filters_on_screen(asgi_server, browser, bob, chat_inbox):
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/?view=mine")
    page.select_option("form.filters [name=channel]", "email")
    page.select_option("form.filters [name=priority]", "2")  # chosen, Apply not pressed
    page.fill("#view-name", "High email")
    page.press("#view-name", "Enter")
    expect(page.get_by_text("Saved the view “High email”.")).to_be_visible()
    saved = bob.saved_views.get()
    wanted = {"view": "mine", "channel": "email", "priority": "2"}
    assert wanted.items() <= QueryDict(saved.query).dict().items()
    expect(page.locator("form.filters [name=channel]")).to_have_value("email")  # shown applied


def test_after_whatsapps_window_closed_the_agent_sends_an_approved_template(
    asgi_server, browser, bob, support
):
    from datetime import timedelta

    from django.utils import timezone

    from conversations.models import Inbox

    inbox = Inbox.objects.create(
        name="Acme on WhatsApp",
        kind=Channel.WHATSAPP,
        address="+15550783881",
        default_team=support,
        settings={
            "phone_number_id": "1055",
            "templates": [
                {"name": "order_update", "language": "pt_BR", "body": "Há novidades do pedido."}
            ],
        },
    )
    asked = receive(inbox, text="Oi, e o meu pedido?", address="+5511987654321").message
    Message.objects.filter(pk=asked.pk).update(created_at=timezone.now() - timedelta(days=2))
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{asked.conversation_id}/")
    # Said before a word is written: free text would not go; a template would.
    expect(page.locator("[data-hint]")).to_contain_text("Pick an approved template instead.")
    box = page.get_by_role("combobox", name="Message")  # with its suggestions
    box.fill("Olá João")
    template = page.get_by_role("combobox", name="Approved template")
    template.select_option("order_update|pt_BR")
    expect(box).to_have_value("Há novidades do pedido.")  # what goes, as João will read it
    expect(box).not_to_be_editable()
    template.select_option("")  # changed their mind: what they typed comes back
    expect(box).to_have_value("Olá João")
    template.select_option("order_update|pt_BR")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("li.message.outbound")).to_contain_text("Há novidades do pedido.")


def test_a_page_says_it_is_not_live_while_redis_is_down(
    server_without_redis, browser, client, bob, api_inbox
):
    """Its socket cannot open (the server's Redis refuses it): the page says it shows what it
    showed when it loaded, rather than go stale without a word."""
    conversation = receive(api_inbox, text="Where is my order?").message.conversation
    client.force_login(bob)  # signing in counts attempts in Redis: a session made here
    page = browser.new_page()
    session = client.cookies["sessionid"].value
    page.context.add_cookies([{"name": "sessionid", "value": session, "url": server_without_redis}])

    page.goto(f"{server_without_redis}/inbox/{conversation.pk}/")

    expect(page.get_by_role("status")).to_have_text(
        "Not live: reconnecting. What is shown may be out of date."
    )
    expect(page.locator("#live")).to_contain_text("Where is my order?")
