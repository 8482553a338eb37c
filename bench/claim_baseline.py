"""The WSGI application of `bench/coupons.py`: opsloop as it is, plus one minimal DRF view that
does what a claim cannot do less than (one conditional UPDATE on one hot row), so that the claim
endpoint is compared with the least a DRF endpoint in the same gunicorn costs.

    gunicorn --pythonpath bench claim_baseline:application

The view authenticates and checks the scope as the claim does (the project's DRF defaults and
`HasScope("coupons:redeem")`), parses a JSON body and answers JSON; it runs
`bench/coupons.py`'s ceiling statement on `bench_ceiling`, which the bench creates.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()  # sets Django up: the imports below need it

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.urls import include, path  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from access.permissions import HasScope  # noqa: E402

BASELINE_SQL = (
    "UPDATE bench_ceiling SET committed = committed + 1 WHERE id = 1 AND committed + spent + 1 <= budget "
    "RETURNING committed"
)


class BaselineClaimView(APIView):
    permission_classes = [HasScope("coupons:redeem")]

    def post(self, request: Request) -> Response:
        user_id = request.data.get("user_id")
        with connection.cursor() as cursor:
            cursor.execute(BASELINE_SQL)
            row = cursor.fetchone()
        if row is None:
            return Response({"reason": "BUDGET_EXHAUSTED", "user_id": user_id}, status=409)
        return Response({"user_id": user_id, "committed": str(row[0])}, status=201)


urlpatterns = [
    path("bench/claim-baseline", BaselineClaimView.as_view()),
    path("", include("config.urls")),
]

# The same site with one view more, set before any request is served.
settings.ROOT_URLCONF = "claim_baseline"
