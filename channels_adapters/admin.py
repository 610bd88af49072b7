from django import forms
from django.contrib import admin, messages

from channels_adapters.delivery import inbound_events_requeue
from channels_adapters.models import (
    SUBSCRIBABLE,
    InboundEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
)
from channels_adapters.webhooks import (
    webhook_deliveries_requeue,
    webhook_secret_rotate,
    webhook_test_send,
)
from helpdesk.admin import rotation_asked


@admin.register(InboundEvent)
class InboundEventAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "inbox",
        "dedupe_key",
        "status",
        "attempts",
        "received_at",
        "processed_at",
    ]
    list_filter = ["status", "inbox__kind", "inbox"]
    list_select_related = ["inbox"]
    search_fields = ["dedupe_key", "error"]
    date_hierarchy = "received_at"
    readonly_fields = [
        f.name for f in InboundEvent._meta.fields if f.name not in ("payload", "payload_file")
    ] + ["payload_preview"]
    exclude = ["payload", "payload_file"]
    actions = ["reprocess"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="payload (first 10 kB)")
    def payload_preview(self, event):
        return event.raw()[:10240].decode("utf-8", errors="replace")

    @admin.action(description="Process the selected failed events again")
    def reprocess(self, request, queryset):
        count = inbound_events_requeue(queryset)
        self.message_user(request, f"{count} events queued again.", messages.SUCCESS)


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(
        label="URL",
        max_length=500,
        assume_scheme="https",
        help_text="Where events are POSTed: an http(s) address.",
    )
    event_types = forms.MultipleChoiceField(
        choices=[(value, WebhookEventType(value).label) for value in SUBSCRIBABLE],
        widget=forms.CheckboxSelectMultiple,
        help_text="note.created carries internal notes: choose it only for a tool agents use.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_types", "is_active"]


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ["started_at", "status_code", "duration_ms", "error", "response"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


def _endpoints(count: int) -> str:
    return f"{count} endpoint" if count == 1 else f"{count} endpoints"


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "description", "is_active", "failing_since", "disabled_reason"]
    list_filter = ["is_active"]
    search_fields = ["url", "description"]
    readonly_fields = ["secret", "failing_since", "disabled_reason", "created_at", "updated_at"]
    actions = ["send_test_event", "rotate_secret"]

    def get_readonly_fields(self, request, obj=None):
        # Shown once saved: the one made for an unsaved form would not be the one kept.
        return self.readonly_fields if obj else []

    def save_model(self, request, obj, form, change):
        if change and "is_active" in form.changed_data and obj.is_active:
            # Turned on again by a person: its failures so far count no more.
            obj.failing_since, obj.disabled_reason = None, ""
        super().save_model(request, obj, form, change)

    @admin.action(description="Send a test event to the selected endpoints")
    def send_test_event(self, request, queryset):
        active = [endpoint for endpoint in queryset if endpoint.is_active]
        for endpoint in active:
            webhook_test_send(endpoint)
        if active:
            self.message_user(
                request,
                f'A test event (type "ping") is on its way to {_endpoints(len(active))}: '
                "Webhook deliveries shows what each answered.",
            )
        if skipped := len(queryset) - len(active):
            self.message_user(
                request,
                f"{_endpoints(skipped)} turned off, sent nothing: turn them on first.",
                messages.WARNING,
            )

    @admin.action(description="Rotate the signing secret of the selected endpoints")
    def rotate_secret(self, request, queryset):
        if request.POST.get("confirmed") != "yes":  # what fails until the new one is pasted
            intro = (
                "A new signing secret replaces the current one at once, for every event still "
                "to be sent too. Until you paste it where these endpoints check our signature, "
                "they refuse our events: those fail, and you can send them again from Webhook "
                "deliveries."
            )
            items = [(str(endpoint), endpoint.url) for endpoint in queryset]
            return rotation_asked(self, request, queryset, intro=intro, items=items)
        for endpoint in queryset:
            webhook_secret_rotate(endpoint)
        self.message_user(
            request,
            f"{queryset.count()} secrets rotated: give the integrations their new secret.",
            messages.WARNING,
        )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "event_id",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "created_at",
        "next_attempt_at",
        "delivered_at",
        "last_error",
    ]
    list_filter = ["status", "event_type", "endpoint"]
    list_select_related = ["endpoint"]
    search_fields = ["=event_id", "last_error"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [WebhookAttemptInline]
    actions = ["send_again"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Send the selected failed deliveries again")
    def send_again(self, request, queryset):
        count = webhook_deliveries_requeue(queryset)
        self.message_user(request, f"{count} deliveries queued again.", messages.SUCCESS)
