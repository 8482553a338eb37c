"""Every crm test that uses the database starts from the default tiers and scheme the data
migration installs (a transactional test elsewhere in the suite flushes the tables, seed
included), and with crm's own builders in the profile registries (other apps' tests may
register stand-ins there)."""

import pytest
from django.apps import apps


@pytest.fixture(autouse=True)
def default_value_setup(request) -> None:
    apps.get_app_config("crm").ready()
    names = request.fixturenames
    if "celery_worker" in names or "transactional_db" in names:
        request.getfixturevalue("transactional_db")
    elif "db" in names:
        request.getfixturevalue("db")
    elif not request.node.get_closest_marker("django_db"):
        return
    from crm.services import ensure_default_setup

    ensure_default_setup()
