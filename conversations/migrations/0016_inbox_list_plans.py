from django.db import migrations, models

# The inbox list on PostgreSQL (bench/inbox.py, the filtered lists):
# - a channel's or an inbox's active conversations, newest first, without walking every
#   conversation's activity for the page of a small inbox;
# - statistics on how inbox, team and assignee go together: a team or an agent that never
#   gets email, listing its email, made the planner walk every conversation looking for
#   rows it expected everywhere. SQLite keeps no such statistics.
STATISTICS = "conv_routing_stats"


def create_statistics(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE STATISTICS IF NOT EXISTS {STATISTICS} (mcv) "
            "ON inbox_id, team_id, assignee_id FROM conversations_conversation"
        )
        # The most common combinations kept: every inbox × team × agent of a large desk.
        schema_editor.execute(f"ALTER STATISTICS {STATISTICS} SET STATISTICS 1000")


def drop_statistics(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP STATISTICS IF EXISTS {STATISTICS}")


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0015_notification_failed"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="conversation",
            index=models.Index(
                condition=models.Q(("status__in", ["open", "pending"])),
                fields=["inbox", "-last_activity_at"],
                name="conv_active_inbox_idx",
            ),
        ),
        migrations.RunPython(create_statistics, drop_statistics),
    ]
