"""The chat widget in real headless Chromium, embedded in a shop's page on another origin (served
under a strict CSP without 'unsafe-inline'), against the real ASGI server (uvicorn, WebSockets,
its embedded Celery worker) and a real SMTP server. Playwright's waits end when the page shows
the awaited state, and mail is awaited as it arrives; timeouts only bound a test that would
otherwise hang. With SCREENSHOTS=1 the screenshots are written to docs/ (else to a temporary
folder, so that code still runs)."""

import base64
import html
import json
import os
import re
import threading
import urllib.request
from datetime import UTC, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from channels_adapters.webchat import chat
from conversations import services
from conversations.models import Channel, Conversation, Inbox, Message, Visitor
from routing.models import BusinessHours, BusinessInterval, Holiday
from tests.conftest import ROOT, signed_in

pytestmark = pytest.mark.django_db(transaction=True)

# A 1×1 PNG, as a phone camera would send a (much larger) one.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class Shop:
    """A customer's website: one page with the widget's snippet on another origin (another
    loopback port), under the strict CSP a careful site has: no inline script or style."""

    def __init__(self):
        self.page = b""
        self.policy = ""
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path != "/":
                    self.send_response(204)  # the favicon: nothing, without an error
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Security-Policy", shop.policy)
                self.end_headers()
                self.wfile.write(shop.page)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def embed(self, base: str, inbox, **data) -> str:
        """Put the widget of `inbox` on the page, served by `base`; returns the page's URL."""
        sockets = base.replace("http", "ws", 1)
        self.policy = "; ".join(
            [
                "default-src 'none'",
                f"script-src {base}",
                f"style-src {base}",
                f"img-src {base}",
                f"connect-src {base} {sockets}",
                "base-uri 'none'",
                "form-action 'none'",
            ]
        )
        extra = "".join(f' data-{k.replace("_", "-")}="{html.escape(v)}"' for k, v in data.items())
        self.page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Acme shop</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
            "<body><h1>Acme shop</h1><p>Kettles, grinders and mugs.</p>"
            f'<script src="{base}/widget.js" data-inbox="{inbox.widget_key}"{extra} async>'
            "</script></body></html>"
        ).encode()
        return f"{self.origin}/"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def shop():
    site = Shop()
    yield site
    site.close()


@pytest.fixture
def widget(chat_inbox, shop):
    """The web-chat inbox, allowed on the shop's site; replies go by email as soon as the
    visitor has no page with the widget open."""
    chat_inbox.settings = {"allowed_origins": [shop.origin], "email_after_minutes": 0}
    chat_inbox.save()
    return chat_inbox


class Arrivals(list):
    """The SMTP server's received mail, telling waiters when some arrives (aiosmtpd's thread
    appends), so a test waits for the mail itself rather than for a time."""

    def __init__(self):
        super().__init__()
        self.changed = threading.Condition()

    def append(self, envelope):
        with self.changed:
            super().append(envelope)
            self.changed.notify_all()

    def wait(self, count: int, timeout: float = 90):
        # The bound covers the worst case: the reply raced the socket's close, and the
        # once-a-minute sweep sends it instead.
        with self.changed:
            arrived = self.changed.wait_for(lambda: len(self) >= count, timeout)
        assert arrived, f"{len(self)} of {count} mails arrived in {timeout}s"


def arrivals(smtp_server) -> Arrivals:
    smtp_server.received = Arrivals()
    return smtp_server.received


def watch(page) -> list[str]:
    """What a careful host would see go wrong: CSP violations and script errors."""
    problems = []
    page.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


def open_chat(page, title="Website chat"):
    page.get_by_role("button", name=re.compile("^Open the chat")).click()
    panel = page.get_by_role("dialog", name=title)
    expect(panel).to_be_visible()
    return panel


def write(panel, text):
    """The visitor writes `text` in the widget and sends it with Enter."""
    box = panel.get_by_label("Write a message…")
    box.fill(text)
    box.press("Enter")


def with_token(page, inbox, visitor):
    """The browser already chatted as `visitor`: its token is in the site's localStorage."""
    key, token = (
        json.dumps(f"threadline:{inbox.widget_key}"),
        json.dumps(chat.visitor_token(visitor)),
    )
    page.context.add_init_script(f"localStorage.setItem({key}, {token})")


def agent_reply(page, text: str):
    """The agent answers with the composer. In a live chat, what the page showed while he wrote
    counts as read: the reply is not held for it."""
    page.fill("#reply-text", text)
    page.press("#reply-text", "Control+Enter")
    expect(page.locator(".message.outbound").filter(has_text=text)).to_be_visible()
    expect(page.locator("[data-stale]")).to_be_hidden()


def answer_by_email(sent, text: str) -> bytes:
    """What the visitor's mail program sends when they answer the mail `sent`."""
    mail = EmailMessage()
    mail["From"] = "Ana <ana@example.com>"
    mail["To"] = sent["Reply-To"]
    mail["Subject"] = f"Re: {sent['Subject'].strip()}"
    mail["Message-ID"] = make_msgid(domain="example.com")
    mail["In-Reply-To"] = sent["Message-ID"]
    mail["References"] = sent["Message-ID"]
    quoted = "\n".join(f"> {line}" for line in sent.get_body(("plain",)).get_content().splitlines())
    mail.set_content(f"{text}\n\nOn Monday, Acme Support wrote:\n{quoted}\n")
    return mail.as_bytes()


