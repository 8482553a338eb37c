"""Channel secrets: a channel's gateway URL and token need a permission of their own, which
Operations does not hold; each change is audited with the old and the new host; the token goes
only to hosts on the settings' allow-list, and nothing goes to another host while a token is set."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client

from access.models import AuditEntry
from campaigns import services
from campaigns.models import CampaignStatus, Channel, ChannelKind, Delivery
from tests.campaigns.receiver import Receiver
from tests.factories.campaigns import CampaignFactory, ChannelFactory, make_profiles

pytestmark = pytest.mark.django_db

PROVIDER = "https://push.provider.example/send"
ATTACKER = "https://collector.attacker.example/x"


def _form(channel: Channel, **changes) -> dict:
    data = {
        "kind": channel.kind,
        "url": channel.url,
        "token": channel.token,
        "timeout_seconds": channel.timeout_seconds,
        "rate_per_second": channel.rate_per_second,
        "max_attempts": channel.max_attempts,
        "retry_window_minutes": channel.retry_window_minutes,
        "backoff_base_seconds": channel.backoff_base_seconds,
        "backoff_max_seconds": channel.backoff_max_seconds,
        "enabled": "on",
    }
    data.update(changes)
    return data


def test_operations_cannot_redirect_deliveries_in_the_admin(make_staff):
    channel = ChannelFactory(kind=ChannelKind.PUSH, url=PROVIDER, token="provider-secret")
    client = Client()
    client.force_login(make_staff("Operations"))
    url = f"/admin/campaigns/channel/{channel.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert "provider-secret" not in page.content.decode()  # the token is not shown either
    assert 'name="url"' not in page.content.decode()
    response = client.post(url, _form(channel, url=ATTACKER, token="", rate_per_second=7))
    assert response.status_code == 302
    channel.refresh_from_db()
    assert (channel.url, channel.token, channel.rate_per_second) == (PROVIDER, "provider-secret", 7)


def test_the_service_refuses_a_gateway_change_without_the_permission(make_staff):
    channel = ChannelFactory(kind=ChannelKind.PUSH, url=PROVIDER)
    channel.url = ATTACKER
    with pytest.raises(PermissionDenied):
        services.save_channel(channel=channel, changed=["url"], actor=make_staff("Operations"))
    assert Channel.objects.get(pk=channel.pk).url == PROVIDER


def test_a_gateway_change_is_audited_with_old_and_new_host(make_staff):
    channel = ChannelFactory(kind=ChannelKind.PUSH, url=PROVIDER, token="old")
    admin = make_staff(superuser=True)
    client = Client()
    client.force_login(admin)
    response = client.post(
        f"/admin/campaigns/channel/{channel.pk}/change/",
        _form(channel, url="https://push2.provider.example/send", token="new-secret"),
    )
    assert response.status_code == 302
    entry = AuditEntry.objects.filter(action="campaigns.channel_changed").latest("at")
    assert entry.actor == admin
    assert entry.details["old_host"] == "push.provider.example"
    assert entry.details["new_host"] == "push2.provider.example"
    assert entry.details["token_changed"] is True
    assert "new-secret" not in str(entry.details) and "old" not in entry.details.values()


def test_the_token_goes_only_to_allowed_hosts(settings):
    settings.OPSLOOP_GATEWAY_TOKEN = "s3cret"
    settings.OPSLOOP_GATEWAY_ALLOWED_HOSTS = []
    settings.OPSLOOP_PUSH_GATEWAY_URL = ""
    make_profiles(2)
    with Receiver() as gateway:
        # Reached as "localhost", which is not on the list: nothing is posted, token or data.
        ChannelFactory(kind=ChannelKind.PUSH, url=gateway.url.replace("127.0.0.1", "localhost"))
        campaign = CampaignFactory(status=CampaignStatus.RUNNING, holdout_percent=Decimal(0))
        services.start_send(campaign_id=campaign.pk)
        ids = list(Delivery.objects.filter(campaign=campaign).values_list("id", flat=True))
        services.deliver(delivery_ids=ids)
        assert gateway.requests == []
        reasons = set(Delivery.objects.filter(pk__in=ids).values_list("reason", flat=True))
        assert any("GATEWAY_HOST_NOT_ALLOWED" in (r or "") for r in reasons), reasons

        # Once whoever deploys allows the host, the retry carries the token.
        settings.OPSLOOP_GATEWAY_ALLOWED_HOSTS = ["localhost"]
        Delivery.objects.filter(pk__in=ids).update(not_before=None)
        services.deliver(delivery_ids=ids)
    assert gateway.headers and all(h["Authorization"] == "Bearer s3cret" for h in gateway.headers)


def test_no_role_holds_the_gateway_permission_by_default(make_staff):
    from access.roles import ROLES

    for role in ROLES:
        assert not make_staff(role).has_perm("campaigns.set_channel_gateway"), role


def _gateway_keeper(make_staff):
    from django.contrib.auth.models import Permission

    user = make_staff("Operations")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="campaigns", codename="set_channel_gateway")
    )
    return user


def test_the_token_is_write_only_even_for_those_who_may_set_it(make_staff):
    channel = ChannelFactory(kind=ChannelKind.PUSH, url=PROVIDER, token="provider-secret-9f3c")
    client = Client()
    client.force_login(_gateway_keeper(make_staff))
    page = client.get(f"/admin/campaigns/channel/{channel.pk}/change/").content.decode()
    assert "provider-secret" not in page
    assert 'name="token"' in page and 'type="password"' in page
    assert "9f3c" in page  # that one is set, and which
    listing = client.get("/admin/campaigns/channel/").content.decode()
    assert "provider-secret" not in listing


def test_an_empty_token_field_keeps_the_token_and_is_no_change(make_staff):
    channel = ChannelFactory(kind=ChannelKind.PUSH, url=PROVIDER, token="provider-secret-9f3c")
    client = Client()
    client.force_login(_gateway_keeper(make_staff))
    response = client.post(
        f"/admin/campaigns/channel/{channel.pk}/change/", _form(channel, token="", rate_per_second=9)
    )
    assert response.status_code == 302
    channel.refresh_from_db()
    assert (channel.token, channel.rate_per_second) == ("provider-secret-9f3c", 9)
    entry = AuditEntry.objects.filter(action="campaigns.channel_changed").latest("at")
    assert "token" not in entry.details["fields"] and "token_changed" not in entry.details


def test_a_new_token_replaces_the_old_one_audited_without_either(make_staff):
    channel = ChannelFactory(kind=ChannelKind.PUSH, url=PROVIDER, token="provider-secret-9f3c")
    client = Client()
    client.force_login(_gateway_keeper(make_staff))
    response = client.post(f"/admin/campaigns/channel/{channel.pk}/change/", _form(channel, token="rotated-77aa"))
    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.token == "rotated-77aa"
    entry = AuditEntry.objects.filter(action="campaigns.channel_changed").latest("at")
    assert entry.details["token_changed"] is True and "token" in entry.details["fields"]
    assert "rotated" not in str(entry.details) and "provider-secret" not in str(entry.details)
    history = client.get(f"/admin/campaigns/channel/{channel.pk}/history/").content.decode()
    assert "rotated" not in history and "provider-secret" not in history

    response = client.post(f"/admin/campaigns/channel/{channel.pk}/change/", _form(channel, token="", clear_token="on"))
    assert response.status_code == 302
    assert Channel.objects.get(pk=channel.pk).token == ""


def test_the_admin_history_records_a_token_change_without_the_token(make_staff):
    from django.contrib.admin.models import LogEntry

    channel = ChannelFactory(kind=ChannelKind.PUSH, url=PROVIDER, token="provider-secret-9f3c")
    client = Client()
    client.force_login(_gateway_keeper(make_staff))
    response = client.post(f"/admin/campaigns/channel/{channel.pk}/change/", _form(channel, token="rotated-77aa"))
    assert response.status_code == 302
    entry = LogEntry.objects.filter(object_id=str(channel.pk)).latest("action_time")
    assert "token" in entry.get_change_message().lower()
    assert "rotated" not in entry.change_message and "provider-secret" not in entry.change_message
    history = client.get(f"/admin/campaigns/channel/{channel.pk}/history/").content.decode()
    assert "token" in history.lower().split("<tbody>", 1)[-1]
    assert "rotated" not in history and "provider-secret" not in history

    url = f"/admin/campaigns/channel/{channel.pk}/change/"
    response = client.post(url, _form(channel, token="", rate_per_second=9))
    assert response.status_code == 302
    unchanged = LogEntry.objects.filter(object_id=str(channel.pk)).latest("action_time")
    assert "token" not in unchanged.get_change_message().lower()
