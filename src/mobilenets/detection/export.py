"""Export a detector to ONNX, OpenVINO, ExecuTorch or LiteRT, verified, optionally int8.

ONNX and OpenVINO get ``DetectorGraph`` (normalisation, backbone, heads, box decoding, per-class
NMS as ONNX's ``NonMaxSuppression``, top-K); the phone formats, which have no NMS operator, get
``DetectorCore`` (up to the decoded boxes and scores) and leave NMS and top-K to the app
(``graph.select_detections``). Batch norm is folded first, as for classifiers. After
writing, the file runs in its runtime on the verification images and must give the same
detections as PyTorch: every kept box, score and label (compared in a canonical order, since
tied scores may come out in either order), box corners within ``BOX_TOLERANCE`` pixels and
scores within ``SCORE_TOLERANCE``; else nothing is written. int8 (ONNX Runtime static QDQ on the
convolutions; the phone formats' PT2E on backbone and heads; the box decoding stays float) is
checked by how many of the fp32 boxes it keeps, and measured by ``mobilenets eval`` (COCO mAP).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..export import ExportResult, check_export, files_of, fold_batchnorm, write_mobile
from ..files import atomic_write
from ..metadata import ExportMeta, save_openvino, set_onnx_meta
from ..runtimes import require
from .graph import DetectorCore, DetectorGraph, onnx_translation
from .model import SSD
from .runtime import graph_runner

BOX_TOLERANCE = 1e-2  # pixels of the model's input
SCORE_TOLERANCE = 1e-4
DETECTOR_FORMATS = ("onnx", "openvino", "executorch", "tflite")
PHONE_FORMATS = ("executorch", "tflite")  # no NMS operator: the file stops after the box decoding


def _write_onnx(graph: DetectorGraph, path: Path, meta: ExportMeta) -> None:
    onnx = require("onnx")
    example = torch.rand(2, 3, graph.size, graph.size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), _quiet("onnx_ir"):  # it logs a warning for an empty attribute list of its own
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, (example,), dynamo=True, verbose=False, input_names=["images"],
            output_names=["boxes", "scores", "labels"], custom_translation_table=onnx_translation(),
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
        )
    proto = program.model_proto
    set_onnx_meta(proto, meta.to_json())
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _quantize_onnx(src: Path, dst: Path, batches: Sequence[Tensor], meta: ExportMeta) -> None:
    """ONNX Runtime static int8 (QDQ, per-channel weights) of the convolutions only."""
    onnx = require("onnx")
    q = require("onnxruntime.quantization")
    prepared = dst.with_name("prepared.onnx")
    q.quant_pre_process(str(src), str(prepared))
    data = iter(batches)

    class Reader(q.CalibrationDataReader):
        def get_next(self):
            x = next(data, None)
            return None if x is None else {"images": x.numpy()}

    q.quantize_static(str(prepared), str(dst), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, op_types_to_quantize=["Conv"])
    proto = onnx.load(str(dst))
    set_onnx_meta(proto, meta.to_json())
    onnx.save(proto, str(dst))


def _to_openvino(src: Path, dst: Path, meta: ExportMeta) -> None:
    ov = require("openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_openvino(ov.convert_model(str(src)), dst, meta.to_json())


def _rows(out: Sequence[Tensor], i: int, floor: float) -> Tensor:
    """Image ``i``'s detections scored above ``floor`` as rows (score, label, x1, y1, x2, y2)."""
    boxes, scores, labels = (t[i] for t in out)
    keep = (labels > 0) & (scores.float() > floor)
    return torch.cat([scores[keep, None].double(), labels[keep, None].double(), boxes[keep].double()], dim=1)


def _gap(a: Tensor, b: Tensor) -> float:
    """The largest difference between two rows' box corners, in pixels."""
    return (a[2:] - b[2:]).abs().max().item()


