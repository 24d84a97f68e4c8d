"""``mobilenets serve`` as a client sees it: a real server on a free loopback port, real HTTP."""

import concurrent.futures
import io
import random
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from datasets import png_header
from PIL import Image
from serving import Server, png_bytes, samples

from mobilenets.predict import load_model, predict
from mobilenets.serve.batcher import Batcher
from mobilenets.serve.servable import load_servable
from mobilenets.serve.tasks import Item

MAX_PIXELS = 1_000_000
MAX_BODY_MB = 0.5


@pytest.fixture(scope="module")
def server(tiny_classifier):
    args = ["--checkpoint", tiny_classifier, "--max-batch", "4", "--max-wait-ms", "2",
            "--max-pixels", MAX_PIXELS, "--max-body-mb", MAX_BODY_MB]
    with Server([str(a) for a in args]) as s:
        yield s


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return samples(tmp_path_factory.mktemp("samples"))


def test_predict_matches_the_predict_command(server, tiny_classifier, images):
    path, _ = images[0]
    reference = predict(load_model(tiny_classifier), [path], top_k=3)[0]
    with httpx.Client(base_url=server.url) as client:
        raw = client.post("/predict?top_k=3", content=path.read_bytes(), headers={"Content-Type": "image/png"})
        form = client.post("/predict?top_k=3", files={"image": (path.name, path.read_bytes(), "image/png")})
    assert raw.status_code == form.status_code == 200, raw.text
    for response in (raw, form):
        body = response.json()
        assert body["model"] == "best.pt" and body["task"] == "classification"
        assert [p["label"] for p in body["predictions"]] == [name for name, _ in reference]
        assert [p["score"] for p in body["predictions"]] == pytest.approx([s for _, s in reference], abs=1e-4)
        assert body["model_ms"] > 0 and body["total_ms"] >= body["model_ms"] and body["batch_size"] >= 1


def test_health_page_and_metrics(server):
    with httpx.Client(base_url=server.url) as client:
        health = client.get("/healthz").json()
        page = client.get("/")
        metrics = client.get("/metrics")
    assert health["status"] == "ok" and health["classes"] == 10 and health["input_size"] == 32
    assert health["backend"] == "eager" and health["max_batch"] == 4
    assert page.headers["content-type"].startswith("text/html") and 'id="drop"' in page.text
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("mobilenets_requests_total", "mobilenets_errors_total", "mobilenets_batch_size_bucket",
                 "mobilenets_request_duration_seconds_bucket", "mobilenets_inference_duration_seconds_bucket",
                 "mobilenets_queue_depth", 'mobilenets_model_info{backend="eager"'):
        assert name in metrics.text, name


