"""`manage.py ensure_admin`: create (or leave alone) the operator login that `make up` prints."""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the superuser named by OPSLOOP_ADMIN_USER/OPSLOOP_ADMIN_PASSWORD if it does not exist."

    def handle(self, *args, **options):
        username = os.environ.get("OPSLOOP_ADMIN_USER", "admin")
        password = os.environ.get("OPSLOOP_ADMIN_PASSWORD", "opsloop-admin")
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True, "email": f"{username}@localhost"}
        )
        if created:
            user.set_password(password)
            user.save(update_fields=["password"])
            self.stdout.write(f"Created superuser {username}.")
        else:
            self.stdout.write(f"Superuser {username} already exists; password unchanged.")
