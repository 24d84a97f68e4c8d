"""The ``mobilenets`` command: one sub-command per job, one-line errors, no tracebacks."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence

EXAMPLES = {
    "list": "mobilenets list",
    "cost": "mobilenets cost mobilenet_v1 --width-mult 0.5 --input-size 160\n"
    "  mobilenets cost ssdlite_mobilenet_v3_large --reduced-tail\n  mobilenets cost --paper",
    "predict": "mobilenets predict --model mobilenet_v2 --weights mobilenet_v2.pth cat.jpg\n"
    "  mobilenets predict --checkpoint runs/fmnist/best.pt shirt.png\n"
    "  mobilenets predict --checkpoint fmnist-int8.tflite shirt.png\n"
    "  mobilenets predict --checkpoint runs/det/best.pt street.jpg --save drawn/",
    "train": "mobilenets train --model mobilenet_v1 --data fashion-mnist --recipe fashion-mnist --out runs/fmnist\n"
    "  mobilenets train --model mobilenet_v1 --width-mult 0.5 --data ~/digits --epochs 8 --hflip 0 --out runs/digits\n"
    "  mobilenets train --model mobilenet_v3_small --weights mobilenet_v3_small.pth --data ~/flowers --epochs 5 "
    "--out runs/flowers\n"
    "  mobilenets train --model ssdlite_mobilenet_v3_large --reduced-tail --data det/train.json "
    "--val-data det/val.json --out runs/det\n"
    "  mobilenets train --model mobilenet_v3_small --data ~/photos --val-split 0.1 --recipe torchvision-v3 "
    "--epochs 30 --out runs/photos\n"
    "  torchrun --standalone --nproc_per_node=2 -m mobilenets train --model mobilenet_v1 --data fashion-mnist "
    "--recipe fashion-mnist --out runs/ddp",
    "eval": "mobilenets eval --checkpoint runs/fmnist/best.pt --data fashion-mnist --json",
    "export": "mobilenets export --checkpoint runs/fmnist/best.pt --format onnx --out fmnist.onnx\n"
    "  mobilenets export --checkpoint runs/fmnist/best.pt --format openvino --out fmnist-int8.xml --int8 "
    "--calib-data fashion-mnist\n"
    "  mobilenets export --model mobilenet_v3_large --format exported-program --out v3.pt2\n"
    "  mobilenets export --checkpoint runs/fmnist/best.pt --format tflite --out fmnist-int8.tflite --int8 "
    "--calib-data fashion-mnist\n"
    "  mobilenets export --model mobilenet_v3_small --format executorch --out v3s.pte",
    "bench": "mobilenets bench --model mobilenet_v1 --threads 2\n"
    "  mobilenets bench --model mobilenet_v2 --batch-size 32 --backends eager ort openvino --json\n"
    "  mobilenets bench --model ssdlite_mobilenet_v3_large --reduced-tail --threads 2\n"
    "  mobilenets bench --compare-conv",
    "sweep": "mobilenets sweep --backends eager openvino --out runs/sweep",
    "make-detection-data": "mobilenets make-detection-data --out data/fmnist-det\n"
    "  mobilenets make-detection-data --out data/fmnist-det-small --train 200 --val 50 --size 256",
    "serve": "mobilenets serve --checkpoint runs/fmnist/best.pt   # then open http://127.0.0.1:8000/\n"
    "  mobilenets serve --checkpoint runs/fmnist/best.pt --backend ort --max-batch 32 --max-wait-ms 5\n"
    "  mobilenets serve --checkpoint fmnist-int8.onnx --port 9000\n"
    "  mobilenets serve --checkpoint runs/det/best.pt   # a detector: boxes, drawn on the page\n"
    "  curl -H 'Content-Type: image/png' --data-binary @shirt.png http://127.0.0.1:8000/predict",
}


class CliError(Exception):
    """A user error found by the command line itself (bad combination of options)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _subparser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_model_args(p: argparse.ArgumentParser, *, name_positional: bool) -> None:
    if name_positional:
        p.add_argument("model", nargs="?", help="model name (see `mobilenets list`)")
    else:
        p.add_argument("--model", help="model name (see `mobilenets list`)")
    p.add_argument("--width-mult", type=_number, default=1.0, help="width multiplier alpha (default 1.0)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mobilenets", description="Build, count, train, export and benchmark MobileNets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    _subparser(sub, "list", "list the models and their parameter counts")

    p = _subparser(sub, "cost", "mult-adds and parameters per layer and per layer type")
    _add_model_args(p, name_positional=True)
    p.add_argument("--input-size", type=int, default=None,
                   help="input side in pixels (rho = size / 224; default 224, a detector's own size)")
    p.add_argument("--num-classes", type=int, default=None, help="default 1000 (detectors: 91)")
    p.add_argument("--reduced-tail", action="store_true", help="V3 detectors: C4-C5 halved (V3 Sec. 6.3)")
    p.add_argument("--json", action="store_true", help="print JSON (macs, params, by_type, layers)")
    p.add_argument("--paper", action="store_true", help="compare with the papers' tables")

    p = _subparser(sub, "predict", "top-5 classes of images, or the boxes a detector finds")
    _add_model_args(p, name_positional=False)
    p.add_argument("--weights", help="weights file (mobilenets, torchvision or timm)")
    p.add_argument("--checkpoint", help="training checkpoint (brings model, classes, preprocessing) "
                   "or a model from `mobilenets export`")
    p.add_argument("--input-size", type=int, default=None,
                   help="input side (default: the checkpoint's; 224 for --model)")
    p.add_argument("--top-k", type=int, default=None,
                   help="classes to print per image (default 5); detectors: the best K boxes (default all)")
    p.add_argument("--min-score", type=float, default=0.3, help="detectors: boxes scored at least this "
                   "(default 0.3)")
    p.add_argument("--save", metavar="DIR", help="detectors: write each image with its boxes drawn into DIR")
    _add_tta_arg(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")

    p = _subparser(sub, "train", "train a model from scratch or fine-tune it from weights (or resume a run)")
    _add_train_args(p)

    p = _subparser(sub, "eval", "top-1, top-5, loss, per-class accuracy and confusion matrix of a checkpoint; "
                   "a detector's COCO mAP")
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (best.pt / last.pt) or a model from `mobilenets export`")
    p.add_argument("--data", required=True,
                   help="fashion-mnist (its 10,000 test images) or an image folder (its test/ part, else val/); "
                   "detectors: a COCO JSON file or a Pascal VOC folder (its val split)")
    _add_tta_arg(p)
    p.add_argument("--split", choices=["val", "test"],
                   help="the split to measure (default: test where there is one, else val); val is held out "
                   "as the training run did (its seed and --val-split, read from a training checkpoint)")
    p.add_argument("--val-split", type=float, default=None, help="for a folder without val/: held-out fraction")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--confusion", help="confusion-matrix PNG (default: CHECKPOINT.confusion.png)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = _subparser(sub, "export", "export for inference (ONNX, OpenVINO, TorchScript, torch.export; ExecuTorch, "
                   "LiteRT, Core ML for phones), verified in its runtime; optionally int8")
    _add_model_args(p, name_positional=False)
    p.add_argument("--checkpoint", help="training checkpoint (brings model, classes, preprocessing)")
    p.add_argument("--weights", help="weights for --model (mobilenets, torchvision or timm)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs for --model (default 1000)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels for --model (default 3)")
    p.add_argument("--format", required=True,
                   help="onnx | openvino | torchscript | exported-program | executorch | tflite | coreml")
    p.add_argument("--out", required=True, help="output file: .onnx, .xml (+ .bin), .ts, .pt2, .pte, .tflite or "
                   ".mlpackage (a folder)")
    p.add_argument("--input-size", type=int, default=None, help="input side (default: the checkpoint's, else 224)")
    p.add_argument("--int8", action="store_true",
                   help="post-training static int8 quantization (onnx, openvino, executorch, tflite)")
    p.add_argument("--calib-data", help="--int8 calibration images: fashion-mnist or an image folder; detectors: a "
                   "COCO JSON file or a VOC folder, also the images an fp32 export is verified on")
    p.add_argument("--calib-size", type=int, default=None, help="calibration images (default 300)")

    from .bench import BACKENDS

    p = _subparser(sub, "bench", "inference latency on every backend, against the reference implementation")
    _add_model_args(p, name_positional=False)
    p.add_argument("--input-size", type=int, default=None, help="default 224; a detector's own (320 or 300)")
    p.add_argument("--reduced-tail", action="store_true", help="V3: C4-C5 halved (torchvision's SSDLite backbone)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="threads of every backend (default: all CPUs)")
    p.add_argument("--backends", nargs="+", metavar="NAME", help=f"default: all of {', '.join(BACKENDS)}")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per backend (after warm-up)")
    p.add_argument("--rounds", type=int, default=1,
                   help="time every backend this many times, alternating the order; report the medians")
    p.add_argument("--compare-conv", action="store_true",
                   help="mobilenet_v1 vs mobilenet_v1_conv and VGG-16: measured vs mult-add speed-up")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = _subparser(sub, "sweep", "mobilenet_v1 at widths 1, .75, .5, .25 x inputs 224, 192, 160, 128: mult-adds, "
                   "params, latency -> CSV and Pareto plot")
    p.add_argument("--backends", nargs="+", metavar="NAME", help="default: eager ort openvino")
    p.add_argument("--out", default="runs/sweep", help="folder for sweep.csv and sweep.png (default: runs/sweep)")
    p.add_argument("--threads", type=int, default=None, help="threads of every backend (default: all CPUs)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per configuration")

    p = _subparser(sub, "make-detection-data", "a detection set: Fashion-MNIST items at several scales, overlapping, "
                   "on cluttered canvases (COCO JSON + PNGs)")
    p.add_argument("--out", required=True, help="folder for train.json, val.json, train/ and val/")
    p.add_argument("--train", type=int, default=2000, help="training canvases (default 2000)")
    p.add_argument("--val", type=int, default=400, help="validation canvases (default 400)")
    p.add_argument("--size", type=int, default=320, help="canvas side in pixels (default 320)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-items", type=int, nargs=2, metavar=("FEWEST", "MOST"), default=None,
                   help="items asked for on a training canvas (default 1 6, as on the validation canvases, "
                        "which keep it): denser training canvases show more items a step")

    _add_serve_args(_subparser(sub, "serve", "serve a model over HTTP (POST /predict, /healthz, /metrics, "
                                             "a page at /) with dynamic batching"))
    return parser


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (classifier or detector), or a model from `mobilenets export` (runs in "
                   "its own runtime)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--backend", choices=["eager", "ort", "openvino"], default=None,
                   help="for a training checkpoint: PyTorch (eager, the default), or exported at start to ONNX "
                   "Runtime (ort) or OpenVINO")
    p.add_argument("--int8", action="store_true",
                   help="classifiers, with --backend ort|openvino: int8 post-training quantization")
    p.add_argument("--calib-data", help="--int8 calibration images: fashion-mnist or an image folder")
    p.add_argument("--calib-size", type=int, default=None, help="--int8: calibration images (default 300)")
    p.add_argument("--max-batch", type=int, default=16, help="most requests run as one batch (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest a request waits for others to fill its batch (default 5)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond this get 503 (default 256)")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MB (default 10)")
    p.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image in pixels (default 25,000,000)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all CPUs)")
    p.add_argument("--access-log", action="store_true", help="log every request")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .recipes import BOX_AUGMENTS, OPTIMIZERS

    p.add_argument("--model", required=True, help="model name (see `mobilenets list`)")
    p.add_argument("--data", required=True, help="fashion-mnist, an image folder (train/ and val/, or --val-split); "
                   "detectors: COCO train.json (with --val-data) or a Pascal VOC folder")
    p.add_argument("--val-data", help="detectors: the validation COCO JSON")
    p.add_argument("--reduced-tail", action="store_true", default=None, help="V3 detectors: C4-C5 halved")
    p.add_argument("--out", required=True, help="output folder for checkpoints, metrics and plots")
    p.add_argument("--recipe", default="default",
                   help="default (adapts to the data and the epochs) | paper | torchvision-v2 | torchvision-v3 | "
                   "fashion-mnist")
    p.add_argument("--weights", help="start from these weights (mobilenets, torchvision or timm file): fine-tuning; "
                   "a classifier for another class count is re-initialised")
    p.add_argument("--weights-backbone", help="detectors: start the backbone from a classifier's weights "
                   "(mobilenets, torchvision or timm file; full tail); extra layers and heads start fresh")
    p.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="with --weights or --weights-backbone: train the head only (backbone and its BN "
                   "statistics frozen)")
    p.add_argument("--backbone-lr-scale", type=float, default=None, help="with --weights or --weights-backbone: "
                   "the backbone's learning rate as a fraction of the head's (e.g. 0.1)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--val-split", type=float, default=None, help="hold out this fraction of the training images")
    p.add_argument("--in-chans", type=int, default=None, help="1 or 3 (default: follows the data)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default 0)")
    p.add_argument("--subset", type=int, default=None,
                   help="train on a seeded random sample of N images, validate on N/6 (quick runs)")
    g = p.add_argument_group("recipe overrides (default: the recipe's value)")
    g.add_argument("--width-mult", type=_number, default=None, help="width multiplier alpha")
    g.add_argument("--input-size", type=int, default=None, help="input side in pixels (rho = size / 224)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="images per process and step")
    g.add_argument("--optimizer", choices=list(OPTIMIZERS), default=None,
                   help="brings its own defaults (epsilon, weight decay; the lr too, except in the default "
                   "recipe, which decides it) unless given too")
    g.add_argument("--lr", type=float, default=None, help="learning rate at the recipe's reference batch")
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--warmup-epochs", type=float, default=None)
    g.add_argument("--lr-floor", type=float, default=None, metavar="F",
                   help="the fraction of the peak learning rate the cosine schedule ends at (default 0; detectors' "
                   "short runs from scratch 0.6)")
    g.add_argument("--hflip", type=float, default=None, metavar="P",
                   help="horizontal flip probability (0: never, for data where a mirror image is another class)")
    g.add_argument("--min-crop", type=float, default=None, metavar="F",
                   help="smallest random crop, as a fraction of the image's area (image folders)")
    g.add_argument("--pad", type=int, default=None, metavar="PX",
                   help="random translation by up to PX pixels (in-memory data such as Fashion-MNIST; 0: off)")
    g.add_argument("--erase", type=float, default=None, metavar="P",
                   help="classifiers: random erasing probability (a rectangle of 2 to 33 %% of the image)")
    g.add_argument("--mixup", type=float, default=None, metavar="ALPHA",
                   help="classifiers: MixUp of each batch, Beta(ALPHA, ALPHA) (0: off; 0.2 to 1 are usual)")
    g.add_argument("--cutmix", type=float, default=None, metavar="ALPHA",
                   help="classifiers: CutMix of each batch (0: off; 1 is usual); with --mixup too, one of the "
                   "two per batch")
    g.add_argument("--dropout", type=float, default=None, metavar="P", help="classifiers: dropout before the "
                   "classifier (default: the model's)")
    g.add_argument("--box-augment", choices=BOX_AUGMENTS, default=None,
                   help="detectors: SSD's augmentation (zoom out, IoU crop, photometric, flip) or only photometric "
                   "and flip (default: mild for runs under 30 epochs)")
    g.add_argument("--box-scales", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="detectors: the smallest and largest default box, as fractions of the input side "
                   "(default: fitted to the training boxes; SSD's are 0.2 0.95)")
    g.add_argument("--label-smoothing", type=float, default=None)
    g.add_argument("--ema-decay", type=float, default=None, help="EMA of weights (0 turns it off)")
    g.add_argument("--bn-recompute", type=int, default=None, metavar="N",
                   help="classifiers: recompute the BN statistics on N training batches before each validation "
                   "(0: off; default recipe: ~1,000 images)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 / fp16 autocast")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")


def cmd_list(args: argparse.Namespace) -> None:
    from .registry import create_model, get_spec, list_models

    for name in list_models():
        n = sum(p.numel() for p in create_model(name).parameters())
        print(f"{name:<27} {n:>11,} params  {get_spec(name).paper}")


def cmd_cost(args: argparse.Namespace) -> None:
    from .cost import profile
    from .detection.paper import by_part
    from .registry import create_model, is_detector

    if args.paper and args.model:
        raise CliError("--paper compares every model with the papers' tables; give it without a model name")
    if args.paper:
        from .detection.paper import DETECTION_ROWS, compare_detection_row, format_detection
        from .paper import PAPER_ROWS, compare_row, compare_table_2, format_comparison

        rows, table_2 = [compare_row(r) for r in PAPER_ROWS], compare_table_2()
        detection = [compare_detection_row(r) for r in DETECTION_ROWS]
        report = {"rows": rows, "table_2": table_2, "detection": detection}
        text = format_comparison(rows, table_2) + "\n\n" + format_detection(detection)
        print(json.dumps(report, indent=2) if args.json else text)
        return
    if not args.model:
        raise CliError("cost needs a model name (or --paper)")
    model = create_model(args.model, width_mult=args.width_mult, num_classes=args.num_classes,
                         reduced_tail=args.reduced_tail)  # a classifier refuses reduced_tail
    detector = is_detector(args.model)
    size = args.input_size or (model.input_size if detector else 224)
    _check_input_size(size)
    report = profile(model, size)
    parts = by_part(report) if detector else None
    if args.json:
        extra = {"by_part": parts} if parts else {}
        print(json.dumps({"model": args.model, "width_mult": args.width_mult, **report.to_dict(), **extra}, indent=2))
    else:
        print(f"{args.model}  width {args.width_mult:g}  input {size}x{size}")
        print(report.format_table())
        if parts:
            print(f"\n{'by part (batch norm folded)':<28} {'mult-adds':>13} {'params':>11}")
            for name, t in parts.items():
                print(f"{name:<28} {t['macs']:>13,} {t['params']:>11,}")


def _add_tta_arg(p: argparse.ArgumentParser) -> None:
    from .evaluate import TTA_VIEWS

    p.add_argument("--tta", nargs="?", const="flip", choices=TTA_VIEWS, metavar="VIEWS",
                   help="test-time augmentation, the mean prediction over views of each image: flip (the "
                   "default: the image and its mirror), shift (moved by 3 %% of its side in four directions) "
                   "or flip-shift (10 views); a detector's: flip, its class probabilities and box offsets "
                   "averaged per default box before NMS")


def _check_detector_tta(args: argparse.Namespace) -> None:
    from .exported import exported_format

    if args.tta not in (None, "flip"):
        raise CliError(f"--tta {args.tta} is for classifiers: a detector's views are flip (the image and its mirror)")
    if args.tta and args.checkpoint and exported_format(args.checkpoint):
        raise CliError(f"--tta runs a checkpoint in PyTorch: {args.checkpoint} has its NMS inside the file")


def cmd_predict(args: argparse.Namespace) -> None:
    from .exported import exported_format, load_exported_model
    from .predict import load_model, predict
    from .registry import is_detector

    if bool(args.checkpoint) == bool(args.model):
        raise CliError("predict needs either --checkpoint PATH or --model NAME [--weights PATH], not both")
    if args.input_size is not None:
        _check_input_size(args.input_size)
    if args.top_k is not None and args.top_k < 1:
        raise CliError(f"--top-k must be at least 1, got {args.top_k}")
    args.images = _image_files(args.images)
    if is_detector(args.model or "") or (args.checkpoint and _is_detector_file(args.checkpoint)):
        return _predict_boxes(args)
    if args.save:
        raise CliError("--save draws boxes: it is for detectors")
    if args.checkpoint and exported_format(args.checkpoint):
        if args.input_size is not None:
            raise CliError("an exported model has a fixed input size; --input-size is for checkpoints and --model")
        loaded = load_exported_model(args.checkpoint)  # runs in its own runtime (ONNX Runtime, LiteRT, ...)
    else:
        loaded = load_model(args.checkpoint, model=args.model, weights=args.weights, width_mult=args.width_mult,
                            input_size=args.input_size)
    for path, top in zip(args.images, predict(loaded, args.images, args.top_k or 5, tta=args.tta)):
        print(path)
        for name, prob in top:
            print(f"  {prob:7.2%}  {name}")


def _image_files(paths: Sequence[str]) -> list[str]:
    """``paths`` with each folder replaced by the images in it (sorted; not recursive)."""
    from .data import IMG_EXTENSIONS, images_in

    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = images_in(path)
        if not found:
            raise CliError(f"no images in folder {path} (extensions: {', '.join(IMG_EXTENSIONS)})")
        files += map(str, found)
    return files


def _is_detector_file(path: str) -> bool:
    from .detection.predict import is_detector_file
    from .exported import exported_format

    if os.path.isdir(path) and not exported_format(path):  # (a Core ML package is a folder)
        raise CliError(f"--checkpoint {path} is a folder; give the checkpoint or exported file in it")
    if not os.path.exists(path):
        raise CliError(f"checkpoint not found: {path}")
    return is_detector_file(path)


def _predict_boxes(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .detection.predict import detect, draw, load_detector
    from .detection.tta import FlipTTA

    _check_detector_tta(args)
    loaded = load_detector(args.checkpoint, model=args.model, weights=args.weights, width_mult=args.width_mult,
                           input_size=args.input_size)
    if args.tta:
        loaded.model = FlipTTA(loaded.model)
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
    drawn: set = set()
    for path, found in zip(args.images, detect(loaded, args.images, args.min_score)):
        found = found[: args.top_k]  # best first
        print(f"{path}: {len(found)} object(s)")
        for d in found:
            print(f"  {d.score:6.2%}  {d.label:<16} {' '.join(f'{v:7.1f}' for v in d.box)}")
        if args.save:
            print(f"  drawn: {draw(path, found, _unused(Path(args.save) / (Path(path).stem + '-boxes.png'), drawn))}")


def _unused(path, taken: set):
    """``path``, or ``name-2``, ``name-3``... if this command already wrote it (images of one name
    from two folders)."""
    candidate, n = path, 1
    while candidate in taken:
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    taken.add(candidate)
    return candidate


def cmd_train(args: argparse.Namespace) -> None:
    from .run_config import make_config
    from .train import train

    if args.input_size is not None:
        _check_input_size(args.input_size)
    for name in ("epochs", "batch_size", "subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    _check_folder_to_write(args.out, "--out")
    overrides = {
        k: getattr(args, k)
        for k in ("seed", "device", "val_split", "in_chans", "workers", "subset", "weights", "weights_backbone",
                  "val_data", "reduced_tail", "width_mult",
                  "input_size", "epochs", "batch_size", "optimizer", "lr", "lr_floor", "weight_decay", "warmup_epochs",
                  "label_smoothing", "hflip", "min_crop", "pad", "erase", "mixup", "cutmix", "dropout", "box_augment",
                  "ema_decay", "bn_recompute", "amp", "channels_last", "compile", "freeze_backbone",
                  "backbone_lr_scale")
    }
    if args.box_scales is not None:
        overrides["box_scales"] = tuple(args.box_scales)
    start = args.weights or args.weights_backbone
    if start:
        from .weights import read_checkpoint

        read_checkpoint(start)  # a missing or unreadable file fails now, not after the data is loaded
    elif args.freeze_backbone or args.backbone_lr_scale is not None:
        raise CliError("--freeze-backbone and --backbone-lr-scale need --weights or --weights-backbone FILE "
                       "(fine-tuning)")
    cfg = make_config(args.model, args.data, args.out, args.recipe, resume=args.resume, **overrides)
    summary = train(cfg, resume=args.resume)
    if summary.get("stopped"):
        raise SystemExit(130)


def cmd_eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .evaluate import evaluate_data
    from .exported import exported_format, load_exported_model
    from .memory import keep_freed_memory
    from .plots import plot_confusion
    from .predict import load_model

    device = _device(args.device)
    if device.type == "cpu":  # a batch's blocks reused, not faulted in again: Fashion-MNIST's test set 61 s -> 25 s
        keep_freed_memory()
    if _is_detector_file(args.checkpoint):
        return _eval_boxes(args, device)
    # a file from `mobilenets export` (fp32 or int8) runs in its own runtime, on the CPU
    loaded = load_exported_model(args.checkpoint) if exported_format(args.checkpoint) else load_model(args.checkpoint)
    # named after the file: the checkpoints and exports of one folder each keep their own
    png = Path(args.confusion or f"{args.checkpoint}.confusion.png")
    if not png.parent.is_dir():  # before the evaluation, not after it
        raise CliError(f"--confusion: folder {png.parent} does not exist")
    seed, val_split = _held_out(args)
    split, result = evaluate_data(loaded.model.to(device), args.data, loaded.preprocess, loaded.class_names,
                                  val_split=val_split, seed=seed, batch_size=args.batch_size,
                                  workers=args.workers, tta=args.tta, split=args.split, device=device)
    plot_confusion(result.confusion, loaded.class_names, png, title=f"{args.checkpoint} on {args.data}")
    if args.json:
        print(json.dumps({**result.to_dict(loaded.class_names), "split": split, "tta": args.tta,
                          "confusion_png": str(png)}, indent=2))
    else:
        print(f"{args.checkpoint} on the {split} split of {args.data}{f' with {args.tta} TTA' if args.tta else ''}:")
        print(result.format(loaded.class_names))
        print(f"confusion matrix: {png}")


def _check_folder_to_write(folder: str | os.PathLike, flag: str) -> None:
    """Fail now, not after the work, when ``folder`` cannot be a folder to write into."""
    from pathlib import Path

    for path in (Path(folder), *Path(folder).parents):
        if path.exists():
            if not path.is_dir():
                raise CliError(f"{flag}: {path} is a file, not a folder")
            return


def _held_out(args: argparse.Namespace) -> tuple[int, float | None]:
    """The seed and fraction that carve a validation split as the checkpoint's training run did
    (0 and ``--val-split`` for files that do not say)."""
    from .exported import exported_format
    from .weights import read_checkpoint

    config = {}
    if not exported_format(args.checkpoint):
        config = read_checkpoint(args.checkpoint).get("config") or {}
    val_split = args.val_split if args.val_split is not None else config.get("val_split")
    return int(config.get("seed", 0)), val_split


def _eval_boxes(args: argparse.Namespace, device) -> None:
    from .detection.dataset import load_eval_annotations
    from .detection.evaluate import evaluate_detector
    from .detection.predict import load_detector
    from .detection.tta import FlipTTA
    from .distributed import Dist

    if args.split:
        raise CliError("--split is for classifiers: a detector is measured on the annotations given")
    _check_detector_tta(args)
    loaded = load_detector(args.checkpoint)
    annotations = load_eval_annotations(args.data, loaded.class_names, loaded.category_ids)
    for line in annotations.problems.lines():
        print(line, file=sys.stderr)
    model = loaded.model.to(device)
    metrics = evaluate_detector(FlipTTA(model) if args.tta else model, annotations, Dist(device=device),
                                batch_size=args.batch_size, workers=args.workers)
    names = {"map": "mAP@[.5:.95]", "map50": "AP50", "map75": "AP75", "map_small": "AP small",
             "map_medium": "AP medium", "map_large": "AP large"}
    if args.json:  # COCOeval's -1 (no object of that size) is no fraction: null
        print(json.dumps({**{k: None if k in names and v < 0 else v for k, v in metrics.items()}, "tta": args.tta},
                         indent=2))
        return
    print(f"{args.checkpoint} on {annotations.summary()}{' with flip TTA' if args.tta else ''}:")
    for key, name in names.items():
        print(f"  {name:<13} {100 * metrics[key]:6.2f} %" if metrics[key] >= 0 else f"  {name:<13}    n/a")


def cmd_export(args: argparse.Namespace) -> None:
    from .export import check_export, describe, export_model, load_source
    from .registry import is_detector

    if bool(args.checkpoint) == bool(args.model):
        raise CliError("export needs either --checkpoint PATH or --model NAME [--weights PATH], not both")
    detector = is_detector(args.model or "") or (args.checkpoint and _is_detector_file(args.checkpoint))
    _calib_size(args, images_verify=detector)
    if detector:
        if args.int8 and not args.calib_data:
            raise CliError("--int8 needs --calib-data DATA (a COCO JSON file or a VOC folder)")
        from .detection.export_cli import export_detector_command

        return print(export_detector_command(args))
    if args.checkpoint and (args.weights or args.num_classes or args.in_chans):
        raise CliError("--weights, --num-classes and --in-chans go with --model; a checkpoint brings its own")
    _check_int8(args)
    if args.input_size is not None:
        _check_input_size(args.input_size)
    check_export(args.out, args.format, args.int8)  # fail before any slow work
    loaded = load_source(args.checkpoint, model=args.model, weights=args.weights, width_mult=args.width_mult,
                         num_classes=args.num_classes, in_chans=args.in_chans, input_size=args.input_size)
    calibration = None
    if args.int8:
        from .quantize import calibration_batches

        calibration = calibration_batches(args.calib_data, loaded.preprocess, args.calib_size)
    result = export_model(loaded.model, args.out, args.format, preprocess=loaded.preprocess,
                          class_names=loaded.class_names, calibration=calibration)
    print(describe(result))


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import Config, run_bench, run_compare_conv

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.compare_conv:
        if args.rounds != 1:
            raise CliError("--rounds times one --model's backends; --compare-conv takes no rounds")
        result = run_compare_conv(width_mult=args.width_mult, input_size=args.input_size or 224,
                                  batch_size=args.batch_size, backends=args.backends, threads=args.threads,
                                  repeats=args.repeats, progress=progress)
    else:
        if not args.model:
            raise CliError("bench needs --model NAME (or --compare-conv)")
        from .registry import get_spec, is_detector

        size = args.input_size or (get_spec(args.model).input_size if is_detector(args.model) else 224)
        config = Config(args.model, args.width_mult, size, args.batch_size, args.reduced_tail)
        result = run_bench(config, args.backends, threads=args.threads, repeats=args.repeats, rounds=args.rounds,
                           progress=progress)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())


def cmd_sweep(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .bench import check_backends, format_sweep, run_sweep, write_sweep

    check_backends(args.backends)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder")
    rows = run_sweep(args.backends, threads=args.threads, repeats=args.repeats, batch_size=args.batch_size,
                     progress=lambda message: print(message, file=sys.stderr, flush=True))
    csv_path, png_path = write_sweep(rows, out)
    print(format_sweep(rows))
    print(f"wrote {csv_path} and {png_path}")


def cmd_make_detection_data(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .detection.synthetic import ITEMS, check_items, make_detection_data

    for name in ("train", "val", "size"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be at least 1")
    items = tuple(args.train_items or ITEMS)
    check_items(items)  # before the progress bar starts
    with tqdm(total=args.train + args.val, unit="img", desc="canvases") as bar:
        written = make_detection_data(args.out, args.train, args.val, args.size, args.seed, train_items=items,
                                      progress=lambda split, i, n: bar.update(1))
    print(f"wrote {written['train']} ({args.train} images) and {written['val']} ({args.val} images)")


def cmd_serve(args: argparse.Namespace) -> None:
    import importlib.util

    _check_int8(args)
    _calib_size(args)
    missing = [m for m in ("starlette", "uvicorn", "multipart", "prometheus_client") if not importlib.util.find_spec(m)]
    if missing:
        raise CliError(f"{', '.join(missing)} not installed: pip install 'mobilenets[serve]'")
    for name in ("max_batch", "max_queue", "max_pixels", "calib_size", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not (math.isfinite(args.max_wait_ms) and args.max_wait_ms >= 0):
        raise CliError(f"--max-wait-ms must be a finite number of 0 or more, got {args.max_wait_ms}")
    if not (math.isfinite(args.max_body_mb) and args.max_body_mb > 0):
        raise CliError(f"--max-body-mb must be a finite number above 0, got {args.max_body_mb}")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0 to 65535, got {args.port}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    from PIL import Image

    from .memory import keep_freed_memory
    from .serve.app import Settings
    from .serve.servable import load_servable
    from .serve.server import serve

    # PIL refuses images over twice its own limit before reading them; the server's limit decides
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, args.max_pixels)
    keep_freed_memory()  # a batch's blocks reused by the next batch: 1.35x the eager server's batched throughput

    def log(message: str) -> None:
        print(f"mobilenets serve: {message}", flush=True)

    calibration = None
    if args.int8:
        from .quantize import calibration_batches

        def calibration(preprocess):
            return calibration_batches(args.calib_data, preprocess, args.calib_size)

    servable = load_servable(args.checkpoint, args.backend, threads=args.threads, calibration=calibration, log=log)
    settings = Settings(args.max_batch, args.max_wait_ms, args.max_queue, int(args.max_body_mb * 1e6), args.max_pixels)
    servable.warm_up(args.max_batch)
    serve(servable, settings, args.host, args.port, access_log=args.access_log, log=log)


def _calib_size(args: argparse.Namespace, images_verify: bool = False) -> None:
    """``--calib-size``'s default; a classifier uses it only with ``--int8`` (a detector's export
    is also verified on those images)."""
    from .quantize import CALIBRATION_SIZE

    if args.calib_size is not None and not args.int8 and not images_verify:
        raise CliError("--calib-size is for --int8 (the images it calibrates on)")
    args.calib_size = CALIBRATION_SIZE if args.calib_size is None else args.calib_size


def _check_int8(args: argparse.Namespace) -> None:
    if args.int8 != bool(args.calib_data):
        raise CliError("--int8 needs --calib-data DATA (fashion-mnist or an image folder), and a classifier uses it "
                       "only with --int8")


def _device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available")
    return torch.device(name)


def _check_input_size(size: int) -> None:
    from .model import MIN_INPUT_SIZE

    if size < MIN_INPUT_SIZE:
        raise CliError(f"--input-size {size} is too small: MobileNets need at least {MIN_INPUT_SIZE}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "list": cmd_list,
    "cost": cmd_cost,
    "predict": cmd_predict,
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
    "bench": cmd_bench,
    "sweep": cmd_sweep,
    "make-detection-data": cmd_make_detection_data,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage errors and --help
        return int(e.code or 0)
    # SIGTERM unwinds like Ctrl-C, so that temporary files are removed (train and serve handle it
    # themselves: save and stop, drain and stop)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        COMMANDS[args.command](args)
    except (CliError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if os.environ.get("MOBILENETS_DEBUG"):
            raise
        print(f"mobilenets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mobilenets {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"mobilenets {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # the reader went away (`| head`): as cat does, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit too
        return 141
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class Terminated(Exception):
    """SIGTERM, raised where the command is, so that its ``finally`` blocks and ``with`` exits run."""


def _terminated(signum, frame) -> None:
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
