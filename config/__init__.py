"""Project configuration: settings, the Celery app, root URLs and shared API plumbing."""

from .celery import app as celery_app

__all__ = ["celery_app"]
