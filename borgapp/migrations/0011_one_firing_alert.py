from django.db import migrations, models


def resolve_duplicates(apps, schema_editor):
    """Before the constraint: of several firing alerts for one condition (possible when two
    processes evaluated at once), keep the oldest firing and resolve the others."""
    Alert = apps.get_model("borgapp", "Alert")
    kept = set()
    for alert in Alert.objects.filter(state="firing").order_by("first_seen", "id"):
        key = (alert.kind, alert.repository_id)
        if key in kept:
            Alert.objects.filter(pk=alert.pk).update(state="resolved", resolved_at=alert.last_seen)
        kept.add(key)


class Migration(migrations.Migration):
    dependencies = [
        ("borgapp", "0010_catalog_indexes"),
    ]

    operations = [
        migrations.RunPython(resolve_duplicates, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.UniqueConstraint(
                condition=models.Q(("repository__isnull", False), ("state", "firing")),
                fields=("kind", "repository"),
                name="alert_one_firing_per_repository",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.UniqueConstraint(
                condition=models.Q(("repository__isnull", True), ("state", "firing")),
                fields=("kind",),
                name="alert_one_firing_per_installation",
            ),
        ),
    ]
