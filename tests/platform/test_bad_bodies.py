"""Bodies and parameters PostgreSQL or Python could not take (JSON nested past Python's recursion,
NUL characters) are a 400 naming the reason, never a 500."""

import pytest

from campaigns.models import Segment

pytestmark = pytest.mark.django_db

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/segments",
        "/api/v1/campaigns",
        "/api/v1/identify",
        "/api/v1/coupon-rules",
        "/api/v1/experiments/analyze",
    ],
)
def test_json_nested_deeper_than_python_recurses_is_a_400(api_client, url):
    response = api_client.post(url, DEEP, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"detail": "JSON parse error - nested too deeply"}


@pytest.mark.parametrize(
    ("definition", "where"),
    [
        ({"tag": "vip\x00"}, "tag"),
        ({"trait": "city", "op": "eq", "value": "Shang\x00hai"}, "value"),
        ({"any": [{"tag": "a"}, {"tier": ["core\x00"]}]}, "any[1].tier[0]"),
    ],
)
def test_a_segment_definition_with_a_nul_character_is_refused_naming_where(api_client, definition, where):
    response = api_client.post("/api/v1/segments", {"name": "s", "definition": definition}, format="json")
    assert response.status_code == 400
    assert f"{where}: text may not contain NUL characters" in response.json()["definition"]
    assert not Segment.objects.exists()


def test_a_source_report_prefix_with_a_nul_character_is_a_400_naming_it(api_client):
    response = api_client.get("/api/v1/coupon-reports", {"source_ref_prefix": "campaign:\x00"})
    assert response.status_code == 400 and list(response.json()) == ["source_ref_prefix"]
    response = api_client.get("/api/v1/coupon-reports")
    assert response.status_code == 400 and response.json() == {"source_ref_prefix": ["This field is required."]}
