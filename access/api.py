"""`GET /api/v1/auth/whoami`: lets an integrator check which key or staff member a call runs as."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from access.models import SCOPE_PERMISSIONS
from config.api import request_actor


class WhoAmIOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["api_key", "staff"])
    name = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())


class WhoAmIView(APIView):
    @extend_schema(responses=WhoAmIOutput, summary="Who the caller is and which scopes it holds")
    def get(self, request):
        who = request_actor(request)
        if (api_key := who["api_key"]) is not None:
            data = {"kind": "api_key", "name": api_key.name, "scopes": api_key.scopes}
        else:
            user = who["created_by"]
            scopes = [scope for scope, perm in SCOPE_PERMISSIONS.items() if user.is_staff and user.has_perm(perm)]
            data = {"kind": "staff", "name": user.get_username(), "scopes": scopes}
        return Response(WhoAmIOutput(data).data)