def post_mime(base: str, inbox, raw: bytes) -> int:
    """The mail service hands the raw reply to the email inbox's MIME endpoint."""
    request = urllib.request.Request(  # noqa: S310 - our own test server
        f"{base}/channels/email/{inbox.pk}/mime",
        data=raw,
        headers={"Authorization": f"Bearer {inbox.secret}", "Content-Type": "message/rfc822"},
    )
    with urllib.request.urlopen(request) as response:  # noqa: S310 - our own test server
        return response.status


def screenshot(page, name: str, tmp_path, **options):
    folder = ROOT / "docs" if os.environ.get("SCREENSHOTS") else tmp_path
    page.screenshot(path=str(folder / name), **options)


def test_a_chat_goes_live_then_follows_the_visitor_by_email_and_back_into_the_widget(
    asgi_server, browser, bob, widget, shop, email_inbox, smtp_server, tmp_path
):
    widget.settings |= {"prechat_name": "optional", "prechat_email": "required"}
    widget.save()
    bob.availability = "online"
    bob.last_seen_at = timezone.now()
    bob.save()
    mail = arrivals(smtp_server)
    url = shop.embed(asgi_server, widget)

    # On the shop's page the visitor opens the chat; this inbox wants an email first.
    visitor = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US")
    problems = watch(visitor)
    visitor.goto(url)
    panel = open_chat(visitor)
    expect(panel).to_have_attribute("aria-modal", "false")  # floating: the page stays usable
    expect(panel.locator(".availability")).to_have_text("Online — we reply in minutes")
    box = panel.get_by_label("Write a message…")
    expect(box).to_be_hidden()
    panel.get_by_role("button", name="Start the chat").click()
    expect(panel.get_by_role("alert")).to_have_text("This field is required.")
    panel.get_by_label("Your name").fill("Ana")
    panel.get_by_label("Your email").fill("ana@example.com")
    panel.get_by_role("button", name="Start the chat").click()
    expect(box).to_be_focused()
    box.fill("Hi! Can I change the colour of order 1042?")
    box.press("Enter")
    first = panel.locator("li.message.customer[data-id]").filter(has_text="order 1042")
    expect(first).to_be_visible()
    assert Visitor.objects.get().email == "ana@example.com"

    # Bob opens the conversation: the visitor sees that he has read it.
    conversation = Conversation.objects.get()
    agent = signed_in(browser, asgi_server, bob)
    agent.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    expect(first.locator(".seen")).to_have_text("Seen")
    # What is added to the chat (a live region) is read out: "Seen" is not added again below.
    visitor.evaluate(
        """() => {
            window.added = [];
            const list = document.querySelector("threadline-chat").shadowRoot.querySelector("ol");
            new MutationObserver((changes) => changes.forEach((change) =>
                change.addedNodes.forEach((node) => window.added.push(node.textContent))
            )).observe(list, { childList: true, subtree: true });
        }"""
    )
    on_site = agent.locator("aside [data-visitors]")
    expect(on_site).to_contain_text("on the site now")

    # Live both ways: his answer is announced by "typing" while he writes it, her next message
    # appears on his page as she sends it, and his reply, written before it came, still goes
    # at once: in a live chat what his page showed him counts as read.
    agent.fill("#reply-text", "Yes! I can make it green; shall I?")
    expect(panel.locator(".typing")).to_have_text("Bob is typing…")
    assert visitor.evaluate("window.added") == []
    box.fill("It is the blue kettle.")
    box.press("Enter")
    expect(agent.locator(".message.inbound").filter(has_text="the blue kettle")).to_be_visible()
    agent_reply(agent, "Yes! I can make it green; shall I?")
    answer = panel.locator("li.message.agent[data-id]").filter(has_text="make it green")
    expect(answer.locator(".author")).to_have_text("Bob")
    expect(panel.locator(".typing")).to_be_hidden()
    # She has the chat open, so his page says she read it.
    read = agent.locator(".message.outbound").filter(has_text="make it green")
    expect(read.locator(".badge", has_text="Read")).to_be_visible()
    screenshot(visitor, "widget-live.png", tmp_path)
    assert not problems

    # She closes the page. His next answer follows her by email, through the real SMTP server.
    context = visitor.context
    visitor.close()
    expect(on_site).to_contain_text("last seen")  # his page follows, without a reload
    agent_reply(agent, "Done: order 1042 is now green. Anything else?")
    mail.wait(1)
    (sent,) = smtp_server.messages()
    assert sent["To"] == "ana@example.com"
    body = sent.get_body(("plain",)).get_content()
    assert "order 1042 is now green" in body
    assert "make it green" not in body  # she read that one in the chat
    expect(agent.locator(".timeline")).to_contain_text(
        "the visitor left; replies go by email to ana@example.com"
    )

    # She answers the email; her mail service hands it to the email inbox, the worker threads it.
    raw = answer_by_email(sent, "Perfect, thank you! Green is great.")
    assert post_mime(asgi_server, email_inbox, raw) == 202
    expect(agent.locator(".message.inbound").filter(has_text="Green is great")).to_be_visible()

    # Back on the shop's site (same browser, so the same token): the whole thread, once each.
    visitor = context.new_page()
    problems = watch(visitor)
    visitor.goto(url)
    panel = open_chat(visitor)
    thread = panel.locator("li.message[data-id]")
    expect(thread).to_have_count(5)
    expect(thread).to_contain_text(
        [
            "order 1042?",
            "the blue kettle",
            "make it green",
            "order 1042 is now green",
            "Perfect, thank you! Green is great.",
        ]
    )
    expect(thread.last.locator(".meta")).to_contain_text("by email")
    expect(thread.last).not_to_contain_text("Acme Support wrote")  # the quoted mail is cut off
    expect(panel.get_by_label("Your email")).to_be_hidden()
    assert not problems

    # On her phone, another browser: the link in the mail opens the same chat, on our page.
    link = re.search(r"(http\S+)#threadline-chat=\S+", body)
    assert link.group(1) == f"{asgi_server}/widget/{widget.widget_key}/"
    assert f'<a href="{link.group(0)}">' in sent.get_body(("html",)).get_content()
    phone = browser.new_page(viewport={"width": 375, "height": 667}, locale="en-US")
    problems = watch(phone)
    phone.goto(link.group(0))
    thread = phone.get_by_role("dialog", name="Website chat").locator("li.message[data-id]")
    expect(thread).to_have_count(5)
    expect(thread.last).to_contain_text("Green is great")
    assert phone.url == link.group(1)  # the key is out of the address bar and the history
    assert not problems

    # The agent's timeline has all of it, and how the chat went on by email.
    timeline = agent.locator(".timeline")
    for text in ("order 1042?", "blue kettle", "make it green", "now green", "Green is great"):
        expect(timeline).to_contain_text(text)
    assert Message.objects.filter(direction="inbound", channel="email").count() == 1
    screenshot(agent, "agent-chat.png", tmp_path, full_page=True)


