import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Make sure an admin account exists: from DJANGO_SUPERUSER_USERNAME and "
        "DJANGO_SUPERUSER_PASSWORD if set, else 'admin' with a random password printed once "
        "and kept in a 0600 file in the data directory."
    )
    requires_system_checks = []

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME") or "admin"
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        user = User.objects.filter(username=username).first()
        if user is not None:
            if password:
                user.set_password(password)
                user.save(update_fields=["password"])
            self.stdout.write(f"Admin account {username!r} exists.")
            return
        if User.objects.filter(is_superuser=True).exists() and not password:
            self.stdout.write("An admin account exists.")
            return
        generated = password is None
        password = password or secrets.token_urlsafe(18)
        User.objects.create_superuser(username=username, email="", password=password)
        if generated:
            path = settings.DATA_DIR / "admin-password.txt"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{username}\n{password}\n")
            self.stdout.write(
                f"Created admin account {username!r} with password: {password}\n"
                f"(shown once; also stored in {path}, mode 0600)"
            )
        else:
            self.stdout.write(f"Created admin account {username!r}.")
