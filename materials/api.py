"""REST endpoints of the material library (scope `manage`; approval by an Operations lead's
staff session only)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from access.models import ApiKey
from access.permissions import HasScope, StaffWith, has_scope
from config.api import JsonParser, object_or_404, request_actor
from config.views import JsonView
from materials import errors, selectors, services
from materials import serializers as s
from materials.models import Material, MaterialVersion
from profiles.models import LookupChannel, Profile
from profiles.services import record_profile_access

BAD_REQUEST = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: fields and reasons")
INVALID_TEMPLATE = OpenApiResponse(
    s.InvalidTemplateOutput, description="Invalid input, or INVALID_TEMPLATE with each problem's field and line"
)
NOT_FOUND = OpenApiResponse(s.MaterialErrorOutput, description="Unknown object")
PAGE_NOT_FOUND = OpenApiResponse(OpenApiTypes.OBJECT, description="No such page")
FROZEN = OpenApiResponse(s.MaterialErrorOutput, description="VERSION_APPROVED: an approved version is frozen")
PK = OpenApiParameter("pk", int, OpenApiParameter.PATH, description="Integer id.")


def _material(pk: str | int) -> Material:
    return object_or_404(selectors.materials(include_archived=True), pk, errors.MaterialNotFound, "material")


def _version(pk: str | int) -> MaterialVersion:
    versions = MaterialVersion.objects.select_related("material", "created_by", "approved_by")
    return object_or_404(versions, pk, errors.VersionNotFound, "material version")


def _detail(pk: int) -> dict:
    material = (
        selectors.materials(include_archived=True)
        .prefetch_related("versions__created_by", "versions__approved_by")
        .get(pk=pk)
    )
    return s.MaterialDetailOutput(material).data


class MaterialListView(generics.ListAPIView):
    permission_classes = [HasScope("manage")]
    parser_classes = [JsonParser]
    serializer_class = s.MaterialOutput

    def get_queryset(self):
        q = self.request.query_params
        return selectors.materials(
            channel=q.get("channel", ""),
            tag=q.get("tag", ""),
            search=q.get("search", ""),
            include_archived=q.get("archived") in ("1", "true"),
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("channel", str, description="push, sms, email or webhook"),
            OpenApiParameter("tag", str, description="Materials carrying this tag"),
            OpenApiParameter("search", str, description="In the name"),
            OpenApiParameter("archived", bool, description="Include archived ones"),
        ],
        responses={200: s.MaterialOutput(many=True), 400: BAD_REQUEST, 404: PAGE_NOT_FOUND},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(request=s.MaterialInput, responses={201: s.MaterialDetailOutput, 400: BAD_REQUEST})
    def post(self, request):
        data = s.MaterialInput(data=request.data)
        data.is_valid(raise_exception=True)
        who = request_actor(request)
        material = services.create_material(
            **data.validated_data, owner=who["created_by"], actor=who["created_by"], api_key=who["api_key"]
        )
        return Response(_detail(material.pk), status=status.HTTP_201_CREATED)


class MaterialDetailView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(parameters=[PK], responses={200: s.MaterialDetailOutput, 404: NOT_FOUND})
    def get(self, request, pk: str):
        return Response(_detail(_material(pk).pk))

    @extend_schema(
        parameters=[PK],
        request=s.MaterialChange,
        responses={200: s.MaterialDetailOutput, 400: BAD_REQUEST, 404: NOT_FOUND},
        summary="Rename, retag, describe or archive (the channel stays)",
    )
    def patch(self, request, pk: str):
        material = _material(pk)
        data = s.MaterialChange(data=request.data)
        data.is_valid(raise_exception=True)
        who = request_actor(request)
        services.update_material(
            material=material, actor=who["created_by"], api_key=who["api_key"], **data.validated_data
        )
        return Response(_detail(material.pk))


class MaterialVersionsView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[PK],
        request=s.VersionInput,
        responses={201: s.VersionOutput, 400: INVALID_TEMPLATE, 404: NOT_FOUND},
        summary="Add a draft version; a template that does not parse, names an unknown variable without a "
        "default, or exceeds the channel's limit is refused with the line and the reason",
    )
    def post(self, request, pk: str):
        material = _material(pk)
        data = s.VersionInput(data=request.data)
        data.is_valid(raise_exception=True)
        who = request_actor(request)
        version = services.add_version(
            material=material, **data.validated_data, actor=who["created_by"], api_key=who["api_key"]
        )
        return Response(s.VersionOutput(_version(version.pk)).data, status=status.HTTP_201_CREATED)


class MaterialHistoryView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[PK],
        responses={200: s.HistoryRowOutput(many=True), 404: NOT_FOUND},
        summary="Each campaign variant that sent it: sends, opens, clicks, conversions, effect over the holdout",
    )
    def get(self, request, pk: str):
        return Response(s.HistoryRowOutput(selectors.material_history(_material(pk)), many=True).data)


class VersionDetailView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(parameters=[PK], responses={200: s.VersionOutput, 404: NOT_FOUND})
    def get(self, request, pk: str):
        return Response(s.VersionOutput(_version(pk)).data)

    @extend_schema(
        parameters=[PK],
        request=s.VersionChange,
        responses={200: s.VersionOutput, 400: INVALID_TEMPLATE, 404: NOT_FOUND, 409: FROZEN},
        summary="Edit a draft (an approved version is frozen: add a new one)",
    )
    def patch(self, request, pk: str):
        version = _version(pk)
        data = s.VersionChange(data=request.data)
        data.is_valid(raise_exception=True)
        who = request_actor(request)
        services.update_draft(version=version, actor=who["created_by"], api_key=who["api_key"], **data.validated_data)
        return Response(s.VersionOutput(_version(version.pk)).data)


class VersionApproveView(JsonView):
    # A staff session of an Operations lead: API keys cannot approve what goes out.
    permission_classes = [StaffWith("materials.approve_material")]

    @extend_schema(
        parameters=[PK],
        request=None,
        responses={200: s.VersionOutput, 400: INVALID_TEMPLATE, 404: NOT_FOUND},
        summary="Approve a draft for sending (Operations lead); checked again against the channel's limits",
    )
    def post(self, request, pk: str):
        version = services.approve_version(version=_version(pk), actor=request.user)
        return Response(s.VersionOutput(_version(version.pk)).data)


class VersionPreviewView(JsonView):
    permission_classes = [HasScope("manage")]

    @extend_schema(
        parameters=[PK],
        request=s.PreviewInput,
        responses={200: s.PreviewOutput, 400: BAD_REQUEST, 404: NOT_FOUND},
        summary="Render the version for one person (or sample values); says why it fails for them, if it does",
    )
    def post(self, request, pk: str):
        version = _version(pk)
        data = s.PreviewInput(data=request.data)
        data.is_valid(raise_exception=True)
        profile = None
        if user_id := data.validated_data.get("user_id"):
            # A person's rendering shows their data: the same right as reading their profile.
            if not has_scope(request, "profiles:read"):
                raise PermissionDenied("Previewing for a person needs the profiles:read scope.")
            profile = Profile.objects.filter(user_id=user_id).first()
            if profile is None:
                raise errors.ProfileNotFound(f"No profile with user id {user_id!r}.")
            if not isinstance(request.auth, ApiKey):  # a staff member saw the person: recorded
                record_profile_access(
                    staff=request.user,
                    query=f"material preview API: {user_id}",
                    profiles=[(profile.pk, profile.user_id)],
                    channel=LookupChannel.API,
                )
        return Response(selectors.preview(version=version, profile=profile))
