from borgapp import intake
from borgapp.management.commands._base import JobCommand
from borgapp.models import Job


class Command(JobCommand):
    help = "Unmount a mount this app made."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--mountpoint", required=True)

    def start(self, options, echo):
        return intake.umount(options["mountpoint"], trigger=Job.Trigger.CLI, inline=True, echo=echo)
