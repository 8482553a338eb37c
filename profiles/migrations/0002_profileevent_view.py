from django.db import migrations

# Every event with the profile it belongs to now: the `user_id` identity first, else the
# `anonymous_id` one. See profiles.models.ProfileEvent.
CREATE_VIEW = """
CREATE OR REPLACE VIEW profiles_profileevent AS
SELECT e.id, e.event_id, e.name, e.kind, e.timestamp, e.received_at, e.user_id, e.anonymous_id,
       e.properties, e.url, e.path, e.referrer, e.utm_source, e.utm_medium, e.utm_campaign,
       e.device, e.os,
       COALESCE(iu.profile_id, ia.profile_id) AS profile_id
FROM tracking_event e
LEFT JOIN profiles_identity iu ON iu.kind = 'user_id' AND iu.value = e.user_id
LEFT JOIN profiles_identity ia ON ia.kind = 'anonymous_id' AND ia.value = e.anonymous_id
"""


class Migration(migrations.Migration):
    dependencies = [("profiles", "0001_initial"), ("tracking", "0001_initial")]
    operations = [migrations.RunSQL(CREATE_VIEW, "DROP VIEW IF EXISTS profiles_profileevent")]