def _tied_in_nms(kept: Tensor, other: Tensor, boxes: Tensor, scores: Tensor, iou_threshold: float) -> bool:
    """Whether ``other`` could stand where ``kept`` is: same label and score, overlapping beyond the NMS
    threshold, and among the reference's candidates (``boxes`` (A, 4), ``scores`` (C, A)) before NMS."""
    if other[1] != kept[1] or abs(other[0] - kept[0]) > SCORE_TOLERANCE:
        return False
    if box_iou(kept[None, 2:], other[None, 2:]).item() <= iou_threshold:
        return False
    near = ((boxes - other[2:]).abs().amax(1) <= BOX_TOLERANCE) & (
        (scores[int(kept[1]) - 1] - other[0]).abs() <= SCORE_TOLERANCE)
    return bool(near.any())


def compare(reference: Sequence[Tensor], exported: Sequence[Tensor], *,
            candidates: tuple[Tensor, Tensor] | None = None, iou_threshold: float = 0.5) -> tuple[float, float]:
    """(max box difference, max score difference) between two graphs' detections, matched one to
    one (same label, box within ``BOX_TOLERANCE``, in any order); a missing or extra detection is
    infinite. Ties may be broken either way, so two differences pass: detections tied with the
    last kept score (the top-K cut may take either), and, given ``candidates`` (the reference's
    boxes (N, A, 4) and scores (N, C, A) before NMS), one box kept where the reference kept another
    of the same label and score that it overlaps beyond ``iou_threshold`` (NMS keeps either)."""
    matched: list[tuple[Tensor, Tensor]] = []  # (reference row, exported row)
    for i in range(len(reference[0])):
        floor = float(reference[1][i].min()) + SCORE_TOLERANCE
        a, b = _rows(reference, i, floor), _rows(exported, i, floor)
        if a.shape != b.shape:
            return float("inf"), float("inf")
        free, unmatched = list(range(len(b))), []
        for row in a:
            close = [j for j in free if b[j, 1] == row[1] and _gap(b[j], row) <= BOX_TOLERANCE]
            if close:
                j = min(close, key=lambda j: abs(b[j, 0] - row[0]).item())
                free.remove(j)
                matched.append((row, b[j]))
            else:
                unmatched.append(row)
        pool = None if candidates is None else (candidates[0][i].double(), candidates[1][i].double())
        for row in unmatched:
            tied = [] if pool is None else [j for j in free if _tied_in_nms(row, b[j], *pool, iou_threshold)]
            same = tied or [j for j in free if b[j, 1] == row[1]]
            if not same:
                return float("inf"), float("inf")
            j = min(same, key=lambda j: _gap(b[j], row))
            free.remove(j)
            if not tied:
                matched.append((row, b[j]))
    return (max((_gap(x, y) for x, y in matched), default=0.0),
            max((abs(x[0] - y[0]).item() for x, y in matched), default=0.0))


def kept_boxes(reference: Sequence[Tensor], exported: Sequence[Tensor], min_score: float = 0.3) -> tuple[int, int]:
    """How many of the reference's boxes scored at least ``min_score`` the export finds too (same
    label, IoU >= 0.5, any score), and how many there are: how much int8 changes what a user sees."""
    found = total = 0
    for rb, rs, rl, eb, el in zip(reference[0], reference[1], reference[2], exported[0], exported[2]):
        mine = rs >= min_score
        if not mine.any():
            continue
        iou = box_iou(rb[mine].float(), eb.float())
        same = (rl[mine, None] == el[None, :]) & (iou >= 0.5)
        found += same.any(dim=1).sum().item()
        total += int(mine.sum())
    return found, total


