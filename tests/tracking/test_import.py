"""`manage.py import_events`: JSON Lines and CSV, bad lines reported by number, reruns harmless."""

from __future__ import annotations

import csv
import gzip
import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command

from tests.factories.tracking import EventPayloadFactory, payloads
from tracking.models import Event

pytestmark = pytest.mark.django_db


def run(path, *args) -> str:
    out = io.StringIO()
    call_command("import_events", str(path), "--no-progress", *args, stdout=out)
    return out.getvalue()


def summary(output: str) -> dict[str, int]:
    lines = dict(line.split(": ", 1) for line in output.splitlines()[:3])
    return {key: int(value) for key, value in lines.items()}


def test_a_jsonl_file_is_imported_with_bad_lines_reported_by_number(tmp_path):
    good = payloads(5)
    lines = [json.dumps(e) for e in good[:2]]
    lines.append("{not json")  # line 3
    lines.append(json.dumps(EventPayloadFactory(kind="purchase")))  # line 4
    lines.append("")  # line 5, blank: skipped
    lines.extend(json.dumps(e) for e in good[2:])  # lines 6-8
    lines.append(json.dumps(good[0]))  # line 9, a duplicate
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    output = run(path, "--chunk-size", "2")

    assert summary(output) == {"accepted": 5, "duplicates": 1, "rejected": 2}
    assert "line 3: not valid JSON" in output
    assert "line 4: kind" in output
    assert set(Event.objects.values_list("event_id", flat=True)) == {uuid.UUID(e["event_id"]) for e in good}


def test_running_an_import_again_stores_nothing_twice(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in payloads(3)))
    run(path)
    assert summary(run(path)) == {"accepted": 0, "duplicates": 3, "rejected": 0}
    assert Event.objects.count() == 3


def test_a_gzipped_jsonl_file_is_read(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in payloads(4))
    assert summary(run(path))["accepted"] == 4


def test_a_csv_file_takes_json_columns_and_flattened_context_columns(tmp_path):
    path = tmp_path / "events.csv"
    header = [
        "event_id",
        "name",
        "kind",
        "timestamp",
        "user_id",
        "anonymous_id",
        "properties",
        "context.url",
        "context.ip",
    ]
    ok = EventPayloadFactory(name="order_paid", properties={"order_id": "o-1", "amount": "9.90"})
    anonymous = EventPayloadFactory(user_id=None, anonymous_id="anon-7", name="page_view")
    naive = EventPayloadFactory(timestamp="2026-01-01T10:00:00")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerow(
            [ok["event_id"], ok["name"], "", ok["timestamp"], ok["user_id"], "", json.dumps(ok["properties"]), "", ""]
        )
        writer.writerow(
            [anonymous["event_id"], "page_view", "", anonymous["timestamp"], "", "anon-7", "",
             "https://m.example.com/list?page=2", "198.51.100.7"]
        )  # fmt: skip
        writer.writerow([naive["event_id"], "app_open", "", naive["timestamp"], "u-9", "", "", "", ""])
        writer.writerow([str(uuid.uuid4()), "app_open", "", ok["timestamp"], "u-9", "", "{broken", "", ""])
        writer.writerow([str(uuid.uuid4()), "app_open", "", ok["timestamp"], "u-9", "", "", "", "not-an-ip"])

    output = run(path)

    assert summary(output) == {"accepted": 2, "duplicates": 0, "rejected": 3}
    assert "line 4: timestamp" in output
    assert "line 5: properties" in output
    assert "line 6: context.ip" in output
    paid = Event.objects.get(event_id=ok["event_id"])
    assert paid.properties == {"order_id": "o-1", "amount": "9.90"}
    view = Event.objects.get(anonymous_id="anon-7")
    assert (view.path, view.ip, view.user_id) == ("/list", "198.51.100.7", None)


def test_every_rejected_line_goes_to_the_rejected_file_while_the_summary_shows_a_few(tmp_path):
    path = tmp_path / "events.ndjson"
    path.write_text("".join(json.dumps(EventPayloadFactory(name="Bad Name")) + "\n" for _ in range(5)))
    rejected = tmp_path / "rejected.jsonl"
    output = run(path, "--show-rejected", "2", "--rejected-file", str(rejected))
    assert "... and 3 more" in output
    lines = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert [item["line"] for item in lines] == [1, 2, 3, 4, 5]
    assert all("name" in item["errors"] for item in lines)


def test_a_file_of_unknown_format_or_missing_is_refused(tmp_path):
    path = tmp_path / "events.xml"
    path.write_text("<events/>")
    with pytest.raises(CommandError, match="format"):
        run(path)
    with pytest.raises(CommandError, match="no such file"):
        run(tmp_path / "missing.jsonl")


def test_a_dry_run_reports_the_bad_lines_and_stores_nothing(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(e) for e in payloads(2)] + [json.dumps(EventPayloadFactory(event_id="nope"))]
    path.write_text("\n".join(lines) + "\n")
    output = run(path, "--dry-run")
    assert "valid: 2 (dry run: nothing stored)" in output
    assert "rejected: 1" in output
    assert "line 3: event_id" in output
    assert not Event.objects.exists()


def test_a_truncated_gzip_file_stops_with_an_error_after_storing_what_it_read(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    whole = gzip.compress("".join(json.dumps(e) + "\n" for e in payloads(50)).encode())
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(CommandError, match="stopped reading"):
        run(path, "--chunk-size", "5")
    assert 0 < Event.objects.count() < 50
