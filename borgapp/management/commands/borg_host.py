import json

from django.core.management.base import BaseCommand, CommandError

from borgapp import fleet, validation
from borgapp.errors import Conflict
from borgapp.management.commands._base import EXIT_FAILED
from borgapp.models import Host, Repository


class Command(BaseCommand):
    help = (
        "Hosts backed up by their own agents: add one (prints its one-time enrollment token), "
        "issue a new token, list them, revoke one (its agent is refused at once)."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="a new host; its enrollment token is printed once")
        add.add_argument("name")
        token = sub.add_parser("token", help="a new enrollment token (the old credential ends)")
        token.add_argument("name")
        revoke = sub.add_parser("revoke", help="end the host's access now")
        revoke.add_argument("name")
        keys = sub.add_parser(
            "ssh-line", help="the authorized_keys line that lets the host only append to an "
            "ssh repository",
        )  # fmt: skip
        keys.add_argument("name")
        keys.add_argument("repository", help="an ssh:// repository of the center")
        listing = sub.add_parser("list")
        listing.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        action = options["action"]
        try:
            if action == "add":
                host, secret = fleet.add_host(options["name"])
                return self._token(host, secret)
            if action == "list":
                return self._list(options["json"])
            host = Host.objects.filter(name=options["name"]).first()
            if host is None:
                raise CommandError(f"No host named {options['name']!r}.", returncode=EXIT_FAILED)
            if action == "token":
                return self._token(host, fleet.issue_token(host))
            if action == "ssh-line":
                repo = Repository.objects.filter(name=options["repository"]).first()
                if repo is None:
                    raise validation.InvalidInput(f"No repository named {options['repository']!r}.")
                self.stdout.write(fleet.authorized_keys_line(host, repo.location))
                return None
            fleet.revoke(host)
            self.stdout.write(f"Host {host.name} revoked: its agent is refused from now on.")
        except (validation.InvalidInput, Conflict) as exc:
            raise CommandError(str(exc), returncode=EXIT_FAILED) from None

    def _token(self, host, secret) -> None:
        self.stderr.write(
            f"Enrollment token for host {host.name} (shown once, valid until "
            f"{host.token_expires:%Y-%m-%d %H:%M} UTC). On the host: python -m agent enroll "
            "--center URL --data DIR, with the token on its standard input."
        )
        self.stdout.write(secret)

    def _list(self, as_json: bool) -> None:
        rows = [
            {"name": h.name, "state": h.state, "last_seen": h.last_seen and h.last_seen.isoformat(),
             "address": h.address, "agent_version": h.agent_version,
             "borg_version": h.borg_version}
            for h in Host.objects.all()
        ]  # fmt: skip
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for row in rows:
            self.stdout.write(f"{row['name']:20} {row['state']:8} last seen {row['last_seen']}")
