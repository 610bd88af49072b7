"""API identities become inbox-scoped ("<inbox id>:<id>"): two integrations' "42" are two
people. An existing one is split by the inboxes it wrote to, each part on the same customer
(an agent who finds they are two people has their messages apart already); one that never
wrote stays as it is. What was set aside from a blocked one is marked with the new address,
so that erasing them finds it. Echoes (replies the business wrote in its own app) are
marked, as new ones are: they count as answers (conversations.services._answers)."""

from django.db import migrations

COPIED = ("customer_id", "display_name", "verified", "last_seen_at", "opted_out_at")


def scope(apps, schema_editor):
    identity_model = apps.get_model("conversations", "Identity")
    message_model = apps.get_model("conversations", "Message")
    event_model = apps.get_model("channels_adapters", "InboundEvent")
    taken = set(identity_model.objects.filter(kind="api").values_list("address", flat=True))
    for identity in identity_model.objects.filter(kind="api").iterator():
        inboxes = sorted(
            set(message_model.objects.filter(identity=identity).values_list("inbox_id", flat=True))
        )
        scoped = [(inbox_id, f"{inbox_id}:{identity.address}") for inbox_id in inboxes]
        scoped = [(i, address) for i, address in scoped if len(address) <= 320]
        scoped = [(i, address) for i, address in scoped if address not in taken]
        for n, (inbox_id, address) in enumerate(scoped):
            taken.add(address)
            if n == 0:
                part = identity
                identity_model.objects.filter(pk=identity.pk).update(address=address)
            else:
                fields = {name: getattr(identity, name) for name in COPIED}
                part = identity_model.objects.create(kind="api", address=address, **fields)
            message_model.objects.filter(identity=identity, inbox_id=inbox_id).update(
                identity=part
            )
    for event in event_model.objects.filter(
        headers__has_key="blocked", inbox__kind="api"
    ).iterator():
        kind, _, address = event.headers["blocked"].partition(":")
        if kind == "api" and not address.startswith(f"{event.inbox_id}:"):
            event.headers["blocked"] = f"api:{event.inbox_id}:{address}"
            event_model.objects.filter(pk=event.pk).update(headers=event.headers)


def mark_echoes(apps, schema_editor):
    message_model = apps.get_model("conversations", "Message")
    echoes = message_model.objects.filter(
        direction="outbound",
        author=None,
        attempts=0,  # never handed to a provider by us
        status__in=("sent", "delivered", "read"),
    ).exclude(metadata__has_key="automatic")
    batch = []
    for message in echoes.only("metadata").iterator(chunk_size=1000):
        message.metadata = {**message.metadata, "echo": True}
        batch.append(message)
        if len(batch) == 1000:
            message_model.objects.bulk_update(batch, ["metadata"])
            batch = []
    message_model.objects.bulk_update(batch, ["metadata"])


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0022_canned_shortcut_messages"),
        ("channels_adapters", "0003_unindexed_foreign_keys"),
    ]

    operations = [
        migrations.RunPython(scope, migrations.RunPython.noop),
        migrations.RunPython(mark_echoes, migrations.RunPython.noop),
    ]
