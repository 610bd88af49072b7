import json
import re
import threading
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from conversations import services
from conversations.models import (
    Attachment,
    CannedResponse,
    Channel,
    Conversation,
    ConversationEvent,
    Customer,
    DeliveryAttempt,
    Identity,
    Inbox,
    Message,
    Tag,
    new_secret,
)
from conversations.selectors import id_given
from helpdesk.admin import KeptWhileUsed, rotation_asked, secrets_shown
from helpdesk.models import User
from routing.admin import ClocksFollow
from routing.models import AutoReply, SlaClock


def _run(modeladmin, request, action, objects) -> int:
    """Apply a service to each object; report validation errors instead of crashing."""
    done = 0
    for obj in objects:
        try:
            action(obj)
            done += 1
        except ValidationError as exc:
            modeladmin.message_user(request, f"{obj}: {' '.join(exc.messages)}", messages.ERROR)
    return done


# --- Customers ------------------------------------------------------------------------------


class IdentityForm(forms.ModelForm):
    def clean(self):
        # An email address typed here must be one, as in the agents' inbox: "not an email" was
        # saved, and every reply to it failed. One stored from a mail, however odd, stays.
        cleaned = super().clean()
        if cleaned.get("kind") == Channel.EMAIL and "address" in self.changed_data:
            try:
                validate_email(cleaned.get("address") or "")
            except ValidationError as exc:
                self.add_error("address", exc)
        return cleaned


class IdentityInline(admin.TabularInline):
    model = Identity
    form = IdentityForm
    extra = 0
    fields = ["kind", "address", "display_name", "verified", "last_seen_at"]
    readonly_fields = ["last_seen_at"]


class CustomerConversationInline(admin.TabularInline):
    model = Conversation
    fk_name = "customer"
    extra = 0
    fields = ["subject", "inbox", "status", "assignee", "last_activity_at"]
    readonly_fields = fields
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("inbox", "assignee")


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["__str__", "addresses", "language", "conversation_count", "created_at"]
    list_filter = [
        "language",
        ("blocked_at", admin.EmptyFieldListFilter),
        ("merged_into", admin.EmptyFieldListFilter),
    ]
    search_fields = ["name", "identities__address", "notes"]
    readonly_fields = ["merged_into", "created_at", "updated_at"]
    inlines = [IdentityInline, CustomerConversationInline]
    actions = ["merge"]
    show_full_result_count = False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(_conversations=Count("conversations", distinct=True))
            .prefetch_related("identities")
        )

    @admin.display(description="conversations", ordering="_conversations")
    def conversation_count(self, customer):
        return customer._conversations

    @admin.display(description="addresses")
    def addresses(self, customer):
        return ", ".join(i.address for i in customer.identities.all()[:3])

    @admin.action(description="Merge the selected customers into the oldest one")
    def merge(self, request, queryset):
        customers = list(queryset.filter(merged_into=None).order_by("created_at", "pk"))
        if len(customers) < 2:
            self.message_user(request, "Select at least two customers.", messages.WARNING)
            return
        target, sources = customers[0], customers[1:]
        done = _run(
            self,
            request,
            lambda source: services.customer_merge(
                source=source, target=target, actor=request.user
            ),
            sources,
        )
        self.message_user(request, f"Merged {done} customers into {target}.", messages.SUCCESS)


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    form = IdentityForm
    list_display = ["address", "kind", "customer", "verified", "last_seen_at"]
    list_filter = ["kind", "verified"]
    list_select_related = ["customer"]
    search_fields = ["address", "display_name", "customer__name"]
    autocomplete_fields = ["customer"]


# --- Inboxes --------------------------------------------------------------------------------


# What an email inbox's settings may say (README, "Connect a real mailbox"), and how to check it.
EMAIL_SETTINGS = {
    "imap_host": str,
    "imap_port": "port",
    "imap_ssl": bool,
    "imap_username": str,
    "imap_folder": str,
    "imap_after": str,
    "smtp_host": str,
    "smtp_port": "port",
    "smtp_username": str,
    "smtp_use_tls": bool,
    "smtp_use_ssl": bool,
    "smtp_timeout": "seconds",
    "silent_after_hours": "hours",
}


