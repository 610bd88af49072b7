"""The agent inbox kept live and safe for agents working side by side, in real headless
Chromium against the real ASGI server (see test_inbox_browser.py). Playwright's waits end when
the page shows the awaited state; its clock stands in for the page's 30-second pings."""

import pytest
from playwright.sync_api import expect

from conversations import services
from tests.conftest import receive, signed_in
from tests.conversations.test_consumers import while_redis_is_down

pytestmark = pytest.mark.django_db(transaction=True)

REFRESHED = 'document.addEventListener("threadline:refreshed", () => { window.refreshed = true; })'


def test_the_list_catches_up_on_a_change_whose_event_was_lost(
    asgi_server, browser, bob, dana, chat_inbox, settings
):
    """Its socket stayed open while Redis was down on the server: the event of Dana's change
    never came, and the list showed the conversation as open until the next change."""
    resolved = receive(chat_inbox, text="Order 1 is late", address="v1").message.conversation
    other = receive(chat_inbox, text="Order 2 is late", address="v2").message.conversation
    page = signed_in(browser, asgi_server, bob)
    page.clock.install()
    page.add_init_script(REFRESHED)
    page.goto(f"{asgi_server}/inbox/?view=teams")
    page.wait_for_function("() => window.refreshed")  # the socket is open: it fetched once
    pick = page.locator(f'.rows li[data-conversation="{other.pk}"] .pick')
    pick.focus()

    while_redis_is_down(
        settings,
        lambda: services.conversation_set_status(
            conversation=resolved, status="resolved", actor=dana
        ),
    )
    page.clock.fast_forward("00:31")  # the page's next ping

    expect(page.locator(f'.rows li[data-conversation="{resolved.pk}"]')).to_have_count(0)
    expect(page.locator('[data-count="teams"]')).to_have_text("1")
    expect(pick).to_be_focused()  # the agent's place is kept through the refresh


def test_after_a_bulk_action_the_agent_is_back_on_the_same_page_of_the_same_list(
    asgi_server, browser, bob, chat_inbox
):
    """An agent working through page 2 of a filtered, sorted list resolved two conversations
    and was sent to page 1, its top, with the focus nowhere."""
    conversations = [
        receive(chat_inbox, text=f"Order {i} is late", address=f"v{i}").message.conversation
        for i in range(54)
    ]
    oldest = conversations[:4]  # page 2, newest first: 3, 2, 1, 0
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/?view=teams&channel=webchat&sort=priority")
    page.click("text=Next page →")
    expect(page.locator(".rows li[data-conversation]")).to_have_count(4)
    second_page = page.url
    page.check(f'.rows li[data-conversation="{oldest[2].pk}"] .pick')
    page.check(f'.rows li[data-conversation="{oldest[1].pk}"] .pick')
    page.select_option("#bulk-action", "status:resolved")
    page.click("[data-bulk] button")

    expect(page.locator(".flash")).to_have_text(
        f"Resolved 2 conversations: #{oldest[1].pk}, #{oldest[2].pk}."
    )
    # The same page of the same list: what is left of it, its filters and sort on screen.
    assert "after=" in page.url and page.url.split("after=")[1] == second_page.split("after=")[1]
    rows = page.locator(".rows li[data-conversation]")
    expect(rows).to_have_count(2)
    assert [rows.nth(i).get_attribute("data-conversation") for i in (0, 1)] == [
        str(oldest[3].pk),
        str(oldest[0].pk),
    ]
    expect(page.locator("select[name=channel]")).to_have_value("webchat")
    expect(page.locator("select[name=sort]")).to_have_value("priority")
    # The focus on the row now where the first one picked was: the next to work on.
    expect(page.locator(f'.rows li[data-conversation="{oldest[0].pk}"] a')).to_be_focused()
    page.keyboard.press("x")  # and the keys go on from there
    expect(page.locator(f'.rows li[data-conversation="{oldest[0].pk}"] .pick')).to_be_checked()


def test_the_customer_card_follows_what_a_teammate_changes(
    asgi_server, browser, bob, dana, chat_inbox
):
    """Dana names the customer, gives them an address and blocks them from her own pages:
    Bob's open conversation showed the profile as it was when he opened it."""
    conversation = receive(chat_inbox, text="Hi, it's Jo", address="v1").message.conversation
    customer = conversation.customer
    mine = signed_in(browser, asgi_server, bob)
    mine.add_init_script(REFRESHED)
    mine.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    mine.wait_for_function("() => window.refreshed")  # the socket is open
    card = mine.locator("aside [data-customer]")
    mine.fill("#reply-text", "Hello Jo")  # Bob writes meanwhile

    theirs = signed_in(browser, asgi_server, dana)
    theirs.goto(f"{asgi_server}/inbox/customers/{customer.pk}/")
    theirs.click("text=Edit profile")
    theirs.fill("#customer-name", "Jo <b>Lee</b>")
    theirs.click("#edit-profile button[type=submit]")
    expect(card).to_contain_text("Jo <b>Lee</b>")  # as text, never as markup
    theirs.fill("#add-address input[name=address]", "jo@example.com")
    theirs.click("#add-address button[type=submit]")
    expect(card).to_contain_text("jo@example.com")
    theirs.on("dialog", lambda dialog: dialog.accept())
    theirs.click("text=Block sender")
    expect(card.locator(".badge.failed")).to_have_text("blocked")
    expect(card.get_by_role("button", name="Unblock")).to_be_visible()
    assert mine.input_value("#reply-text") == "Hello Jo"


def test_a_reply_over_a_teammates_change_is_said_live_and_held_once(
    asgi_server, browser, bob, dana, chat_inbox
):
    """Bob writes while Dana, on the same conversation, resolves it: his page showed one
    more line in the timeline, and his reply went out on a conversation he thought open."""
    conversation = receive(chat_inbox, text="Where is my parcel?").message.conversation
    mine = signed_in(browser, asgi_server, bob)
    mine.add_init_script(REFRESHED)
    mine.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    mine.wait_for_function("() => window.refreshed")
    mine.fill("#reply-text", "It left the warehouse today.")

    theirs = signed_in(browser, asgi_server, dana)
    theirs.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    expect(mine.locator("[data-presence]")).to_have_text("Dana is viewing")
    theirs.select_option("#status", "resolved")
    theirs.click('form[action$="/status"] button')

    notice = mine.get_by_role("status").filter(has_text="Since you opened")
    expect(notice).to_have_text(
        "Since you opened this conversation: Status changed by Dana: resolved."
    )
    mine.get_by_role("button", name="Send", exact=True).click()
    held = mine.locator("[data-stale]")
    expect(held).to_be_visible()
    expect(held).to_contain_text("while you were writing, the conversation changed")
    expect(mine.locator("li.event.new")).to_contain_text("Status changed by Dana")
    assert not conversation.messages.filter(direction="outbound").exists()

    mine.get_by_role("button", name="Send", exact=True).click()  # meant: sent as it is
    expect(mine.locator("li.message.outbound")).to_contain_text("It left the warehouse today.")
    conversation.refresh_from_db()
    assert conversation.status == "resolved"  # not reopened behind Dana's back
