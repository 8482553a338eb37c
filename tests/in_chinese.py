"""Admin pages read in Simplified Chinese, asked for the way a browser asks (Accept-Language, which
LocaleMiddleware follows) with zh-hans also active around the request, so a page reads the same
whether or not the middleware is installed."""

from __future__ import annotations

import re
from html import unescape

from django.test import Client
from django.utils import translation

# Words of ours a page in Chinese should no longer show (Django's own and the data's aside).
_TAGS = re.compile(r"<script.*?</script>|<style.*?</style>|<[^>]+>", re.S)


def get_in_chinese(client: Client, url: str, data: dict | None = None) -> str:
    with translation.override("zh-hans"):
        response = client.get(url, data or {}, HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def visible_text(html: str) -> str:
    """The text a reader sees: tags, scripts and styles removed, entities decoded."""
    return " ".join(unescape(_TAGS.sub(" ", html)).split())


def assert_reads_in_chinese(html: str, *, chinese: list[str], english: list[str]) -> None:
    text = visible_text(html)
    missing = [c for c in chinese if c not in html]
    left = [e for e in english if e in text]
    assert not missing, f"Chinese labels missing: {missing}"
    assert not left, f"English left on the page: {left}"
