"""The claim follows merges: `coupons_claim` takes the person's profile row (FOR KEY SHARE) before
it reads their holding, and claims for the survivor of a merge that committed meanwhile. A merge
locks both profiles FOR UPDATE (`profiles.services.identify`), so a claim and a merge of one
person run one after the other. Otherwise the function is 0010's.
"""

from importlib import import_module

from django.db import migrations

CLAIM = r"""
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
    v_name text;
    v_starts timestamptz;
    v_expires timestamptz;
    v_threshold numeric;
    v_survivor bigint;
BEGIN
    IF v_profile IS NULL THEN
        SELECT i.profile_id INTO v_profile FROM profiles_identity i WHERE i.kind = 'user_id' AND i.value = p_user_id;
        IF v_profile IS NULL THEN
            RETURN QUERY SELECT 'NO_PROFILE', NULL::bigint, NULL::bigint, NULL::numeric, NULL::timestamptz,
                                NULL::timestamptz, NULL::text, NULL::integer;
            RETURN;
        END IF;
    END IF;
    -- The person under their profile row's lock, which a merge holds FOR UPDATE (profiles
    -- `identify`): a claim racing a merge waits for it and then claims for the survivor, so the
    -- holding and the coupon never land on a profile merged away (whose holding the merge has
    -- just moved). Held to the commit: the deferred foreign keys of the holding and the coupon take
    -- the same lock at the commit anyway.
    LOOP
        SELECT p.merged_into_id INTO v_survivor FROM profiles_profile p WHERE p.id = v_profile FOR KEY SHARE;
        EXIT WHEN v_survivor IS NULL;
        v_profile := v_survivor;
    END LOOP;
    SELECT r.per_user_limit,
           cardinality(r.eligible_tiers) > 0 OR cardinality(r.eligible_tags) > 0 OR r.first_order_only,
           r.state, r.abuse_threshold
      INTO v_limit, v_conditions, v_state, v_threshold
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
    IF v_threshold IS NOT NULL AND EXISTS (
        SELECT 1 FROM coupons_abusescore a
         WHERE a.profile_id = v_profile AND a.score >= v_threshold
           AND (a.cleared_at IS NULL OR a.cleared_score IS NULL OR a.score > a.cleared_score)
    ) THEN
        -- Held for review (coupons.services.abuse_refusal says the same in Python).
        RETURN QUERY SELECT 'ABUSE_SUSPECTED', NULL::bigint, v_profile, NULL::numeric, NULL::timestamptz,
                            NULL::timestamptz, NULL::text, v_limit;
        RETURN;
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

    SELECT rv.reserved, rv.starts_at, rv.expires_at, rv.per_user_limit, rv.rule_name
      INTO v_reserve, v_starts, v_expires, v_limit, v_name
      FROM coupons_reserve(p_rule_id, 1, p_now) rv;
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

    INSERT INTO coupons_coupon (code, rule_id, profile_id, status, reserved, issued_at, starts_at, expires_at,
                                expired_at, source, source_ref, request_id, batch_id)
    VALUES (p_code, p_rule_id, v_profile, 'available', v_reserve, p_now, v_starts, v_expires,
            NULL, p_source, p_source_ref, p_request_id, NULL)
    RETURNING id INTO v_id;
    RETURN QUERY SELECT 'ISSUED', v_id, v_profile, v_reserve, v_starts, v_expires, v_name, v_limit;
END
$$;
"""


def _previous_claim() -> str:
    return import_module("coupons.migrations.0010_promotion_abuse").CLAIM


class Migration(migrations.Migration):
    dependencies = [("coupons", "0012_abuse_beat")]

    operations = [migrations.RunSQL(CLAIM, _previous_claim())]
