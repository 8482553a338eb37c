"""WSGI entry point for gunicorn. Production settings unless the environment names others: a
server started without `DJANGO_SETTINGS_MODULE` must never run with debug pages and development
secrets (`make up` names the development settings itself, in scripts/processes.sh)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

application = get_wsgi_application()
