"""Every admin page renders for a superuser with data present, in a number of queries that
does not grow with the number of rows."""

import json

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from channels_adapters.delivery import inbound_event_process, inbound_event_store, message_deliver
from channels_adapters.models import WebhookDelivery, WebhookEndpoint
from channels_adapters.webhooks import webhook_deliver
from conversations import services
from conversations.models import Channel, Conversation, Inbox, Message
from helpdesk.models import User

MODELS = [model for model in admin.site._registry]


def add_pipeline_rows(n: int):
    """Rows the demo does not make: attachments, delivery attempts, raw inbound events and
    API tokens, outgoing webhooks with their attempts (refused: the endpoint is on loopback)."""
    from helpdesk.tokens import api_token_create

    agent = User.objects.get(email="agent@example.com")
    WebhookEndpoint.objects.get_or_create(
        url="http://127.0.0.1:9/hooks", defaults={"event_types": ["message.created"]}
    )
    api = Inbox.objects.filter(kind=Channel.API).first()
    for i in range(n):
        key = f"bench-{Message.objects.count()}-{i}"
        event, _ = inbound_event_store(
            inbox=api,
            dedupe_key=key,
            payload=f'{{"id": "{key}", "from": "{key}@example.com", "text": "hi"}}'.encode(),
        )
        inbound_event_process(event.pk)
        conversation = services.message_receive(
            inbox=Inbox.objects.get(kind=Channel.WEBCHAT),
            inbound=services.InboundMessage(
                channel=Channel.WEBCHAT,
                address=f"visitor-{key}",
                text="see attached",
                attachments=(services.InboundAttachment("photo.png", "image/png", b"\x89PNG"),),
            ),
        ).message.conversation
        reply = services.reply_send(conversation=conversation, author=agent, text="thanks")
        message_deliver(reply.pk)
        api_token_create(user=agent, name=f"Sync {key}")
    for delivery in WebhookDelivery.objects.filter(attempts=0):
        webhook_deliver(delivery.pk)


def admin_urls():
    for model in MODELS:
        app, name = model._meta.app_label, model._meta.model_name
        obj = model._default_manager.order_by("pk").first()
        assert obj is not None, f"no {model.__name__} to show"
        yield f"{model.__name__} list", reverse(f"admin:{app}_{name}_changelist")
        yield f"{model.__name__} change", reverse(f"admin:{app}_{name}_change", args=[obj.pk])
        if admin.site._registry[model].has_add_permission(_FakeRequest()):
            yield f"{model.__name__} add", reverse(f"admin:{app}_{name}_add")


class _FakeRequest:
    """Only what has_add_permission reads: a superuser."""

    class user:  # noqa: N801
        is_active = is_staff = is_superuser = True

        @staticmethod
        def has_perm(perm, obj=None):
            return True


def query_counts(client):
    counts = {}
    for name, url in admin_urls():
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200, f"{name} at {url} answered {response.status_code}"
        counts[name] = len(queries)
    return counts


@pytest.mark.django_db
def test_every_admin_page_renders_in_constant_queries(client):
    call_command("seed_demo", customers=8, stdout=open("/dev/null", "w"))  # noqa: SIM115
    Group.objects.create(name="Team leads")
    add_pipeline_rows(2)
    client.force_login(User.objects.get(email="admin@example.com"))
    few = query_counts(client)

    call_command("seed_demo", customers=40, stdout=open("/dev/null", "w"))  # noqa: SIM115
    add_pipeline_rows(8)
    many = query_counts(client)

    assert Conversation.objects.count() >= 48
    grown = {name: (few[name], many[name]) for name in few if many[name] > few[name]}
    assert not grown, f"query count grows with rows (few, many): {grown}"


