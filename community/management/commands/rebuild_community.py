"""`manage.py rebuild_community`: recompute contacts, memberships, join/leave history and activity
from the stored community events (after a data repair). Accounts, groups and their operators stay."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from community import services


class Command(BaseCommand):
    help = "Rebuild community membership and activity from the stored events."

    def handle(self, *args, **options):
        applied = services.rebuild_community()
        self.stdout.write(f"{applied} community event(s) applied.")