# What each channel's settings may say (the README; the adapters' docstrings), and what each
# value is: a misspelt key (imap_hots, acount_sid) would be saved and read as missing, and a
# mistyped SID would fail every reply. Web-chat inboxes have their own form fields.
CHANNEL_SETTINGS = {
    Channel.EMAIL: EMAIL_SETTINGS,
    Channel.SMS: {"account_sid": "AC", "messaging_service_sid": "MG", "api_base_url": "url"},
    Channel.MESSENGER: {"page_id": "id", "api_base_url": "url", "human_agent_tag": bool},
    Channel.WHATSAPP: {"phone_number_id": "id", "templates": "templates", "api_base_url": "url"},
    Channel.API: {"webhook_url": "url"},
}
TEMPLATE_EXAMPLE = '[{"name": "order_update", "language": "en_US", "body": "Your order shipped."}]'


def _value_problem(kind, value) -> str:
    """What a setting of `kind` is, when `value` is not one (else "")."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    text = isinstance(value, str) and value.strip()
    if kind is bool:
        return "" if isinstance(value, bool) else "true or false"
    if kind is str:
        return "" if text else "a text value"
    if kind == "port":
        return "" if number and value in range(1, 65536) else "a port number from 1 to 65535"
    if kind in ("seconds", "hours"):
        return "" if number and value >= 0 else f"a number of {kind}"
    if kind == "url":
        # What the client can call, not URLValidator's web address, which wants a dot in the
        # host: the README's test double on a compose service ("http://twilio-double:8080").
        try:
            parts = urlsplit(value if isinstance(value, str) else "")
            valid = parts.scheme in ("http", "https") and parts.hostname and parts.port != 0
        except ValueError:  # a port that is no number, a bracket left open
            valid = False
        return "" if valid and not re.search(r"\s", value) else "an http(s) address"
    if kind == "id":  # Meta's ids: digits, written as a number or as text
        return "" if re.fullmatch(r"\d{1,30}", str(value) if number or text else "") else "digits"
    if kind in ("AC", "MG"):
        valid = text and re.fullmatch(rf"{kind}[0-9a-fA-F]{{32}}", value.strip())
        return "" if valid else f"{kind} and 32 hexadecimal digits, as Twilio's console shows it"
    if kind == "templates":
        valid = isinstance(value, list) and all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"].strip()
            for t in value
        )
        return "" if valid else f"a list of templates, such as {TEMPLATE_EXAMPLE}"
    return ""


def _settings_problems(kind: str, settings: dict) -> list[str]:
    """Why these settings (a JSON object: InboxForm.clean_settings) of a `kind` inbox would not
    work, in sentences an admin can act on. Unknown keys: InboxForm.clean."""
    from channels_adapters.whatsapp.adapter import PARAMETER

    known = CHANNEL_SETTINGS.get(kind, {})
    problems = [
        f"{key} is {problem}, not {value!r}."
        for key, value in settings.items()
        if key in known and (problem := _value_problem(known[key], value))
    ]
    if kind == Channel.WHATSAPP and not problems:
        for template in settings.get("templates") or []:
            if PARAMETER.search(str(template.get("body") or "")):
                problems.append(
                    f"The template {template['name']!r} has parameters ({{{{1}}}}), which a "
                    "reply cannot fill yet: agents would not be offered it."
                )
    if kind == Channel.EMAIL:
        after = settings.get("imap_after", "seen")
        if isinstance(after, str) and not (after == "seen" or after.startswith("move:")):
            problems.append(f'imap_after is "seen" or "move:<folder>", not {after!r}.')
        if settings.get("smtp_use_tls") is True and settings.get("smtp_use_ssl") is True:
            problems.append("Use smtp_use_tls (STARTTLS, port 587) or smtp_use_ssl (port 465).")
    return problems


# What an SMS inbox may send from besides a phone number: a short code ("72345"), or an
# alphanumeric sender ID ("ACME Shop": up to 11 letters, digits and spaces, one letter at least).
SHORT_CODE = r"\d{3,8}"
SENDER_IDS = rf"{SHORT_CODE}|(?=[\d ]*[A-Za-z])[A-Za-z\d ]{{1,11}}"


def _secret(key: str) -> bool:
    """A setting's name that says it holds a secret, which settings (shown back) must not."""
    return any(word in key.lower() for word in ("password", "secret", "token", "api_key"))


