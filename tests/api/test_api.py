"""The REST API, /api/v1/, as an integrator uses it: with a personal token, over HTTP. Personas
(tests/conftest.py): alice the admin, bob and dana of Support, charlie of Billing."""

import base64
import json
import re

import pytest
from django.core.management import call_command
from django.test import Client

from conversations import services
from conversations.models import Conversation, ConversationEvent, Message
from helpdesk.models import ApiToken
from tests.conftest import receive


def token_for(user, name="CRM sync") -> str:
    """A token made the way an agent makes one: on the inbox's API tokens page."""
    client = Client()
    client.force_login(user)
    page = client.post("/inbox/api-tokens", {"name": name})
    assert page.status_code == 200
    return re.search(r'value="(tl_[^"]+)"', page.content.decode())[1]


PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


def api(token=None, keyword="Bearer") -> Client:
    """A client that is nobody's browser: no session, only the Authorization header."""
    headers = {"Authorization": f"{keyword} {token}"} if token else {}
    return Client(headers=headers)


def patch(client, path, data, **headers):
    return client.patch(path, data, content_type="application/json", headers=headers)


def post(client, path, data, **headers):
    return client.post(path, data, content_type="application/json", headers=headers)


@pytest.fixture
def maria(api_inbox):
    """Maria writes to Support's API inbox."""
    return receive(api_inbox, text="My parcel never came", address="maria").message.conversation


@pytest.fixture
def hugo(billing_inbox):
    """Hugo writes to Billing."""
    return receive(billing_inbox, text="Invoice is wrong", address="hugo").message.conversation


class TestTokens:
    def test_it_lets_a_token_from_the_tokens_page_act_as_its_agent(self, bob, maria):
        token = token_for(bob)
        for keyword in ("Bearer", "Token"):
            response = api(token, keyword).get(f"/api/v1/conversations/{maria.pk}")
            assert response.status_code == 200
            assert response.json()["messages"][0]["text"] == "My parcel never came"
        stored = ApiToken.objects.get(user=bob)
        assert stored.last_used_at is not None
        # Only its hash is kept: nothing stored reads back as the token.
        assert token not in str(ApiToken.objects.values().get())
        assert stored.prefix == token[:8]

    def test_it_shows_a_new_token_once(self, bob):
        token = token_for(bob)
        client = Client()
        client.force_login(bob)
        page = client.get("/inbox/api-tokens").content.decode()
        assert token not in page
        assert "CRM sync" in page and token[:8] in page

    def test_it_refuses_a_revoked_token(self, bob, maria):
        token = token_for(bob)
        client = Client()
        client.force_login(bob)
        pk = ApiToken.objects.get(user=bob).pk
        assert client.post("/inbox/api-tokens", {"revoke": pk}).status_code == 302
        response = api(token).get("/api/v1/conversations")
        assert response.status_code == 401
        assert "revoked" in response.json()["detail"]
        assert "revoked" in client.get("/inbox/api-tokens").content.decode()

    def test_an_agent_cannot_revoke_someone_elses_token(self, bob, dana):
        token = token_for(bob)
        client = Client()
        client.force_login(dana)
        pk = ApiToken.objects.get(user=bob).pk
        assert client.post("/inbox/api-tokens", {"revoke": pk}).status_code == 404
        assert api(token).get("/api/v1/conversations").status_code == 200

    def test_it_refuses_a_deactivated_agents_token(self, bob, maria):
        token = token_for(bob)
        bob.is_active = False
        bob.save()
        assert api(token).get("/api/v1/conversations").status_code == 401

    @pytest.mark.parametrize(
        "header", ["", "Bearer", "Bearer ", "Bearer tl_wrong", "Bearer x y", "Basic Ym9iOnB3"]
    )
    def test_it_refuses_a_missing_or_wrong_token(self, bob, header):
        token_for(bob)
        response = Client(headers={"Authorization": header} if header else {}).get(
            "/api/v1/conversations"
        )
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == 'Bearer realm="api"'

    def test_a_name_is_needed(self, bob):
        client = Client()
        client.force_login(bob)
        page = client.post("/inbox/api-tokens", {"name": "  "})
        assert page.status_code == 400
        assert "Name the token" in page.content.decode()
        assert not ApiToken.objects.exists()

    def test_an_admin_makes_and_revokes_a_token_for_an_agent_in_the_admin(self, alice, bob, maria):
        admin = Client()
        admin.force_login(alice)
        response = admin.post("/admin/helpdesk/apitoken/add/", {"user": bob.pk, "name": "Zapier"})
        token = re.search(r"(tl_[\w-]{43})", response.content.decode())[1]
        # Shown on this answer only: no cookie carries it to the next page.
        assert token not in str(response.cookies) and "no-store" in response["Cache-Control"]
        assert token not in admin.get("/admin/helpdesk/apitoken/").content.decode()
        assert api(token).get(f"/api/v1/conversations/{maria.pk}").status_code == 200
        admin.post(
            "/admin/helpdesk/apitoken/",
            {"action": "revoke", "_selected_action": [ApiToken.objects.get().pk]},
        )
        assert api(token).get(f"/api/v1/conversations/{maria.pk}").status_code == 401

    def test_the_browser_session_works_with_its_csrf_check(self, bob, maria):
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(bob)
        assert browser.get(f"/api/v1/conversations/{maria.pk}").status_code == 200
        response = post(browser, f"/api/v1/conversations/{maria.pk}/notes", {"text": "Hi"})
        assert response.status_code == 403
        assert "CSRF" in response.json()["detail"]
        assert not maria.messages.filter(direction="note").exists()


