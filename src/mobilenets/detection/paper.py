"""The detection papers' cost tables, counted with the layout each paper used.

Paper numbers (parameters in millions, mult-adds in millions), as printed: V1 Table 13, V2
Tables 5 and 6, V3 Table 6. The papers' detectors are the TF Object Detection API configs:
91 class outputs (COCO's 90 and background; V2 Table 5 says 80 classes: 81 outputs), the
first feature map with 3 default boxes instead of 6 (``reduce_boxes_in_lowest_layer``), and,
for V1's SSD300, 1x1 prediction convolutions. With those, the count reproduces the printed
numbers; this package's registry models follow torchvision instead (6 boxes on every map, 3x3
SSD heads), and their counts are printed beside (docs/cost.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..cost import CostReport, profile
from ..registry import DETECTORS, MODELS, create_model
from .model import build_detector
from .specs import DetectorSpec, Tap

TOLERANCE = 0.05


@dataclass(frozen=True)
class DetectionRow:
    table: str
    label: str
    model: str  # the registry's detector this row is built like
    params_m: float
    macs_m: float
    classes: int = 91
    reduced: bool = False
    part: str = "detector"  # or "extras + heads"
    changes: tuple[tuple[str, object], ...] = ()  # what the paper's configuration changes in the spec
    known_mismatch: bool = False  # a printed number the paper's own layout does not give (docs/cost.md)


def _paper_spec(row: DetectionRow) -> DetectorSpec:
    spec = DETECTORS[row.model]
    changes = dict(row.changes)
    return dataclasses.replace(spec, boxes=dataclasses.replace(spec.boxes, first_map_three=True), **changes)


V1_SSDLITE = (("backbone", "mobilenet_v1"), ("taps", (Tap(16), Tap(32))))
DETECTION_ROWS: tuple[DetectionRow, ...] = (
    DetectionRow("V1 Table 13", "SSD300 MobileNet", "ssd_mobilenet_v1", 6.8, 1200, changes=(("head_kernel", 1),)),
    DetectionRow("V2 Table 5", "SSD (extras + heads)", "ssdlite_mobilenet_v2", 14.8, 1250, classes=81,
                 part="extras + heads", changes=(("head", "ssd"),)),
    DetectionRow("V2 Table 5", "SSDLite (extras + heads)", "ssdlite_mobilenet_v2", 2.1, 350, classes=81,
                 part="extras + heads", known_mismatch=True),
    DetectionRow("V2 Table 6", "MobileNetV2 + SSDLite", "ssdlite_mobilenet_v2", 4.3, 800),
    DetectionRow("V2 Table 6", "MobileNet V1 + SSDLite", "ssdlite_mobilenet_v2", 5.1, 1300, changes=V1_SSDLITE),
    DetectionRow("V3 Table 6", "V3-Large SSDLite", "ssdlite_mobilenet_v3_large", 4.97, 620),
    DetectionRow("V3 Table 6", "V3-Large SSDLite, reduced", "ssdlite_mobilenet_v3_large", 3.22, 510, reduced=True),
    DetectionRow("V3 Table 6", "V3-Small SSDLite, reduced", "ssdlite_mobilenet_v3_small", 1.77, 160, reduced=True),
)

PARTS = (("backbone.extras.", "extras"), ("backbone.", "backbone"), ("head.", "heads"))


def by_part(report: CostReport) -> dict[str, dict[str, int]]:
    """Mult-adds and parameters (batch norm folded, as the papers count) of backbone, extras, heads."""
    totals = {label: {"macs": 0, "params": 0} for label in ("backbone", "extras", "heads")}
    for layer in report.layers:
        label = next(label for prefix, label in PARTS if layer.name.startswith(prefix))
        totals[label]["macs"] += layer.macs
        totals[label]["params"] += layer.params if layer.type != "other" else 0
    return totals


def _count(model, size: int, part: str) -> tuple[float, float]:
    parts = by_part(profile(model, size))
    keys = ("extras", "heads") if part == "extras + heads" else tuple(parts)
    return (sum(parts[k]["params"] for k in keys) / 1e6, sum(parts[k]["macs"] for k in keys) / 1e6)


def compare_detection_row(row: DetectionRow) -> dict:
    spec = _paper_spec(row)
    paper_model = build_detector(spec, MODELS[spec.backbone], width_mult=1.0, num_classes=row.classes,
                                 reduced=row.reduced, input_size=None)
    params, macs = _count(paper_model, spec.input_size, row.part)
    # the registry's model where the paper's differs from it only in boxes, classes and head kernel
    in_registry = not {"head", "backbone"} & {name for name, _ in row.changes}
    registry = create_model(row.model, num_classes=row.classes, reduced_tail=row.reduced) if in_registry else None
    reg_params, reg_macs = _count(registry, spec.input_size, row.part) if in_registry else (None, None)
    diffs = (params / row.params_m - 1, macs / row.macs_m - 1)
    return {
        "table": row.table, "label": row.label, "part": row.part, "classes": row.classes,
        "input_size": spec.input_size, "paper_params_m": row.params_m, "params_m": round(params, 3),
        "paper_macs_m": row.macs_m, "macs_m": round(macs, 1), "params_diff": round(diffs[0], 4),
        "macs_diff": round(diffs[1], 4), "ok": all(abs(d) <= TOLERANCE for d in diffs),
        "known_mismatch": row.known_mismatch,
        "registry_model": row.model if in_registry else None,
        "registry_params_m": reg_params and round(reg_params, 3), "registry_macs_m": reg_macs and round(reg_macs, 1),
    }


def format_detection(rows: list[dict]) -> str:
    lines = [
        "Detectors against the papers, counted as the papers configured them (TF: 3 boxes on the first map, "
        "91 outputs; V1 SSD: 1x1 heads)",
        f"  {'table':<11} {'detector':<26} {'paper P':>8} {'counted':>8} {'diff':>7} {'paper M-A':>10} "
        f"{'counted':>8} {'diff':>7} {'ok':>3}   registry model (torchvision layout)",
    ]
    for r in rows:
        reg = (f"{r['registry_params_m']:.3f} M / {r['registry_macs_m']:.0f} M-A" if r["registry_model"] else "-")
        lines.append(
            f"  {r['table']:<11} {r['label']:<26} {r['paper_params_m']:>8g} {r['params_m']:>8.3f} "
            f"{100 * r['params_diff']:>+6.1f}% {r['paper_macs_m']:>10g} {r['macs_m']:>8.1f} "
            f"{100 * r['macs_diff']:>+6.1f}% {'yes' if r['ok'] else 'no*' if r['known_mismatch'] else 'NO':>3}   {reg}"
        )
    if any(r["known_mismatch"] and not r["ok"] for r in rows):
        lines.append("  * a printed number the paper's own layout does not give: see docs/cost.md")
    return "\n".join(lines)