class _BlankJSONField(forms.JSONField):
    """Empty until something is typed: the credentials it replaces are never shown."""

    def prepare_value(self, value):
        return "" if value is None else super().prepare_value(value)


class InboxForm(forms.ModelForm):
    """Credentials are write-only: the form shows which keys are set, never their values."""

    new_credentials = _BlankJSONField(
        required=False,
        label="Replace credentials",
        help_text='A JSON object of provider credentials, e.g. {"imap_password": "..."}. '
        "The keys given replace those set; null removes one. Leave empty to keep them all.",
        widget=forms.Textarea(attrs={"rows": 3}),
    )

    class Meta:
        model = Inbox
        fields = [
            "name",
            "kind",
            "address",
            "default_team",
            "business_hours",
            "expected_reply_minutes",
            "signature",
            "settings",
            "is_active",
        ]

    # The chat widget's settings (web-chat inboxes), kept in `settings` under these names.
    widget_greeting = forms.CharField(
        required=False, max_length=300, help_text="First words the visitor sees."
    )
    widget_greetings = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="The greeting in other languages, one per line: “es: ¡Hola! ¿En qué "
        "podemos ayudarte?”. A visitor whose browser speaks none of them gets the one above.",
    )
    widget_color = forms.RegexField(
        regex=r"^#[0-9a-fA-F]{6}$", required=False, initial="#2563eb", help_text="e.g. #2563eb"
    )
    widget_logo_url = forms.URLField(required=False, assume_scheme="https")
    widget_prechat_name = forms.ChoiceField(
        choices=[(c, c) for c in ("off", "optional", "required")], initial="off", required=False
    )
    widget_prechat_email = forms.ChoiceField(
        choices=[(c, c) for c in ("off", "optional", "required")],
        initial="optional",
        required=False,
    )
    widget_allowed_origins = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Sites that may embed the widget, one per line: https://www.example.com, "
        "or https://*.example.com for its subdomains. This server's own pages always may.",
    )
    widget_show_agent_typing = forms.BooleanField(required=False, initial=True)
    widget_typing_preview = forms.BooleanField(
        required=False, help_text="Agents see what the visitor types before they send it."
    )
    widget_email_after_minutes = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=24 * 60,
        initial=5,
        help_text="Replies go by email once the visitor has had no chat open this long.",
    )
    widget_reply_time = forms.CharField(
        required=False,
        max_length=60,
        help_text="What the offline widget promises, “usually within …”: e.g. “a few hours”.",
    )

    def __init__(self, *args, **kwargs):
        from channels_adapters.webchat.chat import widget_settings

        super().__init__(*args, **kwargs)
        current = self.widget_before = widget_settings(self.instance)
        for key, value in current.items():
            name = f"widget_{key}"
            if name in self.fields and self.instance.pk:
                if isinstance(value, dict):
                    value = [f"{language}: {text}" for language, text in value.items()]
                self.initial[name] = "\n".join(value) if isinstance(value, list) else value

    def clean_widget_greetings(self):
        greetings = {}
        for line in self.cleaned_data["widget_greetings"].splitlines():
            if not line.strip():
                continue
            language, colon, text = line.partition(":")
            if not colon or not text.strip():
                raise ValidationError(
                    f"{line.strip()!r}: write a language, a colon, then its greeting."
                )
            try:
                language = services.language_normalize(language)
            except ValidationError as exc:
                raise ValidationError(f"{line.strip()!r}: {exc.messages[0]}") from None
            if len(text.strip()) > 300:
                raise ValidationError(f"The {language} greeting is over 300 characters.")
            greetings[language] = text.strip()
        return greetings

    def clean_widget_allowed_origins(self):
        from urllib.parse import urlsplit

        origins = []
        for line in self.cleaned_data["widget_allowed_origins"].splitlines():
            line = line.strip().rstrip("/")
            if not line:
                continue
            parts = urlsplit(line.replace("://*.", "://wildcard."))
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValidationError(f"{line!r} is not an origin such as https://www.example.com.")
            origins.append(line.lower())
        return origins

    def clean_new_credentials(self):
        value = self.cleaned_data["new_credentials"]
        if value in (None, "", {}):
            return None
        if not isinstance(value, dict):
            raise ValidationError("Credentials must be a JSON object.")
        return value

    def clean_settings(self):
        value = self.cleaned_data.get("settings")
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise ValidationError('Settings must be a JSON object, such as {"greeting": "Hi"}.')
        return value

    def clean(self):
        cleaned = super().clean()
        kind, given = cleaned.get("kind"), cleaned.get("settings") or {}
        if self.instance.pk and kind and kind != self.instance.kind:
            if Message.objects.filter(inbox=self.instance).exists():
                self.add_error(
                    "kind",
                    "This inbox has conversations on its channel: its kind cannot change. Add an "
                    "inbox of the other kind (and deactivate this one if it is done with).",
                )
        if secrets := [key for key in given if _secret(key)]:
            self.add_error(
                "settings",
                f"{', '.join(secrets)}: secrets go in Replace credentials, which are never "
                "shown again.",
            )
        if kind in services.PHONE_CHANNELS and (address := cleaned.get("address")):
            try:
                if not re.fullmatch(SENDER_IDS if kind == Channel.SMS else SHORT_CODE, address):
                    address = services.normalize_address(kind, address, typed=True)
            except ValidationError as exc:
                if kind == Channel.SMS:  # the other kinds of sender an SMS line may have
                    exc = ValidationError(
                        f"{exc.messages[0]} Or a short code (72345), or a sender name of up to "
                        "11 letters, digits and spaces (ACME Shop)."
                    )
                self.add_error("address", exc)
            else:
                taken = Inbox.objects.filter(kind=kind, address=address, is_active=True)
                if (other := taken.exclude(pk=self.instance.pk).first()) is not None:
                    self.add_error("address", f"The inbox “{other.name}” has this number.")
                cleaned["address"] = address
        if known := CHANNEL_SETTINGS.get(kind):
            # A secret is said above to go elsewhere.
            if unknown := sorted(key for key in given if key not in known and not _secret(key)):
                self.add_error(
                    "settings",
                    f"Unknown setting {', '.join(map(repr, unknown))}; "
                    f"{Channel(kind).label} inboxes know {', '.join(known)}.",
                )
        if problems := _settings_problems(kind, given):
            self.add_error("settings", problems)
        if kind == Channel.EMAIL:
            try:
                address = services.normalize_address(Channel.EMAIL, cleaned.get("address"))
                validate_email(address)
            except ValidationError:
                self.add_error("address", "An email inbox needs its email address.")
            else:
                # Mail to one address lands in one inbox.
                taken = Inbox.objects.filter(kind=Channel.EMAIL, address__iexact=address)
                if (other := taken.exclude(pk=self.instance.pk).first()) is not None:
                    self.add_error("address", f"The inbox “{other.name}” has this address.")
                cleaned["address"] = address
        return cleaned

    def save(self, commit=True):
        if (given := self.cleaned_data.get("new_credentials")) is not None:
            # Key by key: setting the IMAP password keeps the SMTP one. null removes a key.
            credentials = {**(self.instance.credentials or {}), **given}
            self.instance.credentials = {k: v for k, v in credentials.items() if v is not None}
        if self.instance.kind == Channel.WEBCHAT:
            settings = dict(self.instance.settings or {})
            for name, value in self.cleaned_data.items():
                # Only what the admin changed on the page (by value: a browser sends the
                # origins' lines back with \r\n): an edit of the same setting in the Settings
                # JSON must not be undone by the field's old value.
                key = name.removeprefix("widget_")
                if name != key and value != self.widget_before.get(key):
                    settings[key] = value
                    if value in (None, ""):
                        del settings[key]  # left empty: the default applies
            self.instance.settings = settings
        return super().save(commit)


