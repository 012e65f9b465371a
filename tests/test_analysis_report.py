"""analysis.report: one self-contained report.html for a sweep (a hand-made one with known numbers) and for a run;
every image is an embedded PNG, and a headless Chromium (where installed) loads every one of them."""
import base64
import io
import re
import shutil
import subprocess

import pytest
from PIL import Image

from analysis.report import report
from test_analysis_compare import hand_made, write_job  # noqa: F401  (hand_made is a fixture)

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def embedded_images(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in IMAGE.findall(page)]


def test_sweep_report_holds_the_settings_the_results_and_every_figure(hand_made):  # noqa: F811
    page = report(hand_made).read_text()
    assert "<td>sgd</td><td>0.1</td><td>3</td><td>0 1 2</td>" in page  # what ran: optimizer, its lr, n, seeds
    assert "<td>optimizer.lr=0.1 optimizer=sgd</td><td>3</td><td>92.00 ± 2.00</td><td>90.00 ± 1.00</td>" in page
    images = embedded_images(page)
    assert len(images) == page.count("<img") == 5  # compare's figures, LR sensitivity among them
    assert all(image.format == "PNG" and image.width > 300 for image in images)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing to fetch or run


def test_run_report_holds_the_summary_and_the_gradient_flow_figure(tmp_path):
    run = tmp_path / "run"
    write_job(run, "adam", 0.01, 0, (0.95, 0.94, 20.0))
    Image.new("RGB", (400, 300), "white").save(run / "gradient_flow.png")
    page = report(run).read_text()
    assert "<td>test_acc</td><td>0.94</td>" in page and "<td>optimizer=adam</td>" in page
    assert len(embedded_images(page)) == 2  # the run's curves and its gradient-flow figure


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_chromium_loads_every_image_of_the_report(hand_made, tmp_path):  # noqa: F811
    page = report(hand_made).read_text()
    probe = tmp_path / "probe.html"  # the report plus a script that writes each image's loaded width into the DOM
    probe.write_text(page.replace("</body>", "<script>window.onload = () => document.body.insertAdjacentHTML("
                                  "'beforeend', '<p id=widths>' + [...document.images].map(i => i.complete ? "
                                  "i.naturalWidth : 0).join(',') + '</p>')</script></body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    widths = [int(w) for w in re.search(r"<p id=\"widths\">([\d,]*)</p>", dom).group(1).split(",")]
    assert len(widths) == 5 and all(w > 300 for w in widths)
