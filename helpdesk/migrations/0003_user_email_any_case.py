import django.db.models.functions.text
from django.db import migrations, models
from django.db.models.functions import Lower


def lower_emails(apps, schema_editor):
    """Emails the admin kept as typed, in lower case (a clash is left for the constraint to
    name: which of two users to keep is an admin's call)."""
    User = apps.get_model("helpdesk", "User")
    for user in User.objects.exclude(email=Lower("email")).only("email"):
        clash = User.objects.filter(email=user.email.lower()).exclude(pk=user.pk).exists()
        if not clash:
            User.objects.filter(pk=user.pk).update(email=user.email.lower())


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("helpdesk", "0002_webchat"),
    ]

    operations = [
        migrations.RunPython(lower_emails, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.UniqueConstraint(
                django.db.models.functions.text.Lower("email"),
                name="user_email_unique_any_case",
                violation_error_message="A user with this email address already exists.",
            ),
        ),
    ]
