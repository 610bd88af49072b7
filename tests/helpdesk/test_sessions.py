from django.test import Client
from django.urls import reverse

from helpdesk.views import DEVICE_COOKIE
from tests.conftest import PASSWORD, receive, signed_in_http


def test_a_signed_in_agent_reads_the_inbox_while_redis_is_down(
    server_without_redis, client, bob, api_inbox
):
    conversation = receive(api_inbox, text="Where is my order?").message.conversation
    agent = signed_in_http(client, bob, server_without_redis)

    # The session is read from the database behind the cache: the conversations are all there.
    page = agent.get(f"/inbox/{conversation.number}/")

    assert page.status_code == 200
    assert "Where is my order?" in page.text
    assert agent.get("/inbox/").status_code == 200


def test_agents_sign_in_while_redis_is_down_and_guessing_is_still_limited(cache_down, bob, caplog):
    """Failures are counted by each process on its own while the cache is down: sign-in
    works, and a guesser is still stopped after ten tries."""
    bobs, guesser = Client(), Client()

    assert sign_in(bobs, bob, PASSWORD).status_code == 302
    assert bobs.get("/inbox/").status_code == 200
    for _ in range(10):
        assert sign_in(guesser, bob, "guess").status_code == 200
    assert sign_in(guesser, bob, PASSWORD).status_code == 429
    assert "_auth_user_id" not in guesser.session
    # Bob's own browser (its cookie says he signed in there), on the same address, gets in.
    again = Client()
    again.cookies[DEVICE_COOKIE] = bobs.cookies[DEVICE_COOKIE].value
    assert sign_in(again, bob, PASSWORD).status_code == 302
    assert "rate limits counted per process: the cache is down" in caplog.text


def sign_in(client, user, password):
    data = {"username": user.email, "password": password}
    return client.post(reverse("login"), data, REMOTE_ADDR="203.0.113.5")
