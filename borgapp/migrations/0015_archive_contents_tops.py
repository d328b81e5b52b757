from django.db import migrations, models


def find_tops(apps, schema_editor):
    """Listings stored before this field: their tops from the rows themselves (the items whose
    folder is not stored), so their folder tree opens at the real top without a reload."""
    Archive = apps.get_model("borgapp", "Archive")
    ArchiveItem = apps.get_model("borgapp", "ArchiveItem")
    for archive in Archive.objects.filter(contents_count__isnull=False).only("pk"):
        items = ArchiveItem.objects.filter(archive_id=archive.pk)
        loose = items.exclude(parent="").exclude(parent__in=items.values("path"))
        tops = list(loose.order_by("path").values_list("path", flat=True)[:1000])
        Archive.objects.filter(pk=archive.pk).update(contents_tops=tops)


class Migration(migrations.Migration):
    dependencies = [
        ("borgapp", "0014_channel_warning_event"),
    ]

    operations = [
        migrations.AddField(
            model_name="archive",
            name="contents_tops",
            field=models.JSONField(blank=True, default=list, editable=False),
        ),
        migrations.RunPython(find_tops, migrations.RunPython.noop),
    ]
