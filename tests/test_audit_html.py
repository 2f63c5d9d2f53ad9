"""The audit's HTML heatmap, rendered in headless Chromium: drawn, one colour per class, hover names the minute."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path

import pytest
from test_statuspage import APT_BUDGET, Browser, chromium  # noqa: F401 (chromium is a fixture)

from shardctl.audit.classify import MinuteClass, RestBar, SymbolFacts, TickMinute, classify_symbol
from shardctl.audit.render import COLOURS, render_html
from shardctl.audit.run import AuditReport, minute_stamp

FIRST = 29_930_250  # Friday 2026-11-27 21:30 UTC
N = 60


def report() -> AuditReport:
    """Three symbols whose minutes show every class."""
    tick = TickMinute(1.0, Decimal(1))
    stock = SymbolFacts("AAPL", "stocks", FIRST, FIRST + N - 1, {FIRST + i: tick for i in range(5, 30)},
                        frozenset(), frozenset(), [i < 30 for i in range(N)], [i >= 5 for i in range(N)])
    crypto = SymbolFacts("BTC/USD", "crypto", FIRST, FIRST + N - 1,
                         {FIRST + i: tick for i in range(N) if not 20 <= i < 40},
                         frozenset(range(FIRST + 20, FIRST + 25)),
                         frozenset(range(FIRST + 25, FIRST + 30)), [True] * N, [True] * N,
                         {FIRST + i: RestBar(1.0, Decimal(5 if i >= 35 else 0)) for i in range(30, 40)},
                         frozenset(range(FIRST + 30, FIRST + 40)))
    fx = SymbolFacts("EUR/USD", "fx", FIRST, FIRST + N - 1, {FIRST + i: tick for i in range(N) if i % 7}, frozenset(),
                     frozenset(), [True] * N, [True] * N)
    return AuditReport(FIRST, FIRST + N - 1, True, tuple(classify_symbol(f) for f in (stock, crypto, fx)))


def pixel(browser: Browser, x: int, y: int) -> str:
    rgb = browser.eval(f"Array.from(document.getElementById('map').getContext('2d').getImageData({x}, {y}, 1, 1)"
                       ".data.slice(0, 3))")
    return "#" + "".join(f"{v:02x}" for v in rgb)


@pytest.mark.slow
@pytest.mark.timeout(APT_BUDGET + 120)  # a first run may install Chromium
def test_heatmap_in_headless_chromium(chromium: str, tmp_path: Path) -> None:  # noqa: F811
    audit = report()
    by = {a.symbol: a for a in audit.symbols}
    assert by["BTC/USD"].counts[MinuteClass.QUIET] == 5 and by["BTC/USD"].counts[MinuteClass.UNEXPLAINED] == 5
    page = tmp_path / "audit.html"
    page.write_text(render_html(audit), encoding="utf-8")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    browser = Browser(chromium, profile)
    try:
        browser.call("Page.navigate", url=page.as_uri())
        browser.wait("document.body !== null && document.body.dataset.rendered === '3'")
        cell, row = browser.eval("JSON.parse(document.getElementById('data').textContent).cell"), 16
        for y, audit_row in enumerate(audit.symbols):
            for x, cls in enumerate(audit_row.classes):
                assert pixel(browser, x * cell + cell // 2, y * row + row // 2) == COLOURS[cls], (audit_row.symbol, x)
        legend = browser.eval("[...document.querySelectorAll('#legend span')].map(s => s.textContent)")
        assert legend == [c.value for c in MinuteClass]
        # Hover over BTC/USD's 33rd minute (quiet: REST has a bar with zero volume).
        box = browser.eval("(() => { const r = document.getElementById('map').getBoundingClientRect(); "
                           "return [r.left, r.top]; })()")
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0] + 33 * cell + cell / 2,
                     y=box[1] + row + row / 2)
        tip = browser.wait("document.getElementById('tip').style.display === 'block' && "
                           "document.getElementById('tip').textContent")
        assert tip == f"BTC/USD (crypto) {minute_stamp(FIRST + 33)} UTC: quiet", tip
        counts = browser.eval("[...document.querySelectorAll('#counts tr')].slice(1).map(tr => tr.textContent)")
        assert counts[1].startswith("BTC/USD")
        assert not browser.errors(), browser.errors()
        shot = tmp_path / "audit-heatmap.png"
        shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
        print(f"audit heatmap screenshot: {shot}")
    finally:
        browser.close()
