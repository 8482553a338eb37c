"""The coupons REST API: thin views that parse, call one service or selector, and render."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from access.models import ApiKey
from access.permissions import HasScope
from config.api import id_from_path, object_or_404, request_actor
from config.views import JsonView
from coupons import errors, selectors, services
from coupons.models import BEARER_CODES_PERMISSION, CodeBatch, CouponRule, IssuanceJob, OrderRefund, RuleState
from coupons.serializers import (
    ChannelQualityOutput,
    ChannelQualityQuery,
    CodeBatchInput,
    CodeBatchOutput,
    CouponClaimInput,
    CouponErrorOutput,
    CouponOutput,
    CouponRedeemInput,
    CouponRedemptionOutput,
    CouponReportOutput,
    CouponRollbackInput,
    CouponRollbackOutput,
    CouponRuleInput,
    CouponRuleOutput,
    CouponStackOutput,
    CouponValidateInput,
    CouponValidateOutput,
    IssuanceJobInput,
    IssuanceJobOutput,
    OrderRefundOutput,
    OrderRefundsQuery,
    ProfileCouponsQuery,
    SourceReportQuery,
    stack_body,
)
from profiles.selectors import profile_for_user_id

BAD_INPUT = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: the offending fields and why.")
NO_KEY = OpenApiResponse(OpenApiTypes.OBJECT, description="No valid credentials.")
NO_SCOPE = OpenApiResponse(OpenApiTypes.OBJECT, description="The key lacks the scope.")
CONFLICT = OpenApiResponse(CouponErrorOutput, description="Conflicts with the current state; `reason` says which.")
REFUSED = OpenApiResponse(CouponErrorOutput, description="Refused by the rules; `reason` says why.")


def not_found(what: str) -> OpenApiResponse:
    return OpenApiResponse(OpenApiTypes.OBJECT, description=f"Unknown {what} (`reason` says which).")


def path_id(name: str) -> OpenApiParameter:
    return OpenApiParameter(name, int, OpenApiParameter.PATH, description="Integer id.")


def may_see_bearer_codes(request: Request) -> bool:
    """Partner bearer codes whole: staff sessions with `coupons.export_codebatch` (the admin's rule);
    no key scope carries it."""
    if isinstance(request.auth, ApiKey):
        return False
    user = request.user
    return bool(user and user.is_authenticated and user.is_staff and user.has_perm(BEARER_CODES_PERMISSION))


def _rule(rule_id: str | int) -> CouponRule:
    return object_or_404(CouponRule.objects.all(), rule_id, errors.RuleNotFound, "coupon rule")


# --- coupons:redeem ----------------------------------------------------------------------------


class ClaimView(JsonView):
    permission_classes = [HasScope("coupons:redeem")]

    @extend_schema(
        parameters=[path_id("rule_id")],
        operation_id="coupon_rule_claim",
        request=CouponClaimInput,
        responses={
            201: CouponOutput,
            200: OpenApiResponse(CouponOutput, description="A replayed `request_id`: the same coupon."),
            400: BAD_INPUT,
            401: NO_KEY,
            403: NO_SCOPE,
            404: not_found("rule"),
            409: CONFLICT,
            422: REFUSED,
        },
        summary="Issue one coupon of the rule to a user (idempotent by request_id).",
    )
    def post(self, request: Request, rule_id: str) -> Response:
        data = CouponClaimInput(data=request.data)
        data.is_valid(raise_exception=True)
        coupon = services.claim_coupon(
            rule_id=id_from_path(rule_id, errors.RuleNotFound, "coupon rule"), **data.validated_data
        )
        code = status.HTTP_201_CREATED if coupon.created else status.HTTP_200_OK
        return Response(CouponOutput(coupon).data, status=code)


class ValidateView(JsonView):
    permission_classes = [HasScope("coupons:redeem")]

    @extend_schema(
        operation_id="coupon_validate",
        request=CouponValidateInput,
        responses={
            200: OpenApiResponse(
                PolymorphicProxySerializer(
                    component_name="CouponValidateAnswer",
                    serializers=[CouponValidateOutput, CouponStackOutput],
                    resource_type_field_name=None,
                ),
                description="For `code`: valid, discount, final_amount (or reason). For `codes`: applied, refused, "
                "discount, final_amount.",
            ),
            400: BAD_INPUT,
            401: NO_KEY,
            403: NO_SCOPE,
            404: not_found("code"),
            422: REFUSED,
        },
        summary="Would the code take money off this order, and how much (or why not)?",
    )
    def post(self, request: Request) -> Response:
        data = CouponValidateInput(data=request.data)
        data.is_valid(raise_exception=True)
        if "codes" in data.validated_data:
            return Response(CouponStackOutput(stack_body(services.validate_codes(**data.validated_data))).data)
        quote = services.validate_coupon(**data.validated_data)
        if not quote.valid:
            body = {"valid": False, "reason": quote.refusal.reason, "detail": quote.refusal.detail}
        else:
            body = {"valid": True, "discount": quote.discount, "final_amount": quote.final_amount}
        return Response(CouponValidateOutput(body).data)


class RedeemView(JsonView):
    permission_classes = [HasScope("coupons:redeem")]

    @extend_schema(
        operation_id="coupon_redeem",
        request=CouponRedeemInput,
        responses={
            200: OpenApiResponse(
                PolymorphicProxySerializer(
                    component_name="CouponRedeemAnswer",
                    serializers=[CouponRedemptionOutput, CouponStackOutput],
                    resource_type_field_name=None,
                ),
                description="For `code`: the redemption. For `codes`: applied (each with its redemption_id), "
                "refused, discount, final_amount.",
            ),
            400: BAD_INPUT,
            401: NO_KEY,
            403: NO_SCOPE,
            404: not_found("code"),
            409: CONFLICT,
            422: REFUSED,
        },
        summary="Use a code for an order; the same code and order again returns the same redemption.",
    )
    def post(self, request: Request) -> Response:
        data = CouponRedeemInput(data=request.data)
        data.is_valid(raise_exception=True)
        if "codes" in data.validated_data:
            quote = services.redeem_codes(**data.validated_data)
            return Response(CouponStackOutput(stack_body(quote, order_id=data.validated_data["order_id"])).data)
        redemption = services.redeem_coupon(**data.validated_data)
        return Response(CouponRedemptionOutput(redemption).data)


class RollbackView(JsonView):
    permission_classes = [HasScope("coupons:redeem")]

    @extend_schema(
        operation_id="coupon_rollback",
        request=CouponRollbackInput,
        responses={200: CouponRollbackOutput, 400: BAD_INPUT, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("order")},
        summary="Undo an order's redemption (cancelled or refunded); the money returns to the budget.",
    )
    def post(self, request: Request) -> Response:
        data = CouponRollbackInput(data=request.data)
        data.is_valid(raise_exception=True)
        order_id = data.validated_data["order_id"]
        redemptions = services.rollback_order(order_id=order_id)
        returned = sum((r.discount for r in redemptions if r.created), Decimal("0.00"))
        # Named by the order alone, the answer would hand back a bearer code the rollback has just
        # made spendable again: masked, unless a staff member may see bearer codes.
        body = {"order_id": order_id, "returned": returned, "redemptions": redemptions}
        return Response(CouponRollbackOutput(body, context={"bearer_codes": may_see_bearer_codes(request)}).data)


# --- profiles:read -----------------------------------------------------------------------------


class ProfileCouponsView(ListAPIView):
    permission_classes = [HasScope("profiles:read")]
    serializer_class = CouponOutput
    filter_backends: list = []

    @extend_schema(
        operation_id="profile_coupons",
        parameters=[
            OpenApiParameter("status", str, enum=["available", "redeemed", "expired"], required=False),
        ],
        responses={
            200: CouponOutput(many=True),
            400: BAD_INPUT,
            401: NO_KEY,
            403: NO_SCOPE,
            404: not_found("user or page"),
        },
        summary="A user's coupons, newest first.",
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        query = ProfileCouponsQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        user_id = self.kwargs["user_id"]
        # A user id PostgreSQL cannot even hold (NUL, too long) names nobody.
        profile = None if "\x00" in user_id or len(user_id) > 128 else profile_for_user_id(user_id)
        if profile is None:
            raise errors.UserNotFound(f"No user {self.kwargs['user_id']!r}.")
        return selectors.coupons_for_profile(profile=profile, status=query.validated_data.get("status"))


# --- manage ------------------------------------------------------------------------------------


class RuleListView(ListAPIView, JsonView):
    permission_classes = [HasScope("manage")]
    serializer_class = CouponRuleOutput
    filter_backends: list = []

    def get_queryset(self):
        queryset = CouponRule.objects.order_by("-id")
        state = self.request.query_params.get("state")
        if state in RuleState.values:
            queryset = queryset.filter(state=state)
        return queryset

    @extend_schema(
        operation_id="coupon_rules_list",
        parameters=[OpenApiParameter("state", str, enum=RuleState.values, required=False)],
        responses={200: CouponRuleOutput(many=True), 401: NO_KEY, 403: NO_SCOPE, 404: not_found("page")},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="coupon_rules_create",
        request=CouponRuleInput,
        responses={201: CouponRuleOutput, 400: BAD_INPUT, 401: NO_KEY, 403: NO_SCOPE},
        summary="Create a rule (active unless state is draft).",
    )
    def post(self, request: Request) -> Response:
        data = CouponRuleInput(data=request.data)
        data.is_valid(raise_exception=True)
        rule = services.create_rule(**data.validated_data, **request_actor(request))
        return Response(CouponRuleOutput(rule).data, status=status.HTTP_201_CREATED)


class RuleDetailView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("rule_id")],
        operation_id="coupon_rule_detail",
        responses={200: CouponRuleOutput, 404: not_found("rule")},
    )
    def get(self, request: Request, rule_id: str) -> Response:
        return Response(CouponRuleOutput(_rule(rule_id)).data)


class RuleStateView(JsonView):
    permission_classes = [HasScope("manage")]
    target_state: str = ""

    @extend_schema(
        parameters=[path_id("rule_id")],
        request=None,
        responses={200: CouponRuleOutput, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("rule"), 409: CONFLICT},
    )
    def post(self, request: Request, rule_id: str) -> Response:
        actor = request_actor(request)
        rule = services.change_rule_state(
            rule=_rule(rule_id), state=self.target_state, actor=actor["created_by"], api_key=actor["api_key"]
        )
        return Response(CouponRuleOutput(rule).data)


class RuleReportView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("rule_id")],
        operation_id="coupon_rule_report",
        responses={200: CouponReportOutput, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("rule")},
        summary="Issued, redeemed, unused, expired; budget, committed, spent, remaining; revenue and ROI.",
    )
    def get(self, request: Request, rule_id: str) -> Response:
        return Response(CouponReportOutput(selectors.rule_report(rule=_rule(rule_id)).as_dict()).data)


class SourceReportView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        operation_id="coupon_source_report",
        parameters=[
            OpenApiParameter(
                "source_ref_prefix",
                str,
                required=True,
                description="e.g. `campaign:12:` for every coupon a campaign issued.",
            )
        ],
        responses={200: CouponReportOutput, 400: BAD_INPUT, 401: NO_KEY, 403: NO_SCOPE},
        summary="The same report over the coupons whose source_ref starts with a prefix (a campaign).",
    )
    def get(self, request: Request) -> Response:
        query = SourceReportQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        prefix = query.validated_data["source_ref_prefix"]
        return Response(CouponReportOutput(selectors.campaign_report(source_ref_prefix=prefix).as_dict()).data)


class IssuanceJobCreateView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("rule_id")],
        operation_id="coupon_issuance_job_create",
        request=IssuanceJobInput,
        responses={
            202: IssuanceJobOutput,
            400: BAD_INPUT,
            401: NO_KEY,
            403: NO_SCOPE,
            404: not_found("rule"),
            422: REFUSED,
        },
        summary="Issue one coupon of the rule to each listed user (or a segment's members) in the background.",
    )
    def post(self, request: Request, rule_id: str) -> Response:
        rule = _rule(rule_id)
        data = IssuanceJobInput(data=request.data)
        data.is_valid(raise_exception=True)
        job = services.create_issuance_job(
            rule=rule,
            user_ids=data.validated_data.get("user_ids"),
            segment_id=data.validated_data.get("segment"),
            source_ref=data.validated_data.get("source_ref", ""),
            **request_actor(request),
        )
        return Response(IssuanceJobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class IssuanceJobDetailView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("job_id")],
        operation_id="coupon_issuance_job_detail",
        responses={200: IssuanceJobOutput, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("job")},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = object_or_404(IssuanceJob.objects.all(), job_id, errors.JobNotFound, "issuance job")
        return Response(IssuanceJobOutput(job).data)


class IssuanceJobRetryView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("job_id")],
        operation_id="coupon_issuance_job_retry",
        request=None,
        responses={202: IssuanceJobOutput, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("job"), 409: CONFLICT},
        summary="Queue a failed job again; it goes on where it stopped (409 NOT_FAILED unless failed).",
    )
    def post(self, request: Request, job_id: str) -> Response:
        actor = request_actor(request)
        job = services.retry_issuance_job(
            job_id=id_from_path(job_id, errors.JobNotFound, "issuance job"),
            actor=actor["created_by"],
            api_key=actor["api_key"],
        )
        return Response(IssuanceJobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class CodeBatchCreateView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("rule_id")],
        operation_id="coupon_code_batch_create",
        request=CodeBatchInput,
        responses={202: CodeBatchOutput, 400: BAD_INPUT, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("rule")},
        summary="Generate bearer codes for a partner in the background (exported as CSV from the admin).",
    )
    def post(self, request: Request, rule_id: str) -> Response:
        rule = _rule(rule_id)
        data = CodeBatchInput(data=request.data)
        data.is_valid(raise_exception=True)
        batch = services.create_code_batch(rule=rule, **request_actor(request), **data.validated_data)
        return Response(CodeBatchOutput(batch).data, status=status.HTTP_202_ACCEPTED)


class CodeBatchDetailView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("batch_id")],
        operation_id="coupon_code_batch_detail",
        responses={200: CodeBatchOutput, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("batch")},
    )
    def get(self, request: Request, batch_id: str) -> Response:
        batch = object_or_404(CodeBatch.objects.all(), batch_id, errors.BatchNotFound, "code batch")
        return Response(CodeBatchOutput(batch).data)


class CodeBatchRetryView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("batch_id")],
        operation_id="coupon_code_batch_retry",
        request=None,
        responses={202: CodeBatchOutput, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("batch"), 409: CONFLICT},
        summary="Generate a failed batch again, from the start (409 NOT_FAILED unless failed).",
    )
    def post(self, request: Request, batch_id: str) -> Response:
        actor = request_actor(request)
        batch = services.retry_code_batch(
            batch_id=id_from_path(batch_id, errors.BatchNotFound, "code batch"),
            actor=actor["created_by"],
            api_key=actor["api_key"],
        )
        return Response(CodeBatchOutput(batch).data, status=status.HTTP_202_ACCEPTED)


# --- refunds of coupon orders (manage) ----------------------------------------------------------


class RefundListView(ListAPIView, JsonView):
    permission_classes = [HasScope("manage")]
    serializer_class = OrderRefundOutput
    filter_backends: list = []

    def get_queryset(self):
        query = OrderRefundsQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return selectors.order_refunds(**query.validated_data)

    @extend_schema(
        operation_id="coupon_refunds_list",
        parameters=[
            OpenApiParameter("status", str, enum=OrderRefund.Status.values, required=False),
            OpenApiParameter("order_id", str, required=False, description="The refunds of this order only."),
        ],
        responses={
            200: OrderRefundOutput(many=True),
            400: BAD_INPUT,
            401: NO_KEY,
            403: NO_SCOPE,
            404: not_found("page"),
        },
        summary="Refunds of orders that used coupons, newest first, with their state (a failed one with its reason).",
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)


class RefundDetailView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("refund_id")],
        operation_id="coupon_refund_detail",
        responses={200: OrderRefundOutput, 401: NO_KEY, 403: NO_SCOPE, 404: not_found("refund")},
    )
    def get(self, request: Request, refund_id: str) -> Response:
        refund = object_or_404(OrderRefund.objects.all(), refund_id, errors.RefundNotFound, "order refund")
        return Response(OrderRefundOutput(refund).data)


class RefundRetryView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[path_id("refund_id")],
        operation_id="coupon_refund_retry",
        request=None,
        responses={
            200: OrderRefundOutput,
            401: NO_KEY,
            403: NO_SCOPE,
            404: not_found("refund"),
            409: CONFLICT,
        },
        summary="Apply a pending or failed refund now; answers its new state, applied or failed with the new "
        "reason (409 ALREADY_APPLIED once applied, IN_PROGRESS while a worker applies it).",
    )
    def post(self, request: Request, refund_id: str) -> Response:
        actor = request_actor(request)
        refund = services.retry_refund(
            refund_id=id_from_path(refund_id, errors.RefundNotFound, "order refund"),
            actor=actor["created_by"],
            api_key=actor["api_key"],
        )
        return Response(OrderRefundOutput(refund).data)


# --- channel quality (manage) ----------------------------------------------------------------------


class ChannelQualityView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        operation_id="channel_quality",
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATE, required=True, description="First signup day (UTC)."),
            OpenApiParameter("end", OpenApiTypes.DATE, required=True, description="Last signup day (UTC), inclusive."),
        ],
        responses={200: ChannelQualityOutput, 400: BAD_INPUT, 401: NO_KEY, 403: NO_SCOPE},
        summary="Per first-touch utm_source: new users, conversion to a first order, day-7 retention, "
        "coupon cost per converted user and revenue.",
    )
    def get(self, request: Request) -> Response:
        query = ChannelQualityQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = selectors.channel_quality(**query.validated_data)
        return Response(ChannelQualityOutput({**query.validated_data, "channels": [r.as_dict() for r in rows]}).data)
