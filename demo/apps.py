from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DemoConfig(AppConfig):
    """A synthetic shop and one turn of the operations loop (`manage.py load_demo`), loaded through
    every app's own services and API. Above all the domain apps: seeding them is its business."""

    name = "demo"
    verbose_name = _("Demo")
