"""Canned responses: placeholders filled without a template engine, the `/` search endpoint
and who may use which response, the admin, the demo seed, and the composer's `/` menu in real
Chromium. Personas: bob (Support agent), charlie (Billing, an outsider to Support's
conversations) and alice (admin)."""

from io import StringIO

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from django.urls import reverse

from conversations.canned import canned_render
from conversations.management.commands.seed_demo import CANNED
from conversations.models import CannedResponse, Conversation, Customer
from helpdesk.models import User
from tests.conftest import receive, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clear_login_throttle():
    cache.clear()


def render(body, *, customer="Joana Silva", subject="Broken blender", agent="Bob Stone"):
    conversation = Conversation(pk=42, subject=subject, customer=Customer(name=customer))
    return canned_render(body, conversation=conversation, agent=User(display_name=agent))


class TestRender:
    def test_it_fills_every_known_placeholder(self):
        body = (
            "{customer.name}|{customer.first_name}|{agent.name}|{agent.first_name}|"
            "{conversation.number}|{conversation.subject}"
        )
        assert render(body) == "Joana Silva|Joana|Bob Stone|Bob|42|Broken blender"

    def test_it_leaves_unknown_placeholders_as_typed(self):
        body = "{customer.email} {order} {customer.name.upper} {Customer.name} {{customer.name}}"
        assert (
            render(body)
            == "{customer.email} {order} {customer.name.upper} {Customer.name} {Joana Silva}"
        )

    def test_it_leaves_a_placeholder_it_has_no_value_for_for_the_agent_to_fill(self):
        assert render(
            "Hi {customer.first_name}, re: {conversation.subject}", customer="", subject=""
        ) == ("Hi {customer.first_name}, re: {conversation.subject}")

    def test_a_fallback_says_what_to_write_for_a_customer_without_a_name(self):
        body = "Hi {customer.first_name|there}, {agent.first_name|the team} here."
        assert render(body, customer="") == "Hi there, Bob here."
        assert render(body) == "Hi Joana, Bob here."  # a name wins over the fallback
        # Nothing after the bar: the word goes, with the space before it.
        assert render("Olá {customer.first_name|},", customer="") == "Olá,"
        assert render("Olá {customer.first_name|},", customer="Joana") == "Olá Joana,"
        # Unknown stays unknown, fallback or not.
        assert render("{customer.email|you}") == "{customer.email|you}"

    def test_a_customer_named_like_a_placeholder_stays_literal(self):
        assert render("Hi {customer.name}, {agent.name} here", customer="{agent.name}") == (
            "Hi {agent.name}, Bob Stone here"
        )

    def test_template_syntax_in_names_and_bodies_is_never_evaluated(self, settings):
        settings.SECRET_KEY = "s3cret-do-not-leak"
        customer = "{{ settings.SECRET_KEY }}"
        body = (
            "Hi {customer.name} {{ settings.SECRET_KEY }} {% debug %} {0.__class__} {agent.name!r}"
        )
        rendered = render(body, customer=customer)
        assert rendered == (
            "Hi {{ settings.SECRET_KEY }} {{ settings.SECRET_KEY }} {% debug %} {0.__class__} "
            "{agent.name!r}"
        )
        assert "s3cret" not in rendered


@pytest.fixture
def responses(support, billing):
    return {
        "global": CannedResponse.objects.create(
            shortcut="refund-policy",
            title="Refund policy",
            body="Hi {customer.first_name}, refunds take 5 days. {agent.first_name}",
        ),
        "support": CannedResponse.objects.create(
            team=support,
            shortcut="tracking-delay",
            title="Delivery delayed",
            body="Conversation #{conversation.number}: the parcel is on its way.",
        ),
        "billing": CannedResponse.objects.create(
            team=billing,
            shortcut="refund-invoice",
            title="Refund on the invoice",
            body="Billing only.",
        ),
    }


@pytest.fixture
def conversation(chat_inbox):
    return receive(chat_inbox, text="I want a refund", name="Joana Silva").message.conversation


def search(client, conversation, q=""):
    return client.get(reverse("inbox:canned", args=[conversation.pk]), {"q": q})


