"""CSV export of contribution scores (admin and API share it)."""

from __future__ import annotations

import csv
from collections.abc import Iterable

from django.http import HttpResponse

from community.models import ContributionScore, Dimension


def scores_csv_response(scores: Iterable[ContributionScore]) -> HttpResponse:
    """One row per score: subject, rank, score, then raw value, percentile and weight per dimension."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="contribution-scores.csv"'
    writer = csv.writer(response)
    header = ["month", "subject", "name", "members", "rank", "score"]
    for d in Dimension.values:
        header += [f"{d}_raw", f"{d}_percentile", f"{d}_weight"]
    writer.writerow(header)
    for s in scores:
        row = [f"{s.month:%Y-%m}", s.subject, s.subject_name, s.members, s.rank, s.score]
        for d in Dimension.values:
            part = s.breakdown.get(d, {})
            row += [part.get("raw", ""), part.get("percentile", ""), part.get("weight", "")]
        writer.writerow(row)
    return response
