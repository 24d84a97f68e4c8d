#!/usr/bin/env bash
# The main job end to end on real data: train a MobileNet V1 on Fashion-MNIST for a short run,
# evaluate it, predict a few test images, export it to ONNX (checked against PyTorch) and time it;
# then the same for a detector on a detection set generated from Fashion-MNIST; last, print the
# commands that serve them.
# Each run gets its own folder under runs/, so nothing from an earlier demo is overwritten.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
EPOCHS=${DEMO_EPOCHS:-4}
WIDTH=${DEMO_WIDTH:-0.5}  # the full recipe trains width 1.0; 0.5 keeps the demo at a few minutes

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '+ mobilenets %s\n' "$*"; "$PY" -m mobilenets "$@"; }

step "cost: MobileNet V1 against the paper's tables"
run cost --paper

step "train: MobileNet V1 x$WIDTH on Fashion-MNIST, $EPOCHS epochs (the full recipe: x1.0, 40 epochs; docs/results.md)"
run train --model mobilenet_v1 --data fashion-mnist --recipe fashion-mnist --width-mult "$WIDTH" --epochs "$EPOCHS" \
  --out "$OUT"

step "eval: test accuracy, per-class accuracy, confusion matrix"
run eval --checkpoint "$OUT/best.pt" --data fashion-mnist --confusion "$OUT/confusion.png"

step "predict: a few Fashion-MNIST test images saved as PNG"
"$PY" - "$OUT/samples" <<'PY'
import sys
from pathlib import Path

from PIL import Image

from mobilenets.data import FASHION_MNIST_CLASSES, load_fashion_mnist

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
images, labels = load_fashion_mnist("test").tensors
for i in (0, 1, 2, 12):
    name = FASHION_MNIST_CLASSES[int(labels[i])].replace("/", "-").replace(" ", "-").lower()
    Image.fromarray(images[i, 0].numpy()).save(out / f"test{i:05d}-{name}.png")
PY
run predict --checkpoint "$OUT/best.pt" --top-k 3 "$OUT"/samples/*.png

step "export: ONNX with batch norm folded, checked against PyTorch"
run export --checkpoint "$OUT/best.pt" --format onnx --out "$OUT/model.onnx"

step "export for phones: LiteRT int8 (full integer), run in LiteRT and checked against PyTorch"
run export --checkpoint "$OUT/best.pt" --format tflite --int8 --calib-data fashion-mnist --out "$OUT/model-int8.tflite"

step "bench: latency of MobileNet V1 at the demo's width and input size, batch 1"
run bench --model mobilenet_v1 --width-mult "$WIDTH" --input-size 72 --backends eager ort openvino litert --repeats 30

step "detection: a generated Fashion-MNIST detection set (items at several scales, overlapping, on clutter)"
run make-detection-data --out "$OUT/det-data" --train "${DEMO_DET_TRAIN:-1200}" --val 60 --size 256

step "train: SSDLite on MobileNet V3-Small (reduced tail) from scratch, ${DEMO_DET_EPOCHS:-8} epochs (a few minutes; the full run: docs/results.md)"
run train --model ssdlite_mobilenet_v3_small --reduced-tail --data "$OUT/det-data/train.json" \
  --val-data "$OUT/det-data/val.json" --input-size 256 --epochs "${DEMO_DET_EPOCHS:-8}" --out "$OUT/det"

step "eval: COCO mAP@[.5:.95], AP50, AP75 and by object size (pycocotools)"
run eval --checkpoint "$OUT/det/best.pt" --data "$OUT/det-data/val.json"

step "predict: boxes on a validation image, drawn into $OUT/det/drawn"
run predict --checkpoint "$OUT/det/best.pt" --min-score 0.3 --save "$OUT/det/drawn" "$OUT/det-data/val/000001.png"

step "export: the detector with box decoding and NMS inside one ONNX graph, checked against PyTorch"
run export --checkpoint "$OUT/det/best.pt" --format onnx --out "$OUT/det/detector.onnx" \
  --calib-data "$OUT/det-data/val.json"

step "written to $OUT"
ls -l "$OUT" "$OUT/samples"
cat <<TXT
  $OUT/best.pt, last.pt   checkpoints (resume with --resume)
  $OUT/metrics.jsonl      one line per epoch
  $OUT/curves.png         accuracy and loss against epoch
  $OUT/confusion.png      confusion matrix on the test set
  $OUT/tensorboard/       TensorBoard events (tensorboard --logdir $OUT)
  $OUT/model.onnx         the exported model
  $OUT/det/               the detector: checkpoints, curves, drawn/ predictions, detector.onnx
TXT

step "serve: the models behind HTTP, with a page to try them (docs/serve.md)"
cat <<TXT
  $PY -m mobilenets serve --checkpoint $OUT/model.onnx
then open http://127.0.0.1:8000/ and drop an image, or:
  curl -H 'Content-Type: image/png' --data-binary @$(ls "$OUT"/samples/*.png | head -1) http://127.0.0.1:8000/predict
the detector, its boxes drawn on the page at http://127.0.0.1:8001/:
  $PY -m mobilenets serve --checkpoint $OUT/det/detector.onnx --port 8001
TXT