def test_offline_it_says_when_we_answer_and_asks_where_to_email(
    asgi_server, browser, widget, shop, tmp_path
):
    # Open 02:00-17:00 UTC every day but today and tomorrow; no agent is online anyway.
    schedule = BusinessHours.objects.create(name="Shop hours", timezone="UTC")
    BusinessInterval.objects.bulk_create(
        BusinessInterval(schedule=schedule, weekday=day, opens=time(2), closes=time(17))
        for day in range(7)
    )
    today = timezone.now().date()
    Holiday.objects.bulk_create(
        Holiday(schedule=schedule, date=today + timedelta(days=n)) for n in (0, 1)
    )
    widget.business_hours = schedule
    widget.expected_reply_minutes = 180  # set by hand: no cached estimate of another test's
    widget.settings |= {"prechat_name": "off", "prechat_email": "off"}
    widget.save()
    back = datetime.combine(today + timedelta(days=2), time(2), tzinfo=UTC)
    assert chat.availability(widget)["opens_at"] == back.isoformat()
    url = shop.embed(asgi_server, widget)

    # A German browser: we ship no German, so the widget speaks English, its dates too (they
    # read "We are back Dienstag").
    visitor = browser.new_page(
        viewport={"width": 1100, "height": 760}, locale="de-DE", timezone_id="America/New_York"
    )
    problems = watch(visitor)
    visitor.goto(url)
    panel = open_chat(visitor)
    expect(visitor.locator("threadline-chat .root")).to_have_attribute("lang", "en")
    availability = panel.locator(".availability")
    # Closed: when we are back, then the usual reply time counted from then.
    # In her own time zone and calendar: 02:00 UTC is the evening before in New York, which
    # may be tomorrow there ("today" and "tomorrow" rather than a weekday, said with "at").
    new_york = ZoneInfo("America/New_York")
    local = back.astimezone(new_york)
    days = (local.date() - timezone.now().astimezone(new_york).date()).days
    when = {0: "today at", 1: "tomorrow at"}.get(days, local.strftime("%A"))
    expect(availability).to_have_text(
        re.compile(f"^We are back {when} .*We reply by email, usually within 3 hours of opening$")
    )
    # "By email" is promised once there is an address to write to.
    no_rush = panel.get_by_text("No rush: we will answer here and by email.")
    expect(no_rush).to_be_hidden()

    write(panel, "Do you ship to the Azores?")
    expect(panel.locator("li.message.customer[data-id]")).to_have_text(re.compile("Azores"))
    email = panel.get_by_label("Leave your email so our answer reaches you if you go:")
    expect(email).to_be_visible()
    screenshot(visitor, "widget-offline.png", tmp_path)

    email.fill("jo at example")
    panel.get_by_role("button", name="Save").click()
    expect(panel.get_by_role("alert")).to_have_text("Please enter a valid email address.")
    email.fill("jo@example.com")
    panel.get_by_role("button", name="Save").click()
    expect(
        panel.get_by_text("We will email you at jo@example.com if you have left.")
    ).to_be_visible()
    expect(no_rush).to_be_visible()
    expect(email).to_be_hidden()
    assert Visitor.objects.get().email == "jo@example.com"
    assert not problems


