"""Coupons endpoints, included under /api/v1/."""

from django.urls import path

from coupons import api
from coupons.models import RuleState

urlpatterns = [
    path("coupon-rules", api.RuleListView.as_view(), name="coupon-rules"),
    path("coupon-rules/<str:rule_id>", api.RuleDetailView.as_view(), name="coupon-rule"),
    path("coupon-rules/<str:rule_id>/claim", api.ClaimView.as_view(), name="coupon-rule-claim"),
    path(
        "coupon-rules/<str:rule_id>/activate",
        api.RuleStateView.as_view(target_state=RuleState.ACTIVE),
        name="coupon-rule-activate",
    ),
    path(
        "coupon-rules/<str:rule_id>/pause",
        api.RuleStateView.as_view(target_state=RuleState.PAUSED),
        name="coupon-rule-pause",
    ),
    path(
        "coupon-rules/<str:rule_id>/end",
        api.RuleStateView.as_view(target_state=RuleState.ENDED),
        name="coupon-rule-end",
    ),
    path("coupon-rules/<str:rule_id>/report", api.RuleReportView.as_view(), name="coupon-rule-report"),
    path("coupon-rules/<str:rule_id>/issuance-jobs", api.IssuanceJobCreateView.as_view(), name="coupon-issuance-jobs"),
    path("coupon-rules/<str:rule_id>/code-batches", api.CodeBatchCreateView.as_view(), name="coupon-code-batches"),
    path("coupon-issuance-jobs/<str:job_id>", api.IssuanceJobDetailView.as_view(), name="coupon-issuance-job"),
    path("coupon-code-batches/<str:batch_id>", api.CodeBatchDetailView.as_view(), name="coupon-code-batch"),
    path(
        "coupon-issuance-jobs/<str:job_id>/retry", api.IssuanceJobRetryView.as_view(), name="coupon-issuance-job-retry"
    ),
    path("coupon-code-batches/<str:batch_id>/retry", api.CodeBatchRetryView.as_view(), name="coupon-code-batch-retry"),
    path("coupon-refunds", api.RefundListView.as_view(), name="coupon-refunds"),
    path("coupon-refunds/<str:refund_id>", api.RefundDetailView.as_view(), name="coupon-refund"),
    path("coupon-refunds/<str:refund_id>/retry", api.RefundRetryView.as_view(), name="coupon-refund-retry"),
    path("coupon-reports", api.SourceReportView.as_view(), name="coupon-source-report"),
    path("coupons/validate", api.ValidateView.as_view(), name="coupon-validate"),
    path("coupons/redeem", api.RedeemView.as_view(), name="coupon-redeem"),
    path("coupons/rollback", api.RollbackView.as_view(), name="coupon-rollback"),
    path("profiles/<str:user_id>/coupons", api.ProfileCouponsView.as_view(), name="profile-coupons"),
]

# --- channel quality ---
urlpatterns += [
    path("channel-quality", api.ChannelQualityView.as_view(), name="channel-quality"),
]
