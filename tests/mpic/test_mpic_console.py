"""The admin console shows a challenge's perspectives (templates/_perspectives.html, included by
the order page for each challenge)."""

from __future__ import annotations

from pathlib import Path

from acme_ra_admin import console, schemas

RECORD = {
    "quorum": "2/3", "required": 2, "regions_min": 2, "rounds": 1,
    "primary": {"name": "primary", "region": "", "outcome": "valid", "problem": None, "addresses": ["192.0.2.1"]},
    "perspectives": [
        {"name": "p1", "region": "arin", "outcome": "invalid", "addresses": ["198.51.100.7"],
         "problem": {"type": "unauthorized", "detail": "<b>hijacked</b>"}},
        {"name": "p2", "region": "ripe", "outcome": "valid", "addresses": ["192.0.2.1"], "problem": None},
        {"name": "p3", "region": "apnic", "outcome": "unavailable", "addresses": [],
         "problem": {"type": "serverInternal", "detail": "no answer"}},
    ],
}


def _challenge(record: dict[str, object] | None) -> schemas.Challenge:
    return schemas.Challenge(id="c1", type="http-01", status="valid", validated=None, error=None,
                             validation_record=record)


def test_the_partial_shows_every_perspective_and_the_quorum() -> None:
    html = console.TEMPLATES.get_template("_perspectives.html").render(c=_challenge(RECORD))
    assert "quorum 2/3 (2 needed, 2 regions)" in html
    for text in ("primary (primary)", "198.51.100.7", "arin", "ripe", "apnic", "unavailable", "no answer"):
        assert text in html, text
    assert "<b>hijacked</b>" not in html and "&lt;b&gt;hijacked&lt;/b&gt;" in html
    assert console.TEMPLATES.get_template("_perspectives.html").render(c=_challenge(None)).strip() == ""


def test_the_order_page_includes_it() -> None:
    template = Path(console.__file__).parent / "templates" / "order.html"
    assert '{% include "_perspectives.html" %}' in template.read_text()
