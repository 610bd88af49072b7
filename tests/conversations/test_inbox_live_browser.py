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
