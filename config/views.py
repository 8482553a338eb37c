"""The base of API views that machines call, next to `config.api`'s glue. A module of its own:
importing `rest_framework.views` loads DRF's settings, which import `config.api.JsonParser`, so
`config.api` itself must not import it."""

from __future__ import annotations

from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from config.api import JsonParser


# An API view that speaks JSON only, in and out: no browsable-API renderer to negotiate on
# endpoints that machines call. (A comment, not a docstring: the schema would show a docstring as
# the description of every endpoint built on it.)
class JsonView(APIView):
    parser_classes = [JsonParser]
    renderer_classes = [JSONRenderer]