@pytest.mark.django_db
def test_customer_content_is_escaped_in_admin(client, alice, chat_inbox):
    services.message_receive(
        inbox=chat_inbox,
        inbound=services.InboundMessage(
            channel=Channel.WEBCHAT,
            address="v-x",
            name='<img src=x onerror="alert(1)">',
            text="<script>alert(2)</script>",
            subject="<b>bold</b>",
        ),
    )
    client.force_login(alice)
    conversation = Conversation.objects.get()
    pages = [
        reverse("admin:conversations_conversation_changelist"),
        reverse("admin:conversations_conversation_change", args=[conversation.pk]),
        reverse("admin:conversations_customer_changelist"),
        reverse("admin:conversations_message_changelist"),
    ]
    for url in pages:
        html = client.get(url).content.decode()
        assert "<script>alert(2)" not in html
        assert '<img src=x onerror="alert(1)">' not in html


@pytest.mark.django_db
def test_inbox_credentials_are_write_only(client, alice, chat_inbox):
    chat_inbox.credentials = {"api_key": "sk_live_very_secret"}
    chat_inbox.save()
    client.force_login(alice)
    url = reverse("admin:conversations_inbox_change", args=[chat_inbox.pk])
    html = client.get(url).content.decode()
    assert "sk_live_very_secret" not in html
    assert chat_inbox.secret not in html
    assert "api_key = ••••••" in html

    # Saving the form without new credentials keeps the old ones.
    response = client.post(
        url,
        {
            "name": "Chat",
            "kind": "webchat",
            "address": "",
            "settings": "{}",
            "new_credentials": "",
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    chat_inbox.refresh_from_db()
    assert chat_inbox.name == "Chat"
    assert chat_inbox.credentials == {"api_key": "sk_live_very_secret"}


@pytest.mark.django_db
def test_an_email_inbox_s_settings_are_checked_and_credentials_set_key_by_key(
    client, alice, mail_inbox
):
    mail_inbox.credentials = {"smtp_password": "smtp-secret"}
    mail_inbox.save()
    client.force_login(alice)
    url = reverse("admin:conversations_inbox_change", args=[mail_inbox.pk])
    form = {"name": "Support email", "kind": "email", "address": "support@acme.example"}
    form |= {"default_team": mail_inbox.default_team_id, "is_active": "on"}
    form |= {"auto_replies-TOTAL_FORMS": 0, "auto_replies-INITIAL_FORMS": 0}  # its inline

    bad = {
        "imap_hots": "imap.example.com",
        "imap_port": "nine",
        "smtp_use_tls": "maybe",
        "imap_password": "hunter2",
    }
    response = client.post(url, form | {"settings": json.dumps(bad), "new_credentials": ""})
    assert response.status_code == 200  # the form again, saying what is wrong
    html = response.content.decode()
    assert "Unknown setting &#x27;imap_hots&#x27;" in html
    assert "imap_port is a port number from 1 to 65535, not &#x27;nine&#x27;" in html
    assert "smtp_use_tls is true or false, not &#x27;maybe&#x27;" in html
    assert "imap_password: secrets go in Replace credentials" in html
    mail_inbox.refresh_from_db()
    assert mail_inbox.settings == {}

    good = {"imap_host": "imap.example.com", "imap_port": 993, "smtp_use_tls": True}
    credentials = json.dumps({"imap_password": "imap-secret"})
    response = client.post(
        url, form | {"settings": json.dumps(good), "new_credentials": credentials}
    )
    assert response.status_code == 302
    mail_inbox.refresh_from_db()
    assert mail_inbox.settings == good
    # The IMAP password is added; the SMTP one set before stays.
    assert mail_inbox.credentials == {
        "smtp_password": "smtp-secret",
        "imap_password": "imap-secret",
    }
    client.post(
        url, form | {"settings": json.dumps(good), "new_credentials": '{"smtp_password": null}'}
    )
    mail_inbox.refresh_from_db()
    assert mail_inbox.credentials == {"imap_password": "imap-secret"}


@pytest.mark.django_db
def test_bulk_actions_go_through_the_services(client, alice, bob, chat_inbox):
    for address in ("v1", "v2"):
        services.message_receive(
            inbox=chat_inbox,
            inbound=services.InboundMessage(channel=Channel.WEBCHAT, address=address, text="hi"),
        )
    client.force_login(alice)
    ids = list(Conversation.objects.values_list("pk", flat=True))
    url = reverse("admin:conversations_conversation_changelist")

    client.post(url, {"action": "assign", "_selected_action": ids, "assignee": bob.pk})
    client.post(url, {"action": "resolve", "_selected_action": ids})

    for conversation in Conversation.objects.all():
        assert conversation.assignee == bob
        assert conversation.status == "resolved"
        assert list(conversation.events.values_list("kind", "actor")) == [
            ("created", None),
            ("assigned", alice.pk),
            ("status", alice.pk),
        ]

    customers = Conversation.objects.values_list("customer", flat=True)
    client.post(
        reverse("admin:conversations_customer_changelist"),
        {"action": "merge", "_selected_action": list(customers)},
    )
    assert Conversation.objects.values("customer").distinct().count() == 1


@pytest.mark.django_db
def test_the_conversation_page_hides_the_reply_token_and_other_customers(client, alice, chat_inbox):
    for address in ("visitor-a", "visitor-b"):
        services.message_receive(
            inbox=chat_inbox,
            inbound=services.InboundMessage(channel=Channel.WEBCHAT, address=address, text="hi"),
        )
    conversation = Conversation.objects.get(customer__identities__address="visitor-a")
    client.force_login(alice)
    html = client.get(
        reverse("admin:conversations_conversation_change", args=[conversation.pk])
    ).content.decode()
    assert conversation.reply_token not in html  # a capability to write into it by email
    assert f"••••••{conversation.reply_token[-4:]}" in html
    assert "visitor-b" not in html  # participants pick by autocomplete, not a list of all


@pytest.mark.django_db
def test_a_provider_inbox_shows_the_webhook_url_to_paste(client, alice, settings):
    settings.PUBLIC_URL = "https://help.acme.example"
    inbox = Inbox.objects.create(
        name="Page", kind="messenger", credentials={"app_secret": "app-secret-value-7f3"}
    )
    client.force_login(alice)
    html = client.get(reverse("admin:conversations_inbox_change", args=[inbox.pk])).content
    assert f"https://help.acme.example/channels/messenger/{inbox.pk}/webhook".encode() in html
    assert b"verify_token" in html
    assert b"app-secret-value-7f3" not in html

    mail = Inbox.objects.create(name="Mail", kind="email", address="help@acme.example")
    html = client.get(reverse("admin:conversations_inbox_change", args=[mail.pk])).content
    assert f"https://help.acme.example/channels/email/{mail.pk}/mime".encode() in html
    assert mail.secret.encode() not in html


@pytest.mark.django_db
def test_without_public_url_the_admin_sees_the_address_it_browses_and_a_warning(
    client, alice, settings
):
    settings.PUBLIC_URL, settings.ALLOWED_HOSTS = "", ["help.acme.test"]
    chat = Inbox.objects.create(name="Site", kind="webchat")
    sms = Inbox.objects.create(name="Texts", kind="sms", address="+15550100")
    client.force_login(alice)
    html = client.get(
        reverse("admin:conversations_inbox_change", args=[chat.pk]), HTTP_HOST="help.acme.test"
    ).content.decode()
    assert f'src="http://help.acme.test/widget.js" data-inbox="{chat.widget_key}"' in (
        html.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    )
    assert "PUBLIC_URL is not set" in html
    html = client.get(
        reverse("admin:conversations_inbox_change", args=[sms.pk]), HTTP_HOST="help.acme.test"
    ).content.decode()
    assert f"http://help.acme.test/channels/sms/{sms.pk}/webhook" in html
    assert "PUBLIC_URL is not set" in html
    assert "&lt;PUBLIC_URL&gt;" not in html


@pytest.mark.django_db
def test_new_rules_automations_and_macros_start_with_an_empty_list_not_null(client, alice):
    client.force_login(alice)
    for page in ("routing_routingrule_add", "routing_automation_add", "routing_macro_add"):
        html = client.get(reverse(f"admin:{page}")).content.decode()
        assert ">\n[]</textarea>" in html or ">[]</textarea>" in html, page
        assert ">\nnull</textarea>" not in html and ">null</textarea>" not in html, page


@pytest.mark.django_db
def test_rotating_an_inbox_secret_asks_first(client, alice, mail_inbox):
    old = mail_inbox.secret
    client.force_login(alice)
    url = reverse("admin:conversations_inbox_changelist")
    chosen = {"action": "rotate_secret", "_selected_action": [mail_inbox.pk]}
    response = client.post(url, chosen)
    assert response.status_code == 200
    assert "mail forwarded to its HTTP endpoint" in response.content.decode()
    mail_inbox.refresh_from_db()
    assert mail_inbox.secret == old  # nothing yet

    response = client.post(url, chosen | {"confirmed": "yes"})
    mail_inbox.refresh_from_db()
    assert mail_inbox.secret != old
    shown_once(response, mail_inbox.secret)


def shown_once(response, secret):
    """A secret on this answer alone: not kept by the browser, nor in a messages cookie."""
    assert response.status_code == 200
    assert f'value="{secret}"' in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert not [c for c in response.cookies.values() if secret in c.value]


@pytest.mark.django_db
def test_inbox_settings_are_a_json_object_and_a_new_chat_keeps_the_widget_defaults(
    client, alice, sms_inbox
):
    from channels_adapters.webchat.chat import widget_settings

    client.force_login(alice)
    add = reverse("admin:conversations_inbox_add")
    form = {"name": "Shop B chat", "kind": "webchat", "address": "", "new_credentials": ""}
    form |= {"is_active": "on"}
    response = client.post(add, form | {"settings": "[1, 2]"})
    assert response.status_code == 200
    assert "Settings must be a JSON object" in response.content.decode()
    assert not Inbox.objects.filter(name="Shop B chat").exists()

    # The widget's options are not on the add page: none of them is saved as "off".
    added = client.post(add, form | {"settings": "{}"})
    chat = Inbox.objects.get(name="Shop B chat")
    shown_once(added, chat.secret)  # what the site signs its users' ids with
    assert widget_settings(chat)["show_agent_typing"] is True

    # On its page, settings edited in the Settings JSON are kept (their own fields unchanged,
    # sent back as a browser does, lines ending in \r\n).
    chat.settings = {"allowed_origins": ["https://a.example", "https://b.example"]}
    chat.save()
    change = reverse("admin:conversations_inbox_change", args=[chat.pk])
    shown = client.get(change).context["adminform"].form.initial
    edited = {k: v for k, v in shown.items() if k.startswith("widget_") and v not in (None, False)}
    edited["widget_allowed_origins"] = edited["widget_allowed_origins"].replace("\n", "\r\n")
    json_edit = {"greeting": "Hola", "allowed_origins": ["https://c.example"]}
    edited |= form | {"settings": json.dumps(json_edit)}
    assert client.post(change, edited).status_code == 302
    chat.refresh_from_db()
    assert chat.settings["greeting"] == "Hola"
    assert chat.settings["allowed_origins"] == ["https://c.example"]
    assert widget_settings(chat)["show_agent_typing"] is True

    # The greeting in other languages: one line each, the language checked.
    edited["widget_greetings"] = "es: ¡Hola! ¿En qué podemos ayudarte?\r\nSpanish! Hola"
    response = client.post(change, edited)
    assert "'Spanish! Hola': write a language, a colon, then its greeting." in (
        response.content.decode().replace("&#x27;", "'")
    )
    edited["widget_greetings"] = "es: ¡Hola! ¿En qué podemos ayudarte?\r\nPT_br: Olá!"
    assert client.post(change, edited).status_code == 302
    chat.refresh_from_db()
    assert chat.settings["greetings"] == {"es": "¡Hola! ¿En qué podemos ayudarte?", "pt-BR": "Olá!"}
    shown = client.get(change).context["adminform"].form.initial["widget_greetings"]
    assert shown == "es: ¡Hola! ¿En qué podemos ayudarte?\npt-BR: Olá!"

    # An SMS inbox's settings as a bare string would break every reply: refused.
    change = reverse("admin:conversations_inbox_change", args=[sms_inbox.pk])
    form = {"name": sms_inbox.name, "kind": "sms", "address": sms_inbox.address}
    form |= {"new_credentials": "", "is_active": "on", "settings": '"hello"'}
    form |= {"auto_replies-TOTAL_FORMS": 0, "auto_replies-INITIAL_FORMS": 0}
    assert client.post(change, form).status_code == 200
    sms_inbox.refresh_from_db()
    assert isinstance(sms_inbox.settings, dict)


@pytest.mark.django_db
def test_an_email_inbox_needs_an_address_of_its_own(client, alice, mail_inbox):
    client.force_login(alice)
    add = reverse("admin:conversations_inbox_add")
    form = {"name": "Billing email", "kind": "email", "settings": "{}", "new_credentials": ""}
    form |= {"is_active": "on"}
    for address, problem in (
        ("not an address", "An email inbox needs its email address."),
        (mail_inbox.address.upper(), f"The inbox “{mail_inbox.name}” has this address."),
    ):
        response = client.post(add, form | {"address": address})
        assert response.status_code == 200
        assert problem in response.content.decode()
    assert "Made when the inbox is added, and shown once then." in client.get(add).content.decode()
    added = client.post(add, form | {"address": "Billing@Acme.example"})
    inbox = Inbox.objects.get(name="Billing email")
    assert inbox.address == "billing@acme.example"
    # Its secret, for the MIME endpoint: shown once, as it is saved.
    shown_once(added, inbox.secret)


@pytest.mark.django_db
def test_an_unknown_time_zone_in_business_hours_is_an_error_not_a_crash(client, alice):
    from routing.models import BusinessHours

    hours = BusinessHours.objects.create(name="Support hours", timezone="Europe/Lisbon")
    client.force_login(alice)
    url = reverse("admin:routing_businesshours_change", args=[hours.pk])
    form = {"name": "Support hours", "timezone": "Mars/Olympus"}
    for inline in ("intervals", "holidays"):
        form |= {f"{inline}-TOTAL_FORMS": 0, f"{inline}-INITIAL_FORMS": 0}
    response = client.post(url, form)
    assert response.status_code == 200
    assert "Unknown time zone “Mars/Olympus”" in response.content.decode()
    hours.refresh_from_db()
    assert hours.timezone == "Europe/Lisbon"


@pytest.mark.django_db
def test_admin_pages_ask_for_no_favicon_the_server_does_not_have(client, alice):
    """A browser asks /favicon.ico of a page that names no icon: a 404 in every admin
    page's console. They name an empty one, as the inbox does, and keep Django's header."""
    client.force_login(alice)
    page = client.get("/admin/").content.decode()
    assert '<link rel="icon" href="data:,">' in page
    assert ">Threadline administration</a>" in page  # the header of the base it extends


@pytest.mark.django_db
def test_an_email_is_one_user_whatever_its_case(client, alice, bob):
    client.force_login(alice)
    add = reverse("admin:helpdesk_user_add")
    password = {"password1": "a long passphrase 42", "password2": "a long passphrase 42"}
    password |= {"team_memberships-TOTAL_FORMS": 0, "team_memberships-INITIAL_FORMS": 0}
    response = client.post(add, {"email": "BOB@Example.com", "usable_password": "true"} | password)
    assert response.status_code == 200
    assert "A user with this email address already exists." in response.content.decode()
    assert User.objects.filter(email__iexact="bob@example.com").count() == 1
    # A new one is kept in lower case; Bob still signs in, in any case.
    data = {"email": "Nina.New@Example.com", "usable_password": "true"} | password
    assert client.post(add, data).status_code == 302
    assert User.objects.filter(email="nina.new@example.com").exists()
    client.logout()
    login = {"username": "BOB@example.com", "password": "correct horse battery staple"}
    assert client.post(reverse("login"), login).status_code == 302


@pytest.mark.django_db
def test_an_inbox_keeps_its_kind_its_secrets_out_of_sight_and_a_number_of_its_own(
    client, alice, chat_inbox
):
    services.message_receive(
        inbox=chat_inbox,
        inbound=services.InboundMessage(channel=Channel.WEBCHAT, address="v1", text="Hi"),
    )
    client.force_login(alice)
    form = {"name": chat_inbox.name, "kind": "sms", "address": "+15550170", "settings": "{}"}
    form |= {"new_credentials": "", "is_active": "on", "autoreplies-TOTAL_FORMS": 0}
    form |= {"autoreplies-INITIAL_FORMS": 0}
    page = client.post(reverse("admin:conversations_inbox_change", args=[chat_inbox.pk]), form)
    assert "its kind cannot change" in page.content.decode()
    chat_inbox.refresh_from_db()
    assert chat_inbox.kind == Channel.WEBCHAT

    add = reverse("admin:conversations_inbox_add")
    line = form | {"name": "SMS line", "address": "+1 415 555 0100"}
    secret = line | {"settings": '{"account_sid": "AC1", "auth_token": "tw-secret"}'}
    assert (
        "auth_token: secrets go in Replace credentials" in client.post(add, secret).content.decode()
    )
    assert (
        "is not a phone number" in client.post(add, line | {"address": "ring me!"}).content.decode()
    )
    # A misspelt key was saved, and read as missing ("no Twilio account SID set").
    typo = line | {"settings": '{"acount_sid": "AC1"}'}
    assert (
        "Unknown setting &#x27;acount_sid&#x27;; SMS inboxes know account_sid, "
        "messaging_service_sid, api_base_url." in client.post(add, typo).content.decode()
    )
    # So was a mistyped SID, and every reply then failed at Twilio.
    short = line | {"settings": '{"account_sid": "AC1"}'}
    assert (
        "account_sid is AC and 32 hexadecimal digits, as Twilio&#x27;s console shows it, not "
        "&#x27;AC1&#x27;." in client.post(add, short).content.decode()
    )
    assert client.post(add, line).status_code == 302
    assert Inbox.objects.get(name="SMS line").address == "+14155550100"
    again = client.post(add, line | {"name": "Another", "address": "+14155550100"})
    assert "The inbox “SMS line” has this number." in again.content.decode()
    # A sender ID (one-way SMS) and a short code are what some lines send from.
    for name, sender in (("Alerts", "ACME Shop"), ("Short", "72345")):
        assert client.post(add, line | {"name": name, "address": sender}).status_code == 302
    # A number a switched-off inbox had is free for its replacement.
    Inbox.objects.filter(name="SMS line").update(is_active=False)
    assert client.post(add, line | {"name": "New line"}).status_code == 302

    # Meta's ids are digits; a template agents could not be offered is said so.
    page = form | {"name": "Page", "kind": "messenger", "address": ""}
    named = page | {"settings": '{"page_id": "acme-shop", "human_agent_tag": "yes"}'}
    html = client.post(add, named).content.decode()
    assert "page_id is digits, not &#x27;acme-shop&#x27;." in html
    assert "human_agent_tag is true or false, not &#x27;yes&#x27;." in html
    assert client.post(add, page | {"settings": '{"page_id": 1234567890}'}).status_code == 302
    whatsapp = form | {"name": "WhatsApp", "kind": "whatsapp", "address": "+14155550111"}
    template = '{"name": "order_update", "body": "Order {{1}} shipped"}'
    html = client.post(add, whatsapp | {"settings": f'{{"templates": [{template}]}}'})
    assert "The template &#x27;order_update&#x27; has parameters" in html.content.decode()
    html = client.post(add, whatsapp | {"settings": '{"templates": ["order_update"]}'})
    assert "templates is a list of templates, such as" in html.content.decode()
    # An API inbox's webhook, where agents' replies go, must be a web address.
    api = form | {"name": "Shop app", "kind": "api", "address": ""}
    wrong = client.post(add, api | {"settings": '{"webhook_url": "app.example.com/replies"}'})
    assert "webhook_url is an http(s) address, not &#x27;app.example.com/replies&#x27;" in (
        wrong.content.decode()
    )
    right = api | {"settings": '{"webhook_url": "https://app.example.com/replies"}'}
    added = client.post(add, right)
    shop = Inbox.objects.get(name="Shop app")
    shown_once(added, shop.secret)
    assert shop.settings == {"webhook_url": "https://app.example.com/replies"}
    page = client.get(reverse("admin:conversations_inbox_change", args=[shop.pk])).content.decode()
    assert f"/channels/api/{shop.pk}/messages" in page  # what the integration posts to


@pytest.mark.django_db
def test_what_live_work_uses_is_not_deleted_and_the_page_says_what_to_do_first(
    client, alice, bob, support, chat_inbox
):
    from conversations.models import CannedResponse
    from routing.models import Automation, BusinessHours, Team

    conversation = services.message_receive(
        inbox=chat_inbox,
        inbound=services.InboundMessage(channel=Channel.WEBCHAT, address="v1", text="Hi"),
    ).message.conversation
    services.conversation_assign(conversation=conversation, assignee=bob, actor=alice)
    hours = BusinessHours.objects.create(name="Shop hours", timezone="Europe/Lisbon")
    chat_inbox.business_hours = hours
    chat_inbox.save()
    canned = CannedResponse.objects.create(shortcut="thanks", title="Thanks", body="Thank you!")
    Automation.objects.create(
        name="Say thanks", event="created", actions=[{"action": "reply", "canned": canned.pk}]
    )
    client.force_login(alice)
    for obj, says in (
        (support, f"1 open conversation in {support.name}: transfer them to another team first"),
        (bob, "1 open conversation assigned to Bob: reassign them, or untick Active instead"),
        (hours, f"Inbox “{chat_inbox.name}” keeps these hours: give it others first"),
        (canned, "Automation “Say thanks” replies with it: change that first"),
    ):
        meta = obj._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_delete", args=[obj.pk])
        page = client.post(url, {"post": "yes"})
        assert page.status_code == 200
        assert says in page.content.decode()
        assert type(obj).objects.filter(pk=obj.pk).exists()
    # Once nothing uses it, it goes.
    Automation.objects.all().delete()
    url = reverse("admin:conversations_cannedresponse_delete", args=[canned.pk])
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not CannedResponse.objects.filter(pk=canned.pk).exists()
    assert Team.objects.filter(pk=support.pk).exists()

    # Named only in conditions: deleted, the rule would match nothing, and nobody would know.
    from routing.models import RoutingRule

    services.conversation_set_status(conversation=conversation, status="resolved", actor=alice)
    RoutingRule.objects.create(
        name="VIP desk",
        conditions=[{"field": "team", "op": "in", "value": [support.pk]}],
        priority=3,
    )
    Automation.objects.create(
        name="Bob's follow-up",
        event="status_changed",
        conditions=[{"field": "assignee", "op": "is", "value": bob.pk}],
        actions=[{"action": "priority", "priority": "high"}],
    )
    for obj, says in (
        (support, f"Routing rule “VIP desk” looks for {support.name} in its conditions"),
        (bob, "Automation “Bob&#x27;s follow-up” looks for Bob in its conditions"),
    ):
        meta = obj._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_delete", args=[obj.pk])
        page = client.post(url, {"post": "yes"})
        assert says in page.content.decode()
        assert type(obj).objects.filter(pk=obj.pk).exists()


@pytest.mark.django_db
def test_the_admin_role_is_the_one_switch_for_the_admin(client, alice, bob):
    client.force_login(bob)
    assert 'href="/admin/"' not in client.get("/inbox/").content.decode()
    assert client.get("/admin/").status_code == 302  # to the admin's sign-in
    bob.role = User.Role.ADMIN
    bob.save()
    page = client.get("/inbox/").content.decode()
    assert 'href="/admin/"' in page  # the top bar's Admin link leads somewhere
    assert client.get("/admin/conversations/inbox/").status_code == 200
    bob.role = User.Role.AGENT
    bob.save()
    assert client.get("/admin/").status_code == 302


@pytest.mark.django_db
def test_a_conversation_is_found_by_its_number_as_agents_write_it(client, alice, chat_inbox):
    conversation = services.message_receive(
        inbox=chat_inbox,
        inbound=services.InboundMessage(channel=Channel.WEBCHAT, address="v1", text="Hi"),
    ).message.conversation
    client.force_login(alice)
    url = reverse("admin:conversations_conversation_changelist")
    page = client.get(url, {"q": f"#{conversation.pk}"}).content.decode()
    assert reverse("admin:conversations_conversation_change", args=[conversation.pk]) in page


@pytest.mark.django_db
def test_an_identity_added_in_the_admin_is_stored_as_channels_store_it(client, alice):
    from conversations.models import Customer, Identity

    jean = Customer.objects.create(name="Jean")
    Identity.objects.create(customer=jean, kind=Channel.EMAIL, address="jean@example.fr")
    other = Customer.objects.create(name="Other")
    client.force_login(alice)
    url = reverse("admin:conversations_identity_add")
    form = {"customer": other.pk, "kind": "email", "display_name": ""}
    page = client.post(url, form | {"address": "JEAN@EXAMPLE.FR"}).content.decode()
    assert "Identity with this Kind and Address already exists." in page
    page = client.post(url, form | {"kind": "sms", "address": "call me maybe"}).content.decode()
    assert "is not a phone number" in page
    for typo in ("not an email", "jean@"):
        page = client.post(url, form | {"address": typo}).content.decode()
        assert "Enter a valid email address." in page
    london = form | {"kind": "sms", "address": "+44 20 7946 0958"}
    assert client.post(url, london).status_code == 302
    assert other.identities.get().address == "+442079460958"
    # Routing rules read customer.<attribute>: a list there would match nothing, silently.
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="Attributes are a JSON object"):
        Customer(name="Listy", attributes=["a", "b"]).full_clean()


@pytest.mark.django_db
def test_an_api_base_url_may_name_a_test_double_by_its_service_name(client, alice):
    """The README offers api_base_url for a test double: in docker compose that is a service
    name without dots, which is a web address all the same."""
    client.force_login(alice)
    form = {"name": "SMS line", "kind": "sms", "address": "+1 415 555 0100"}
    form |= {"new_credentials": "", "is_active": "on", "autoreplies-TOTAL_FORMS": 0}
    form |= {"autoreplies-INITIAL_FORMS": 0}
    double = form | {"settings": '{"api_base_url": "http://twilio-double:8080"}'}
    assert client.post(reverse("admin:conversations_inbox_add"), double).status_code == 302
    assert (
        Inbox.objects.get(name="SMS line").settings["api_base_url"] == "http://twilio-double:8080"
    )
    for wrong in ("twilio-double:8080", "ftp://files.example.com", "http://", "https:///v1"):
        page = client.post(
            reverse("admin:conversations_inbox_add"),
            form | {"name": "Other", "settings": json.dumps({"api_base_url": wrong})},
        )
        assert "api_base_url is an http(s) address" in page.content.decode(), wrong