class TestSearch:
    def test_it_lists_everyones_and_the_agents_teams_responses_rendered(
        self, client, bob, conversation, responses
    ):
        client.force_login(bob)
        response = search(client, conversation)
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        assert response.json() == [
            {
                "id": responses["global"].pk,
                "shortcut": "refund-policy",
                "title": "Refund policy",
                "body": "Hi Joana, refunds take 5 days. Bob",
            },
            {
                "id": responses["support"].pk,
                "shortcut": "tracking-delay",
                "title": "Delivery delayed",
                "body": f"Conversation #{conversation.pk}: the parcel is on its way.",
            },
        ]

    def test_another_teams_responses_are_not_listed(self, client, bob, conversation, responses):
        client.force_login(bob)
        shortcuts = [r["shortcut"] for r in search(client, conversation, "refund").json()]
        assert shortcuts == ["refund-policy"]  # not Billing's "refund-invoice"

    def test_it_matches_shortcut_and_title_ignoring_case_shortcut_prefixes_first(
        self, client, bob, support, conversation, responses
    ):
        CannedResponse.objects.create(
            team=support, shortcut="apology", title="Delay: say sorry", body="Sorry!"
        )
        client.force_login(bob)
        shortcuts = [r["shortcut"] for r in search(client, conversation, "DELAY").json()]
        assert shortcuts == ["apology", "tracking-delay"]  # both match on the title
        shortcuts = [r["shortcut"] for r in search(client, conversation, "track").json()]
        assert shortcuts == ["tracking-delay"]
        shortcuts = [r["shortcut"] for r in search(client, conversation, "ap").json()]
        assert shortcuts[0] == "apology"  # a shortcut that starts with it beats one containing it

    def test_it_returns_ten_at_most_in_constant_queries(
        self, client, bob, support, conversation, django_assert_num_queries
    ):
        CannedResponse.objects.bulk_create(
            CannedResponse(team=support, shortcut=f"r{i}", title=f"R {i}", body="{customer.name}")
            for i in range(15)
        )
        client.force_login(bob)
        # user, the user's teams, conversation (with customer), responses; and the session
        # unless it is read from Redis (helpdesk.sessions, cached in Redis)
        from_database = settings.SESSION_ENGINE == "django.contrib.sessions.backends.db"
        with django_assert_num_queries(4 + from_database):
            results = search(client, conversation).json()
        assert len(results) == 10
        assert {r["body"] for r in results} == {"Joana Silva"}

    def test_an_outsider_gets_404_on_a_conversation_they_cannot_see(
        self, client, charlie, conversation, responses
    ):
        client.force_login(charlie)
        assert search(client, conversation, "refund").status_code == 404
        assert client.get(reverse("inbox:canned", args=[99999])).status_code == 404

    def test_it_needs_a_login(self, client, conversation, responses):
        response = search(client, conversation)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")

    def test_the_conversation_page_has_the_menu(self, client, bob, conversation):
        client.force_login(bob)
        page = client.get(reverse("inbox:conversation", args=[conversation.pk])).content.decode()
        assert 'role="listbox"' in page
        assert f'data-canned-url="/inbox/{conversation.pk}/canned"' in page


class TestAdmin:
    def test_list_search_filter_and_add_render(self, client, alice, support, responses):
        client.force_login(alice)
        url = reverse("admin:conversations_cannedresponse_changelist")
        assert client.get(url).status_code == 200
        page = client.get(url, {"q": "refund"}).content.decode()
        assert "refund-policy" in page and "tracking-delay" not in page
        page = client.get(url, {"team__id__exact": support.pk}).content.decode()
        assert "tracking-delay" in page and "refund-policy" not in page
        change = reverse("admin:conversations_cannedresponse_change", args=[responses["global"].pk])
        assert client.get(change).status_code == 200

    def test_adding_records_the_author_and_refuses_a_duplicate_shortcut(
        self, client, alice, responses
    ):
        client.force_login(alice)
        url = reverse("admin:conversations_cannedresponse_add")
        data = {"title": "Thanks", "shortcut": "thanks", "body": "Thanks, {customer.first_name}!"}
        assert client.get(url).status_code == 200
        assert client.post(url, data).status_code == 302
        assert CannedResponse.objects.get(shortcut="thanks").created_by == alice

        response = client.post(url, {**data, "shortcut": "refund-policy"})
        assert response.status_code == 200  # the form again, with the error
        assert "A canned response for everyone has this shortcut already." in (
            response.content.decode()
        )
        assert CannedResponse.objects.filter(shortcut="refund-policy").count() == 1

    def test_unknown_placeholders_and_a_shortcut_twice_in_one_menu_are_refused(
        self, client, alice, support, responses
    ):
        client.force_login(alice)
        url = reverse("admin:conversations_cannedresponse_add")
        data = {
            "title": "Hi",
            "shortcut": "hi",
            "body": "Hi {customer.email}, {conversation.secret}",
        }
        page = client.post(url, data).content.decode()
        assert "Unknown placeholder {conversation.secret}, {customer.email}; use" in page
        # A fallback the filling could not read would reach the customer braces and all.
        data["body"] = "Hi {customer.first_name|a|b}, {customer.name|" + "x" * 61 + "}"
        page = client.post(url, data).content.decode()
        assert "A fallback is up to 60 characters on one line, without { | or }" in page
        assert "{customer.first_name|a|b}" in page and "x" * 61 in page
        # Support's agents would see two /refund-policy in their menu.
        data |= {"body": "Hi", "shortcut": "refund-policy", "team": support.pk}
        assert (
            "/refund-policy is already everyone&#x27;s." in client.post(url, data).content.decode()
        )
        assert not CannedResponse.objects.filter(title="Hi").exists()


