"""WSGI entry point for gunicorn. Production settings unless the environment names others: a
server started without `DJANGO_SETTINGS_MODULE` must never run with debug pages and development
secrets (`make up` names the development settings itself, in scripts/processes.sh)."""

import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

application = get_wsgi_application()
get_resolver().url_patterns  # noqa: B018 - the views are imported now, not by the first request
# What is loaded by now lives as long as the worker: taken out of the garbage collector's
# generations, so that a request that builds many objects (an event batch builds a dozen per
# event) does not make each full collection walk the whole framework again.
gc.freeze()
