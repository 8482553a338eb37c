"""Benchmark of per-person rendering: the sandboxed Jinja2 rendering a send does for each
recipient (defaults, limit checks included) against formatting the same message with
`str.format`, the least a personalised send could cost. Prints messages per second of each and
the ratio. Target: at least 5,000 messages per second per process (0.2 ms each), well under the
time one post to a provider takes, so rendering does not set a send's pace.

No database is needed:
    python bench/materials.py --messages 50000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

TITLE = "Hi {{ name }}, {{ coupon_amount }} off in {{ city }}"
BODY = (
    "{% if 'vip' in tags %}As a {{ tier }} member{% else %}Today{% endif %}:"
    " code {{ coupon_code }} until {{ coupon_expiry }} {{ link }}"
)


def contexts(n: int) -> list[dict]:
    return [
        {
            "name": f"Person {i}" if i % 10 else "",
            "city": ("Shanghai", "Chengdu", "")[i % 3],
            "tier": "Core",
            "predicted_value": Decimal("120.50"),
            "tags": ["vip"] if i % 4 == 0 else [],
            "traits": {},
            "user_id": f"u{i}",
            "coupon_code": f"C{i:08d}",
            "coupon_amount": "30.00",
            "coupon_expiry": "2026-12-31",
            "link": f"https://t.example/c/{i}",
        }
        for i in range(n)
    ]


def main() -> None:
    import django

    django.setup()
    from materials.rendering import compile_templates, render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    people = contexts(args.messages)
    assert people, "the workload is empty"
    compiled = compile_templates(
        channel="push",
        fields={"title": TITLE, "body": BODY},
        defaults={"name": "friend", "city": "your city"},
        url="https://shop.example",
    )
    start = time.perf_counter()
    rendered = [render(compiled, c) for c in people]
    jinja = time.perf_counter() - start
    assert len(rendered) == len(people) and rendered[1]["title"].startswith("Hi Person 1")

    def plain(c: dict) -> dict:
        title = "Hi {name}, {coupon_amount} off in {city}".format(
            **{**c, "name": c["name"] or "friend", "city": c["city"] or "your city"}
        )
        lead = f"As a {c['tier']} member" if "vip" in c["tags"] else "Today"
        return {"title": title, "body": f"{lead}: code {c['coupon_code']} until {c['coupon_expiry']} {c['link']}"}

    start = time.perf_counter()
    baseline = [plain(c) for c in people]
    fmt = time.perf_counter() - start
    assert [r["title"] for r in rendered[:50]] == [b["title"] for b in baseline[:50]]
    rate, base_rate = len(people) / jinja, len(people) / fmt
    print(f"messages: {len(people):,}")
    print(f"sandboxed Jinja2: {rate:,.0f}/s   str.format: {base_rate:,.0f}/s   ratio: {rate / base_rate:.3f}")
    print(f"target >= 5,000/s: {'met' if rate >= 5_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
