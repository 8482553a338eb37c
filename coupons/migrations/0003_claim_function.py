"""`coupons_claim(...)`: a claim in one statement, so the hot rule row is locked only inside
PostgreSQL (from the reserve to the commit), never while a Python process waits for its turn.

Checks before the reserve cost no lock (the request_id replay, the per-user holding); the
reserve is the conditional UPDATE of `coupons.services._RESERVE_SQL`; the holding and the
coupon follow it, and if either fails the statement fails whole (nothing reserved, nothing
held). Refusals that changed nothing come back as an `outcome`; see `coupons.services`.
"""

from django.db import migrations

CREATE = r"""
CREATE OR REPLACE FUNCTION coupons_claim(
    p_rule_id bigint, p_profile_id bigint, p_user_id text, p_request_id text, p_code text,
    p_now timestamptz, p_source text, p_source_ref text, p_conditions_checked boolean
) RETURNS TABLE (
    outcome text, coupon_id bigint, holder_id bigint, reserved numeric, starts_at timestamptz,
    expires_at timestamptz, rule_name text, per_user_limit integer
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_profile bigint := p_profile_id;
    v_limit integer;
    v_conditions boolean;
    v_state text;
    v_held integer;
    v_id bigint;
    v_holder bigint;
    v_reserve numeric;
    v_from timestamptz;
    v_until timestamptz;
    v_days integer;
    v_name text;
    v_starts timestamptz;
    v_expires timestamptz;
BEGIN
    IF v_profile IS NULL THEN
        SELECT i.profile_id INTO v_profile FROM profiles_identity i WHERE i.kind = 'user_id' AND i.value = p_user_id;
        IF v_profile IS NULL THEN
            RETURN QUERY SELECT 'NO_PROFILE', NULL::bigint, NULL::bigint, NULL::numeric, NULL::timestamptz,
                                NULL::timestamptz, NULL::text, NULL::integer;
            RETURN;
        END IF;
    END IF;
    SELECT r.per_user_limit,
           cardinality(r.eligible_tiers) > 0 OR cardinality(r.eligible_tags) > 0 OR r.first_order_only,
           r.state
      INTO v_limit, v_conditions, v_state
      FROM coupons_couponrule r WHERE r.id = p_rule_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'NO_RULE', NULL::bigint, v_profile, NULL::numeric, NULL::timestamptz,
                            NULL::timestamptz, NULL::text, NULL::integer;
        RETURN;
    END IF;
    IF v_conditions AND NOT p_conditions_checked THEN
        -- Tiers, tags and first orders are judged in Python (coupons.services.eligibility_refusal).
        RETURN QUERY SELECT 'CHECK_CONDITIONS', NULL::bigint, v_profile, NULL::numeric, NULL::timestamptz,
                            NULL::timestamptz, NULL::text, v_limit;
        RETURN;
    END IF;
    IF p_request_id IS NOT NULL THEN
        SELECT c.id, c.profile_id INTO v_id, v_holder
          FROM coupons_coupon c WHERE c.rule_id = p_rule_id AND c.request_id = p_request_id;
        IF FOUND THEN
            RETURN QUERY SELECT CASE WHEN v_holder = v_profile THEN 'REPLAY' ELSE 'REQUEST_ID_REUSED' END, v_id, v_holder, NULL::numeric, NULL::timestamptz,
                                NULL::timestamptz, NULL::text, v_limit;
            RETURN;
        END IF;
    END IF;
    IF v_state <> 'active' THEN
        -- Said before the holding: a paused offer is "not active" to everyone (the reserve
        -- below re-checks the state under the row lock in any case).
        RETURN QUERY SELECT 'NOT_RESERVED', NULL::bigint, v_profile, NULL::numeric, NULL::timestamptz,
                            NULL::timestamptz, NULL::text, v_limit;
        RETURN;
    END IF;
    SELECT h.issued INTO v_held FROM coupons_ruleholding h WHERE h.rule_id = p_rule_id AND h.profile_id = v_profile;
    IF v_held >= v_limit THEN
        RETURN QUERY SELECT 'PER_USER_LIMIT_REACHED', NULL::bigint, v_profile, NULL::numeric, NULL::timestamptz,
                            NULL::timestamptz, NULL::text, v_limit;
        RETURN;
    END IF;

    -- The reserve: quantity and budget re-checked against the committed row under its lock.
    UPDATE coupons_couponrule r
       SET issued_count = r.issued_count + 1,
           committed = r.committed + (CASE WHEN r.kind = 'percent' THEN COALESCE(r.max_discount, 0) ELSE r.value END)
     WHERE r.id = p_rule_id
       AND r.state = 'active'
       AND (r.valid_from IS NULL OR r.valid_from <= p_now)
       AND (r.valid_until IS NULL OR r.valid_until > p_now)
       AND (r.total_quantity IS NULL OR r.issued_count + 1 <= r.total_quantity)
       AND (r.budget IS NULL OR r.committed + r.spent
            + (CASE WHEN r.kind = 'percent' THEN COALESCE(r.max_discount, 0) ELSE r.value END) <= r.budget)
    RETURNING CASE WHEN r.kind = 'percent' THEN COALESCE(r.max_discount, 0) ELSE r.value END,
              r.valid_from, r.valid_until, r.valid_days, r.per_user_limit, r.name
      INTO v_reserve, v_from, v_until, v_days, v_limit, v_name;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'NOT_RESERVED', NULL::bigint, v_profile, NULL::numeric, NULL::timestamptz,
                            NULL::timestamptz, NULL::text, v_limit;
        RETURN;
    END IF;

    -- The per-user limit under the holding row's lock: a parallel claim of the same person that
    -- took the last slot first makes this one fail, and its reserve with it.
    INSERT INTO coupons_ruleholding AS h (rule_id, profile_id, issued) VALUES (p_rule_id, v_profile, 1)
    ON CONFLICT (rule_id, profile_id) DO UPDATE SET issued = h.issued + 1 WHERE h.issued < v_limit
    RETURNING h.issued INTO v_held;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'per-user limit of % reached', v_limit USING ERRCODE = 'OLC01', DETAIL = v_limit::text;
    END IF;

    -- Same validity as coupons.services._validity (24-hour days, whatever the session's zone).
    v_starts := GREATEST(p_now, v_from);
    v_expires := LEAST(v_until, v_starts + make_interval(hours => 24 * v_days));
    INSERT INTO coupons_coupon (code, rule_id, profile_id, status, reserved, issued_at, starts_at, expires_at,
                                expired_at, source, source_ref, request_id, batch_id)
    VALUES (p_code, p_rule_id, v_profile, 'available', v_reserve, p_now, v_starts, v_expires,
            NULL, p_source, p_source_ref, p_request_id, NULL)
    RETURNING id INTO v_id;
    RETURN QUERY SELECT 'ISSUED', v_id, v_profile, v_reserve, v_starts, v_expires, v_name, v_limit;
END
$$;
"""

DROP = (
    "DROP FUNCTION IF EXISTS coupons_claim(bigint, bigint, text, text, text, timestamptz, text, text, boolean)"
)


class Migration(migrations.Migration):
    dependencies = [("coupons", "0002_beat_schedules")]

    operations = [migrations.RunSQL(CREATE, DROP)]