PNG = {"Content-Type": "image/png"}
BAD_INPUTS = {
    "non-image bytes": (b"this is not an image", PNG, 400, "not_an_image"),
    "truncated png": ("truncated", PNG, 400, "broken_image"),
    "empty body": (b"", PNG, 400, "empty_body"),
    "wrong content type": ("valid", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    "json content type": (b'{"image": 1}', {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
    "over the pixel limit": (png_bytes(1200, 1000), PNG, 413, "too_many_pixels"),
    "decompression bomb": (png_header(100_000, 100_000), PNG, 413, "too_many_pixels"),
    "too elongated": (png_bytes(500, 10), PNG, 400, "too_elongated"),
    "body over the size limit": (b"\0" * int(MAX_BODY_MB * 1e6 + 1), PNG, 413, "body_too_large"),
    "bad top_k": ("valid", PNG, 400, "bad_top_k"),
    "top_k a superscript digit": ("valid", PNG, 400, "bad_top_k"),
    "bad min_score": ("valid", PNG, 400, "bad_min_score"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_json_error(server, images, case):
    body, headers, status, code = BAD_INPUTS[case]
    valid = images[0][0].read_bytes()
    body = {"valid": valid, "truncated": valid[: len(valid) // 2]}.get(body, body)
    url = {"bad top_k": "/predict?top_k=zero", "top_k a superscript digit": "/predict?top_k=%C2%B2",
           "bad min_score": "/predict?min_score=2"}.get(case, "/predict")
    response = httpx.post(server.url + url, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"] == code and error["status"] == status and error["message"]
    if code == "too_many_pixels":  # the server's limit, not PIL's
        assert f"the limit is {MAX_PIXELS:,}" in error["message"], error


def test_chunked_body_over_the_limit_and_bad_forms(server, images):
    def chunks():
        for _ in range(20):
            yield b"\0" * 64_000  # no Content-Length: counted as it arrives

    with httpx.Client(base_url=server.url) as client:
        chunked = client.post("/predict", content=chunks(), headers=PNG)
        no_file = client.post("/predict", files={"note": (None, b"no image here")})
        text_form = client.post("/predict", data={"note": "no image here"})
        two_files = client.post("/predict", files=[("a", ("a.png", images[0][0].read_bytes())),
                                                   ("b", ("b.png", images[1][0].read_bytes()))])
    assert (chunked.status_code, chunked.json()["error"]) == (413, "body_too_large")
    assert (no_file.status_code, no_file.json()["error"]) == (400, "no_file")
    assert (text_form.status_code, text_form.json()["error"]) == (415, "unsupported_media_type")
    assert (two_files.status_code, two_files.json()["error"]) == (400, "bad_request")


def malformed_bodies(valid: bytes, n: int, seed: int = 0) -> list[bytes]:
    """Random bytes, truncations and byte flips of a valid PNG, and wrong magic numbers."""
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            bodies.append(rng.randbytes(rng.randrange(1, 2000)))
        elif kind == 1:
            bodies.append(valid[: rng.randrange(1, len(valid))])
        elif kind == 2:
            flipped = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                flipped[rng.randrange(8, len(flipped))] = rng.randrange(256)
            bodies.append(bytes(flipped))
        else:
            bodies.append(rng.choice([b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP"]) + rng.randbytes(64))
    return bodies


def test_hundreds_of_malformed_bodies_then_a_valid_one(server, images):
    valid = images[3][0].read_bytes()
    with httpx.Client(base_url=server.url) as client:
        for body in malformed_bodies(valid, 300):
            response = client.post("/predict", content=body, headers=PNG)
            assert response.status_code < 500, response.text  # a flipped byte may still decode: 200
            if response.status_code >= 400:
                assert response.json()["error"] in ("not_an_image", "broken_image", "too_many_pixels",
                                                    "too_elongated"), response.text
        last = client.post("/predict", content=valid, headers=PNG)
        metrics = client.get("/metrics").text
    assert last.status_code == 200 and len(last.json()["predictions"]) == 5
    assert 'mobilenets_errors_total{code="not_an_image"}' in metrics


def test_concurrent_requests_run_as_one_batch_and_sigterm_drains(tiny_classifier, images):
    # --max-wait-ms is long: a batch runs when it is full (4 requests), or on the deadline.
    args = ["--checkpoint", str(tiny_classifier), "--max-batch", "4", "--max-wait-ms", "3000"]
    with Server(args) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        results = [None] * 8

        def post(i):
            path, _ = images[i]
            results[i] = client.post("/predict", content=path.read_bytes(), headers=PNG)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.status_code == 200 for r in results)
        assert [r.json()["batch_size"] for r in results] == [4] * 8
        reference = predict(load_model(tiny_classifier), [path for path, _ in images[:8]], top_k=1)
        assert [r.json()["predictions"][0]["label"] for r in results] == [top[0][0] for top in reference]
        assert "mobilenets_batch_size_count 2.0" in client.get("/metrics").text

        # Three requests wait for a fourth; SIGTERM now must still answer all three, then exit 0.
        threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
        results[:3] = [None] * 3
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while "mobilenets_queue_depth 3.0" not in client.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stop() == 0
        for t in threads:
            t.join()
    assert [r.status_code for r in results[:3]] == [200] * 3, [r.text for r in results[:3]]
    assert [r.json()["batch_size"] for r in results[:3]] == [3] * 3
    assert "stopped" in server.output()


def test_unreadable_checkpoint_fails_at_start(capsys, tmp_path, tiny_classifier):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not an onnx model")
    bare = tmp_path / "weights.pt"
    torch.save(load_model(tiny_classifier).model.state_dict(), bare)
    cases = [
        (["--checkpoint", broken], "is not a readable PyTorch checkpoint"),
        (["--checkpoint", bare], "holds weights but no model arguments"),
        (["--checkpoint", tmp_path / "missing.pt"], "not found"),
        (["--checkpoint", onnx], "is not a readable ONNX model"),
        (["--checkpoint", tmp_path], "is a folder"),
        (["--checkpoint", tiny_classifier, "--max-batch", "0"], "--max-batch must be at least 1"),
        (["--checkpoint", tiny_classifier, "--threads", "0"], "--threads must be at least 1, got 0"),
        (["--checkpoint", tiny_classifier, "--max-wait-ms", "nan"], "--max-wait-ms must be a finite number"),
        (["--checkpoint", tiny_classifier, "--max-wait-ms", "-1"], "--max-wait-ms must be a finite number"),
        (["--checkpoint", tiny_classifier, "--max-body-mb", "inf"], "--max-body-mb must be a finite number above 0"),
        (["--checkpoint", tiny_classifier, "--int8"], "--int8 needs --calib-data"),
        (["--checkpoint", tiny_classifier, "--int8", "--calib-data", "fashion-mnist"], "int8 needs --backend ort"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, "serve", *argv)
        assert_one_line_error(code, err, message)


def test_port_in_use_is_one_line(capsys, tiny_classifier):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, "serve", "--checkpoint", tiny_classifier, "--port", port)
    assert_one_line_error(code, err, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_backends_give_the_eager_answer(tiny_classifier, images, backend, tmp_path):
    eager = load_servable(tiny_classifier, "eager")
    other = load_servable(tiny_classifier, backend, threads=1, log=lambda _: None)
    assert other.backend == backend and other.task.class_names == eager.task.class_names
    items = [Item(*eager.prepare(path.read_bytes()), top_k=10) for path, _ in images[:3]]
    for a, b in zip(eager.run_batch(items), other.run_batch(items)):
        assert [p["label"] for p in a["predictions"][:2]] == [p["label"] for p in b["predictions"][:2]]
        assert [p["score"] for p in a["predictions"]] == pytest.approx([p["score"] for p in b["predictions"]],
                                                                       abs=1e-4)


@pytest.mark.parametrize("fmt, suffix, backend, runtime", [("onnx", ".onnx", "ort", "ONNX Runtime"),
                                                            ("tflite", ".tflite", "litert", "LiteRT (XNNPACK)")])
def test_exported_file_is_served_in_its_runtime(tiny_classifier, images, tmp_path, capsys, fmt, suffix, backend,
                                                runtime):
    path = tmp_path / f"tiny{suffix}"
    assert run_cli(capsys, "export", "--checkpoint", tiny_classifier, "--format", fmt, "--out", path)[0] == 0
    served = load_servable(path)
    assert (served.backend, served.runtime, served.name) == (backend, runtime, path.name)
    result = served.run_batch([Item(*served.prepare(images[0][0].read_bytes()))])[0]
    reference = predict(load_model(tiny_classifier), [images[0][0]])[0]
    assert [p["label"] for p in result["predictions"]] == [name for name, _ in reference]
    with pytest.raises(ValueError, match=f"runs in {re.escape(runtime)}"):
        load_servable(path, "openvino")


def test_batcher_survives_a_failing_model():
    import asyncio

    calls = []

    def run_batch(items):
        calls.append(list(items))
        if "boom" in items:
            raise RuntimeError("the model failed")
        return [x.upper() for x in items]

    async def scenario():
        batcher = Batcher(run_batch, max_batch=2, max_wait=0.5)
        await batcher.start()
        failed = await asyncio.gather(batcher.submit("boom"), batcher.submit("b"), return_exceptions=True)
        ok = await asyncio.gather(batcher.submit("c"), batcher.submit("d"))
        await batcher.stop()
        return failed, ok

    failed, ok = asyncio.run(scenario())
    assert all(isinstance(e, RuntimeError) for e in failed)
    assert [result for result, _ in ok] == ["C", "D"] and [info.size for _, info in ok] == [2, 2]
    assert calls == [["boom", "b"], ["c", "d"]]


def test_decoded_images_are_the_models_crop(tiny_classifier):
    served = load_servable(tiny_classifier)
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 10, 10)).save(buf, "JPEG")
    image, size = served.prepare(buf.getvalue())
    assert size == (300, 200)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (1, 28, 28)  # grey, the crop (resized in the batch)


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    from mobilenets.preprocess import open_image
    from mobilenets.serve.decode import decode_image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    expected = (ramp >> 8).astype(np.uint8)
    for image in (decode_image(path.read_bytes(), grey=True), open_image(path, grey=True)):
        assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1  # PIL alone: 99.6 % at 255
    assert np.asarray(open_image(path)).shape == (64, 64, 3)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large"])
def test_eager_server_runs_a_folded_channels_last_copy_with_the_same_logits(name):
    from mobilenets import create_model
    from mobilenets.serve.servable import INPLACE_ACTIVATIONS, inference_copy

    torch.manual_seed(0)
    model = create_model(name, width_mult=0.5, num_classes=10).eval()
    for module in model.modules():  # BN statistics away from the identity, so folding changes the weights
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    served = inference_copy(model)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(served(x), model(x), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in served.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy: the model is untouched
    assert all(m.inplace for m in served.modules() if isinstance(m, INPLACE_ACTIVATIONS))
    stem = next(m for m in served.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)


def same_detections(a: list[dict], b: list[dict]) -> None:
    """The same boxes, labels and scores, in any order among equal scores."""
    key = lambda d: (d["label"], *d["box"])  # noqa: E731
    a, b = sorted(a, key=key), sorted(b, key=key)
    assert [d["label"] for d in a] == [d["label"] for d in b]
    assert [d["score"] for d in a] == pytest.approx([d["score"] for d in b], abs=1e-4)
    assert [v for d in a for v in d["box"]] == pytest.approx([v for d in b for v in d["box"]], abs=0.2)


def test_detector_is_served_with_boxes_in_the_images_pixels(tiny_detector, tmp_path, capsys):
    from mobilenets.detection.predict import detect, load_detector

    path = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(path)
    reference = [{"label": d.label, "score": d.score, "box": list(d.box)}
                 for d in detect(load_detector(tiny_detector), [path], min_score=0.0)[0]]
    eager = load_servable(tiny_detector)
    assert (eager.task.name, eager.task.input_size, len(eager.task.class_names)) == ("detection", 96, 10)
    served = eager.run_batch([Item(*eager.prepare(path.read_bytes()), min_score=0.0)])[0]["detections"]
    same_detections(served, reference)
    assert all(0 <= d["box"][0] <= d["box"][2] <= 200 and 0 <= d["box"][1] <= d["box"][3] <= 150 for d in served)

    onnx = tmp_path / "detector.onnx"
    assert run_cli(capsys, "export", "--checkpoint", tiny_detector, "--format", "onnx", "--out", onnx)[0] == 0
    exported = load_servable(onnx)
    assert (exported.backend, exported.task.name) == ("ort", "detection")
    found = exported.run_batch([Item(*exported.prepare(path.read_bytes()))])[0]["detections"]  # min_score 0.3
    best = sorted((d for d in reference if d["score"] >= 0.3), key=lambda d: -d["score"])[:100]  # the export's 100
    same_detections(found, best)

    with Server(["--checkpoint", str(tiny_detector)]) as server:
        response = httpx.post(server.url + "/predict?min_score=0&top_k=3", content=path.read_bytes(), headers=PNG)
        default = httpx.post(server.url + "/predict", content=path.read_bytes(), headers=PNG)
    body = response.json()
    assert response.status_code == 200 and body["task"] == "detection" and len(body["detections"]) == 3
    assert [d["score"] for d in body["detections"]] == sorted((d["score"] for d in body["detections"]), reverse=True)
    assert all(d["score"] >= 0.3 for d in default.json()["detections"])  # the default min_score

    code, _, err = run_cli(capsys, "serve", "--checkpoint", tiny_detector, "--int8", "--calib-data", "fashion-mnist")
    assert_one_line_error(code, err, "int8 detectors: export with")  # whatever the backend


def test_a_request_whose_client_leaves_is_dropped_from_the_queue(tiny_classifier, images):
    # A batch of 2 runs when full; the first request's client hangs up while it waits alone.
    args = ["--checkpoint", str(tiny_classifier), "--max-batch", "2", "--max-wait-ms", "60000"]
    body = images[0][0].read_bytes()
    with Server(args) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.monotonic() + 30
            while "mobilenets_queue_depth 1.0" not in client.get("/metrics").text and time.monotonic() < deadline:
                time.sleep(0.05)
        deadline = time.monotonic() + 30
        while 'code="client_closed_request"} 1.0' not in client.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = client.get("/metrics").text
        assert "mobilenets_queue_depth 0.0" in metrics and "mobilenets_batch_size_count 0.0" in metrics, metrics

        # Two new requests fill a batch of their own: the one that left takes no place in it.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: client.post("/predict", content=body, headers=PNG), range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["batch_size"] for a in answers] == [2, 2]
