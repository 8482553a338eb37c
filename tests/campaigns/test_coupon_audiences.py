"""Coupon bulk issuance to a campaigns segment: campaigns tells coupons who is in it."""

import pytest

from coupons import services as coupon_services
from coupons.models import Coupon
from tests.factories.campaigns import SegmentFactory, make_profiles
from tests.factories.coupons import CouponRuleFactory

pytestmark = pytest.mark.django_db


def test_bulk_issuance_to_a_segment_issues_one_coupon_to_each_member_only():
    beijing = make_profiles(3, prefix="bj", city="Beijing")
    make_profiles(2, prefix="sh", city="Shanghai")
    segment = SegmentFactory(definition={"trait": "city", "op": "eq", "value": "Beijing"})
    job = coupon_services.create_issuance_job(rule=CouponRuleFactory(per_user_limit=1), segment_id=segment.pk)
    job = coupon_services.run_issuance_job(job=job)
    holders = set(Coupon.objects.filter(rule=job.rule).values_list("profile_id", flat=True))
    assert holders == {p.pk for p in beijing}
    assert job.issued == 3
