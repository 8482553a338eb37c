"""Every predictions test that uses the database starts from the settings row and tiers the data
migration installs (a transactional test elsewhere may have flushed them), with the registries
holding predictions' own builders."""

import pytest
from django.apps import apps


@pytest.fixture(autouse=True)
def default_prediction_setup(request) -> None:
    apps.get_app_config("crm").ready()
    apps.get_app_config("predictions").ready()
    names = request.fixturenames
    if "transactional_db" in names:
        request.getfixturevalue("transactional_db")
    elif "db" in names:
        request.getfixturevalue("db")
    elif not request.node.get_closest_marker("django_db"):
        return
    from crm.services import ensure_default_setup as crm_setup
    from predictions.services import ensure_default_setup

    crm_setup()
    ensure_default_setup()
