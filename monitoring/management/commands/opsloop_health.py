"""`manage.py opsloop_health [--json]`: the health page as text (or JSON), for operators and for
monitoring. Exits 1 when something is failed or stuck, 0 when all is well."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from monitoring import selectors


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


class Command(BaseCommand):
    help = "Queue depths, failed and stuck work, and the last run of each beat task; exit 1 on a problem."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print the report as one JSON object.")

    def handle(self, *args, **options):
        report = selectors.health_report()
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self._text(report)
        if report.problems:
            raise CommandError(f"{len(report.problems)} problem(s): " + "; ".join(report.problems), returncode=1)

    def _text(self, report: selectors.HealthReport) -> None:
        out = self.stdout.write
        out(f"opsloop health at {_when(report.checked_at)} UTC")
        out("")
        out("Queues (messages waiting):")
        for queue in report.queues:
            out(f"  {queue.name:<12} {queue.waiting}")
        out(f"  {'in flight':<12} {'-' if report.in_flight is None else report.in_flight} (taken, not acknowledged)")
        if report.queues_error:
            out(f"  Redis: {report.queues_error}")
        if report.replica:
            lag = "-" if report.replica.lag_bytes is None else f"{report.replica.lag_mb} of WAL"
            where = "the replica" if report.replica.usable else f"the primary ({report.replica.reason})"
            out("")
            out(f"Replica: lag {lag}; dashboards read {where}")
        out("")
        out("Failed or stuck:")
        for section in report.sections:
            out(f"  {section.count} {section.title}")
            for item in section.items:
                out(f"    {item.kind} #{item.id} {item.name}: {item.reason} (since {_when(item.since)})")
        out("")
        out("Beat tasks (last sent by beat; last run finished, outcome):")
        for task in report.beat:
            state = task.outcome or "no run recorded"
            enabled = "" if task.enabled else " [disabled]"
            line = (
                f"  {task.name}{enabled}: sent {_when(task.last_run_at)}; finished {_when(task.finished_at)}, {state}"
            )
            if task.runtime_seconds is not None:
                line += f" in {task.runtime_seconds:.1f} s"
            if task.error:
                line += f": {task.error}"
            out(line)
        if report.failed_tasks:
            out("")
            out("Other tasks whose last run failed:")
            for run in report.failed_tasks:
                out(f"  {run.task} at {_when(run.finished_at)}: {run.error}")
        out("")
        out("Problems: " + ("; ".join(report.problems) if report.problems else "none"))
