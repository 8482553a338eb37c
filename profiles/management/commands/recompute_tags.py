"""`manage.py recompute_tags [--rule NAME|ID ...]`: the nightly tag recompute, by hand.

Every active tag rule (or the rules named, active or not) is recomputed by the service the beat
job "profiles: recompute tag rules nightly" runs for each rule, one rule at a time, with a
progress bar; each rule's last run is recorded on it as the nightly run records it. A failing
rule does not stop the others (as at night); the command then exits 1 naming it and why.
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from config.failures import failure_reason
from profiles import services
from profiles.models import TagRule


class Command(BaseCommand):
    help = "Recompute the members of every active tag rule now (as the nightly job does), or of --rule."

    def add_arguments(self, parser):
        parser.add_argument(
            "--rule", action="append", default=[], help="A rule by name or id (repeatable); default: all active."
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar (for logs and cron).")

    def handle(self, *args, **options):
        rules = self._rules(options["rule"])
        if not rules:
            self.stdout.write("No active tag rules: nothing to recompute.")
            return
        started = time.monotonic()
        results, failures = [], []
        with tqdm(total=len(rules), unit="rule", desc="tag rules", disable=options["no_progress"]) as bar:
            for rule in rules:
                bar.set_postfix_str(rule.name[:30])
                try:
                    results.append((rule, services.recompute_tag_rule(rule_id=rule.pk)))
                except Exception as exc:  # recorded on the rule and logged by the service
                    failures.append((rule, failure_reason(exc)))
                bar.update(1)
        out = self.stdout.write
        for rule, result in results:
            out(
                f"  {rule.name}: {result.members} member(s), +{result.added} -{result.removed} "
                f"in {result.seconds:.2f} s"
            )
        for rule, reason in failures:
            out(f"  {rule.name}: FAILED {reason}")
        out(
            f"Recomputed {len(results)} of {len(rules)} rule(s) in {time.monotonic() - started:.1f} s: "
            f"{sum(r.added for _, r in results)} tag(s) added, {sum(r.removed for _, r in results)} removed, "
            f"{sum(r.members for _, r in results)} member(s) in all."
        )
        if failures:
            raise CommandError(
                f"{len(failures)} rule(s) failed: " + "; ".join(f"{rule.name}: {reason}" for rule, reason in failures),
                returncode=1,
            )

    def _rules(self, wanted: list[str]) -> list[TagRule]:
        if not wanted:
            return list(TagRule.objects.filter(is_active=True).order_by("name"))
        rules = []
        for value in wanted:
            rule = TagRule.objects.filter(pk=int(value)).first() if value.isdigit() else None
            rule = rule or TagRule.objects.filter(name=value).first()
            if rule is None:
                raise CommandError(f"No tag rule {value!r}.")
            rules.append(rule)
        return rules
