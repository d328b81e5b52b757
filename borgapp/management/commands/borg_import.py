from borgapp import intake
from borgapp.management.commands._base import JobCommand, read_passphrase
from borgapp.models import Job


class Command(JobCommand):
    help = "Register an existing borg repository and read its archives into the catalog."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name")
        parser.add_argument("--location", required=True)
        parser.add_argument(
            "--unencrypted", action="store_true", help="the repository has no passphrase"
        )
        parser.add_argument("--passphrase-file")

    def start(self, options, echo):
        passphrase = None if options["unencrypted"] else read_passphrase(options)
        return intake.register(
            options["name"],
            options["location"],
            passphrase,
            create=False,
            trigger=Job.Trigger.CLI,
            inline=True,
            echo=echo,
        )