def test_her_address_on_a_new_device_says_her_earlier_chat_is_a_mail_away(
    asgi_server, browser, widget, shop
):
    widget.settings |= {"prechat_name": "off", "prechat_email": "off"}
    widget.save()
    # Jo chatted yesterday on her laptop, and left her address there.
    laptop = chat.visitor_contact(chat.visitor_session(inbox=widget), email="jo@example.com")
    chat.visitor_message(laptop, text="Do you ship to the Azores?", client_id="a")
    # Today, on her phone, the widget is new to her. Nobody is online: it asks for her email.
    page = browser.new_page(locale="en-US")
    page.goto(shop.embed(asgi_server, widget))
    panel = open_chat(page)
    write(panel, "And to Madeira?")
    email = panel.get_by_label("Leave your email so our answer reaches you if you go:")
    email.fill("jo@example.com")
    panel.get_by_role("button", name="Save").click()
    expect(
        panel.get_by_text(
            "We will email you at jo@example.com once we have checked it is yours. If it "
            "chatted with us before, a link to go on with that chat is on its way there."
        )
    ).to_be_visible()


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_a_mistyped_optional_email_is_asked_again_as_typed(
    asgi_server, browser, widget, shop, bob, online
):
    widget.settings |= {"prechat_name": "off", "prechat_email": "optional"}
    widget.save()
    if online:  # no "No rush" note to hold the address: it was dropped, with nothing to fix
        bob.availability = "online"
        bob.last_seen_at = timezone.now()
        bob.save()
    page = browser.new_page(locale="en-US")
    page.goto(shop.embed(asgi_server, widget))
    panel = open_chat(page)
    expect(panel.locator(".availability")).to_contain_text("Online" if online else "by email")
    # The address may be left out: the label says so, and the message box has the focus.
    expect(panel.get_by_label("Write a message…")).to_be_focused()
    panel.get_by_label("Your email (optional)").fill("jo@example")
    write(panel, "Do you ship to the Azores?")
    expect(panel.locator("li.message.customer[data-id]")).to_have_text(re.compile("Azores"))
    # The message went; the address comes back, as typed, marked, for her to correct.
    email = panel.get_by_label("Leave your email so our answer reaches you if you go:")
    expect(email).to_have_value("jo@example")
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_be_focused()
    expect(panel.get_by_role("alert")).to_have_text("Please enter a valid email address.")
    email.fill("jo@example.com")
    panel.get_by_role("button", name="Save").click()
    expect(panel.get_by_text("We will email you at jo@example.com")).to_be_visible()


def test_an_address_written_before_the_widget_connected_is_not_lost(
    asgi_server, browser, widget, shop
):
    """On a slow connection she gave her address and her question before the widget had
    connected: the question went once it had, the address never did."""
    widget.settings |= {"prechat_name": "off", "prechat_email": "optional"}
    widget.save()
    page = browser.new_page(locale="en-US")
    held, link = [], {"hold": True}  # the server's frames, kept from the page until released

    def route(socket):
        server = socket.connect_to_server()
        link["page"] = socket
        server.on_message(lambda frame: held.append(frame) if link["hold"] else socket.send(frame))

    page.route_web_socket(re.compile("/ws/widget/"), route)
    page.goto(shop.embed(asgi_server, widget))
    panel = open_chat(page)
    panel.get_by_label("Your email").fill("jo@example.com")
    write(panel, "Do you ship to the Azores?")
    expect(panel.locator("li.pending")).to_contain_text("Sending…")  # not connected yet
    while held:  # in order; Playwright hands on new frames only during its own calls
        link["page"].send(held.pop(0))
    link["hold"] = False

    expect(panel.locator("li.message.customer[data-id]")).to_have_text(re.compile("Azores"))
    expect(panel.get_by_text("We will email you at jo@example.com")).to_be_visible()
    assert Visitor.objects.get().email == "jo@example.com"


def test_on_a_phone_it_fills_the_screen_works_by_keyboard_and_shows_text_never_html(
    asgi_server, browser, bob, widget, shop
):
    widget.settings |= {"greeting": "Olá! How can we help?", "color": "#b91c1c"}
    widget.save()
    visitor = chat.visitor_session(inbox=widget, name="Rui")
    asked = chat.visitor_message(visitor, text="Where is my parcel?", client_id="c-1")
    services.reply_send(
        conversation=asked.message.conversation,
        author=bob,
        text='<img src=x onerror="window.pwned=1"> It ships <b>today</b>: '
        "https://track.example.com/p/1042.",
    )
    url = shop.embed(asgi_server, widget)

    page = browser.new_page(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, locale="en-US"
    )
    with_token(page, widget, visitor)
    problems = watch(page)
    page.goto(url)
    # The reply came while she was away: the launcher says so. She opens it by keyboard.
    launcher = page.locator("button.launcher")
    expect(launcher).to_have_accessible_name("Open the chat (1)")
    launcher.focus()
    page.keyboard.press("Enter")
    panel = page.get_by_role("dialog", name="Website chat")
    box = panel.get_by_label("Write a message…")
    expect(box).to_be_focused()
    assert panel.bounding_box() == {"x": 0, "y": 0, "width": 390, "height": 844}
    expect(launcher).to_be_hidden()  # under the full-screen panel
    # It hides the page, so it is modal: Tab goes round the chat and never to the page behind.
    expect(panel).to_have_attribute("aria-modal", "true")
    for _ in range(10):  # more than the chat's controls
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.localName") == "threadline-chat"
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.localName") == "threadline-chat"

    messages = panel.locator("li.message")
    expect(messages.first).to_have_text("Olá! How can we help?")  # the greeting comes first
    reply = panel.locator("li.message.agent[data-id]")
    expect(reply.locator(".text")).to_have_text(
        '<img src=x onerror="window.pwned=1"> It ships <b>today</b>: '
        "https://track.example.com/p/1042."
    )
    expect(reply.locator("img, b")).to_have_count(0)
    assert page.evaluate("window.pwned") is None
    # The address in it is a link, opened apart from the shop's page; the full stop is not in it.
    link = reply.get_by_role("link")
    expect(link).to_have_text("https://track.example.com/p/1042")
    expect(link).to_have_attribute("href", "https://track.example.com/p/1042")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")

    # Arabic reads right to left, in the box and in the chat.
    box.fill("أين طردي؟")
    assert box.evaluate("box => box.matches(':dir(rtl)')")
    box.press("Enter")
    arabic = panel.locator("li.message.customer[data-id] .text").filter(has_text="أين طردي")
    expect(arabic).to_have_attribute("dir", "auto")
    assert arabic.evaluate("text => text.matches(':dir(rtl)')")

    # Shift+Enter is a new line, Enter sends.
    box.type("Line one")
    box.press("Shift+Enter")
    box.type("Line two")
    box.press("Enter")
    expect(panel.locator("li.message.customer[data-id]").last).to_contain_text("Line two")
    assert Message.objects.filter(text="Line one\nLine two").exists()

    # A picture goes up and shows inline; a web page is refused before it is sent.
    picker = panel.locator("input[type=file]")
    picker.set_input_files({"name": "parcel.png", "mimeType": "image/png", "buffer": PNG})
    picture = panel.locator("li.message.customer[data-id] img[alt='parcel.png']")
    expect(picture).to_have_js_property("naturalWidth", 1)
    picker.set_input_files({"name": "notes.html", "mimeType": "text/html", "buffer": b"<p>x</p>"})
    expect(panel.get_by_role("alert")).to_contain_text("notes.html")
    assert Message.objects.filter(attachments__filename="notes.html").count() == 0

    # Escape closes it and gives the focus back to the launcher, now with nothing unread.
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(launcher).to_be_focused()
    expect(launcher).to_have_accessible_name("Open the chat")

    # The phone on its side: too short for a floating panel, so it fills the screen again.
    page.set_viewport_size({"width": 844, "height": 390})
    launcher.click()
    expect(panel).to_be_visible()
    assert panel.bounding_box() == {"x": 0, "y": 0, "width": 844, "height": 390}
    expect(panel).to_have_attribute("aria-modal", "true")
    expect(box).to_be_in_viewport(ratio=1)
    assert not problems


