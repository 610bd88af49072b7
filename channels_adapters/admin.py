from django.contrib import admin, messages

from channels_adapters.delivery import inbound_events_requeue
from channels_adapters.models import InboundEvent


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
