"""The page of ``mobilenets serve`` in a real browser: Debian's Chromium, headless, driven by Playwright."""

import base64
import os
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import Server, samples

from mobilenets.predict import load_model, predict

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# No sandbox (root in a container), and none of the background connections a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} not installed (make test installs it)")


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data-dir
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 900, "height": 640})
        yield context.new_page()
        context.close()


def test_page_shows_the_top_classes_of_an_uploaded_image(browser_page, tiny_classifier, tmp_path):
    images = samples(tmp_path / "samples")
    reference = predict(load_model(tiny_classifier), [path for path, _ in images], top_k=5)
    loaded = load_model(tiny_classifier)
    right = [(path, loaded.class_names[label], top) for (path, label), top in zip(images, reference)
             if top[0][0] == loaded.class_names[label]]
    assert len(right) >= 2, "the tiny model should get most of its samples right"
    page = browser_page
    with Server(["--checkpoint", str(tiny_classifier)]) as server:
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('10 classes')")

        # Choose a file, as with the file dialog.
        (first, first_class, first_top), (second, second_class, _) = right[:2]
        page.set_input_files("#file", str(first))
        page.wait_for_selector("#results .row")
        rows = page.locator("#results .row")
        assert rows.count() == 5
        assert rows.first.get_attribute("data-label") == first_class
        assert page.inner_text("#results .row .label") == first_class
        assert page.locator("#results .row .label").all_inner_texts() == [name for name, _ in first_top]
        assert "ms" in page.inner_text("#latency") and "batch of 1" in page.inner_text("#latency")
        screenshot = tmp_path / "page.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # Drop another one onto the drop zone.
        data = base64.b64encode(second.read_bytes()).decode()
        transfer = page.evaluate_handle("""(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""", data)
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        page.wait_for_function(f"document.querySelector('#results .row')?.dataset.label === {second_class!r}")

        # Something that is not an image: the server's error, on the page.
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "415 unsupported_media_type" in page.inner_text("#error")
        assert page.locator("#results .row").count() == 0
    print(f"screenshot: {screenshot}")


def test_page_draws_a_detectors_boxes(browser_page, tiny_detector, tmp_path):
    path = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(path)
    page = browser_page
    with Server(["--checkpoint", str(tiny_detector)]) as server:
        expected = httpx.post(server.url + "/predict?min_score=0.35", content=path.read_bytes(),
                              headers={"Content-Type": "image/png"}).json()["detections"]
        page.goto(server.url + "/?min_score=0.35")  # the page passes its query on to /predict
        page.wait_for_function("document.getElementById('model').textContent.includes('detection')")
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#results .row")
        labels = page.locator("#results .row .label").all_inner_texts()
        assert labels == [d["label"] for d in expected] and len(labels) >= 1
        drawn = page.evaluate("""() => {
            const c = document.getElementById("boxes");
            const pixels = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let red = 0;
            for (let i = 0; i < pixels.length; i += 4) if (pixels[i] > 200 && pixels[i + 3] > 0) red++;
            return red;
        }""")
        assert drawn > 100  # the boxes' outlines and label tags
        page.screenshot(path=str(tmp_path / "page-detector.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'page-detector.png'}")