def test_after_the_chat_ends_the_visitor_rates_it_gets_the_transcript_and_starts_again(
    asgi_server, browser, bob, widget, shop, email_inbox, smtp_server
):
    # Bob answers before her page is open: with replies emailed at once, his answer could go
    # by email first, racing her page. Here only the transcript should be mailed.
    widget.settings["email_after_minutes"] = 5
    widget.save()
    visitor = chat.visitor_contact(
        chat.visitor_session(inbox=widget), name="Ana", email="ana@example.com"
    )
    conversation = chat.visitor_message(
        visitor, text="Is the kettle in stock?", client_id="c-1"
    ).message.conversation
    services.reply_send(conversation=conversation, author=bob, text="Yes, 12 left.")
    mail = arrivals(smtp_server)
    url = shop.embed(asgi_server, widget)

    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US")
    with_token(page, widget, visitor)
    problems = watch(page)
    page.goto(url)
    panel = open_chat(page)
    expect(panel.locator("li.message[data-id]")).to_have_count(2)

    agent = signed_in(browser, asgi_server, bob)
    agent.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    agent.get_by_role("button", name="End chat").click()
    expect(panel.get_by_text("This chat has ended.")).to_be_visible()
    expect(panel.get_by_label("Write a message…")).to_be_hidden()
    # Her focus was in the message box, now hidden: it moves to the rating, not to the page.
    expect(panel.get_by_role("button", name="1", exact=True)).to_be_focused()

    # Zoomed to 200%, the laptop's window is 640×360: what is below the rating is a scroll away.
    page.set_viewport_size({"width": 640, "height": 360})
    start_again = panel.get_by_role("button", name="Start a new conversation")
    expect(start_again).not_to_be_in_viewport()
    panel.get_by_text("How did we do?").hover()
    page.mouse.wheel(0, 1000)
    expect(start_again).to_be_in_viewport(ratio=1)

    panel.get_by_role("button", name="4", exact=True).click()
    panel.get_by_label("Anything to add? (optional)").fill("Quick and kind")
    panel.get_by_role("button", name="Send", exact=True).click()
    expect(panel.get_by_text("Thank you for your rating.")).to_be_visible()
    expect(panel.get_by_role("button", name="Email me the transcript")).to_be_focused()
    conversation.refresh_from_db()
    assert (conversation.rating, conversation.rating_comment) == (4, "Quick and kind")

    panel.get_by_role("button", name="Email me the transcript").click()
    expect(panel.get_by_text("The transcript is on its way.")).to_be_visible()
    expect(panel.get_by_role("button", name="Start a new conversation")).to_be_focused()
    mail.wait(1)
    (transcript,) = smtp_server.messages()
    assert transcript["To"] == "ana@example.com"
    assert "Yes, 12 left." in transcript.get_body(("plain",)).get_content()

    panel.get_by_role("button", name="Start a new conversation").click()
    expect(panel.locator("li.message[data-id]")).to_have_count(0)
    box = panel.get_by_label("Write a message…")
    expect(box).to_be_focused()
    box.fill("One more thing: do you gift-wrap?")
    box.press("Enter")
    expect(panel.locator("li.message[data-id]")).to_have_text([re.compile("gift-wrap")])
    assert Conversation.objects.count() == 2
    assert not problems


