from borgapp.management.commands._base import JobCommand
from borgapp.models import Job

CATEGORIES = [
    ("created", "created"),
    ("replaced", "replaced"),
    ("kept", "kept"),
    ("left_alone", "left alone (not in the archive)"),
    ("blocked", "blocked (not safe to write)"),
]
SHOWN = 20  # entries listed per category; --json has the stored report


class Command(JobCommand):
    help = (
        "Restore paths of an archive in place (under OPSCENTER_INPLACE_ROOTS). Without --yes "
        "it only previews: what would be created, replaced, kept, left alone and blocked."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("name", help="repository name")
        parser.add_argument("archive")
        parser.add_argument("paths", nargs="+", help="paths inside the archive")
        parser.add_argument(
            "--target", default="/", help='the folder that stands for "/" (default: "/", '
            "each path back where it was)",
        )  # fmt: skip
        parser.add_argument(
            "--policy", choices=["keep", "replace", "if-different"], default="keep",
            help="for files that exist (default: keep)",
        )  # fmt: skip
        parser.add_argument("--yes", action="store_true", help="restore, not only preview")
        parser.add_argument(
            "--host", help="restore on this host, by its agent (under its --inplace-root folders)"
        )

    def start(self, options, echo):
        params = {
            "archive": options["archive"],
            "paths": options["paths"],
            "target": options["target"],
            "policy": options["policy"],
            "preview": not options["yes"],
        }
        if options["host"]:
            return self.run_on_host(Job.Kind.RESTORE, options["name"], params, options["host"])
        return self.run_kind(Job.Kind.RESTORE, options["name"], params, echo)

    def describe(self, job):
        lines = [super().describe(job)]
        for name, label in CATEGORIES:
            part = (job.result or {}).get(name)
            if not part or not part.get("count"):
                continue
            lines.append(f"{part['count']:,} {label}:")
            for item in part["items"][:SHOWN]:
                reason = f" ({item['reason']})" if item.get("reason") else ""
                lines.append(f"  {item['path']}{reason}")
            if part["count"] > SHOWN:
                lines.append(f"  ... and {part['count'] - SHOWN:,} more")
        if job.params.get("preview") and job.status in Job.OK:
            lines.append("Nothing was written. Run again with --yes to restore.")
        return "\n".join(lines)
