"""The agent's own account: the profile page (name, email notifications, password)."""

import re

import pytest
from django.test import Client
from django.urls import reverse

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
