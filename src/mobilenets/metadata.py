"""What an exported model carries besides its graph (``ExportMeta``), and where the server formats keep it.

One JSON document per file: ONNX ``metadata_props["mobilenets"]``, OpenVINO ``rt_info["mobilenets"]``,
an archive entry ``mobilenets.json`` in TorchScript and torch.export files. The mobile formats keep
it in their own modules (``mobile/``). Both ``export`` and ``quantize`` write it, so it lives here,
below both of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .runtimes import require

META_KEY = "mobilenets"
META_FILE = "mobilenets.json"


@dataclass(frozen=True)
class ExportMeta:
    """What inference needs besides the graph; stored inside the exported artefact as JSON."""

    model_args: dict
    preprocess: dict
    class_names: tuple[str, ...]
    input_size: int
    format: str
    int8: str | None = None  # the quantizer, or None for fp32
    version: int = 1
    task: str = "classification"  # or "detection": boxes, scores and labels out, NMS inside
    category_ids: tuple[int, ...] = ()  # detection: the annotation file's id of label k + 1
    max_detections: int = 0  # detection: boxes per image (K)
    iou_threshold: float = 0.0  # detection: NMS after the file (phone formats have no NMS inside)
    score_threshold: float = 0.0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "class_names": list(self.class_names),
                           "category_ids": list(self.category_ids)})

    @classmethod
    def from_json(cls, text: str | bytes) -> ExportMeta:
        d = json.loads(text)
        return cls(**{**d, "class_names": tuple(d["class_names"]), "category_ids": tuple(d.get("category_ids", ()))})


def set_onnx_meta(proto, text: str) -> None:
    """Store ``text`` as the model's ``metadata_props["mobilenets"]``.

    The exporter's per-node debugging metadata (Python stack traces with local file paths,
    module names) is dropped on the way: it is about a tenth of a small model's file and
    nothing at inference reads it.
    """
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for info in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        del info.metadata_props[:]
    for prop in list(proto.metadata_props):
        if prop.key == META_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, text


def save_openvino(ov_model, path: Path, text: str) -> None:
    """Save an OpenVINO model with ``text`` as ``rt_info["mobilenets"]``."""
    ov = require("openvino")
    ov_model.set_rt_info(text, [META_KEY])
    # fp32 weights on disk: the default fp16 compression would break the 1e-4 check
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