def test_an_agent_who_writes_after_the_chat_ended_is_answered_in_the_same_chat(
    asgi_server, browser, bob, widget, shop
):
    widget.settings["email_after_minutes"] = 5
    widget.save()
    visitor = chat.visitor_session(inbox=widget)
    for n in range(1, 9):  # a chat long enough to scroll
        conversation = chat.visitor_message(
            visitor, text=f"Question {n}: is the kettle in stock?", client_id=f"c-{n}"
        ).message.conversation
    url = shop.embed(asgi_server, widget)
    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US")
    with_token(page, widget, visitor)
    page.goto(url)
    panel = open_chat(page)

    agent = signed_in(browser, asgi_server, bob)
    agent.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    agent_reply(agent, "Yes, 12 left.")
    agent.get_by_role("button", name="End chat").click()
    expect(panel.get_by_text("This chat has ended.")).to_be_visible()
    agent_reply(agent, "One more thing: keep the box, please.")

    box = panel.get_by_label("Write a message…")
    expect(box).to_be_visible()
    expect(panel.get_by_text("This chat has ended.")).to_be_hidden()
    # The chat scrolled to what reopened it.
    expect(panel.get_by_text("One more thing: keep the box, please.")).to_be_in_viewport()
    box.fill("Sure, I will")
    box.press("Enter")
    expect(agent.locator(".message.inbound").filter(has_text="Sure, I will")).to_be_visible()
    assert Conversation.objects.count() == 1
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.OPEN


def test_a_waiting_visitor_watches_their_place_in_line_move_until_an_agent_joins(
    asgi_server, browser, bob, widget, shop
):
    from routing.models import TeamMembership

    # Bob is online but has no room: chats wait in his team's queue, two already.
    bob.availability, bob.last_seen_at = "online", timezone.now()
    bob.save()
    TeamMembership.objects.filter(user=bob).update(max_open=0)
    # Two chats wait already, their visitors watching the widget (one who left would wait
    # behind her, like mail).
    visitors = [chat.visitor_session(inbox=widget) for _ in range(2)]
    earlier = []
    for n, visitor in enumerate(visitors):
        earlier.append(
            chat.visitor_message(visitor, text=f"earlier {n}", client_id="x").message.conversation
        )
        chat.visitor_seen(visitor.pk, opened=1)
    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US")
    problems = watch(page)
    page.goto(shop.embed(asgi_server, widget))
    panel = open_chat(page)
    write(panel, "Is anyone there?")
    availability = panel.locator(".availability")
    expect(availability).to_contain_text("You are number 3 in line")
    expect(availability).not_to_contain_text("we reply in minutes")  # not while in line

    # Bob closes the first waiting chat from his inbox: she moves up without reloading.
    agent = signed_in(browser, asgi_server, bob)
    agent.goto(f"{asgi_server}/inbox/{earlier[0].pk}/")
    agent.select_option("#status", "resolved")
    agent.get_by_role("button", name="Set status").click()
    expect(availability).to_contain_text("You are number 2 in line")

    # He opens hers and starts answering: she sees him typing, and no place in line under it.
    mine = Conversation.objects.exclude(pk__in=[c.pk for c in earlier]).get()
    agent.goto(f"{asgi_server}/inbox/{mine.pk}/")
    agent.fill("#reply-text", "Hello! Let me look.")
    expect(panel.locator(".typing")).to_have_text("Bob is typing…")
    expect(availability).not_to_contain_text("in line")

    # He takes it: the queue is behind her, and she is told who is there.
    agent.select_option("#assignee", str(bob.pk))
    agent.click('form[action$="/assign"] button')
    expect(availability).to_contain_text("Bob joined the chat")
    expect(availability).not_to_contain_text("in line")
    assert not problems


def test_a_long_wait_in_line_reads_in_hours(asgi_server, browser, bob, widget, shop):
    from routing.models import TeamMembership

    # Bob holds one chat, all he has room for, and the team's chats take ten hours each.
    bob.availability, bob.last_seen_at = "online", timezone.now()
    bob.save()
    TeamMembership.objects.filter(user=bob).update(max_open=3)
    held = chat.visitor_message(chat.visitor_session(inbox=widget), text="mine", client_id="h")
    services.conversation_assign(conversation=held.message.conversation, assignee=bob)
    for n in range(5):
        past = chat.visitor_message(chat.visitor_session(inbox=widget), text=f"{n}", client_id="p")
        ended = timezone.now() - timedelta(days=1, hours=n)
        Conversation.objects.filter(pk=past.message.conversation_id).update(
            status="resolved", resolved_at=ended, created_at=ended - timedelta(hours=10)
        )
    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US")
    page.goto(shop.embed(asgi_server, widget))
    panel = open_chat(page)
    write(panel, "Is anyone there?")
    expect(panel.locator(".availability")).to_contain_text("You are number 1 in line, about 10 h")


def test_the_demo_page_embeds_the_widget_under_our_own_csp(asgi_server, browser, chat_inbox):
    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US")
    problems = watch(page)
    page.goto(f"{asgi_server}/widget/demo/")
    expect(page.get_by_role("heading", name="Acme Demo Shop")).to_be_visible()
    expect(page.locator(".snippet")).to_contain_text(f'data-inbox="{chat_inbox.widget_key}"')
    panel = open_chat(page)
    write(panel, "Hello from the demo page")
    expect(panel.locator("li.message.customer[data-id]")).to_have_text(re.compile("demo page"))
    assert not problems


