"""The suite shares its servers with a `make demo` running beside it: its tasks, queues and flushes
stay in a Redis database and under keys of their own, and the root URL is never a debug 404."""

import json
import os
import uuid

import redis
from django.conf import settings

from config.celery import app


def _development_redis_url() -> str:
    """Where `make demo` (development settings, the same environment) keeps its queues."""
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:63799/0")


def test_the_tests_use_a_redis_database_other_than_the_demos():
    assert settings.REDIS_URL.rsplit("/", 1)[0] == _development_redis_url().rsplit("/", 1)[0]
    assert settings.REDIS_URL.rsplit("/", 1)[1] != _development_redis_url().rsplit("/", 1)[1]
    assert settings.CELERY_BROKER_URL == settings.REDIS_URL == settings.CACHES["default"]["LOCATION"]


def test_a_task_the_tests_queue_waits_in_their_own_database_under_their_own_key():
    # A queue no worker consumes, so the message is still there to be found (a session worker
    # started by an earlier test would take one from "default" at once).
    task_id, queue = f"isolation-{uuid.uuid4()}", "isolation-probe"
    app.send_task("config.celery.ping", queue=queue, task_id=task_id)
    ours = redis.Redis.from_url(settings.REDIS_URL)
    demos = redis.Redis.from_url(_development_redis_url())
    try:
        waiting = [json.loads(m)["headers"]["id"] for m in ours.lrange(f"opsloop-test:{queue}", 0, -1)]
        assert task_id in waiting
        assert not demos.exists(queue) and not ours.exists(queue)
    finally:
        ours.delete(f"opsloop-test:{queue}")


def test_the_tests_never_post_to_the_demos_gateway_or_link_to_its_port():
    assert settings.OPSLOOP_PUBLIC_URL == "http://testserver"
    assert settings.OPSLOOP_PUSH_GATEWAY_URL == settings.OPSLOOP_SMS_GATEWAY_URL == ""


def test_the_root_url_leads_to_the_back_office(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_the_admin_has_no_view_site_link_to_a_missing_front_end(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert "View site" not in page