class AutoReplyForm(forms.ModelForm):
    def clean_language(self):
        # Written its one way before the inline compares its rows: an "ES" beside an "es" is
        # one language twice, said here rather than refused by the database.
        return AutoReply.language_written(self.cleaned_data.get("language"))


class AutoReplyInline(admin.StackedInline):
    model = AutoReply
    form = AutoReplyForm
    extra = 0
    fields = ["kind", "language", "body", "is_active"]


class SlaClockInline(admin.TabularInline):
    """The conversation's SLA record: each target measured, and how it ended."""

    model = SlaClock
    extra = 0
    can_delete = False
    fields = ["target", "channel", "policy", "started_at", "due_at", "stopped_at", "outcome"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


_page = threading.local()  # the address the admin browses, for the inbox page being drawn


def _public_base() -> tuple[str, str]:
    """The address sites and providers reach this server at, and a warning when it is only
    the one the admin is browsing (PUBLIC_URL unset): pasted elsewhere, it must be right."""
    if settings.PUBLIC_URL:
        return settings.PUBLIC_URL, ""
    return getattr(_page, "base", "") or "https://<PUBLIC_URL>", (
        "PUBLIC_URL is not set, so this shows the address you are browsing: set PUBLIC_URL to "
        "the one the internet reaches this server at, if it differs."
    )


# What an inbox's secret proves, so what stops working while a rotated one is not yet pasted.
SECRET_USED_BY = {
    Channel.EMAIL: "mail forwarded to its HTTP endpoint",
    Channel.WEBCHAT: "sites that vouch for their users with the secret's HMAC",
    Channel.API: "the API clients that post to it",
}


@admin.register(Inbox)
class InboxAdmin(ClocksFollow, admin.ModelAdmin):
    form = InboxForm
    list_display = [
        "name",
        "kind",
        "address",
        "default_team",
        "is_active",
        "health",
        "messages_last_day",
    ]
    list_filter = ["kind", "is_active", "default_team"]
    list_select_related = ["default_team", "mailbox_state"]
    search_fields = ["name", "address"]
    readonly_fields = [
        "snippet",
        "webhook",
        "credentials_set",
        "secret_hint",
        "health",
        "mailbox",
        "created_at",
    ]
    actions = ["connections_check", "rotate_secret"]

    def get_inlines(self, request, obj):
        return [AutoReplyInline] if obj and obj.kind not in AutoReply.SILENT_INBOXES else []

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is None or obj.kind != Channel.WEBCHAT:
            # Not on the page, so not in the form: a checkbox never shown would save as off.
            for name in [name for name in form.base_fields if name.startswith("widget_")]:
                del form.base_fields[name]
        return form

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        _page.base = request.build_absolute_uri("/").rstrip("/")
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is None or obj.kind != Channel.WEBCHAT:
            fields = [f for f in fields if not f.startswith("widget_") and f != "snippet"]
        if obj is not None and obj.kind != Channel.EMAIL:
            fields = [f for f in fields if f != "signature"]
        return fields

    @admin.display(description="widget snippet")
    def snippet(self, inbox):
        """What to paste on the site, and how a site that knows its user vouches for them."""
        from channels_adapters.webchat.views import snippet

        if not inbox.pk or inbox.kind != Channel.WEBCHAT:
            return "-"
        base, warning = _public_base()
        return format_html(
            "<code>{}</code><br>Paste it before &lt;/body&gt; on every page of your site. "
            "To link signed-in users to their history on every device, add "
            "<code>data-user-id</code> (your user's id or email), <code>data-user-name</code> "
            "and <code>data-user-hash</code> = hex HMAC-SHA256 of the id with this inbox's "
            "secret, computed on your server.{}",
            snippet(inbox, base),
            format_html("<br><strong>{}</strong>", warning) if warning else "",
        )

    def get_queryset(self, request):
        from channels_adapters.email.health import with_mail_counts

        return with_mail_counts(super().get_queryset(request))

    @admin.display(description="health")
    def health(self, inbox):
        from channels_adapters.email.health import health_of

        return health_of(inbox) if inbox.kind == "email" else "-"

    @admin.display(description="mail in the last day", ordering="messages_last_day")
    def messages_last_day(self, inbox):
        return inbox.messages_last_day

    @admin.display(description="mailbox")
    def mailbox(self, inbox):
        state = getattr(inbox, "mailbox_state", None)
        if state is None:
            return "-"
        return (
            f"last success {state.last_success_at or 'never'}; last error "
            f"{state.last_error or 'none'} ({state.last_error_at or '-'}); UID "
            f"{state.last_uid} of UIDVALIDITY {state.uidvalidity}"
        )

    @admin.display(description="webhook URL")
    def webhook(self, inbox):
        """What to paste in the provider's console (see the README's "Connecting channels")."""
        from channels_adapters.views import WEBHOOK_CHANNELS

        base, warning = _public_base()
        warned = format_html("<br><strong>{}</strong>", warning) if warning else ""
        if inbox.pk and inbox.kind == Channel.EMAIL:
            url = base + reverse("email-inbound", args=[inbox.pk])
            return format_html(
                "<code>{}</code><br>For a mail service that forwards by HTTP: POST the raw "
                "message (Content-Type: message/rfc822) with the header Authorization: Bearer "
                "and the inbox secret. Or poll IMAP (settings imap_host…), or pipe from your MTA "
                "(manage.py ingest_email): see the README.{}",
                url,
                warned,
            )
        if inbox.pk and inbox.kind == Channel.API:
            url = base + reverse("api-inbound", args=[inbox.pk])
            return format_html(
                "<code>{}</code><br>The integration POSTs its users' messages here (JSON, "
                "Authorization: Bearer and the inbox secret); agents' replies go to the "
                "webhook_url of the settings, signed with the same secret: see the README.{}",
                url,
                warned,
            )
        if not inbox.pk or inbox.kind not in WEBHOOK_CHANNELS:
            return "-"
        url = base + reverse("webhook", args=[inbox.kind, inbox.pk])
        where = {
            "sms": "Twilio console → the phone number → Messaging → 'A message comes in' "
            "(HTTP POST). Credentials: auth_token (and webhook_shared_key, the secret of a "
            "webhook SharedKey, if the account signs with one); settings: account_sid.",
            "messenger": "Meta app → Messenger → Webhooks: callback URL, with credentials "
            "verify_token as the verify token; subscribe the Page to messages, "
            "message_echoes, message_deliveries, message_reads, messaging_postbacks. "
            "Credentials: app_secret, page_access_token, verify_token; settings: page_id.",
            "whatsapp": "Meta app → WhatsApp → Configuration → Webhook: callback URL, with "
            "credentials verify_token as the verify token; subscribe to messages. Credentials: "
            "app_secret, access_token, verify_token; settings: phone_number_id, templates.",
        }[inbox.kind]
        return format_html("<code>{}</code><br>{}{}", url, where, warned)

    @admin.display(description="credentials")
    def credentials_set(self, inbox):
        if not inbox.credentials:
            return "none set"
        return format_html_join(", ", "{} = ••••••", ((key,) for key in sorted(inbox.credentials)))

    @admin.display(description="secret")
    def secret_hint(self, inbox):
        if not inbox.pk:
            return "Made when the inbox is added, and shown once then."
        return f"••••••{inbox.secret[-4:]}  (use the 'Rotate secret' action to get a new one)"

    def clocks_moved_by(self, inbox, form):
        if inbox.pk and {"business_hours", "default_team"} & set(form.changed_data):
            return SlaClock.objects.filter(conversation__inbox=inbox, business_hours_only=True)
        return None

    def response_add(self, request, obj, post_url_continue=None):
        if obj.kind not in SECRET_USED_BY:  # provider credentials do that job
            return super().response_add(request, obj, post_url_continue)
        # The one time its secret is shown: the API, the MIME endpoint, user hashes use it.
        then = reverse("admin:conversations_inbox_change", args=[obj.pk])
        return secrets_shown(self, request, [(f"The secret of {obj}", obj.secret)], then=then)

    @admin.action(description="Check the mail servers (sign in to IMAP and SMTP)")
    def connections_check(self, request, queryset):
        from channels_adapters.email.imap import connections_check

        for inbox in queryset:
            if inbox.kind != Channel.EMAIL:
                self.message_user(request, f"{inbox}: not an email inbox.", messages.WARNING)
                continue
            for ok, what in connections_check(inbox):
                self.message_user(
                    request, f"{inbox}: {what}", messages.SUCCESS if ok else messages.ERROR
                )

    @admin.action(description="Rotate secret (shown once)")
    def rotate_secret(self, request, queryset):
        if request.POST.get("confirmed") != "yes":  # what breaks until the new one is pasted
            intro = (
                "A new secret for these inboxes replaces the current one at once. Until you "
                "paste it where the old one is used, those stop working:"
            )
            unused = "nothing: the provider's webhooks are checked with its own credentials"
            items = [(inbox.name, SECRET_USED_BY.get(inbox.kind, unused)) for inbox in queryset]
            return rotation_asked(self, request, queryset, intro=intro, items=items)
        for inbox in queryset:
            inbox.secret = new_secret()
            inbox.save(update_fields=["secret"])
        shown = [(f"New secret for {inbox}", inbox.secret) for inbox in queryset]
        return secrets_shown(self, request, shown, then=request.get_full_path())


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ["name", "color"]
    search_fields = ["name"]


@admin.register(CannedResponse)
class CannedResponseAdmin(KeptWhileUsed, admin.ModelAdmin):
    list_display = ["shortcut", "title", "team", "created_by", "updated_at"]
    list_filter = ["team"]
    list_select_related = ["team", "created_by"]
    search_fields = ["shortcut", "title", "body"]
    readonly_fields = ["created_by", "created_at", "updated_at"]

    def in_use(self, canned):
        from routing.automations import actions_naming

        using = actions_naming("canned response", canned.pk)
        return [f"{user} replies with it: change that first" for user in using]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


# --- Conversations -----------------------------------------------------------------------


class MessageInline(admin.StackedInline):
    model = Message
    fk_name = "conversation"
    extra = 0
    can_delete = False
    fields = [
        "direction",
        "channel",
        "inbox",
        "identity",
        "author",
        "status",
        "failure_reason",
        "created_at",
        "text",
        "html_preview",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("inbox", "identity", "author")

    @admin.display(description="HTML (sanitised)")
    def html_preview(self, message):
        return message.html and format_html("<pre>{}</pre>", message.html[:5000])


class EventInline(admin.TabularInline):
    model = ConversationEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "kind", "actor", "data"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("actor")


class ConversationActionForm(ActionForm):
    assignee = forms.ModelChoiceField(
        queryset=User.objects.filter(is_active=True),
        required=False,
        label="Agent",
        help_text="For 'Assign to agent'; leave empty to unassign.",
    )


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = [
        "number",
        "subject",
        "customer",
        "inbox",
        "status",
        "priority",
        "team",
        "assignee",
        "last_activity_at",
    ]
    list_display_links = ["number", "subject"]
    list_filter = ["status", "priority", "inbox__kind", "inbox", "team", "assignee"]
    list_select_related = ["customer", "inbox", "team", "assignee"]
    search_fields = ["=id", "subject", "customer__name", "customer__identities__address"]

    def get_search_results(self, request, queryset, search_term):
        # "#57", as agents write a conversation's number, finds #57.
        if re.fullmatch(r"#\d+", search_term.strip()):
            search_term = search_term.strip()[1:]
        return super().get_search_results(request, queryset, search_term)

    # Autocomplete, not a select of every identity in the database.
    autocomplete_fields = ["customer", "participants"]
    exclude = ["reply_token"]
    date_hierarchy = "last_activity_at"
    show_full_result_count = False
    readonly_fields = [
        "reply_token_hint",
        "status",
        "priority",
        "team",
        "assignee",
        "tags",
        "followers",
        "merged_into",
        "created_at",
        "updated_at",
        "last_activity_at",
        "last_inbound_at",
        "waiting_since",
        "first_response_at",
        "resolved_at",
        "snoozed_until",
        "sla_due_at",
    ]
    inlines = [MessageInline, EventInline, SlaClockInline]
    action_form = ConversationActionForm
    actions = ["assign", "resolve", "reopen"]

    def get_readonly_fields(self, request, obj=None):
        # Creation picks inbox and customer; after that, state changes go through actions
        # (and the services), so each one leaves an event in the timeline.
        return self.readonly_fields + (["inbox", "customer"] if obj else [])

    @admin.display(description="#", ordering="id")
    def number(self, conversation):
        return conversation.number

    @admin.display(description="reply token")
    def reply_token_hint(self, conversation):
        # A capability: whoever has it can write into the conversation by email.
        return f"••••••{conversation.reply_token[-4:]}" if conversation.pk else "-"

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["subject", "updated_at"])
            return
        opened = services.conversation_open(
            inbox=obj.inbox,
            customer=obj.customer,
            subject=obj.subject,
            actor=request.user,
            via="admin",
        )
        obj.pk = opened.pk  # so the admin redirects to the conversation just opened

    @admin.action(description="Assign to agent (choose below)")
    def assign(self, request, queryset):
        assignee = None
        if request.POST.get("assignee"):
            pk = id_given(request.POST["assignee"])
            assignee = User.objects.filter(pk=pk, is_active=True).first()
            if assignee is None:
                self.message_user(request, "No such agent.", messages.ERROR)
                return
        done = _run(
            self,
            request,
            lambda c: services.conversation_assign(
                conversation=c, assignee=assignee, actor=request.user
            ),
            queryset,
        )
        who = assignee or "nobody"
        self.message_user(request, f"{done} conversations assigned to {who}.", messages.SUCCESS)

    @admin.action(description="Resolve")
    def resolve(self, request, queryset):
        self._set_status(request, queryset, Conversation.Status.RESOLVED, "resolved")

    @admin.action(description="Reopen")
    def reopen(self, request, queryset):
        self._set_status(request, queryset, Conversation.Status.OPEN, "reopened")

    def _set_status(self, request, queryset, status, done_verb):
        done = _run(
            self,
            request,
            lambda c: services.conversation_set_status(
                conversation=c, status=status, actor=request.user
            ),
            queryset,
        )
        self.message_user(request, f"{done} conversations {done_verb}.", messages.SUCCESS)


class AttachmentInline(admin.TabularInline):
    model = Attachment
    extra = 0
    fields = ["filename", "content_type", "size", "created_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    fields = ["started_at", "finished_at", "outcome", "detail"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "conversation",
        "direction",
        "channel",
        "inbox",
        "status",
        "author",
        "created_at",
    ]
    list_filter = ["direction", "channel", "status"]
    list_select_related = ["conversation", "inbox", "author"]
    search_fields = ["text", "provider_id", "=conversation__id"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [AttachmentInline, DeliveryAttemptInline]
    actions = ["retry"]

    def has_add_permission(self, request):
        return False  # messages come from customers and agents, not from admin forms

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Retry sending the selected failed messages")
    def retry(self, request, queryset):
        from channels_adapters.delivery import message_retry

        done = _run(
            self,
            request,
            lambda m: message_retry(message=m),
            queryset.filter(status=Message.Status.FAILED),
        )
        self.message_user(request, f"{done} messages queued again.", messages.SUCCESS)


@admin.register(Attachment)
class AttachmentAdmin(admin.ModelAdmin):
    list_display = ["filename", "content_type", "size", "message", "created_at"]
    list_select_related = ["message"]
    search_fields = ["filename"]
    readonly_fields = [
        "message",
        "file",
        "filename",
        "content_type",
        "size",
        "content_id",
        "created_at",
    ]

    def has_add_permission(self, request):
        return False


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(admin.ModelAdmin):
    list_display = ["message", "outcome", "detail", "started_at", "finished_at"]
    list_filter = ["outcome"]
    list_select_related = ["message"]
    readonly_fields = ["message", "outcome", "detail", "started_at", "finished_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ConversationEvent)
class ConversationEventAdmin(admin.ModelAdmin):
    list_display = ["conversation", "kind", "actor", "summary", "created_at"]
    list_filter = ["kind"]
    list_select_related = ["conversation", "actor"]
    search_fields = ["=conversation__id"]
    date_hierarchy = "created_at"
    readonly_fields = ["conversation", "kind", "actor", "data", "created_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="details")
    def summary(self, event):
        return json.dumps(event.data, sort_keys=True)[:120]
