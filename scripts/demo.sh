#!/usr/bin/env bash
# The main job end to end on real data: train a MobileNet V1 on Fashion-MNIST for a short run,
# evaluate it, predict a few test images, export it to ONNX (checked against PyTorch) and time it.
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

step "train: MobileNet V1 x$WIDTH on Fashion-MNIST, $EPOCHS epochs (the full recipe: x1.0, 30 epochs; docs/results.md)"
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

step "bench: latency of MobileNet V1 at the demo's width and input size, batch 1"
run bench --model mobilenet_v1 --width-mult "$WIDTH" --input-size 56 --backends eager ort openvino --repeats 30

step "written to $OUT"
ls -l "$OUT" "$OUT/samples"
cat <<TXT
  $OUT/best.pt, last.pt   checkpoints (resume with --resume)
  $OUT/metrics.jsonl      one line per epoch
  $OUT/curves.png         accuracy and loss against epoch
  $OUT/confusion.png      confusion matrix on the test set
  $OUT/tensorboard/       TensorBoard events (tensorboard --logdir $OUT)
  $OUT/model.onnx         the exported model
TXT