def test_the_demo_seed_adds_its_responses_once():
    call_command("seed_demo", customers=0, stdout=StringIO())
    call_command("seed_demo", customers=0, stdout=StringIO())
    assert CannedResponse.objects.count() == len(CANNED)
    assert CannedResponse.objects.filter(team=None, shortcut="refund-policy").exists()


@pytest.mark.django_db(transaction=True)
def test_typing_slash_refund_and_enter_inserts_the_filled_in_response(
    asgi_server, browser, bob, conversation, responses
):
    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")

    page.locator("#reply-text").press_sequentially("/refund")
    option = page.wait_for_selector('#canned-list [role=option][aria-selected="true"]')
    assert "/refund-policy" in option.inner_text()
    assert page.locator("#canned-list [role=option]").count() == 1  # Billing's is not offered
    assert page.get_attribute("#reply-text", "aria-activedescendant") == option.get_attribute("id")

    page.press("#reply-text", "Enter")
    page.wait_for_selector("#canned-list", state="hidden")
    assert page.input_value("#reply-text") == "Hi Joana, refunds take 5 days. Bob"


@pytest.mark.django_db(transaction=True)
def test_the_suggestions_are_a_combobox_the_keyboard_and_a_screen_reader_follow(
    asgi_server, browser, bob, dana, conversation, responses
):
    """A screen reader heard a plain text box: not that suggestions had opened, nor which one
    the arrows were on, nor the composer's warning about what was typed."""
    import re

    from playwright.sync_api import expect

    page = signed_in(browser, asgi_server, bob)
    page.goto(f"{asgi_server}/inbox/{conversation.pk}/")
    box = page.get_by_role("combobox", name="Message")
    expect(box).to_have_attribute("aria-expanded", "false")
    box.focus()
    page.keyboard.type("/")

    listbox = page.get_by_role("listbox", name="Canned responses")
    expect(listbox).to_be_visible()
    expect(box).to_have_attribute("aria-expanded", "true")
    expect(box).to_have_attribute("aria-controls", "canned-list")
    options = listbox.get_by_role("option")
    expect(options).to_have_count(2)  # everyone's and Support's
    expect(options.nth(0)).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-activedescendant", options.nth(0).get_attribute("id"))
    page.keyboard.press("ArrowDown")
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    expect(options.nth(0)).to_have_attribute("aria-selected", "false")
    expect(box).to_have_attribute("aria-activedescendant", options.nth(1).get_attribute("id"))
    page.keyboard.press("Escape")
    expect(listbox).to_be_hidden()
    expect(box).to_have_attribute("aria-expanded", "false")
    expect(box).not_to_have_attribute("aria-activedescendant", re.compile(".*"))
    expect(box).to_be_focused()  # the focus never left the box

    # In a note, the agents to mention: the same combobox, now controlling their list.
    page.keyboard.press("Control+a")
    page.keyboard.press("Backspace")
    page.check('[name=mode][value="note"]')
    box.focus()
    page.keyboard.type("@da")
    mentions = page.get_by_role("listbox", name="Agents to mention")
    expect(mentions.get_by_role("option")).to_have_text(["@dana Dana"])
    expect(box).to_have_attribute("aria-controls", "mention-list")
    page.keyboard.press("Enter")
    expect(box).to_have_value("@dana ")
    expect(box).to_have_attribute("aria-expanded", "false")

    # A warning about what is typed describes the box: said on coming back to it.
    page.check('[name=mode][value="reply"]')
    box.focus()
    expect(box).to_have_accessible_description(re.compile("@dana is a teammate"))
    page.keyboard.press("Control+a")
    page.keyboard.type("Hello Joana")
    expect(box).not_to_have_accessible_description(re.compile("teammate"))
