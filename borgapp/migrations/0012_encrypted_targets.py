"""Notification credentials at rest (issue 10): webhook and Apprise URLs and the schedules' ping
URLs move into encrypted columns; a channel's `target` keeps only what anyone may see (its
email addresses, or a URL's scheme and host). Reversible: going back decrypts them again."""

from django.db import migrations, models

URL_KINDS = ("webhook", "apprise")
PINGS = ("start", "success", "failure")


def encrypt(apps, schema_editor):
    from borgapp import outbound, vault

    Channel = apps.get_model("borgapp", "Channel")
    for channel in Channel.objects.filter(kind__in=URL_KINDS).exclude(target=""):
        url = channel.target.strip()
        Channel.objects.filter(pk=channel.pk).update(
            target_encrypted=vault.encrypt(url), target=outbound.mask(url)
        )
    Schedule = apps.get_model("borgapp", "Schedule")
    for schedule in Schedule.objects.all():
        changed = {
            f"ping_{which}_encrypted": vault.encrypt(getattr(schedule, f"ping_{which}_url"))
            for which in PINGS
            if getattr(schedule, f"ping_{which}_url")
        }
        if changed:
            Schedule.objects.filter(pk=schedule.pk).update(**changed)


def decrypt(apps, schema_editor):
    from borgapp import vault

    Channel = apps.get_model("borgapp", "Channel")
    for channel in Channel.objects.exclude(target_encrypted=""):
        Channel.objects.filter(pk=channel.pk).update(target=vault.decrypt(channel.target_encrypted))
    Schedule = apps.get_model("borgapp", "Schedule")
    for schedule in Schedule.objects.all():
        changed = {
            f"ping_{which}_url": vault.decrypt(getattr(schedule, f"ping_{which}_encrypted"))
            for which in PINGS
            if getattr(schedule, f"ping_{which}_encrypted")
        }
        if changed:
            Schedule.objects.filter(pk=schedule.pk).update(**changed)


class Migration(migrations.Migration):
    dependencies = [
        ("borgapp", "0011_one_firing_alert"),
    ]

    operations = [
        migrations.AddField(
            model_name="channel",
            name="target_encrypted",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.AlterField(
            model_name="channel",
            name="target",
            field=models.TextField(
                help_text="email: addresses separated by commas; webhook: https URL; apprise: "
                "its URL (URLs are stored encrypted, and shown as scheme and host only)"
            ),
        ),
        migrations.AddField(
            model_name="schedule",
            name="ping_start_encrypted",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.AddField(
            model_name="schedule",
            name="ping_success_encrypted",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.AddField(
            model_name="schedule",
            name="ping_failure_encrypted",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.RunPython(encrypt, decrypt),
        migrations.RemoveField(model_name="schedule", name="ping_start_url"),
        migrations.RemoveField(model_name="schedule", name="ping_success_url"),
        migrations.RemoveField(model_name="schedule", name="ping_failure_url"),
    ]
