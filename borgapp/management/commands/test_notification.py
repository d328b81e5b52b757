from django.core.management.base import BaseCommand, CommandError

from borgapp import notifications
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.models import Channel


class Command(BaseCommand):
    help = "Send a test message on a notification channel (by name)."

    def add_arguments(self, parser):
        parser.add_argument("channel")

    def handle(self, *args, **options):
        channel = Channel.objects.filter(name=options["channel"]).first()
        if channel is None:
            raise CommandError(f"No channel named {options['channel']!r}.", returncode=EXIT_FAILED)
        ok = notifications.send_to(
            channel,
            "test",
            "[opscenter] test message",
            f"This is a test message on the channel {channel.name}.",
            {"test": True},
        )
        if not ok:
            channel.refresh_from_db()
            raise CommandError(f"Sending failed: {channel.last_error}", returncode=EXIT_FAILED)
        if channel.kind == Channel.Kind.EMAIL and notifications.mail_stays_here():
            self.stderr.write(
                f"{channel.name}: not sent anywhere. Email goes to the console until EMAIL_URL "
                "names an SMTP server (smtp://user:pass@host:587)."
            )
            return
        self.stdout.write(f"Sent a test message on {channel.name} ({channel.get_kind_display()}).")