def export_detector(model: SSD, out: str | os.PathLike, fmt: str, *, class_names: Sequence[str],
                    category_ids: Sequence[int], images: Sequence[Tensor], calibration: Sequence[Tensor] | None = None,
                    max_detections: int = 100, log: Callable[[str], None] = print) -> ExportResult:
    """Export ``model`` to ``out`` (``DETECTOR_FORMATS``), verified on ``images`` (resized float
    batches (N, 3, S, S) in [0, 1]), atomically; ``calibration`` batches turn on int8."""
    if fmt not in DETECTOR_FORMATS:
        raise ValueError(f"detectors export to {', '.join(DETECTOR_FORMATS)}, not {fmt}")
    int8 = calibration is not None
    out = check_export(out, fmt, int8)
    model = model.eval()
    graph = DetectorGraph(fold_batchnorm(model), max_detections).eval()
    reference_graph = DetectorGraph(model, max_detections).eval()
    meta = ExportMeta(model_args=model.args.to_dict(), preprocess={}, class_names=tuple(class_names),
                      input_size=graph.size, format=fmt, task="detection", category_ids=tuple(category_ids),
                      max_detections=max_detections, iou_threshold=graph.iou_threshold,
                      score_threshold=graph.score_threshold)
    with torch.no_grad():
        candidates = [reference_graph.decode(x) for x in images]  # before NMS: ties NMS may break either way
        references = [reference_graph.select(*c) for c in candidates]
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        if fmt in PHONE_FORMATS:
            work = Path(tmp) / ("model" + out.suffix)
            meta = write_mobile(DetectorCore(graph).eval(), work, meta, images[0][:1], calibration,
                                DetectorCore.FLOAT_PARTS)
        else:
            work = Path(tmp) / "fp32.onnx"
            _write_onnx(graph, work, meta)
            if int8:
                meta = replace(meta, int8="onnxruntime")
                _quantize_onnx(work, Path(tmp) / "int8.onnx", calibration, meta)
                work = Path(tmp) / "int8.onnx"
            if fmt == "openvino":
                _to_openvino(work, Path(tmp) / "model.xml", meta)
                work = Path(tmp) / "model.xml"
        run = graph_runner(work, meta)
        outputs = [run(x) for x in images]
        pairs = [compare(r, o, candidates=c, iou_threshold=graph.iou_threshold)
                 for r, o, c in zip(references, outputs, candidates)]
        max_box, max_score = max(p[0] for p in pairs), max(p[1] for p in pairs)
        agreement = None
        if int8:
            counts = [kept_boxes(r, o) for r, o in zip(references, outputs)]
            found, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
            agreement = found / total if total else None
            if agreement is None:
                notes.append("the fp32 detector scores no box >= 0.3 on the calibration images: int8 was not compared")
            elif agreement < 0.9:
                notes.append(f"int8 finds only {agreement:.1%} of the {total} fp32 boxes scored >= 0.3")
        elif not (max_box <= BOX_TOLERANCE and max_score <= SCORE_TOLERANCE):
            raise ValueError(f"verification failed: the {fmt} detector's boxes differ from PyTorch's by {max_box:.2e} "
                             f"px and scores by {max_score:.2e} (limits {BOX_TOLERANCE:g}, {SCORE_TOLERANCE:g}); "
                             "nothing was written")
        targets = files_of(out, fmt)
        for src, dst in zip(files_of(work, fmt), targets, strict=True):
            atomic_write(dst, lambda tmp_path, src=src: os.replace(src, tmp_path))
    for note in notes:
        log(f"warning: {note}")
    return ExportResult(out, targets, fmt, meta.int8, max(max_box, max_score), sum(p.stat().st_size for p in targets),
                        agreement, tuple(notes))


def describe_export(result: ExportResult, images: int) -> str:
    kind = f"int8 ({result.int8})" if result.int8 else "fp32"
    inside = ("normalisation, backbone, heads, box decoding; NMS and top-K follow the file "
              "(mobilenets.detection.graph.select_detections)" if result.format in PHONE_FORMATS
              else "normalisation, backbone, heads, box decoding, NMS")
    lines = [f"wrote {', '.join(str(p) for p in result.files)}  ({result.format} detector, {kind}, "
             f"{result.size_bytes / 1e6:.2f} MB; resize to the input side, then one graph: {inside})"]
    if result.int8 and result.top1_agreement is not None:
        lines.append(f"int8 finds {result.top1_agreement:.1%} of the fp32 boxes scored >= 0.3 on {images} images "
                     "(measure its mAP with `mobilenets eval`)")
    elif not result.int8:
        lines.append(f"verified in its runtime on {images} images: same boxes, scores and labels as PyTorch "
                     f"(max difference {result.max_diff:.2e}; limits {BOX_TOLERANCE:g} px, {SCORE_TOLERANCE:g})")
    return "\n".join(lines)