def test_a_signed_in_user_is_not_asked_who_they_are_and_sees_their_chat_from_elsewhere(
    asgi_server, browser, widget, shop
):
    # Ana chatted on her phone, signed in to the shop.
    signed = chat.user_hash(widget, "ana@example.com")
    phone = chat.visitor_session(
        inbox=widget, user_id="ana@example.com", user_hash_given=signed, name="Ana"
    )
    chat.visitor_message(phone, text="My order 77 is late", client_id="c-1")
    widget.settings |= {"prechat_name": "required", "prechat_email": "required"}
    widget.save()
    url = shop.embed(asgi_server, widget, user_id="ana@example.com", user_hash=signed)

    # Now on her laptop: the shop vouches for her, so no questions, and the same chat.
    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US")
    problems = watch(page)
    link = {"drop": False}  # with it, the widget's frames never reach the server

    def route(socket):
        server = socket.connect_to_server()
        socket.on_message(lambda frame: None if link["drop"] else server.send(frame))
        server.on_message(socket.send)

    page.route_web_socket(re.compile("/ws/widget/"), route)
    page.goto(url)
    panel = open_chat(page)
    expect(panel.locator("li.message[data-id]")).to_have_text([re.compile("order 77 is late")])
    expect(panel.get_by_label("Your email")).to_be_hidden()
    write(panel, "Any news about it?")
    expect(panel.locator("li.message.customer[data-id]")).to_have_count(2)
    assert Conversation.objects.get().messages.count() == 2

    # On a dead connection she writes her card's last digits, then signs out of the shop: the
    # next person at this computer neither sends nor sees what she wrote.
    link["drop"] = True
    write(panel, "My card ends 4242")
    expect(panel.locator("li.pending")).to_contain_text("Sending…")
    link["drop"] = False
    page.goto(shop.embed(asgi_server, widget))  # the shop's page no longer names her
    panel = open_chat(page)
    panel.get_by_label("Your name").fill("Rui")
    panel.get_by_label("Your email").fill("rui@example.com")
    panel.get_by_role("button", name="Start the chat").click()
    expect(panel.locator("li.pending")).to_have_count(0)
    write(panel, "Hello")  # after anything the widget would have sent on connecting
    expect(panel.locator("li.message.customer[data-id]")).to_have_text([re.compile("Hello")])
    assert not Message.objects.filter(text="My card ends 4242").exists()
    assert not problems


def test_a_dead_connection_a_reload_or_a_burst_loses_nothing_and_stores_nothing_twice(
    asgi_server, browser, bob, widget, shop
):
    visitor = chat.visitor_session(inbox=widget, name="Rui")
    asked = chat.visitor_message(visitor, text="Where is my parcel?", client_id="c-1")
    conversation = asked.message.conversation
    answer = services.reply_send(conversation=conversation, author=bob, text="Checking now.")
    url = shop.embed(asgi_server, widget)

    page = browser.new_page(viewport={"width": 1100, "height": 760}, locale="en-US")
    with_token(page, widget, visitor)
    page.clock.install()  # the page's clock, travelled below (from the real now)
    problems = watch(page)
    # Between the widget and the server: frames the widget sends are recorded; with `cut`, the
    # server's never reach it, and with `drop` its own never reach the server, as on a
    # connection that died without either side noticing.
    sent, link = [], {"cut": False, "drop": False}

    def route(socket):
        server = socket.connect_to_server()

        def outgoing(frame):
            sent.append(json.loads(frame))
            if not link["drop"]:
                server.send(frame)

        socket.on_message(outgoing)
        server.on_message(lambda frame: None if link["cut"] else socket.send(frame))

    page.route_web_socket(re.compile("/ws/widget/"), route)
    page.goto(url)
    panel = open_chat(page)
    expect(panel.locator("li.message[data-id]")).to_have_count(2)
    agent = signed_in(browser, asgi_server, bob)
    agent.goto(f"{asgi_server}/inbox/{conversation.pk}/")

    # The server stores her message and Bob answers, but the widget hears of neither.
    link["cut"] = True
    write(panel, "Are you there?")
    expect(agent.locator(".message.inbound").filter(has_text="Are you there?")).to_be_visible()
    agent_reply(agent, "Yes, still here: it left the depot today.")
    expect(panel.locator("li.pending")).to_contain_text("Sending…")

    # The socket stays open and says nothing: without an answer in 10 s the widget takes it for
    # dead, connects again and catches up.
    link["cut"] = False
    page.clock.fast_forward("00:11")
    mine = panel.locator("li.message.customer[data-id]").filter(has_text="Are you there?")
    expect(mine).to_have_count(1, timeout=20000)
    expect(panel.locator("li.pending")).to_have_count(0)
    expect(panel.locator("li.message.agent[data-id]")).to_have_text(
        [re.compile("Checking now"), re.compile("left the depot")]
    )
    expect(panel.get_by_role("status")).to_be_hidden()

    # It asked for what came after the last message it had, and resent the unacknowledged
    # message under the same client id, which the server stored once.
    # (On a slow machine the 10 s may pass before the clock is travelled: then it tried once
    # more while the link was still cut.)
    hellos = [frame["after"] for frame in sent if frame["action"] == "hello"]
    assert hellos[0] == 0 and set(hellos[1:]) == {answer.pk}
    resent = [frame["client_id"] for frame in sent if frame["action"] == "message"]
    assert len(resent) >= 2 and set(resent) == {resent[0]}
    assert Message.objects.filter(text="Are you there?").count() == 1

    # Her message and a picture never reach the server, and she reloads the page: the message
    # was kept in the browser and goes now, once; the picture is said not to have gone.
    page.route(re.compile("/upload$"), lambda route: None)  # the upload hangs
    link["drop"] = True
    write(panel, "Can it go to my office instead?")
    panel.locator("input[type=file]").set_input_files(
        {"name": "office.png", "mimeType": "image/png", "buffer": PNG}
    )
    expect(panel.locator("li.pending")).to_have_text([re.compile("Sending…")] * 2)
    link["drop"] = False
    page.reload()
    panel = open_chat(page)
    office = panel.locator("li.message.customer[data-id]").filter(has_text="my office")
    expect(office).to_have_count(1)
    lost = panel.locator("li.pending.failed").filter(has_text="office.png")
    expect(lost.locator(".error")).to_have_text(
        "Not sent: the page closed before it went. Please attach it again."
    )
    expect(panel.locator("li.pending")).to_have_count(1)
    assert Message.objects.filter(text="Can it go to my office instead?").count() == 1
    page.unroute(re.compile("/upload$"))

    # A burst faster than the server takes (ten at once, then one a second): what is beyond it
    # waits its turn in the widget, goes in order, and none ends "Not sent".
    burst = [f"Line {n} of the address" for n in range(1, 17)]
    for text in burst:
        write(panel, text)
    lines = panel.locator("li.message.customer[data-id]").filter(has_text="of the address")
    expect(lines).to_have_count(16, timeout=30000)
    expect(panel.locator("li.pending")).to_have_count(1)  # the picture, still
    stored = Message.objects.filter(text__endswith="of the address").order_by("pk")
    assert [message.text for message in stored] == burst
    assert not problems