class TestWhoSeesWhat:
    def test_another_teams_conversation_is_not_found(self, charlie, maria):
        outsider = api(token_for(charlie))
        nothing = outsider.get("/api/v1/conversations/999999")
        for response in (
            outsider.get(f"/api/v1/conversations/{maria.pk}"),
            patch(outsider, f"/api/v1/conversations/{maria.pk}", {"status": "resolved"}),
            post(outsider, f"/api/v1/conversations/{maria.pk}/replies", {"text": "Hi"}),
            post(outsider, f"/api/v1/conversations/{maria.pk}/notes", {"text": "Hi"}),
        ):
            assert (response.status_code, response.json()) == (404, nothing.json())
        maria.refresh_from_db()
        assert maria.status == "open"
        assert maria.messages.count() == 1

    def test_lists_hold_only_what_the_agent_may_see(self, alice, charlie, maria, hugo):
        outsider = api(token_for(charlie))
        listed = outsider.get("/api/v1/conversations").json()["results"]
        assert [c["id"] for c in listed] == [hugo.pk]
        customers = outsider.get("/api/v1/customers").json()["results"]
        assert [c["id"] for c in customers] == [hugo.customer_id]
        assert outsider.get(f"/api/v1/customers/{maria.customer_id}").status_code == 404
        admin = api(token_for(alice))
        listed = admin.get("/api/v1/conversations").json()["results"]
        assert {c["id"] for c in listed} == {maria.pk, hugo.pk}

    def test_attachments_download_only_for_those_who_see_the_conversation(
        self, bob, charlie, api_inbox
    ):
        attachment = services.InboundAttachment(
            filename="receipt.txt", content_type="text/plain", content=b"Order 7781"
        )
        conversation = receive(
            api_inbox, address="maria", attachments=(attachment,)
        ).message.conversation
        shown = api(token_for(bob)).get(f"/api/v1/conversations/{conversation.pk}").json()
        [link] = shown["messages"][0]["attachments"]
        assert link["filename"] == "receipt.txt"
        download = api(token_for(bob, "mine")).get(link["url"])
        assert download.status_code == 200
        assert download["Content-Disposition"].startswith("attachment")
        assert download["X-Content-Type-Options"] == "nosniff"
        assert b"".join(download.streaming_content) == b"Order 7781"
        assert api(token_for(charlie)).get(link["url"]).status_code == 404


