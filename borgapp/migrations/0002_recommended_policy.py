from django.db import migrations


def create_recommended(apps, schema_editor):
    RetentionPolicy = apps.get_model("borgapp", "RetentionPolicy")
    RetentionPolicy.objects.get_or_create(
        name="recommended",
        defaults={
            "keep_hourly": 24,
            "keep_daily": 7,
            "keep_weekly": 4,
            "keep_monthly": 6,
            "keep_yearly": 2,
            "is_recommended": True,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("borgapp", "0001_initial")]

    operations = [migrations.RunPython(create_recommended, migrations.RunPython.noop)]
