"""``snakemake --report``: one self-contained HTML page holding the tables and the figures.

The Chromium screenshot check is marked ``chromium`` and left out of the default run; run it with
``apt-get install -y chromium && .venv/bin/python -m pytest -m chromium tests/test_report.py``.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import TINY_RESULTS, snakemake
from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def report(completed_tiny_run):
    out = completed_tiny_run / TINY_RESULTS / "report.html"
    snakemake(completed_tiny_run, "--report", str(out))
    return out


def embedded(html: str, name: str) -> bytes:
    """The bytes of the file ``name`` embedded in the report as a base64 data URI."""
    match = re.search(r"data:[^;\"]+(?:;[^;\"]+)*?;filename=" + re.escape(name) + r";base64,([A-Za-z0-9+/=]+)", html)
    assert match, f"{name} is not embedded in the report"
    return base64.b64decode(match.group(1))


def test_report_embeds_tables_and_figures(completed_tiny_run, report):
    html = report.read_text()
    res = completed_tiny_run / TINY_RESULTS
    assert embedded(html, "table1.csv") == (res / "table1.csv").read_bytes()
    assert embedded(html, "table2.csv") == (res / "table2.csv").read_bytes()
    assert embedded(html, "precision.csv") == (res / "precision.csv").read_bytes()
    figures = res / "figures" / "shapes"
    for png in ("qualitative.png", "progression_0.png", "response_0.png", "tiny_rmi_loss.png"):
        assert png in html
        assert embedded(html, png) == next(figures.rglob(png)).read_bytes()
    assert "Table 1: overall IoU" in html  # the caption from report/table1.rst


@pytest.mark.chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            "--window-size=1400,1000",
            "--virtual-time-budget=15000",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1000, 1400)
    assert pixels.std() > 10, "the screenshot is blank: the report did not render"