class TestReplies:
    def test_a_reply_and_a_note_carry_files_sent_as_multipart(
        self, bob, email_inbox, smtp_server, tasks_run
    ):
        from django.core.files.uploadedfile import SimpleUploadedFile

        conversation = receive(
            email_inbox, address="maria@example.com", subject="Label"
        ).message.conversation
        client = api(token_for(bob))
        path = f"/api/v1/conversations/{conversation.pk}"
        label = SimpleUploadedFile("label.png", PNG, content_type="image/png")
        with tasks_run():
            sent = client.post(f"{path}/replies", {"text": "Your label.", "files": [label]})
        assert sent.status_code == 201
        assert [(a["filename"], a["content_type"]) for a in sent.json()["attachments"]] == [
            ("label.png", "image/png")
        ]
        (mail,) = smtp_server.messages()
        assert [part.get_filename() for part in mail.iter_attachments()] == ["label.png"]

        log = SimpleUploadedFile("courier.txt", b"Picked up 09:12", content_type="text/plain")
        note = client.post(f"{path}/notes", {"files": [log]})  # a file alone is a note
        assert note.status_code == 201
        assert note.json()["attachments"][0]["filename"] == "courier.txt"

        # What the type claims counts for nothing: the content is HTML, so it is refused.
        page = SimpleUploadedFile("invoice.pdf", b"<html><script>", content_type="application/pdf")
        refused = client.post(f"{path}/replies", {"text": "Invoice", "files": [page]})
        assert refused.status_code == 400
        assert refused.json() == {
            "files": ["invoice.pdf cannot be attached: images, PDF, plain text and CSV files can."]
        }
        assert conversation.messages.filter(text="Invoice").count() == 0

    def test_a_reply_goes_to_the_customer_by_email_once(
        self, bob, email_inbox, smtp_server, tasks_run
    ):
        conversation = receive(
            email_inbox, address="maria@example.com", subject="Refund"
        ).message.conversation
        client = api(token_for(bob))
        path = f"/api/v1/conversations/{conversation.pk}/replies"
        with tasks_run():
            first = post(client, path, {"text": "Refunded today."}, **{"Idempotency-Key": "crm-1"})
        assert first.status_code == 201
        assert first.json()["status"] == "queued"
        # The answer was lost; the integrator sends it again.
        with tasks_run():
            again = post(client, path, {"text": "Refunded today."}, **{"Idempotency-Key": "crm-1"})
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        [sent] = smtp_server.messages()
        assert sent["To"] == "maria@example.com"
        assert "Refunded today." in sent.get_body(("plain",)).get_content()
        shown = client.get(f"/api/v1/conversations/{conversation.pk}").json()
        reply = shown["messages"][-1]
        assert (reply["status"], reply["author"]["email"]) == ("sent", "bob@example.com")
        assert shown["assignee"]["id"] == bob.pk  # whoever answers takes it, as in the inbox

    def test_a_key_another_message_has_is_refused_not_taken_for_this_one(self, bob, chat_inbox):
        # A chat visitor chooses their messages' client ids: theirs, matching the key an
        # integration gives a reply, must not pass for that reply, which would never be sent.
        theirs = receive(chat_inbox, text="Hi", client_id="crm-1").message
        client = api(token_for(bob))
        path = f"/api/v1/conversations/{theirs.conversation_id}"
        for kind in ("replies", "notes"):
            response = post(
                client, f"{path}/{kind}", {"text": "On it"}, **{"Idempotency-Key": "crm-1"}
            )
            assert response.status_code == 400
            assert "already used for another message" in response.json()["detail"]
        assert list(theirs.conversation.messages.all()) == [theirs]

    def test_a_reply_the_channel_refuses_says_why(self, bob, maria):
        client = api(token_for(bob))
        path = f"/api/v1/conversations/{maria.pk}/replies"
        assert post(client, path, {"text": ""}).json() == {
            "detail": "A reply needs text or an attachment."
        }
        other = receive(maria.inbox, address="someone-else").message.conversation
        stranger = other.customer.identities.get()
        response = post(client, path, {"text": "Hi", "identity": stranger.pk})
        assert response.status_code == 400
        assert response.json() == {"identity": ["That address is not this customer's."]}
        # PostgreSQL cannot store a NUL: refused as input, not a 500.
        response = post(client, path, {"text": "Hi\u0000"})
        assert response.json() == {"text": ["Null characters are not allowed."]}
        response = client.get("/api/v1/customers?address=a%00b")
        assert response.json() == {"address": ["Null characters are not allowed."]}
        response = post(client, path, {"text": "Hi", "html": "<b>Hi</b>"})
        assert response.status_code == 400
        assert "Unknown field" in response.json()["html"][0]
        assert not maria.messages.filter(direction="outbound").exists()

    def test_a_note_stays_inside_and_says_whom_it_reached(self, bob, dana, maria):
        client = api(token_for(bob))
        response = post(
            client,
            f"/api/v1/conversations/{maria.pk}/notes",
            {"text": "@dana can you check? cc @nobody", "client_id": "n-1"},
        )
        assert response.status_code == 201
        body = response.json()
        assert (body["direction"], body["mentions_missed"]) == ("note", ["nobody"])
        assert dana.notifications.filter(conversation=maria).exists()
        again = post(
            client, f"/api/v1/conversations/{maria.pk}/notes", {"text": "x", "client_id": "n-1"}
        )
        assert again.status_code == 200
        assert maria.messages.filter(direction="note").count() == 1


