from borgapp import intake
from borgapp.management.commands._base import JobCommand, read_passphrase
from borgapp.models import ENCRYPTION_MODES, Job


class Command(JobCommand):
    help = "Create a borg repository and register it (the passphrase is checked and stored)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name")
        parser.add_argument("--location", required=True)
        parser.add_argument(
            "--encryption", default="repokey-blake2", choices=[m for m, _ in ENCRYPTION_MODES]
        )
        parser.add_argument("--append-only", action="store_true")
        parser.add_argument("--passphrase-file")

    def start(self, options, echo):
        passphrase = None
        if options["encryption"] != "none":
            passphrase = read_passphrase(options, "New passphrase: ")
        return intake.register(
            options["name"],
            options["location"],
            passphrase,
            create=True,
            encryption=options["encryption"],
            append_only=options["append_only"],
            trigger=Job.Trigger.CLI,
            inline=True,
            echo=echo,
        )
