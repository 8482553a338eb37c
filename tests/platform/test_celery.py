import pytest

from config.celery import app


@pytest.mark.worker
def test_a_real_worker_runs_a_task_through_redis(celery_worker):
    result = app.send_task("config.celery.ping")
    assert result.get(timeout=30) == "pong"
    assert "config.celery.ping" in celery_worker.log()


def test_celery_is_configured_for_safe_deliveries():
    conf = app.conf
    assert {q.name for q in conf.task_queues} == {"default", "deliveries", "analytics"}
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert app.amqp.router.route({}, "campaigns.tasks.deliver_batch")["queue"].name == "deliveries"
