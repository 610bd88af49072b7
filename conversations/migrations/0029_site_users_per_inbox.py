"""A site's user ids become per web-chat inbox ("user:<inbox id>:<id>"): user 42 of one site
is not user 42 of another. A user already linked keeps their customer, in each inbox where
the site signed them in."""

from django.db import migrations


def scope_site_users(apps, schema_editor):
    Identity = apps.get_model("conversations", "Identity")
    Inbox = apps.get_model("conversations", "Inbox")
    Visitor = apps.get_model("conversations", "Visitor")
    chat_inboxes = list(Inbox.objects.filter(kind="webchat").values_list("pk", flat=True))
    for identity in Identity.objects.filter(kind="webchat", address__startswith="user:"):
        user_id = identity.address.removeprefix("user:")
        signed_in = Visitor.objects.filter(
            identity__customer_id=identity.customer_id, identified=True
        )
        inboxes = sorted(set(signed_in.values_list("inbox_id", flat=True)))
        if not inboxes and len(chat_inboxes) == 1:
            inboxes = chat_inboxes
        if not inboxes:
            continue  # no site to tie it to: it matches no sign-in any more
        first, *others = inboxes
        identity.address = f"user:{first}:{user_id}"
        identity.save(update_fields=["address"])
        for inbox_id in others:
            Identity.objects.get_or_create(
                kind="webchat",
                address=f"user:{inbox_id}:{user_id}",
                defaults={
                    "customer_id": identity.customer_id,
                    "display_name": identity.display_name,
                    "verified": identity.verified,
                },
            )


class Migration(migrations.Migration):
    dependencies = [("conversations", "0028_event_copied")]

    operations = [migrations.RunPython(scope_site_users, migrations.RunPython.noop)]
