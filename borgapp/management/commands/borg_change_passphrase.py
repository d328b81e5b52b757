from borgapp import intake
from borgapp.management.commands._base import JobCommand, read_passphrase
from borgapp.models import Job


class Command(JobCommand):
    help = "Change a repository's passphrase (the key's) and store the new one encrypted."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("--passphrase-file", help="file holding the NEW passphrase")

    def start(self, options, echo):
        new = read_passphrase(options, "New passphrase: ")
        return intake.change_passphrase(
            self.repository(options["name"]), new, trigger=Job.Trigger.CLI, inline=True, echo=echo
        )
