from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("borgapp", "0012_encrypted_targets"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="count",
            field=models.PositiveIntegerField(
                default=1,
                help_text="identical failed or refused sign-ins this row stands for, from the "
                "same address within five minutes of its time (audit.record_attempt)",
            ),
        ),
    ]
