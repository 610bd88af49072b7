import pytest


@pytest.mark.django_db(transaction=True)
def test_healthz_reports_every_part_ok(client, embedded_worker, settings):
    settings.EMBEDDED_WORKER = True
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "channel_layer": "ok",
        "broker": "ok",
        "mailboxes": {},
    }


@pytest.mark.django_db
def test_healthz_names_a_dead_embedded_worker_and_says_why_to_admins_only(client, settings, alice):
    settings.EMBEDDED_WORKER = True  # configured to run in-process, but nothing started it
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "down",
        "database": "ok",
        "channel_layer": "ok",
        "broker": "down",
        "mailboxes": {},
    }
    client.force_login(alice)
    body = client.get("/healthz").json()
    assert body["broker"] == "down: RuntimeError: embedded worker is not running"


@pytest.mark.django_db
def test_a_failing_mailbox_is_counted_and_only_admins_see_its_name_and_error(client, alice):
    from channels_adapters.models import MailboxState
    from conversations.models import Channel, Inbox

    inbox = Inbox.objects.create(
        name="Acme Support",
        kind=Channel.EMAIL,
        address="support@acme.example",
        settings={"imap_host": "imap.acme.example", "imap_user": "support"},
    )
    MailboxState.objects.create(
        inbox=inbox, consecutive_failures=5, last_error="LOGIN failed for support@10.0.0.7"
    )
    # To anyone: how many mailboxes are failing, not which (nor their names).
    assert client.get("/healthz").json()["mailboxes"] == {"failing": 1}
    client.force_login(alice)
    mailboxes = client.get("/healthz").json()["mailboxes"]
    assert mailboxes["Acme Support"].endswith("LOGIN failed for support@10.0.0.7")


@pytest.mark.django_db
def test_healthz_names_an_unreachable_channel_layer(client, settings):
    from channels.layers import channel_layers

    # A Redis that is not there: port 9 on loopback refuses connections.
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:9/0"]},
        }
    }
    settings.EMBEDDED_WORKER = False
    channel_layers.backends.clear()
    try:
        response = client.get("/healthz")
    finally:
        channel_layers.backends.clear()
    assert response.status_code == 503
    assert response.json()["channel_layer"] == "down"
