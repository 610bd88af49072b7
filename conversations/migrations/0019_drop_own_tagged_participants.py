"""Our own tagged reply address (support+<token>@...) was taken for a participant when a
customer's answer copied it in To: every later reply was copied to our own mailbox, and a
customer was made up for the address. Those participants go, and such a made-up customer with
nothing else to it."""

from django.db import migrations


def forward(apps, schema_editor):
    Identity = apps.get_model("conversations", "Identity")
    Inbox = apps.get_model("conversations", "Inbox")
    Message = apps.get_model("conversations", "Message")
    own = [
        a.strip().lower().partition("@")
        for a in Inbox.objects.exclude(address="").values_list("address", flat=True)
    ]
    tagged = Identity.objects.filter(kind="email", address__contains="+").select_related("customer")
    for identity in tagged.iterator():
        local, _, domain = identity.address.partition("@")
        if not any(domain == d and local.startswith(f"{l}+") for l, _, d in own):
            continue
        identity.participating_in.clear()
        customer = identity.customer
        alone = (
            not customer.conversations.exists()
            and customer.identities.count() == 1
            and not Message.objects.filter(identity=identity).exists()
        )
        if alone:
            customer.delete()


class Migration(migrations.Migration):
    dependencies = [("conversations", "0018_visitor_email_index")]

    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
