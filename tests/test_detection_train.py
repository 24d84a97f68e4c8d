"""A detector end to end on a tiny generated set: train (resume-safe outputs), eval (COCO mAP),
predict (boxes, drawn image), export with NMS inside the graph (ONNX Runtime, OpenVINO, int8)."""

import json
import re

import onnx
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from model_helpers import randomize_batchnorm

import mobilenets
from mobilenets.adapt import LONG_DETECTION_RUN
from mobilenets.detection.export import compare, kept_boxes
from mobilenets.detection.graph import DetectorGraph
from mobilenets.detection.predict import detect, load_detector
from mobilenets.detection.runtime import ExportedDetector, resize_batch
from mobilenets.detection.synthetic import make_detection_data
from mobilenets.detection.task import DETECTION_LR, DETECTION_LR_FLOOR, DetectionTask
from mobilenets.detection.tta import FlipTTA
from mobilenets.exported import FORMATS, read_meta
from mobilenets.finetune import is_backbone
from mobilenets.mobile import MOBILE_FORMATS
from mobilenets.run_config import make_config

MODEL = ["--model", "ssdlite_mobilenet_v3_small", "--reduced-tail", "--width-mult", "0.25", "--input-size", "96"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    from datasets import fake_fashion_mnist

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASHION_MNIST_DIR", str(fake_fashion_mnist(root / "fmnist")))
        data = make_detection_data(root / "data", train=24, val=6, size=96, seed=1)
    out = root / "run"
    from mobilenets.cli import main

    assert main(["train", *MODEL, "--data", str(data["train"]), "--val-data", str(data["val"]), "--epochs", "2",
                 "--batch-size", "8", "--out", str(out)]) == 0
    return data, out


def test_training_writes_detection_outputs(trained):
    _, out = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_box_loss", "train_cls_loss", "val_map", "val_map50", "val_map75"):
        assert all(isinstance(r[key], float) for r in records), key
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["class_names"][0] == "T-shirt/top" and ckpt["category_ids"] == list(range(1, 11))
    assert ckpt["model_args"]["reduced_tail"] and ckpt["model_args"]["input_size"] == 96
    # the default recipe trains classifiers with AdamW, detectors with SGD at the detection lr
    recipe = ckpt["config"]["recipe"]
    assert (recipe["optimizer"], recipe["lr"], recipe["weight_decay"]) == ("sgd", DETECTION_LR, 5e-5)
    # from scratch the default boxes are fitted to the training boxes, and the model is built with them
    assert ckpt["model_args"]["box_scales"] == recipe["box_scales"]
    model = mobilenets.create_model(**ckpt["model_args"])
    assert model.anchor_generator.scales[0] == pytest.approx(recipe["box_scales"][0])
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_finetuning_keeps_the_default_boxes_of_its_weights(trained, tmp_path):
    data, out = trained
    cfg = make_config("ssdlite_mobilenet_v3_small", str(data["train"]), str(tmp_path / "ft"), val_data=str(data["val"]),
                      reduced_tail=True, weights=str(out / "best.pt"))
    resolved = DetectionTask(cfg).resolve(cfg.recipe, 1)
    assert resolved.box_scales == (0.2, 0.95)
    assert resolved.lr_floor == 0.0  # fine-tuning decays to zero
    assert resolved.batch_size == 8  # 24 images: the detectors' smallest default batch
    given = make_config("ssdlite_mobilenet_v3_small", str(data["train"]), str(tmp_path / "g"),
                        val_data=str(data["val"]), reduced_tail=True, box_scales=(0.1, 0.6))
    assert DetectionTask(given).resolve(given.recipe, 1).box_scales == (0.1, 0.6)
    # from scratch, a short run's cosine ends at DETECTION_LR_FLOOR of the peak, a long one at zero
    assert DetectionTask(given).resolve(given.recipe.replace(epochs=13), 1).lr_floor == DETECTION_LR_FLOOR
    assert DetectionTask(given).resolve(given.recipe.replace(epochs=LONG_DETECTION_RUN), 1).lr_floor == 0.0


def test_default_batch_and_warm_up_follow_the_runs_steps(trained, tmp_path):
    data, _ = trained
    cfg = make_config("ssdlite_mobilenet_v3_small", str(data["train"]), str(tmp_path / "g"),
                      val_data=str(data["val"]), reduced_tail=True, box_scales=(0.1, 0.6))
    task = DetectionTask(cfg)
    records = task.train_set.records

    def default(images: int, epochs: int, processes: int) -> tuple[int, float]:
        task.train_set.records = (records * (images // len(records) + 1))[:images]
        recipe = task.resolve(cfg.recipe.replace(epochs=epochs), processes)
        return recipe.batch_size, recipe.warmup_epochs

    # 13 epochs of 2,000 canvases and 2 of 13,000 are the same 3,250 steps of 8 images in all
    assert default(2000, 13, 2) == (4, 1.0)
    assert default(13000, 2, 2) == (4, 0.15)  # warm-up over 250 steps, not a whole epoch
    assert default(2000, 13, 1) == (8, 1.0)
    assert default(2000, 26, 2) == (8, 1.0)  # a longer run: larger batches
    assert default(1200, 8, 1) == (8, 1.0)  # the demo's: warm-up over its first epoch (150 steps)


def test_backbone_from_a_grey_classifier_trains_frozen(trained, capsys, tmp_path):
    data, _ = trained
    grey = mobilenets.create_model("mobilenet_v3_small", width_mult=0.25, in_chans=1, num_classes=10)
    mobilenets.save_weights(grey, tmp_path / "fmnist.pt")  # a Fashion-MNIST classifier's kind of file
    out = tmp_path / "ft"
    code, _, err = run_cli(capsys, "train", "--model", "ssdlite_mobilenet_v3_small", "--width-mult", "0.25",
                           "--input-size", "96", "--weights-backbone", tmp_path / "fmnist.pt", "--freeze-backbone",
                           "--data", data["train"], "--val-data", data["val"], "--epochs", "1", "--out", out)
    assert code == 0, err
    assert f"backbone from {tmp_path / 'fmnist.pt'}" in err and "stem adapted" in err
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["config"]["weights_backbone"] == str(tmp_path / "fmnist.pt")
    after = ckpt["train_state"]["model"]
    assert torch.equal(after["backbone.blocks.2.dw.conv.weight"], grey.blocks[2].dw.conv.weight)  # frozen
    assert torch.equal(after["backbone.blocks.2.dw.bn.running_var"], grey.blocks[2].dw.bn.running_var)
    model = mobilenets.create_model("ssdlite_mobilenet_v3_small", width_mult=0.25, input_size=96, num_classes=11)
    head = [name for name, _ in model.named_parameters() if not is_backbone(name)]
    optimizer = ckpt["train_state"]["optimizer"]
    assert len(optimizer["state"]) == sum(len(g["params"]) for g in optimizer["param_groups"]) == len(head) > 50


def test_backbone_weights_in_a_config_are_checked(tmp_path):
    with pytest.raises(ValueError, match="give --weights or --weights-backbone"):  # neither is silently dropped
        make_config("ssdlite_mobilenet_v3_small", "train.json", str(tmp_path / "a"), weights="w.pt",
                    weights_backbone="b.pt")
    with pytest.raises(ValueError, match="mobilenet_v2 is a classifier: use --weights"):
        make_config("mobilenet_v2", "fashion-mnist", str(tmp_path / "b"), weights_backbone="b.pt")


def test_eval_reports_coco_map(trained, capsys):
    data, out = trained
    code, text, _ = run_cli(capsys, "eval", "--checkpoint", out / "best.pt", "--data", data["val"], "--json")
    metrics = json.loads(text)
    assert code == 0 and metrics["images"] == 6
    assert set(metrics) >= {"map", "map50", "map75", "map_small", "map_medium", "map_large"}
    assert 0 <= metrics["map"] <= metrics["map50"] <= 1
    sizes = [metrics[k] for k in ("map_small", "map_medium", "map_large")]
    assert all(v is None or 0 <= v <= 1 for v in sizes)  # null: no object of that size, never -1


def test_eval_and_predict_with_flip_tta(trained, capsys):
    data, out = trained
    code, text, _ = run_cli(capsys, "eval", "--checkpoint", out / "best.pt", "--data", data["val"], "--tta")
    assert code == 0 and "with flip TTA:" in text and "mAP@[.5:.95]" in text
    code, text, _ = run_cli(capsys, "eval", "--checkpoint", out / "best.pt", "--data", data["val"], "--tta", "--json")
    metrics = json.loads(text)
    assert metrics["tta"] == "flip" and metrics["images"] == 6 and 0 <= metrics["map"] <= metrics["map50"] <= 1
    # predict --tta prints the boxes of the averaged views
    image = data["val"].parent / "val" / "000001.png"
    code, text, err = run_cli(capsys, "predict", "--checkpoint", out / "best.pt", image, "--tta", "--min-score", "0",
                              "--top-k", "1")
    assert code == 0, err
    loaded = load_detector(out / "best.pt")
    loaded.model = FlipTTA(loaded.model)
    best = detect(loaded, [image], 0.0)[0][0]
    printed = [f"{100 * best.score:.2f}%", *best.label.split(), *(f"{v:.1f}" for v in best.box)]
    assert text.splitlines()[1].split() == printed
    code, _, err = run_cli(capsys, "predict", "--checkpoint", out / "best.pt", image, "--tta", "shift")
    assert_one_line_error(code, err, "--tta shift is for classifiers: a detector's views are flip")


def test_predict_prints_and_draws_boxes(trained, capsys, tmp_path):
    data, out = trained
    image = data["val"].parent / "val" / "000001.png"
    code, text, err = run_cli(capsys, "predict", "--checkpoint", out / "best.pt", image, "--min-score", "0",
                              "--save", tmp_path / "drawn")
    assert code == 0, err
    first, *boxes = text.splitlines()
    assert re.fullmatch(rf"{re.escape(str(image))}: \d+ object\(s\)", first) and len(boxes) > 1
    label = boxes[0].split()[1]
    assert label in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle")  # (the last name has a space)
    assert (tmp_path / "drawn" / "000001-boxes.png").read_bytes()[:4] == b"\x89PNG"
    code, text, err = run_cli(capsys, "predict", "--checkpoint", out / "best.pt", image, "--min-score", "0",
                              "--top-k", "2")
    assert code == 0 and text.splitlines() == [f"{image}: 2 object(s)", *boxes[:2]]  # the best 2
    namesake = data["val"].parent / "train" / "000001.png"  # the same name in another folder
    code, text, err = run_cli(capsys, "predict", "--checkpoint", out / "best.pt", image, namesake, "--top-k", "1",
                              "--save", tmp_path / "both")
    assert code == 0 and sorted(p.name for p in (tmp_path / "both").iterdir()) == [
        "000001-boxes-2.png", "000001-boxes.png"]


def randomized(model):
    randomize_batchnorm(model)  # and head outputs that vary: distinct scores
    for m in model.head.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, 0, 0.05)
    return model.eval()


def test_graph_gives_the_models_own_detections():
    model = randomized(mobilenets.create_model("ssdlite_mobilenet_v3_small", width_mult=0.5, num_classes=4,
                                               input_size=128))
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    with torch.no_grad():
        own = model(images)
        graph = DetectorGraph(model, max_detections=20).eval()(torch.stack(images))
    # the model's post-processing (torchvision's: top 300 per class, batched NMS) and the graph's
    # (ONNX NonMaxSuppression per class, top K) keep the same best boxes
    top = [torch.stack([o["boxes"][:20] for o in own]), torch.stack([o["scores"][:20] for o in own]),
           torch.stack([o["labels"][:20] for o in own])]
    box, score = compare(top, graph)
    assert box < 1e-3 and score < 1e-5


def test_verification_lets_nms_break_a_tie_either_way():
    # Two overlapping boxes of one label and the same score: NMS keeps either, and a runtime that
    # keeps the other one is right. Anything else still counts as a difference.
    a, a2, b = [0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0]  # IoU(a, a2) 0.82

    def detections(first, score=0.5):
        return [torch.tensor([[first, b, [0.0] * 4]]), torch.tensor([[score, 0.4, 0.0]]), torch.tensor([[1, 2, 0]])]

    def candidates(score_of_a2):  # the reference's boxes (N, A, 4) and scores (N, C, A) before NMS
        return torch.tensor([[a, a2, b]]), torch.tensor([[[0.5, score_of_a2, 0.0], [0.0, 0.0, 0.4]]])

    reference = detections(a)
    assert compare(reference, detections(a2)) == pytest.approx((1.0, 0.0))
    assert compare(reference, detections(a2), candidates=candidates(0.5)) == (0.0, 0.0)
    assert compare(reference, detections(a2), candidates=candidates(0.3)) == pytest.approx((1.0, 0.0))  # not there
    apart = compare(reference, detections(a2), candidates=candidates(0.5), iou_threshold=0.9)  # NMS keeps both
    assert apart == pytest.approx((1.0, 0.0))
    assert compare(reference, detections(a2, 0.49), candidates=candidates(0.49)) == pytest.approx((1.0, 0.01))


def test_int8_agreement_counts_boxes_over_all_images():
    box, other = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]
    # image 1: nothing scored >= 0.3; image 2: two boxes, of which the export finds one (same label, IoU >= 0.5)
    reference = [[torch.tensor([box]), torch.tensor([box, other])], [torch.tensor([0.2]), torch.tensor([0.9, 0.8])],
                 [torch.tensor([1]), torch.tensor([1, 2])]]
    exported = [[torch.tensor([box]), torch.tensor([[1.0, 0.0, 11.0, 10.0], other])], None,
                [torch.tensor([1]), torch.tensor([1, 3])]]
    assert kept_boxes(reference, exported) == (1, 2)  # one image without boxes does not count as found
    assert kept_boxes([reference[0][:1], reference[1][:1], reference[2][:1]], exported) == (0, 0)


@pytest.mark.parametrize("fmt, int8", [("onnx", False), ("openvino", True), ("executorch", False), ("executorch", True),
                                       ("tflite", True)])
def test_export_verified_in_its_runtime(trained, capsys, tmp_path, fmt, int8):
    data, out = trained
    path = tmp_path / ("det" + FORMATS[fmt].suffixes[0])
    code, text, err = run_cli(capsys, "export", "--checkpoint", out / "best.pt", "--format", fmt, "--out", path,
                              "--calib-data", data["train"], *(["--int8"] if int8 else []))
    assert code == 0, err
    if int8:  # a tiny detector may score no box >= 0.3 on the calibration images; then it says so
        assert "int8 finds" in text or "int8 was not compared" in text + err, text + err
    else:
        assert "same boxes, scores and labels as PyTorch" in text
    assert ("NMS and top-K follow the file" in text) == (fmt in ("executorch", "tflite"))
    if int8 and fmt in MOBILE_FORMATS:
        # the network is int8, the box decoding and the output float: an int8 output would put
        # every box corner on its one grid of 256 values (docs/results.md, section 9)
        corners = MOBILE_FORMATS[fmt].forward(path)(torch.rand(2, 3, 96, 96))[..., :4]
        assert corners.unique().numel() > 256
    if fmt == "onnx":
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "NonMaxSuppression" in ops and all(n.domain in ("", "ai.onnx") for n in onnx.load(str(path)).graph.node)
        exported = ExportedDetector(path, read_meta(path))
        model = mobilenets.create_model(**torch.load(out / "best.pt", weights_only=True)["model_args"])
        model.load_state_dict(torch.load(out / "best.pt", weights_only=True)["model"])
        images = [torch.rand(3, 120, 80), torch.rand(3, 96, 96)]
        with torch.no_grad():
            theirs = DetectorGraph(model.eval(), 100)(resize_batch(images, 96))
        mine = exported.run(resize_batch(images, 96))
        assert max(compare(theirs, mine)) < 1e-2
        boxes = exported(images)[0]["boxes"]
        assert (boxes[:, 2] <= 80 + 1e-3).all() and (boxes[:, 3] <= 120 + 1e-3).all()  # in the image's own pixels
        code, _, err = run_cli(capsys, "eval", "--checkpoint", path, "--data", data["val"], "--tta")
        assert_one_line_error(code, err, "--tta runs a checkpoint in PyTorch")
    code, text, _ = run_cli(capsys, "eval", "--checkpoint", path, "--data", data["val"], "--json")
    assert code == 0 and json.loads(text)["images"] == 6


def test_bad_detection_inputs_are_one_line(trained, capsys, tmp_path):
    data, out = trained
    code, _, err = run_cli(capsys, "train", *MODEL, "--data", data["train"], "--out", tmp_path / "r")
    assert_one_line_error(code, err, "COCO JSON training data needs --val-data VAL.json")
    code, _, err = run_cli(capsys, "train", *MODEL, "--data", data["train"], "--val-data", data["val"],
                           "--box-scales", "0.6", "0.3", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "box-scales must satisfy 0 < smallest < largest <= 1, got 0.6 and 0.3")
    code, _, err = run_cli(capsys, "train", "--model", "mobilenet_v1", "--data", "fashion-mnist",
                           "--box-scales", "0.1", "0.5", "--out", tmp_path / "c")
    assert_one_line_error(code, err, "--box-scales is for detectors; mobilenet_v1 is a classifier")
    code, _, err = run_cli(capsys, "train", "--model", "mobilenet_v1", "--data", "fashion-mnist",
                           "--weights-backbone", out / "best.pt", "--out", tmp_path / "c")
    assert_one_line_error(code, err, "mobilenet_v1 is a classifier: use --weights")
    code, _, err = run_cli(capsys, "train", *MODEL, "--data", data["train"], "--val-data", data["val"],
                           "--cutmix", "1", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "--cutmix is for classifiers; ssdlite_mobilenet_v3_small is a detector")
    code, _, err = run_cli(capsys, "train", *MODEL, "--data", data["train"], "--val-data", data["val"],
                           "--weights-backbone", out / "best.pt", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "holds a detector's weights; a backbone starts from a classifier's")
    (tmp_path / "bad.json").write_text("{}")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", out / "best.pt", "--data", tmp_path / "bad.json")
    assert_one_line_error(code, err, "is not COCO JSON")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", out / "best.pt", "--data", "fashion-mnist")
    assert_one_line_error(code, err, "a detector is measured on a COCO JSON file or a Pascal VOC folder")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", out / "best.pt", "--data", data["val"], "--tta", "shift")
    assert_one_line_error(code, err, "--tta shift is for classifiers: a detector's views are flip")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", out / "best.pt", "--data", data["val"], "--split", "val")
    assert_one_line_error(code, err, "--split is for classifiers")
    code, _, err = run_cli(capsys, "export", "--checkpoint", out / "best.pt", "--format", "torchscript",
                           "--out", tmp_path / "d.ts")
    assert_one_line_error(code, err, "detectors export to onnx, openvino, executorch, tflite, not torchscript")
