"""API identities become inbox-scoped ("<inbox id>:<id>"): two integrations' "42" are two
people. An existing one is split by the inboxes it wrote to, each part on the same customer
(an agent who finds they are two people has their messages apart already); one that never
wrote stays as it is. Echoes (replies the business wrote in its own app) are marked, as
new ones are: they count as answers (conversations.services._answers)."""

from django.db import migrations


def scope(apps, schema_editor):
    identity_model = apps.get_model("conversations", "Identity")
    message_model = apps.get_model("conversations", "Message")
    for identity in identity_model.objects.filter(kind="api"):
        inboxes = (
            message_model.objects.filter(identity=identity)
            .values_list("inbox_id", flat=True)
            .distinct()
            .order_by("inbox_id")
        )
        for n, inbox_id in enumerate(inboxes):
            address = f"{inbox_id}:{identity.address}"
            if len(address) > 320 or identity_model.objects.filter(
                kind="api", address=address
            ).exists():
                continue
            if n == 0:
                scoped = identity
                identity_model.objects.filter(pk=identity.pk).update(address=address)
            else:
                scoped = identity_model.objects.create(
                    customer_id=identity.customer_id,
                    kind="api",
                    address=address,
                    display_name=identity.display_name,
                    last_seen_at=identity.last_seen_at,
                )
            message_model.objects.filter(identity=identity, inbox_id=inbox_id).update(
                identity=scoped
            )


def mark_echoes(apps, schema_editor):
    message_model = apps.get_model("conversations", "Message")
    echoes = message_model.objects.filter(
        direction="outbound",
        author=None,
        attempts=0,  # never handed to a provider by us
        status__in=("sent", "delivered", "read"),
    ).exclude(metadata__has_key="automatic")
    for message in echoes.iterator():
        message.metadata = {**message.metadata, "echo": True}
        message.save(update_fields=["metadata"])


class Migration(migrations.Migration):
    dependencies = [("conversations", "0022_canned_shortcut_messages")]

    operations = [
        migrations.RunPython(scope, migrations.RunPython.noop),
        migrations.RunPython(mark_echoes, migrations.RunPython.noop),
    ]
