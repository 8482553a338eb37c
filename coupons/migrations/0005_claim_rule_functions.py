"""The claim rule in one place: `coupons_reserve_per_coupon` (what one coupon commits of the
budget), `coupons_can_issue` (whether a rule can issue n more coupons now) and `coupons_reserve` (the conditional UPDATE that takes n coupons' worth of quantity and
budget, and the validity of what it reserved). `coupons_claim` calls `coupons_reserve`, the bulk
paths of `coupons.services` call it too, and `CouponRule.reserve_per_coupon` asks the database,
so nothing restates the rule.

`coupons_reserve` is PL/pgSQL so its UPDATE is planned once per session, as it was inside
`coupons_claim`; `coupons_reserve_per_coupon` and `coupons_can_issue` are one-expression SQL
functions the planner inlines, so they cost nothing in the UPDATE. They take the rule's columns
one by one, not the row: an inlined function over scalars is plain column arithmetic.
"""

from importlib import import_module

from django.db import migrations

PER_COUPON = r"""
CREATE OR REPLACE FUNCTION coupons_reserve_per_coupon(p_kind text, p_value numeric, p_max_discount numeric)
RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- A percent coupon may cost up to its cap; any other coupon costs its value.
    SELECT CASE WHEN p_kind = 'percent' THEN COALESCE(p_max_discount, 0) ELSE p_value END
$$;
"""

CAN_ISSUE = r"""
CREATE OR REPLACE FUNCTION coupons_can_issue(
    p_state text, p_valid_from timestamptz, p_valid_until timestamptz, p_total_quantity integer,
    p_issued_count integer, p_budget numeric, p_committed numeric, p_spent numeric,
    p_kind text, p_value numeric, p_max_discount numeric, p_n integer, p_now timestamptz
) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Active, within its dates, and n more coupons fit the quantity and the budget (what is
    -- committed to coupons out there plus what was spent).
    SELECT p_state = 'active'
       AND (p_valid_from IS NULL OR p_valid_from <= p_now)
       AND (p_valid_until IS NULL OR p_valid_until > p_now)
       AND (p_total_quantity IS NULL OR p_issued_count + p_n <= p_total_quantity)
       AND (p_budget IS NULL
            OR p_committed + p_spent + p_n * coupons_reserve_per_coupon(p_kind, p_value, p_max_discount) <= p_budget)
$$;
"""

RESERVE = r"""
CREATE OR REPLACE FUNCTION coupons_reserve(p_rule_id bigint, p_n integer, p_now timestamptz)
RETURNS TABLE (
    reserved numeric, starts_at timestamptz, expires_at timestamptz, per_user_limit integer, rule_name text
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    -- The row lock of the UPDATE serialises claimers, and the WHERE re-checks the limits against
    -- the committed values: n coupons' worth of quantity and budget, or nothing (no row).
    -- Validity: 24-hour days, whatever the session's time zone.
    UPDATE coupons_couponrule r
       SET issued_count = r.issued_count + p_n,
           committed = r.committed + p_n * coupons_reserve_per_coupon(r.kind, r.value, r.max_discount)
     WHERE r.id = p_rule_id
       AND coupons_can_issue(r.state, r.valid_from, r.valid_until, r.total_quantity, r.issued_count, r.budget,
                             r.committed, r.spent, r.kind, r.value, r.max_discount, p_n, p_now)
    RETURNING coupons_reserve_per_coupon(r.kind, r.value, r.max_discount),
              GREATEST(p_now, r.valid_from),
              LEAST(r.valid_until, GREATEST(p_now, r.valid_from) + make_interval(hours => 24 * r.valid_days)),
              r.per_user_limit,
              r.name
      INTO reserved, starts_at, expires_at, per_user_limit, rule_name;
    IF FOUND THEN
        RETURN NEXT;
    END IF;
END
$$;
"""

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

DROP = """
DROP FUNCTION IF EXISTS coupons_reserve(bigint, integer, timestamptz);
DROP FUNCTION IF EXISTS coupons_can_issue(
    text, timestamptz, timestamptz, integer, integer, numeric, numeric, numeric, text, numeric, numeric, integer,
    timestamptz
);
DROP FUNCTION IF EXISTS coupons_reserve_per_coupon(text, numeric, numeric);
"""


def _previous_claim() -> str:
    # Going back restores the claim function of 0003, which carried its own copy of the reserve.
    return import_module("coupons.migrations.0003_claim_function").CREATE


class Migration(migrations.Migration):
    dependencies = [("coupons", "0004_issuance_segment_bigint")]

    operations = [
        migrations.RunSQL(PER_COUPON + CAN_ISSUE + RESERVE, DROP),
        migrations.RunSQL(CLAIM, _previous_claim()),
    ]
