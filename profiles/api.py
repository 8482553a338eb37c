"""Profiles API: identify (the product ties ids to a user), the product's view of a profile, and
the customer-service lookup."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from access.permissions import HasScope, StaffWith
from config.api import id_from_path, object_or_404, request_actor
from profiles import selectors, services
from profiles.errors import ProfileNotFound, TagRuleNotFound
from profiles.models import LookupChannel, TagRule
from profiles.serializers import IdentifyInput, IdentifyOutput, LookupOutput, ProfileOutput, TagRuleRunOutput

BAD_INPUT = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: the offending fields and reasons.")
NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="`{reason, detail}`: no such user.")
UNAUTHENTICATED = OpenApiResponse(OpenApiTypes.OBJECT, description="No valid API key or staff session.")


def forbidden(what: str) -> OpenApiResponse:
    return OpenApiResponse(OpenApiTypes.OBJECT, description=what)


class IdentifyView(APIView):
    permission_classes = [HasScope("events:write")]

    @extend_schema(
        request=IdentifyInput,
        responses={
            200: IdentifyOutput,
            400: BAD_INPUT,
            401: UNAUTHENTICATED,
            403: forbidden("The key lacks `events:write`."),
        },
        summary="Tie identities and traits to a user, merging profiles that shared an identity",
    )
    def post(self, request):
        data = IdentifyInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        traits = values.get("traits") or {"known": {}, "custom": {}}
        result = services.identify(
            user_id=values["user_id"],
            anonymous_id=values.get("anonymous_id") or None,
            identities=[(i["kind"], i["value"]) for i in values.get("identities", [])],
            traits=traits["known"],
            custom_traits=traits["custom"],
        )
        return Response(IdentifyOutput({"user_id": values["user_id"], "merged_profiles": result.merged_profiles}).data)


class ProfileView(APIView):
    permission_classes = [HasScope("profiles:read")]

    @extend_schema(
        responses={
            200: ProfileOutput,
            401: UNAUTHENTICATED,
            403: forbidden("The key lacks `profiles:read`."),
            404: NOT_FOUND,
        },
        summary="A user's traits, tags, value tier, RFM scores and lifecycle stage",
    )
    def get(self, request, user_id: str):
        # The product's servers (API keys) own this data; staff sessions see it as their role allows.
        personal = request_actor(request)["api_key"] is not None or request.user.has_perm("profiles.see_personal_data")
        detail = selectors.profile_detail(user_id, may_see_personal_data=personal)
        if detail is None:
            raise ProfileNotFound(f"No profile for user id '{user_id}'.")
        return Response(ProfileOutput(detail).data)


class SupportLookupView(APIView):
    permission_classes = [StaffWith("profiles.lookup_profile")]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "q",
                str,
                required=True,
                description="User id, phone (any common format), e-mail or any identity value; 2-100 characters.",
            )
        ],
        responses={
            200: LookupOutput,
            400: BAD_INPUT,
            401: UNAUTHENTICATED,
            403: forbidden("API keys, and staff without the customer-service lookup permission."),
        },
        summary="Customer service: find a caller's profile (every call is recorded)",
    )
    def get(self, request):
        outcome = services.lookup_profiles(
            staff=request.user, query=request.query_params.get("q"), channel=LookupChannel.API
        )
        results = [
            selectors.lookup_view(p, may_see_personal_data=outcome.may_see_personal_data) for p in outcome.profiles
        ]
        return Response(LookupOutput({"results": results}).data)


RULE_ID = OpenApiParameter("rule_id", int, OpenApiParameter.PATH, description="Integer id.")
RULE_NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown rule (`reason` TAG_RULE_NOT_FOUND).")


class TagRuleRunView(APIView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[RULE_ID],
        operation_id="tag_rule_run",
        responses={200: TagRuleRunOutput, 404: RULE_NOT_FOUND},
        summary="A tag rule's last recompute: status (done, failed, queued), error, members, time",
    )
    def get(self, request, rule_id: str):
        rule = object_or_404(TagRule.objects.all(), rule_id, TagRuleNotFound, "tag rule")
        return Response(TagRuleRunOutput(rule).data)


class TagRuleRetryView(APIView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[RULE_ID],
        operation_id="tag_rule_retry",
        request=None,
        responses={
            202: TagRuleRunOutput,
            404: RULE_NOT_FOUND,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="Its last run did not fail (`NOT_FAILED`)."),
        },
        summary="Queue the recompute of a rule whose last run failed again",
    )
    def post(self, request, rule_id: str):
        who = request_actor(request)
        rule = services.retry_tag_rule(
            rule_id=id_from_path(rule_id, TagRuleNotFound, "tag rule"), actor=who["created_by"], api_key=who["api_key"]
        )
        return Response(TagRuleRunOutput(rule).data, status=202)
