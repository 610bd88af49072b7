"""A site's user ids become per web-chat inbox ("user:<inbox id>:<id>"): user 42 of one site
is not user 42 of another. A user already linked keeps their customer in the inbox whose site
first signed them in (else the web-chat inbox of their first conversation, else the only one).
Only there: had two sites' users 42 been taken for one person, linking both inboxes would keep
showing one the other's chats. An admin can merge customers who are the same person."""

import logging

from django.db import IntegrityError, migrations, transaction

log = logging.getLogger(__name__)


def scope_site_users(apps, schema_editor):
    Conversation = apps.get_model("conversations", "Conversation")
    Identity = apps.get_model("conversations", "Identity")
    Inbox = apps.get_model("conversations", "Inbox")
    Visitor = apps.get_model("conversations", "Visitor")
    chat_inboxes = list(Inbox.objects.filter(kind="webchat").values_list("pk", flat=True))
    for identity in Identity.objects.filter(kind="webchat", address__startswith="user:"):
        customer = identity.customer_id
        signed_in = Visitor.objects.filter(identity__customer_id=customer, identified=True)
        chats = Conversation.objects.filter(customer_id=customer, inbox__kind="webchat")
        inbox = (
            signed_in.order_by("created_at", "pk").values_list("inbox_id", flat=True).first()
            or chats.order_by("created_at", "pk").values_list("inbox_id", flat=True).first()
            or (chat_inboxes[0] if len(chat_inboxes) == 1 else None)
        )
        if inbox is None:
            log.warning("site user %s: no web-chat inbox to tie it to", identity.address)
            continue
        if signed_in.exclude(inbox_id=inbox).exists():
            log.warning(
                "site user %s of customer %s was signed in by several sites: kept for inbox %s",
                identity.address,
                customer,
                inbox,
            )
        identity.address = f"user:{inbox}:{identity.address.removeprefix('user:')}"
        try:
            with transaction.atomic():
                identity.save(update_fields=["address"])
        except IntegrityError:  # an old id with colons, spelt like a new one: left as it was
            log.warning("site user %s: its new address is taken", identity.address)


class Migration(migrations.Migration):
    dependencies = [("conversations", "0028_event_copied")]

    operations = [migrations.RunPython(scope_site_users, migrations.RunPython.noop)]
