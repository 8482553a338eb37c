"""Profiles API: identify (the product ties ids to a user), the product's view of a profile, and
the customer-service lookup."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from access.models import ApiKey
from access.permissions import HasScope, StaffWith
from profiles import selectors, services
from profiles.errors import ProfileNotFound
from profiles.models import LookupChannel
from profiles.serializers import IdentifyInput, IdentifyOutput, LookupOutput, ProfileOutput

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
        personal = isinstance(request.auth, ApiKey) or request.user.has_perm("profiles.see_personal_data")
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
