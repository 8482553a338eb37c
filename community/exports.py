"""CSV export of contribution scores.

The API's file keeps its stable machine column names (`campaign_incremental_raw`), a contract for
the programs that read it; the admin's export is for people: headers in the reader's language,
each with its unit."""

from __future__ import annotations

import csv
from collections.abc import Iterable

from django.http import HttpResponse
from django.utils.translation import gettext

from community.models import ContributionScore, Dimension
from config import formatting


def _raw_unit(dimension: str) -> str:
    """What a dimension's raw value counts."""
    if dimension in (Dimension.CAMPAIGN_INCREMENTAL, Dimension.CONTACT_TRANSACTIONS):
        return formatting.currency_label()
    if dimension == Dimension.NEW_MEMBERS:
        return gettext("people")
    return gettext("points of 100")


def _readable_header() -> list[str]:
    header = [
        gettext("Month"),
        gettext("Operator or team"),
        gettext("Name"),
        formatting.column(gettext("Members"), gettext("people")),
        gettext("Rank"),
        formatting.column(gettext("Score"), gettext("points of 100")),
    ]
    for key, label in Dimension.choices:
        header += [
            formatting.column(gettext("%(dimension)s: raw value") % {"dimension": label}, _raw_unit(key)),
            formatting.column(
                gettext("%(dimension)s: percentile") % {"dimension": label}, gettext("percentile among peers, 0-100")
            ),
            formatting.column(gettext("%(dimension)s: weight") % {"dimension": label}, gettext("relative")),
        ]
    return header


def scores_csv_response(scores: Iterable[ContributionScore], *, readable: bool = False) -> HttpResponse:
    """One row per score: subject, rank, score, then raw value, percentile and weight per dimension.
    `readable` gives the admin's headers (translated, with units) over the same columns."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="contribution-scores.csv"'
    writer = csv.writer(response)
    if readable:
        header = _readable_header()
    else:
        header = ["month", "subject", "name", "members", "rank", "score"]
        for d in Dimension.values:
            header += [f"{d}_raw", f"{d}_percentile", f"{d}_weight"]
    writer.writerow(header)
    for s in scores:
        # Numbers and the month stay as stored (an ISO month, plain numbers) so that a spreadsheet
        # reads them; only the subject is written in the reader's words.
        subject = s.get_subject_display() if readable else s.subject
        row = [f"{s.month:%Y-%m}", subject, s.subject_name, s.members, s.rank, s.score]
        for d in Dimension.values:
            part = s.breakdown.get(d, {})
            row += [part.get("raw", ""), part.get("percentile", ""), part.get("weight", "")]
        writer.writerow(row)
    return response
