"""The agent's own account: the profile page (name, email notifications, password) and
"Forgot your password?" from the sign-in page."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from helpdesk.models import User
from tests.conftest import PASSWORD, person

pytestmark = pytest.mark.django_db
NEW_PASSWORD = "a quieter ocean of lanterns"


def sign_in(client, user, password, address="198.51.100.7"):
    data = {"username": user.email, "password": password}
    return client.post(reverse("login"), data, REMOTE_ADDR=address)


class TestProfile:
    def test_it_is_linked_from_the_top_bar_and_shows_the_defaults(self, client, bob):
        client.force_login(bob)
        page = client.get("/inbox/")
        assert 'href="/inbox/profile"' in page.content.decode()
        html = client.get("/inbox/profile").content.decode()
        checked = set(re.findall(r'value="(\w+)" checked', html))
        assert checked == {"assigned", "mentioned", "failed", "sla_breached"}
        assert "Customer replied" in html  # every kind, by its label

    def test_it_changes_the_name_and_what_comes_by_email(self, client, bob):
        client.force_login(bob)
        data = {
            "action": "profile",
            "profile-display_name": "Robert <R.>",
            "profile-email_notifications": ["sla_breached", "customer_replied"],
        }
        response = client.post("/inbox/profile", data)
        assert response.status_code == 302
        assert response["Location"] == "/inbox/profile"
        page = client.get("/inbox/profile").content.decode()
        assert "Your profile was saved." in page
        assert "Robert &lt;R.&gt;" in page
        bob.refresh_from_db()
        assert bob.display_name == "Robert <R.>"
        assert bob.email_notifications == ["customer_replied", "sla_breached"]
        # None at all is a choice too.
        client.post("/inbox/profile", {"action": "profile", "profile-display_name": "Bob"})
        bob.refresh_from_db()
        assert bob.email_notifications == []

    def test_an_unknown_kind_is_refused_and_nothing_is_saved(self, client, bob):
        client.force_login(bob)
        data = {
            "action": "profile",
            "profile-display_name": "Someone else",
            "profile-email_notifications": ["assigned", "<b>everything</b>"],
        }
        response = client.post("/inbox/profile", data)
        assert response.status_code == 400
        html = response.content.decode()
        assert "Select a valid choice. &lt;b&gt;everything&lt;/b&gt; is not one" in html
        assert 'aria-invalid="true"' in html
        bob.refresh_from_db()
        assert (bob.display_name, bob.email_notifications) == (
            "Bob",
            ["assigned", "mentioned", "failed", "sla_breached"],
        )

    def test_it_changes_the_password_and_keeps_this_session_only(self, client, bob):
        elsewhere = Client()
        elsewhere.force_login(bob)
        client.force_login(bob)

        wrong = {
            "action": "password",
            "password-old_password": "not it",
            "password-new_password1": NEW_PASSWORD,
            "password-new_password2": NEW_PASSWORD,
        }
        response = client.post("/inbox/profile", wrong)
        assert response.status_code == 400
        assert "Your old password was entered incorrectly" in response.content.decode()
        mismatch = {**wrong, "password-old_password": PASSWORD, "password-new_password2": "x"}
        response = client.post("/inbox/profile", mismatch)
        assert response.status_code == 400
        assert "The two password fields didn’t match." in response.content.decode()

        response = client.post("/inbox/profile", {**wrong, "password-old_password": PASSWORD})
        assert response.status_code == 302
        assert "Your password was changed" in client.get("/inbox/profile").content.decode()
        assert client.get("/inbox/").status_code == 200  # still signed in here
        assert elsewhere.get("/inbox/").status_code == 302  # signed out there
        assert sign_in(Client(), bob, PASSWORD).status_code == 200  # refused
        assert sign_in(Client(), bob, NEW_PASSWORD).status_code == 302

    def test_guessing_the_current_password_is_slowed_as_signing_in_is(self, client, bob):
        """Someone with a session left open may not try passwords on this page faster than on
        the sign-in page: ten wrong ones a quarter of an hour, then even the right one waits."""
        client.force_login(bob)
        guess = {
            "action": "password",
            "password-new_password1": NEW_PASSWORD,
            "password-new_password2": NEW_PASSWORD,
        }
        for n in range(10):
            response = client.post("/inbox/profile", {**guess, "password-old_password": f"g{n}"})
            assert response.status_code == 400
        right = client.post("/inbox/profile", {**guess, "password-old_password": PASSWORD})
        wrong = client.post("/inbox/profile", {**guess, "password-old_password": "g10"})
        for response in (right, wrong):  # the same answer: it tells nothing of the guess
            assert response.status_code == 429
            assert "Too many wrong passwords" in response.content.decode()
            assert "entered incorrectly" not in response.content.decode()
        assert sign_in(Client(), bob, PASSWORD).status_code == 302  # unchanged

    def test_a_form_needs_its_csrf_token(self, bob):
        client = Client(enforce_csrf_checks=True)
        client.force_login(bob)
        data = {"action": "profile", "profile-display_name": "Mallory"}
        assert client.post("/inbox/profile", data).status_code == 403
        bob.refresh_from_db()
        assert bob.display_name == "Bob"


class TestAdmin:
    def test_the_user_admin_shows_and_saves_the_email_notifications(self, client, alice):
        eve = person("Eve")  # in no team: her page has no memberships to post back
        client.force_login(alice)
        url = reverse("admin:helpdesk_user_change", args=[eve.pk])
        page = client.get(url)
        assert "Email notifications" in page.content.decode()
        form = page.context["adminform"].form
        data = {
            key: value
            for key, value in form.initial.items()
            if value is not None and key not in ("password", "avatar", "email_notifications")
        }
        data |= {
            "email_notifications": ["failed", "assigned"],
            "team_memberships-TOTAL_FORMS": "0",
            "team_memberships-INITIAL_FORMS": "0",
        }
        response = client.post(url, data)
        assert response.status_code == 302
        eve.refresh_from_db()
        assert eve.email_notifications == ["assigned", "failed"]


@pytest.fixture
def mail_to(settings, smtp_server):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp_server.port
    settings.PUBLIC_URL = "http://testserver"
    return smtp_server


@pytest.fixture
def forgot(tasks_run):
    """Ask for a reset link, and let the worker send what that enqueued."""

    def ask(client, email, address="203.0.113.5"):
        with tasks_run():
            return client.post(reverse("password_reset"), {"email": email}, REMOTE_ADDR=address)

    return ask


class TestForgotPassword:
    def test_the_sign_in_page_links_to_it(self, client):
        assert 'href="/login/forgot"' in client.get(reverse("login")).content.decode()

    def test_a_link_by_email_sets_a_new_password(self, client, mail_to, bob, forgot):
        response = forgot(client, "  BOB@Example.com ")
        assert response.status_code == 302
        assert response["Location"] == "/login/forgot/sent"
        assert "Check your email" in client.get(response["Location"]).content.decode()

        [mail] = mail_to.messages()
        assert mail["To"] == "bob@example.com"
        assert mail["Subject"] == "[Threadline] Set a new password"
        text = mail.get_body(("plain",)).get_content()
        html = mail.get_body(("html",)).get_content()
        link = re.search(r"http://testserver(/login/reset/\S+)", text).group(1)
        assert f'href="http://testserver{link}"' in html

        form = client.get(link, follow=True)
        assert "Set a new password" in form.content.decode()
        set_url = form.redirect_chain[-1][0]
        weak = client.post(set_url, {"new_password1": "12345678", "new_password2": "12345678"})
        assert "This password is too common." in weak.content.decode()
        data = {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
        done = client.post(set_url, data)
        assert done["Location"] == "/login/reset/done"
        assert "Password set" in client.get(done["Location"]).content.decode()

        assert sign_in(Client(), bob, PASSWORD).status_code == 200  # refused
        assert sign_in(Client(), bob, NEW_PASSWORD).status_code == 302
        again = Client().get(link, follow=True).content.decode()
        assert "This link no longer works" in again  # once only

    def test_an_unknown_or_inactive_address_gets_the_same_answer_and_no_mail(
        self, client, mail_to, bob, dana, forgot
    ):
        User.objects.filter(pk=dana.pk).update(is_active=False)
        known = forgot(Client(), bob.email)
        for email in ("nobody@example.com", dana.email):
            response = forgot(Client(), email)
            assert (response.status_code, response["Location"]) == (302, known["Location"])
        assert [m["To"] for m in mail_to.messages()] == ["bob@example.com"]

    def test_the_answer_does_not_wait_for_the_mail(self, client, mail_to, bob):
        """Sent by the worker: a known address is not told apart by a slower answer."""
        response = client.post(reverse("password_reset"), {"email": bob.email})
        assert response.status_code == 302
        assert mail_to.messages() == []

    def test_the_request_does_the_same_work_with_or_without_an_account(
        self, bob, django_capture_on_commit_callbacks
    ):
        """Looking the account up, making its token and mail and handing it to the broker
        took longer, in the request, for an address with an account: the answer's time told
        who has one. All of it is the worker's now; the request only hands the address on."""
        done = {}
        for email in (bob.email, "nobody@example.com"):
            with django_capture_on_commit_callbacks() as callbacks:
                response = Client().post(reverse("password_reset"), {"email": email})
            assert response.status_code == 302
            rendered = [t.name for t in response.templates]
            done[email] = (len(callbacks), rendered)
        assert done[bob.email] == done["nobody@example.com"]
        assert not any(name.startswith("email/") for name in done[bob.email][1])

    def test_requests_are_limited_per_address_typed_and_per_client(self, mail_to, bob, forgot):
        for _ in range(3):
            assert forgot(Client(), bob.email, "192.0.2.1").status_code == 302
        throttled = forgot(Client(), bob.email, "192.0.2.2")
        assert throttled.status_code == 429
        assert "Too many requests" in throttled.content.decode()
        assert len(mail_to.received) == 3  # Bob's mailbox is not flooded
        # The same for an address without an account: the answer tells nothing.
        for _ in range(3):
            forgot(Client(), "nobody@example.com", "192.0.2.3")
        assert forgot(Client(), "nobody@example.com", "192.0.2.4").status_code == 429
        # One client asking for many addresses is stopped too.
        for n in range(10):
            forgot(Client(), f"agent{n}@example.com", "203.0.113.9")
        assert forgot(Client(), "other@example.com", "203.0.113.9").status_code == 429
        assert forgot(Client(), "other@example.com", "203.0.113.10").status_code == 302
