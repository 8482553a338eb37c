"""The zh-Hans translation stays complete: every app of ours ships a catalogue holding every string
its source marks for translation, each translated (no fuzzy, no empty msgstr) with the same
placeholders, and the committed .mo is what its .po compiles to. The strings are extracted the way
`makemessages` does (GNU xgettext, `scripts/ensure-gettext.sh`), from a copy of the app, so the
test never writes into the checkout. Also: the labels Django derives from model and field names
are listed, up to date, in config/model_labels.py."""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from pathlib import Path

import polib
import pytest
from django.core.management import call_command

from config.labels import MODULE_PATH, module_source
from tests.platform.test_layers import LAYERS

ROOT = Path(__file__).resolve().parents[2]
LOCALE = "zh_Hans"
# Python's %-style (named or not) and brace placeholders, as a translation must keep them.
PLACEHOLDER = re.compile(r"%\((\w+)\)[#0 +-]*\d*(?:\.\d+)?[sdifgeExXr]|%[#0 +-]*\d*(?:\.\d+)?[sdifgeExXr]|\{\w*\}")


def _has_js(app_dir: Path) -> bool:
    return any("vendor" not in path.parts for path in app_dir.rglob("*.js"))


def _extract(app: str, domain: str, tmp_path: Path) -> polib.POFile | None:
    """The catalogue makemessages would write for `app` now, from a copy of its sources."""
    copy = tmp_path / domain / app
    shutil.copytree(
        ROOT / app,
        copy,
        ignore=shutil.ignore_patterns("locale", "__pycache__", "migrations", "vendor", "*.pyc"),
    )
    (copy / "locale").mkdir()
    before = Path.cwd()
    os.chdir(copy)
    try:
        call_command("makemessages", locale=[LOCALE], domain=domain, verbosity=0, no_obsolete=True)
    finally:
        os.chdir(before)
    produced = copy / "locale" / LOCALE / "LC_MESSAGES" / f"{domain}.po"
    return polib.pofile(str(produced)) if produced.exists() else None


def _key(entry: polib.POEntry) -> tuple[str | None, str]:
    return (entry.msgctxt, entry.msgid)


def _placeholders(text: str) -> Counter:
    # "%%" is a literal percent sign: left in, "100%% each" would read as a "% e" placeholder.
    return Counter(match.group(0) for match in PLACEHOLDER.finditer(text.replace("%%", "")))


def _problems(source: polib.POFile, shipped: polib.POFile) -> list[str]:
    entries = {_key(e): e for e in shipped if not e.obsolete}
    problems = []
    for wanted in source:
        entry = entries.get(_key(wanted))
        if entry is None:
            problems.append(f"missing: {wanted.msgid!r}")
            continue
        if entry.fuzzy:
            problems.append(f"fuzzy: {entry.msgid!r}")
        if entry.msgid_plural:
            texts = [entry.msgstr_plural.get(i, "") for i in sorted(entry.msgstr_plural) or [0]]
            expected = _placeholders(entry.msgid_plural)
        else:
            texts = [entry.msgstr]
            expected = _placeholders(entry.msgid)
        for text in texts:
            if not text.strip():
                problems.append(f"untranslated: {entry.msgid!r}")
            elif _placeholders(text) != expected:
                problems.append(f"placeholders differ: {entry.msgid!r} -> {text!r}")
    return problems


def _compiled(po: polib.POFile) -> dict:
    """What a .mo of `po` holds: its translated, non-fuzzy entries (and the header)."""
    held = {}
    for entry in po:
        if getattr(entry, "obsolete", False) or getattr(entry, "fuzzy", False):
            continue
        key = (entry.msgctxt, entry.msgid, entry.msgid_plural or None)
        held[key] = tuple(entry.msgstr_plural[i] for i in sorted(entry.msgstr_plural)) or (entry.msgstr,)
    return {k: v for k, v in held.items() if any(v)}


