from django.db import migrations, models


def role_decides(apps, schema_editor):
    """A superuser was an admin in all but name; then the role alone decides the rest."""
    User = apps.get_model("helpdesk", "User")
    User.objects.filter(is_superuser=True).update(role="admin")
    User.objects.filter(role="admin").update(is_staff=True, is_superuser=True)
    User.objects.exclude(role="admin").update(is_staff=False, is_superuser=False)


class Migration(migrations.Migration):
    dependencies = [
        ("helpdesk", "0003_user_email_any_case"),
    ]

    operations = [
        migrations.AlterField(
            model_name="user",
            name="role",
            field=models.CharField(
                choices=[("agent", "Agent"), ("admin", "Admin")],
                default="agent",
                help_text=(
                    "Agents answer their teams' conversations. Admins see every conversation "
                    "and configure Threadline here, in the admin."
                ),
                max_length=10,
            ),
        ),
        migrations.RunPython(role_decides, migrations.RunPython.noop),
    ]
