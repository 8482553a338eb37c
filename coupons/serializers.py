"""Input and output shapes of the coupons API (see the Coupons part of the API contract)."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from config.api import IdField
from coupons import codes
from coupons.audiences import segment_exists
from coupons.models import (
    DEFAULT_ABUSE_THRESHOLD,
    MAX_VALID_DAYS,
    CodeBatch,
    Coupon,
    CouponRule,
    IssuanceJob,
    OrderRefund,
    Pacing,
    Redemption,
    RuleKind,
    RuleState,
    Stacking,
)
from coupons.selectors import PROFILE_STATUSES, shown_status
from coupons.services import MAX_CODES, MAX_ORDER_AMOUNT, RULE_FIELDS

MAX_MONEY = Decimal("100000000.00")
# DRF's own formatting of times and money, for the outputs built by hand below.
_DATETIME = serializers.DateTimeField()
_MONEY = serializers.DecimalField(max_digits=14, decimal_places=2)
MIN_YEAR, MAX_YEAR = 2000, 2200


def money(**kwargs) -> serializers.DecimalField:
    """A positive amount with at most two decimals, sent and shown as a string ("20.00")."""
    kwargs.setdefault("min_value", Decimal("0.01"))
    kwargs.setdefault("max_value", MAX_MONEY)
    return serializers.DecimalField(max_digits=14, decimal_places=2, coerce_to_string=True, **kwargs)


class AwareDateTimeField(serializers.DateTimeField):
    """ISO 8601 with a time zone; any offset is accepted and stored as UTC, a naive one refused."""

    default_error_messages = {
        "naive": "Give a time zone (e.g. 2026-01-31T00:00:00Z).",
        "range": f"Must lie between the years {MIN_YEAR} and {MAX_YEAR}.",
    }

    def to_internal_value(self, value):
        if not isinstance(value, str):
            self.fail("invalid", format="ISO 8601")
        try:
            parsed = parse_datetime(value.strip())
        except ValueError:
            parsed = None
        if parsed is None:
            self.fail("invalid", format="ISO 8601")
        if timezone.is_naive(parsed):
            self.fail("naive")
        try:
            value = parsed.astimezone(UTC)
        except OverflowError:
            self.fail("range")
        # Far-off years are typos, and date arithmetic near year 9999 overflows.
        if not MIN_YEAR <= value.year <= MAX_YEAR:
            self.fail("range")
        return value


class UserIdField(serializers.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 128)
        kwargs.setdefault("help_text", "The product's own user id.")
        super().__init__(**kwargs)


class CouponErrorOutput(serializers.Serializer):
    reason = serializers.CharField(help_text="Machine-readable code, e.g. BUDGET_EXHAUSTED.")
    detail = serializers.CharField()


# --- rules -------------------------------------------------------------------------------------


class CouponRuleInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    kind = serializers.ChoiceField(choices=RuleKind.choices)
    value = money(help_text="Amount off; for `percent` the percent (0.01 to 100).")
    min_spend = money(required=False, allow_null=True, min_value=Decimal("0.00"))
    max_discount = money(required=False, allow_null=True, help_text="Cap of a percent discount.")
    valid_from = AwareDateTimeField(required=False, allow_null=True)
    valid_until = AwareDateTimeField(required=False, allow_null=True)
    valid_days = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_VALID_DAYS)
    total_quantity = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=100_000_000)
    budget = money(required=False, allow_null=True)
    per_user_limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=1)
    eligible_tiers = serializers.ListField(
        child=serializers.SlugField(max_length=50),
        required=False,
        default=list,
        max_length=50,
        help_text="Value tier slugs, RFM (core ...) or predicted (top-5 ...): any of them admits; empty: everyone.",
    )
    eligible_tags = serializers.ListField(
        child=serializers.SlugField(max_length=100), required=False, default=list, max_length=50
    )
    first_order_only = serializers.BooleanField(required=False, default=False)
    priority = serializers.IntegerField(
        required=False, default=0, min_value=-1000, max_value=1000, help_text="Higher applies first among codes."
    )
    stacking = serializers.ChoiceField(
        choices=Stacking.choices,
        required=False,
        default=Stacking.EXCLUSIVE,
        help_text="exclusive: alone on an order; stackable: with other stackable offers; group: within its "
        "stack_group only.",
    )
    stack_group = serializers.SlugField(max_length=50, required=False, allow_blank=True, default="")
    floor_percent = serializers.DecimalField(
        max_digits=5,
        decimal_places=2,
        required=False,
        default=Decimal("0.00"),
        min_value=Decimal("0.00"),
        max_value=Decimal("99.99"),
        help_text="No combination of codes with this offer takes an order below this percent of its value.",
    )
    pacing = serializers.ChoiceField(
        choices=Pacing.choices,
        required=False,
        default=Pacing.NONE,
        help_text="Spread the budget over the days from valid_from to valid_until: even, or front (more on the "
        "first days). Claims beyond the day's allowance are refused with PACED; what a day leaves rolls over.",
    )
    abuse_threshold = serializers.DecimalField(
        max_digits=4,
        decimal_places=3,
        required=False,
        allow_null=True,
        default=DEFAULT_ABUSE_THRESHOLD,
        min_value=Decimal("0.001"),
        max_value=Decimal("1.000"),
        help_text="People whose promotion-abuse score is at least this are refused (ABUSE_SUSPECTED); null admits "
        "everyone.",
    )
    state = serializers.ChoiceField(
        choices=[RuleState.DRAFT, RuleState.ACTIVE], required=False, default=RuleState.ACTIVE
    )

    def validate(self, attrs):
        # The model's own rules, so the admin form and the API refuse the same things the same way.
        probe = CouponRule(**{k: v for k, v in attrs.items() if v is not None})
        try:
            probe.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return attrs


class CouponRuleOutput(serializers.ModelSerializer):
    # Plain strings here: the input documents the choices, and one enum shared by two components
    # gets a hashed name in the schema.
    kind = serializers.CharField(read_only=True, help_text="fixed, percent or threshold")
    stacking = serializers.CharField(read_only=True, help_text="exclusive, stackable or group")
    stack_group = serializers.CharField(read_only=True, help_text="The group of a `group` rule; empty otherwise.")
    pacing = serializers.CharField(read_only=True, help_text="none, even or front")
    remaining = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True, read_only=True)

    class Meta:
        model = CouponRule
        fields = ["id", *RULE_FIELDS, "issued_count", "redeemed_count", "committed", "spent", "remaining", "created_at"]
        read_only_fields = fields


class CouponTierRateOutput(serializers.Serializer):
    tier = serializers.CharField(allow_null=True, help_text="Tier slug of the holders now; null: none.")
    issued = serializers.IntegerField()
    redeemed = serializers.IntegerField()
    redemption_rate = serializers.FloatField(allow_null=True)


class CouponIncrementalNumbersOutput(serializers.Serializer):
    treated = serializers.IntegerField(help_text="People given the coupon's variant.")
    holdout = serializers.IntegerField(help_text="People held out (sent nothing).")
    orders = serializers.FloatField(help_text="Orders the coupon added: treated minus holdout scaled to size.")
    orders_ci_low = serializers.FloatField()
    orders_ci_high = serializers.FloatField()
    revenue = serializers.DecimalField(max_digits=16, decimal_places=2, help_text="Revenue the coupon added.")
    revenue_ci_low = serializers.DecimalField(max_digits=16, decimal_places=2)
    revenue_ci_high = serializers.DecimalField(max_digits=16, decimal_places=2)
    margin = serializers.DecimalField(
        max_digits=16, decimal_places=2, help_text="Margin the coupon added (revenue x the campaign's margin %)."
    )
    margin_ci_low = serializers.DecimalField(max_digits=16, decimal_places=2)
    margin_ci_high = serializers.DecimalField(max_digits=16, decimal_places=2)
    cost = serializers.DecimalField(
        max_digits=16, decimal_places=2, help_text="Discounts the treated redeemed in their windows."
    )
    cost_ci_low = serializers.DecimalField(max_digits=16, decimal_places=2)
    cost_ci_high = serializers.DecimalField(max_digits=16, decimal_places=2)
    roi = serializers.FloatField(allow_null=True, help_text="(margin - cost) / cost; null when nothing spent.")
    roi_ci_low = serializers.FloatField(allow_null=True, help_text="95 % interval of the ROI: low end.")
    roi_ci_high = serializers.FloatField(allow_null=True, help_text="95 % interval of the ROI: high end.")


class CouponIncrementalCampaignOutput(CouponIncrementalNumbersOutput):
    campaign = serializers.IntegerField()
    campaign_name = serializers.CharField()


class CouponIncrementalTierOutput(CouponIncrementalNumbersOutput):
    tier = serializers.CharField(allow_null=True, help_text="The person's value tier now; null: none.")


class CouponIncrementalOutput(CouponIncrementalNumbersOutput):
    """What the coupon added against the holdouts of the campaigns that gave it (95 % intervals by
    the delta method), over all of them, and per campaign and per tier."""

    by_campaign = CouponIncrementalCampaignOutput(many=True)
    by_tier = CouponIncrementalTierOutput(many=True)


class CouponQiniPointOutput(serializers.Serializer):
    share = serializers.FloatField(help_text="Share of people targeted, highest predicted uplift first.")
    gain = serializers.FloatField(help_text="Margin added among them (treated minus held out, scaled).")
    random = serializers.FloatField(help_text="What targeting that share at random would add.")


class CouponUpliftDecileOutput(serializers.Serializer):
    decile = serializers.IntegerField(help_text="1: the tenth with the highest predicted uplift.")
    people = serializers.IntegerField()
    predicted = serializers.FloatField(allow_null=True, help_text="Mean predicted uplift (margin).")
    observed = serializers.FloatField(allow_null=True, help_text="Mean margin treated minus held out.")
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)


class CouponUpliftOutput(serializers.Serializer):
    """Who the coupon persuades: the last fit of its two-model uplift learner, with out-of-fold
    evidence (each person scored by models that never saw them)."""

    status = serializers.CharField(help_text="running, done or failed")
    error = serializers.CharField(help_text="Why the last fit failed; empty otherwise.")
    fitted_at = serializers.DateTimeField(allow_null=True)
    trained_on = serializers.IntegerField(help_text="Campaign members (treated and held out) it learned from.")
    scored = serializers.IntegerField(help_text="People given a predicted uplift.")
    qini = CouponQiniPointOutput(many=True)
    qini_coefficient = serializers.FloatField(allow_null=True, help_text="Area above random targeting, per person.")
    deciles = CouponUpliftDecileOutput(many=True)


class CouponReportOutput(serializers.Serializer):
    issued = serializers.IntegerField()
    redeemed = serializers.IntegerField()
    unused = serializers.IntegerField(help_text="Issued, not redeemed and not expired.")
    expired = serializers.IntegerField()
    revoked = serializers.IntegerField()
    budget = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    committed = serializers.DecimalField(
        max_digits=14, decimal_places=2, help_text="The most the unredeemed live coupons could still cost."
    )
    spent = serializers.DecimalField(max_digits=14, decimal_places=2, help_text="Discounts actually given.")
    remaining = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    order_revenue = serializers.DecimalField(max_digits=16, decimal_places=2)
    roi = serializers.FloatField(
        allow_null=True,
        help_text="Attributed ROI: (order_revenue - spent) / spent, crediting every order that used a coupon to "
        "it (overstates: many would have bought anyway; see `incremental`). Null when nothing spent.",
    )
    redemption_rate = serializers.FloatField(allow_null=True)
    by_tier = CouponTierRateOutput(many=True)
    incremental = CouponIncrementalOutput(
        allow_null=True,
        required=False,
        help_text="What the coupon added against campaign holdouts; null when the rule never went out through a "
        "campaign with a holdout (and absent from the source-prefix report).",
    )
    uplift = CouponUpliftOutput(
        allow_null=True, required=False, help_text="The rule's uplift model; null when never fitted."
    )


# --- coupons -----------------------------------------------------------------------------------


class CouponClaimInput(serializers.Serializer):
    user_id = UserIdField()
    request_id = serializers.CharField(
        max_length=128, required=False, allow_null=True, help_text="Replaying it returns the same coupon (200)."
    )


def shown_code(coupon: Coupon, *, bearer_codes: bool) -> str:
    """The code as a caller may see it: a partner's bearer code (no holder: spendable by whoever
    reads it) only masked unless `bearer_codes`, as in the admin (`coupons.export_codebatch`)."""
    if coupon.profile_id is None and not bearer_codes:
        return codes.mask_code(codes.display(coupon.code))
    return coupon.code


class CouponOutput(serializers.ModelSerializer):
    display_code = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    rule_name = serializers.CharField(source="rule.name", read_only=True)

    class Meta:
        model = Coupon
        fields = [
            "code",
            "display_code",
            "rule",
            "rule_name",
            "starts_at",
            "expires_at",
            "status",
            "issued_at",
            "source",
            "source_ref",
        ]
        read_only_fields = fields

    def get_display_code(self, coupon: Coupon) -> str:
        return codes.display(coupon.code)

    def get_status(self, coupon: Coupon) -> str:
        return shown_status(coupon)

    def to_representation(self, coupon: Coupon) -> dict:
        # Every claim answers with this: built directly instead of through the fields that a
        # ModelSerializer derives from the model again for each instance. Same output (tested).
        show = _DATETIME.to_representation
        return {
            "code": coupon.code,
            "display_code": codes.display(coupon.code),
            "rule": coupon.rule_id,
            "rule_name": coupon.rule.name,
            "starts_at": show(coupon.starts_at),
            "expires_at": show(coupon.expires_at),
            "status": shown_status(coupon),
            "issued_at": show(coupon.issued_at),
            "source": coupon.source,
            "source_ref": coupon.source_ref,
        }


class ProfileCouponsQuery(serializers.Serializer):
    status = serializers.ChoiceField(choices=PROFILE_STATUSES, required=False)


class SourceReportQuery(serializers.Serializer):
    # CharField refuses NUL characters, which PostgreSQL's text cannot hold.
    source_ref_prefix = serializers.CharField(max_length=200)


class CouponValidateInput(serializers.Serializer):
    code = serializers.CharField(max_length=64, required=False, help_text="One code; or give `codes`.")
    codes = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        min_length=1,
        max_length=MAX_CODES,
        help_text="Several codes for one order (instead of `code`): the answer says which apply, in order, "
        "each with its discount, and why the others do not.",
    )
    user_id = UserIdField()
    order_amount = money(max_value=MAX_ORDER_AMOUNT)

    def validate(self, attrs):
        if ("code" in attrs) == ("codes" in attrs):
            raise serializers.ValidationError({"code": "Give either `code` or `codes`."})
        return attrs


class CouponValidateOutput(serializers.Serializer):
    valid = serializers.BooleanField()
    discount = serializers.DecimalField(max_digits=14, decimal_places=2, required=False)
    final_amount = serializers.DecimalField(max_digits=14, decimal_places=2, required=False)
    reason = serializers.CharField(required=False, help_text="Why not, when `valid` is false.")
    detail = serializers.CharField(required=False)


class CouponRedeemInput(CouponValidateInput):
    order_id = serializers.CharField(max_length=128)


class CouponRedemptionOutput(serializers.ModelSerializer):
    redemption_id = serializers.IntegerField(source="id")
    code = serializers.CharField(source="coupon.code")
    final_amount = serializers.DecimalField(max_digits=14, decimal_places=2, read_only=True)

    class Meta:
        model = Redemption
        fields = [
            "redemption_id",
            "code",
            "order_id",
            "order_amount",
            "discount",
            "final_amount",
            "redeemed_at",
            "rolled_back_at",
            "coupon_returned",
        ]
        read_only_fields = fields

    def to_representation(self, redemption: Redemption) -> dict:
        # Every redemption answers with this: built directly, as `CouponOutput` is (tested).
        show, money = _DATETIME.to_representation, _MONEY.to_representation
        return {
            "redemption_id": redemption.pk,
            "code": shown_code(redemption.coupon, bearer_codes=self.context.get("bearer_codes", True)),
            "order_id": redemption.order_id,
            "order_amount": money(redemption.order_amount),
            "discount": money(redemption.discount),
            "final_amount": money(redemption.final_amount),
            "redeemed_at": show(redemption.redeemed_at),
            "rolled_back_at": show(redemption.rolled_back_at),
            "coupon_returned": redemption.coupon_returned,
        }


class StackAppliedOutput(serializers.Serializer):
    code = serializers.CharField()
    rule = serializers.IntegerField(help_text="The offer's rule id.")
    discount = serializers.DecimalField(max_digits=14, decimal_places=2, help_text="This code's part.")
    redemption_id = serializers.IntegerField(required=False, help_text="Redeem only.")


class StackRefusedOutput(serializers.Serializer):
    code = serializers.CharField()
    reason = serializers.CharField(
        help_text="The code's own refusal (COUPON_EXPIRED ...) or the stacking's: DUPLICATE_CODE, SAME_OFFER, "
        "NOT_STACKABLE, FLOOR_REACHED, NOTHING_OFF."
    )
    detail = serializers.CharField()


class CouponStackOutput(serializers.Serializer):
    """The answer to `codes`: validate and redeem alike (redeem adds `order_id` and the ids)."""

    valid = serializers.BooleanField(help_text="At least one code applies.")
    order_id = serializers.CharField(required=False, help_text="Redeem only.")
    applied = StackAppliedOutput(many=True, help_text="In the order they were applied (priority, rule, code).")
    refused = StackRefusedOutput(many=True)
    discount = serializers.DecimalField(max_digits=14, decimal_places=2, help_text="Sum of the applied parts.")
    final_amount = serializers.DecimalField(max_digits=14, decimal_places=2)


def stack_body(quote, *, order_id: str | None = None) -> dict:
    result = quote.stack
    ids = [r.pk for r in quote.redemptions]
    applied = []
    for i, a in enumerate(result.applied):
        row = {"code": a.offer.code, "rule": a.offer.rule_id, "discount": a.discount}
        if ids:
            row["redemption_id"] = ids[i]
        applied.append(row)
    body = {
        "valid": bool(result.applied),
        "applied": applied,
        "refused": [{"code": r.code, "reason": r.reason, "detail": r.detail} for r in result.refused],
        "discount": result.discount,
        "final_amount": result.final_amount,
    }
    if order_id is not None:
        body["order_id"] = order_id
    return body


class CouponRollbackInput(serializers.Serializer):
    order_id = serializers.CharField(max_length=128)


class CouponRollbackOutput(serializers.Serializer):
    order_id = serializers.CharField()
    returned = serializers.DecimalField(
        max_digits=14, decimal_places=2, help_text="Discounts given back to the budget by this call."
    )
    redemptions = CouponRedemptionOutput(many=True)


# --- bulk --------------------------------------------------------------------------------------


class IssuanceJobInput(serializers.Serializer):
    user_ids = serializers.ListField(child=UserIdField(), required=False, max_length=1_000_000)
    segment = IdField(required=False, exists=segment_exists, what="segment")
    source_ref = serializers.CharField(required=False, allow_blank=True, max_length=200)

    def validate(self, attrs):
        if bool(attrs.get("user_ids")) == ("segment" in attrs):
            raise serializers.ValidationError({"non_field_errors": ["Give either user_ids (non-empty) or segment."]})
        return attrs


class IssuanceJobOutput(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True, help_text="pending, running, done or failed")
    error = serializers.CharField(read_only=True, help_text="Why a failed job stopped (exception and message)")
    progress = serializers.FloatField(read_only=True)
    segment = serializers.IntegerField(source="segment_id", allow_null=True)

    class Meta:
        model = IssuanceJob
        fields = [
            "id",
            "rule",
            "segment",
            "source_ref",
            "status",
            "total",
            "processed",
            "issued",
            "refused",
            "refusals",
            "progress",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class OrderRefundsQuery(serializers.Serializer):
    status = serializers.ChoiceField(choices=OrderRefund.Status.values, required=False)
    # CharField refuses NUL characters, which PostgreSQL's text cannot hold.
    order_id = serializers.CharField(max_length=128, required=False)


class OrderRefundOutput(serializers.ModelSerializer):
    # Plain strings: an enum component per model `status` would collide with the others' names.
    status = serializers.CharField(
        read_only=True, help_text="pending (recorded, not applied yet), applied, or failed (see error)"
    )
    outcome = serializers.CharField(
        read_only=True, allow_null=True, help_text="Once applied: rolled_back (full refund) or partial; else null"
    )
    amount = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        read_only=True,
        allow_null=True,
        help_text="Money returned to the customer, at most the order's; null: the whole order",
    )
    error = serializers.CharField(read_only=True, help_text="Why the last attempt failed (exception and message)")

    class Meta:
        model = OrderRefund
        fields = [
            "id",
            "event_id",
            "order_id",
            "amount",
            "status",
            "outcome",
            "error",
            "attempts",
            "created_at",
            "applied_at",
            "failed_at",
        ]
        read_only_fields = fields


class CodeBatchInput(serializers.Serializer):
    quantity = serializers.IntegerField(min_value=1, max_value=10_000_000)
    partner = serializers.CharField(required=False, allow_blank=True, max_length=200)


class CodeBatchOutput(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True, help_text="pending, running, done or failed")
    error = serializers.CharField(read_only=True, help_text="Why a failed batch stopped")

    class Meta:
        model = CodeBatch
        fields = ["id", "rule", "partner", "quantity", "generated", "status", "error", "created_at", "finished_at"]
        read_only_fields = fields


# --- channel quality ----------------------------------------------------------------------------

CHANNEL_WINDOW_MAX_DAYS = 366


class ChannelQualityQuery(serializers.Serializer):
    start = serializers.DateField(help_text="First signup day (UTC), e.g. 2026-01-01.")
    end = serializers.DateField(help_text="Last signup day (UTC), inclusive.")

    def validate(self, data):
        if data["end"] < data["start"]:
            raise serializers.ValidationError({"end": ["Must be on or after start."]})
        if (data["end"] - data["start"]).days >= CHANNEL_WINDOW_MAX_DAYS:
            raise serializers.ValidationError({"end": [f"A window of at most {CHANNEL_WINDOW_MAX_DAYS} days."]})
        if not MIN_YEAR <= data["start"].year <= MAX_YEAR or not MIN_YEAR <= data["end"].year <= MAX_YEAR:
            raise serializers.ValidationError({"start": [f"Between the years {MIN_YEAR} and {MAX_YEAR}."]})
        return data


class ChannelQualityRowOutput(serializers.Serializer):
    source = serializers.CharField(help_text="First-touch utm_source; `(direct)` when the first event had none.")
    new_users = serializers.IntegerField()
    converted = serializers.IntegerField(help_text="New users with an order_paid since joining.")
    conversion_rate = serializers.FloatField(allow_null=True)
    retention_base = serializers.IntegerField(help_text="New users whose day 7 is complete.")
    retained = serializers.IntegerField(help_text="Of those, active on their 7th day after joining.")
    retention_d7 = serializers.FloatField(allow_null=True)
    coupon_cost = serializers.DecimalField(max_digits=16, decimal_places=2)
    coupon_cost_per_converted = serializers.DecimalField(max_digits=16, decimal_places=2, allow_null=True)
    revenue = serializers.DecimalField(max_digits=16, decimal_places=2)
    revenue_per_new_user = serializers.DecimalField(max_digits=16, decimal_places=2, allow_null=True)


class ChannelQualityOutput(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    channels = ChannelQualityRowOutput(many=True)
