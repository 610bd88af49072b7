"""API identities become inbox-scoped ("<inbox id>:<id>"): two integrations' "42" are two
people. An existing one takes the inbox it last wrote to; one that never wrote stays as it is."""

from django.db import migrations


def scope(apps, schema_editor):
    identity_model = apps.get_model("conversations", "Identity")
    message_model = apps.get_model("conversations", "Message")
    for identity in identity_model.objects.filter(kind="api"):
        inbox_id = (
            message_model.objects.filter(identity=identity)
            .order_by("-id")
            .values_list("inbox_id", flat=True)
            .first()
        )
        address = f"{inbox_id}:{identity.address}"
        if not inbox_id or len(address) > 320:
            continue
        if not identity_model.objects.filter(kind="api", address=address).exists():
            identity_model.objects.filter(pk=identity.pk).update(address=address)


class Migration(migrations.Migration):
    dependencies = [("conversations", "0022_canned_shortcut_messages")]

    operations = [migrations.RunPython(scope, migrations.RunPython.noop)]
