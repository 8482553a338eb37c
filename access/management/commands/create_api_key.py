"""`manage.py create_api_key --name NAME --scopes a,b`: prints the new key once."""

from django.core.management.base import BaseCommand, CommandError

from access import services
from access.errors import ApiKeyNameTaken
from access.models import Scope


class Command(BaseCommand):
    help = "Create an API key for a product server or script and print it (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--scopes", required=True, help=f"comma-separated: {', '.join(Scope.values)}")

    def handle(self, *args, name: str, scopes: str, **options):
        try:
            issued = services.create_api_key(name=name, scopes=services.parse_scopes(scopes))
        except (ValueError, ApiKeyNameTaken) as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(f"Created key {issued.api_key.name} with scopes {','.join(issued.api_key.scopes)}.")
        self.stderr.write("Store it now: it cannot be shown again.")
        self.stdout.write(issued.plaintext)
