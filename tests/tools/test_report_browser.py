"""The HTML report renders: headless Chromium opens the file (offline, from disk), runs plotly,
and every chart ends up drawn — checked in the DOM after the scripts ran (plotly's SVG with
traces inside every chart) and in a screenshot (plot areas and bars in their colours, which
nothing but plotly paints). A control run of the page without plotly.js shows that the
screenshot check fails when the charts do not render."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import presso

pytest.importorskip("plotly", reason="the report needs the `report` extra (plotly)")
Image = pytest.importorskip("PIL.Image", reason="reading the screenshot needs Pillow")

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")

PLOT_BACKGROUND = (229, 236, 246)  # plotly's default plot area colour (#E5ECF6)
A8W8_BLUE = (31, 119, 180)  # the a8w8 bars and graph nodes (#1f77b4)


def _chromium(html_path, tmp_path, *args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--mute-audio",
               "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, html_path.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _count(pixels: np.ndarray, color: tuple[int, int, int], tolerance: int = 6) -> int:
    return int(np.sum(np.all(np.abs(pixels[..., :3].astype(int) - color) <= tolerance, axis=-1)))


def _open(html_path, tmp_path, name: str) -> tuple[str, np.ndarray]:
    """(the DOM after the page's scripts ran, the screenshot's pixels), from one Chromium run."""
    png = tmp_path / f"{name}.png"
    dom = _chromium(html_path, tmp_path, "--window-size=1200,3400", f"--screenshot={png}", "--dump-dom").stdout
    return dom, np.asarray(Image.open(png).convert("RGB"))


def _charts_in_dom(dom: str) -> dict[str, str]:
    """Chart id → the DOM between its container and the next one."""
    parts = re.split(r'<div class="presso-chart" data-chart="([\w-]+)">', dom)
    return dict(zip(parts[1::2], parts[2::2]))


def _check_renders(html_path, tmp_path, expected_charts: set[str]) -> None:
    dom, pixels = _open(html_path, tmp_path, "page")
    charts = _charts_in_dom(dom)
    assert set(charts) == expected_charts
    for chart_id, fragment in charts.items():
        assert "js-plotly-plot" in fragment, f"plotly did not take over chart '{chart_id}'"
        assert 'class="main-svg"' in fragment, f"plotly drew no SVG for chart '{chart_id}'"
        assert re.search(r'<g class="trace (bars|scatter)', fragment), f"chart '{chart_id}' has no traces"
    assert len(re.findall(r'<g class="trace bars"', charts["sqnr"])) >= 1
    assert charts["graph"].count('<g class="trace scatter') >= 3  # edges and at least two kinds of nodes

    area = pixels.shape[0] * pixels.shape[1]
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the page is blank"
    assert _count(pixels, PLOT_BACKGROUND) > 0.05 * area, "no plot areas were drawn"
    assert _count(pixels, A8W8_BLUE) > 2000, "no a8w8 bars or nodes were drawn"


def test_report_renders_in_headless_chromium(tiny_model_path, tmp_path):
    calib = {"x": np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)}
    model = presso.load(tiny_model_path)
    quantized, pipeline = presso.quantize(model, calib, method="minmax", progress=False, report=True)
    html_path = tmp_path / "report.html"
    presso.report(model, quantized, calib, html_path, pipeline=pipeline, runs=3,
                  sensitivity=[{"layer": "conv", "drop_quantized_alone": 0.01, "drop_left_float": -0.002}])
    _check_renders(html_path, tmp_path, {"size-latency", "sqnr", "sensitivity", "precision", "graph"})

    # The control: the same page without plotly.js has its tables but none of the plot pixels.
    text = html_path.read_text(encoding="utf-8")
    start = text.index('<script type="text/javascript">')
    stripped = tmp_path / "no-plotly.html"
    stripped.write_text(text[:start] + text[text.index("</script>", start) + len("</script>"):], encoding="utf-8")
    dom, pixels = _open(stripped, tmp_path, "no-plotly")
    assert 'class="main-svg"' not in dom
    assert _count(pixels, PLOT_BACKGROUND) == 0 and _count(pixels, A8W8_BLUE) < 100


@pytest.mark.slow
def test_report_of_ppocr_cls_renders_in_headless_chromium(tmp_path):
    from presso.tools import zoo

    images, _ = zoo.ppocr_cls_inputs(16)
    model = presso.load(zoo.ppocr_cls_model())
    quantized, pipeline = presso.quantize(model, {"x": images[:12]}, progress=False, report=True)
    html_path = tmp_path / "cls.html"
    numbers = presso.report(model, quantized, {"x": images[12:]}, html_path, pipeline=pipeline, runs=5)
    assert len(numbers["layers"]) > 100 and all(layer["sqnr_db"] is not None for layer in numbers["layers"])
    _check_renders(html_path, tmp_path, {"size-latency", "sqnr", "precision", "graph"})