class TestChanges:
    def test_status_priority_and_assignee_change_as_in_the_inbox(self, bob, dana, maria):
        client = api(token_for(bob))
        response = patch(
            client,
            f"/api/v1/conversations/{maria.pk}",
            {"status": "resolved", "priority": "urgent", "assignee": dana.pk},
        )
        assert response.status_code == 200
        body = response.json()
        assert (body["status"], body["priority"], body["assignee"]["id"]) == (
            "resolved",
            "urgent",
            dana.pk,
        )
        kinds = set(maria.events.filter(actor=bob).values_list("kind", flat=True))
        assert {
            ConversationEvent.Kind.STATUS,
            ConversationEvent.Kind.PRIORITY,
            ConversationEvent.Kind.ASSIGNED,
        } <= kinds

    def test_a_refused_change_changes_nothing(self, bob, charlie, maria):
        client = api(token_for(bob))
        path = f"/api/v1/conversations/{maria.pk}"
        response = patch(client, path, {"status": "resolved", "assignee": charlie.pk})
        assert response.status_code == 400
        assert "transfer it to their team first" in response.json()["assignee"][0]
        response = patch(client, path, {"inbox": 7, "customer": 1, "priority": "soon"})
        assert set(response.json()) == {"inbox", "customer", "priority"}
        response = patch(client, path, {"status": "snoozed"})
        assert response.json() == {"status": ["Snoozing needs a time in the future."]}
        maria.refresh_from_db()
        assert (maria.status, maria.assignee, maria.priority) == ("open", None, 1)

    def test_tags_are_added_and_removed_as_in_the_inbox(self, bob, maria):
        client = api(token_for(bob))
        path = f"/api/v1/conversations/{maria.pk}"
        response = patch(client, path, {"tags_add": ["VIP", "refund"]})
        assert response.json()["tags"] == ["refund", "vip"]
        response = patch(client, path, {"tags_add": ["late"], "tags_remove": ["refund"]})
        assert response.json()["tags"] == ["late", "vip"]
        event = maria.events.filter(actor=bob, kind=ConversationEvent.Kind.TAGS).last()
        assert (event.data["added"], event.data["removed"]) == (["late"], ["refund"])
        # A bad tag is refused with the rest of the change: the status stays too.
        response = patch(client, path, {"status": "resolved", "tags_add": ["x" * 51]})
        assert response.status_code == 400 and "tags_add" in response.json()
        response = patch(client, path, {"tags_add": "vip"})
        assert response.status_code == 400 and "tags_add" in response.json()
        response = patch(client, path, {"tags_remove": ["vip,late"]})
        assert response.json() == {"tags_remove": {"0": ["A tag's name has no commas."]}}
        maria.refresh_from_db()
        assert maria.status == "open"
        assert sorted(maria.tags.values_list("name", flat=True)) == ["late", "vip"]

    def test_times_are_utc_whatever_the_sites_time_zone(self, bob, maria, settings, time_machine):
        settings.TIME_ZONE = "America/Sao_Paulo"
        time_machine.move_to("2026-03-02T10:00:00Z", tick=False)
        client = api(token_for(bob))
        response = patch(
            client,
            f"/api/v1/conversations/{maria.pk}",
            {"status": "snoozed", "snoozed_until": "2026-03-03T09:00:00"},  # no offset: UTC
        )
        assert response.json()["snoozed_until"] == "2026-03-03T09:00:00Z"
        maria.refresh_from_db()
        assert maria.snoozed_until.isoformat() == "2026-03-03T09:00:00+00:00"

    def test_a_transfer_hands_it_to_the_other_team(self, bob, billing, maria):
        client = api(token_for(bob))
        patch(client, f"/api/v1/conversations/{maria.pk}", {"assignee": bob.pk})
        response = patch(client, f"/api/v1/conversations/{maria.pk}", {"team": billing.pk})
        assert response.status_code == 200
        assert (response.json()["team"]["name"], response.json()["assignee"]) == ("Billing", None)

    def test_unknown_methods_are_refused(self, bob, maria):
        client = api(token_for(bob))
        assert client.delete(f"/api/v1/conversations/{maria.pk}").status_code == 405
        assert client.put(f"/api/v1/conversations/{maria.pk}").status_code == 405


