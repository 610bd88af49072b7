import django.db.models.functions.text
from django.db import migrations, models
from django.db.models.functions import Lower


def lower_emails(apps, schema_editor):
    """Emails the admin kept as typed, in lower case. Two users whose emails differ only in
    case stop the migration, named: which one to keep is an admin's call."""
    User = apps.get_model("helpdesk", "User")
    emails = list(User.objects.values_list("email", flat=True))
    spellings = {}
    for email in emails:
        spellings.setdefault(email.lower(), []).append(email)
    if clashes := [sorted(same) for same in spellings.values() if len(same) > 1]:
        listed = "; ".join(" and ".join(same) for same in clashes)
        raise RuntimeError(
            f"These users share an email in different case: {listed}. Sign-in cannot tell "
            "them apart. Keep one of each (change the others' email, or delete them, with "
            "`manage.py shell` or in the admin before upgrading), then migrate again."
        )
    for user in User.objects.exclude(email=Lower("email")).only("email"):
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