def test_the_widget_keeps_the_draft_private_says_when_it_is_not_and_what_cannot_be_sent(
    asgi_server, browser, widget, shop
):
    visitor = chat.visitor_session(inbox=widget, name="Rui")
    chat.visitor_message(visitor, text="Hello", client_id="c-1")
    # Another shop's inbox, where agents read the draft as it is typed.
    previewing = Inbox.objects.create(
        name="Shop B chat",
        kind=Channel.WEBCHAT,
        settings={"allowed_origins": [shop.origin], "typing_preview": True, "color": "#facc15"},
    )
    url = shop.embed(asgi_server, widget)
    page = browser.new_page(locale="en-US")
    with_token(page, widget, visitor)
    frames = []
    page.on("websocket", lambda socket: socket.on("framesent", lambda f: frames.append(f)))
    page.goto(url)
    panel = open_chat(page)
    box = panel.get_by_label("Write a message…")
    # The socket is ready (its first frame brings the chat so far): typing is announced.
    expect(panel.locator("li.message[data-id]").first).to_contain_text("Hello")

    # Agents may not read drafts in this inbox: what is typed stays in the browser until sent.
    box.type("My card number is")
    expect(panel.locator(".preview-notice")).to_be_hidden()
    typing = [json.loads(f) for f in frames if '"typing"' in f]
    assert typing and all("draft" not in frame for frame in typing)

    # A paste over the limit is kept whole, the visitor is told, and it is not sent cut.
    box.fill("")
    box.focus()
    page.keyboard.insert_text("x" * 6000)
    expect(panel.get_by_role("alert")).to_have_text("Messages are limited to 5000 characters.")
    box.press("Enter")
    assert len(box.input_value()) == 6000
    expect(panel.locator("li.message.pending")).to_have_count(0)

    # A file refused for what it is (markup named .png) is said so, and leaves no bubble.
    panel.locator("input[type=file]").set_input_files(
        {"name": "fake.png", "mimeType": "image/png", "buffer": b"<html><p>not a picture</p>"}
    )
    expect(panel.get_by_role("alert")).to_contain_text("fake.png: Only images")
    expect(panel.locator("li.message.pending")).to_have_count(0)

    # Blocked: the message is refused for good, so no "Tap to retry".
    services.customer_block(customer=visitor.identity.customer, actor=None)
    box.fill("Hello?")
    box.press("Enter")
    failed = panel.locator("li.message.pending.failed")
    expect(failed.locator(".error")).to_contain_text("blocked")
    expect(failed.locator("button.retry")).to_have_count(0)

    def header_text(panel):
        return panel.locator("header h2").evaluate("h => getComputedStyle(h).color")

    assert header_text(panel) == "rgb(255, 255, 255)"  # white on the default blue

    # Where agents do read drafts, the visitor knows it. On this shop's yellow, dark text.
    page.goto(shop.embed(asgi_server, previewing))
    panel = open_chat(page, "Shop B chat")
    expect(panel.locator(".preview-notice")).to_have_text(
        "Our team sees what you type before you send it."
    )
    assert header_text(panel) == "rgb(17, 24, 39)"


def test_last_seen_ages_on_an_open_conversation_page(asgi_server, browser, widget, bob):
    # "last seen just now" stayed "just now" for as long as the agent kept the page open.
    visitor = chat.visitor_session(inbox=widget)
    conversation = chat.visitor_message(visitor, text="Hi", client_id="a").message.conversation
    chat.visitor_seen(visitor.pk)  # her page with the widget closed a moment ago
    page = signed_in(browser, asgi_server, bob)
    page.clock.install()  # the page's clock, travelled below (from the real now)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    seen = page.locator("[data-visitors] time[data-ago]")
    expect(seen).to_have_text("just now")
    page.clock.fast_forward("10:00")
    expect(seen).to_have_text("10 min ago")
    page.clock.fast_forward("02:00:00")
    expect(seen).to_have_text("2 h ago")