class TestLists:
    def test_pages_follow_each_other_without_gaps_or_repeats(
        self, bob, api_inbox, django_assert_max_num_queries
    ):
        numbers = {receive(api_inbox, address=f"c{i}").message.conversation.pk for i in range(7)}
        client = api(token_for(bob))
        seen, url, pages = [], "/api/v1/conversations?page_size=3", 0
        while url:
            with django_assert_max_num_queries(8):
                page = client.get(url).json()
            seen += [c["id"] for c in page["results"]]
            # One read already that changes moves ahead of the cursor: it is not listed twice.
            if pages == 0:
                services.note_add(
                    conversation=Conversation.objects.get(pk=seen[-1]), author=bob, text="x"
                )
            url, pages = page["next"], pages + 1
        assert pages == 3
        assert sorted(seen) == sorted(numbers)
        assert len(seen) == len(set(seen))

    def test_filters(self, bob, dana, api_inbox):
        open_, pending, mine = (
            receive(api_inbox, address=f"c{i}").message.conversation for i in range(3)
        )
        services.conversation_set_status(conversation=pending, status="pending")
        services.conversation_assign(conversation=mine, assignee=dana)
        client = api(token_for(bob))

        def listed(query):
            return [c["id"] for c in client.get(f"/api/v1/conversations?{query}").json()["results"]]

        assert listed("status=pending") == [pending.pk]
        assert listed(f"assignee={dana.pk}") == [mine.pk]
        assert sorted(listed("assignee=none")) == sorted([open_.pk, pending.pk])
        after = Conversation.objects.get(pk=pending.pk).updated_at.isoformat()
        assert listed(f"updated_after={after.replace('+00:00', 'Z')}&ordering=id") == [mine.pk]
        # A note is news too, for a client syncing by updated_after.
        services.note_add(conversation=open_, author=dana, text="Called them")
        assert listed(f"updated_after={after.replace('+00:00', 'Z')}&ordering=id") == [
            open_.pk,
            mine.pk,
        ]

    def test_an_unknown_filter_or_ordering_is_an_error(self, bob):
        client = api(token_for(bob))
        response = client.get("/api/v1/conversations?stauts=open&ordering=subject")
        assert response.status_code == 400
        assert set(response.json()) == {"stauts", "ordering"}
        response = client.get("/api/v1/conversations?cursor=WyJpZCIsIDFd")  # another ordering's
        assert response.status_code == 400
        assert "use the `next` link" in response.json()["cursor"][0]

    @pytest.mark.parametrize(
        "values", [["0001-01-01T00:00:00+14:00", 5], ["2026-12-03T10:00:00", 5]]
    )
    def test_a_forged_cursor_is_refused(self, bob, maria, values):
        """A time outside what the databases hold (a 500 on SQLite), or without its offset."""
        cursor = base64.urlsafe_b64encode(json.dumps(["updated_at", *values]).encode()).decode()
        response = api(token_for(bob)).get(
            f"/api/v1/conversations?ordering=updated_at&cursor={cursor}"
        )
        assert response.status_code == 400
        assert "use the `next` link" in response.json()["cursor"][0]

    def test_customers_by_address(self, bob, maria):
        client = api(token_for(bob))
        # An API inbox's user, by the id their integration gave, as agents see it.
        [found] = client.get("/api/v1/customers?address=MARIA").json()["results"]
        assert found["id"] == maria.customer_id
        assert found["identities"][0]["address"] == "maria"
        message = client.get(f"/api/v1/conversations/{maria.pk}").json()["messages"][0]
        assert message["address"] == "maria"
        assert client.get("/api/v1/customers?address=ari").json()["results"] == []
        assert client.get("/api/v1/customers?address=nobody").json()["results"] == []
        assert client.get(f"/api/v1/customers/{maria.customer_id}").json()["id"] == found["id"]