@pytest.mark.parametrize("app", LAYERS)
@pytest.mark.parametrize("domain", ["django", "djangojs"])
def test_the_shipped_catalogue_translates_every_string_of_the_app(app, domain, tmp_path):
    if domain == "djangojs" and not _has_js(ROOT / app):
        # Nothing for xgettext to read: the app must not carry a stale JavaScript catalogue either.
        assert not (ROOT / app / "locale" / LOCALE / "LC_MESSAGES" / "djangojs.po").exists()
        return
    source = _extract(app, domain, tmp_path)
    po_path = ROOT / app / "locale" / LOCALE / "LC_MESSAGES" / f"{domain}.po"
    if source is None or not len(source):
        return  # the app marks no string of this domain for translation
    assert po_path.exists(), f"{app} marks {len(source)} strings for translation but ships no {po_path.name}"
    shipped = polib.pofile(str(po_path))
    # A fuzzy header is left out of the .mo, and Chinese plurals with it (nplurals=1).
    assert not shipped.metadata_is_fuzzy, f"{po_path.relative_to(ROOT)}: the header is still marked fuzzy"
    assert shipped.metadata.get("Plural-Forms", "").startswith("nplurals=1"), f"{po_path.name}: Plural-Forms"
    problems = _problems(source, shipped)
    assert not problems, f"{po_path.relative_to(ROOT)}:\n" + "\n".join(problems[:40])
    mo_path = po_path.with_suffix(".mo")
    assert mo_path.exists(), f"{mo_path.relative_to(ROOT)} is not committed (run compilemessages)"
    assert _compiled(polib.mofile(str(mo_path))) == _compiled(shipped), (
        f"{mo_path.relative_to(ROOT)} is not what {po_path.name} compiles to (run compilemessages)"
    )


def test_the_placeholder_check_sees_a_changed_placeholder():
    source = polib.POFile()
    source.append(polib.POEntry(msgid="%(n)s alert(s) acknowledged.", msgstr=""))
    shipped = polib.POFile()
    shipped.append(polib.POEntry(msgid="%(n)s alert(s) acknowledged.", msgstr="已确认 %(count)s 条告警。"))
    assert _problems(source, shipped) == [
        "placeholders differ: '%(n)s alert(s) acknowledged.' -> '已确认 %(count)s 条告警。'"
    ]
    shipped[0].msgstr = ""
    assert _problems(source, shipped) == ["untranslated: '%(n)s alert(s) acknowledged.'"]
    shipped[0].msgstr = "已确认 %(n)s 条告警。"
    shipped[0].flags.append("fuzzy")
    assert _problems(source, shipped) == ["fuzzy: '%(n)s alert(s) acknowledged.'"]


def test_the_placeholder_check_reads_a_doubled_percent_as_a_literal():
    msgid = "%(floor)s%% each, 95%% interval"
    source = polib.POFile()
    source.append(polib.POEntry(msgid=msgid, msgstr=""))
    shipped = polib.POFile()
    shipped.append(polib.POEntry(msgid=msgid, msgstr="各占 %(floor)s%%，95%% 区间"))
    assert _problems(source, shipped) == []
    shipped[0].msgstr = "各占 %%，95%% 区间"
    assert _problems(source, shipped) == [f"placeholders differ: {msgid!r} -> '各占 %%，95%% 区间'"]


def test_the_derived_model_labels_module_is_up_to_date():
    assert MODULE_PATH.read_text() == module_source(), (
        "config/model_labels.py is out of date: run `manage.py model_labels`, then makemessages in config/"
    )


def test_derived_labels_are_translated_without_touching_migrations():
    from django.utils import translation

    from tracking.models import Event

    field = Event._meta.get_field("received_at")
    assert field._verbose_name is None  # what migrations see: no verbose_name
    assert field.deconstruct()[3].get("verbose_name") is None
    with translation.override("en"):
        assert str(field.verbose_name) == "received at"
        assert str(Event._meta.verbose_name_plural) == "events"
    with translation.override("zh-hans"):
        assert str(field.verbose_name) == "接收时间"
        assert str(Event._meta.verbose_name_plural) == "事件"


@pytest.mark.django_db
def test_no_migration_is_missing_after_the_labels_became_translatable(capsys):
    call_command("makemigrations", check=True, dry_run=True, verbosity=1)
    assert "No changes detected" in capsys.readouterr().out


@pytest.mark.parametrize("domain", ["django", "djangojs"])
def test_a_msgid_reads_the_same_in_every_app(domain):
    """Django merges the catalogues and the first app in INSTALLED_APPS wins a msgid, so a later app's
    own wording of the same text would never show: one text, one translation, or a context."""
    seen: dict[tuple, dict[tuple, str]] = {}
    for app in LAYERS:
        po_path = ROOT / app / "locale" / LOCALE / "LC_MESSAGES" / f"{domain}.po"
        if not po_path.exists():
            continue
        for key, translation in _compiled(polib.pofile(str(po_path))).items():
            seen.setdefault(key, {}).setdefault(translation, app)
    conflicts = [
        f"{key[1]!r} ({key[0] or 'no context'}): {wordings}" for key, wordings in seen.items() if len(wordings) > 1
    ]
    assert not conflicts, "\n".join(conflicts)