class TestThrottling:
    def test_too_many_requests_are_told_to_wait(self, bob, settings):
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"user": "3/minute"},
        }
        client = api(token_for(bob))
        codes = [client.get("/api/v1/conversations").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert int(client.get("/api/v1/conversations")["Retry-After"]) > 0

    def test_with_its_cache_down_the_api_still_answers(self, bob, settings, caplog):
        token = token_for(bob)
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": "redis://127.0.0.1:9/0",  # nothing listens: refused
            }
        }
        assert api(token).get("/api/v1/conversations").status_code == 200
        assert "the cache cannot be reached; not throttling" in caplog.text


class TestSchema:
    def test_the_schema_generates_without_warnings(self, tmp_path):
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", tmp_path / "s.yaml")
        assert "/api/v1/conversations/{number}/replies" in (tmp_path / "s.yaml").read_text()

    def test_the_schema_and_its_docs_are_served_without_inline_code(self, db):
        assert Client().get("/api/v1/schema").status_code == 200
        docs = Client().get("/api/v1/docs")
        assert docs.status_code == 200
        page = docs.content.decode()
        # The site's Content-Security-Policy allows scripts and styles from files only.
        assert "<style" not in page
        assert all(re.match(r"<script src=", tag) for tag in re.findall(r"<script[^>]*>", page))
        assert "cdn" not in page.lower()


def test_messages_of_a_conversation_carry_notes_and_delivery(bob, maria):
    services.note_add(conversation=maria, author=bob, text="Internal")
    shown = api(token_for(bob)).get(f"/api/v1/conversations/{maria.pk}").json()
    assert [(m["direction"], m["text"]) for m in shown["messages"]] == [
        ("inbound", "My parcel never came"),
        ("note", "Internal"),
    ]
    assert Message.objects.filter(conversation=maria).count() == 2


def test_a_long_history_is_paged_and_the_conversation_shows_its_last_messages(bob, maria, charlie):
    from conversations.api import MESSAGES_INLINE

    Message.objects.bulk_create(  # a long chat's worth of notes
        Message(
            conversation=maria,
            direction=Message.Direction.NOTE,
            channel=maria.inbox.kind,
            inbox=maria.inbox,
            author=bob,
            text=f"Note {n}",
        )
        for n in range(MESSAGES_INLINE)
    )
    client = api(token_for(bob))
    shown = client.get(f"/api/v1/conversations/{maria.pk}").json()
    assert len(shown["messages"]) == MESSAGES_INLINE
    assert (shown["messages"][0]["text"], shown["messages"][-1]["text"]) == (
        "Note 0",
        f"Note {MESSAGES_INLINE - 1}",
    )
    texts, url = [], shown["messages_url"] + "?page_size=40"
    while url:
        page = client.get(url).json()
        texts += [m["text"] for m in page["results"]]
        url = page["next"]
    assert texts == ["My parcel never came"] + [f"Note {n}" for n in range(MESSAGES_INLINE)]
    # Another team's agent: the same 404 as for the conversation itself.
    other = api(token_for(charlie)).get(f"/api/v1/conversations/{maria.pk}/messages")
    assert other.status_code == 404
