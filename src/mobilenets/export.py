"""Export a MobileNet for inference and verify it in its own runtime (``exported.py`` loads it back).

Formats (``FORMATS``): ONNX (run by ONNX Runtime), OpenVINO IR (``.xml`` + ``.bin``), TorchScript
and ``torch.export`` archives (run by PyTorch), and for phones ExecuTorch (``.pte``, XNNPACK), LiteRT
(``.tflite``) and Core ML (``.mlpackage``), in ``mobile/``. Every export:

* folds batch norm into the preceding convolutions first (``fold_batchnorm``), so the graph
  holds conv + bias + activation only, the form the papers count mult-adds in (V1 Sec. 3.1);
* has a fixed input side (the model's ``Preprocess.size``) and a dynamic batch dimension, except
  the mobile formats, which take one image (``MOBILE_FORMATS``: how a phone runs a model);
* is run in its runtime at batch 1 and 3 right after export and compared with the unfolded
  PyTorch eval model: a max abs difference above ``FP32_TOLERANCE`` (times the largest |logit|
  when that is over 1) fails the export and
  leaves no file behind (everything is written to a temporary folder beside the output and
  moved into place with ``files.atomic_write`` only once verified). A runtime that cannot run
  on this OS (Core ML off macOS) is said so, and the file is written unverified;
* carries what inference needs inside the artefact itself, as one JSON document (model
  arguments, class names, ``Preprocess``, input size, int8 method; ``metadata.py``): ONNX
  ``metadata_props``, OpenVINO ``rt_info``, an extra file ``mobilenets.json`` in TorchScript and
  torch.export archives, and each mobile format's own place. No sidecar file can get lost.

``int8=True`` (ONNX, OpenVINO, ExecuTorch, LiteRT) adds post-training static quantization
calibrated on training images (``quantize.py`` for the files of the server runtimes,
``mobile/pt2e.py`` for the PyTorch graph before a mobile converter lowers it).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from .exported import FORMATS, runtime_forward
from .files import atomic_write, replace_folder
from .layers import ConvBNAct
from .metadata import META_FILE, ExportMeta, save_openvino, set_onnx_meta
from .mobile import MOBILE_FORMATS
from .mobile.console import first_line
from .preprocess import Preprocess
from .registry import ModelArgs
from .runtimes import (
    Forward,
    MissingRuntime,
    require,
    require_installed,
)

# Max abs logit difference allowed between an fp32 export (or the folded model) and PyTorch, per unit
# of the largest |logit| when that is over 1: float32 rounding grows with the logits' size.
FP32_TOLERANCE = 1e-4
FOLD_TOLERANCE = 1e-4  # the folded model against the model as trained, the same way
VERIFY_BATCHES = (1, 3)  # 1 and a batch > 1 exercise the dynamic batch dimension
STANDARD_ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    files: tuple[Path, ...]  # every file written (OpenVINO: .xml and .bin)
    format: str
    int8: str | None
    max_diff: float | None  # max abs logit difference from the unfolded PyTorch model, batch 1 and 3 (None: not run)
    size_bytes: int  # all files together
    top1_agreement: float | None = None  # int8: same top-1 as fp32 PyTorch on the calibration images
    notes: tuple[str, ...] = field(default_factory=tuple)
    limit: float | None = None  # the max_diff an fp32 export may have: FP32_TOLERANCE x max(1, largest |logit|)


# --------------------------------------------------------------------------- batch-norm folding


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every ``ConvBNAct``'s batch norm folded into its conv.

    At inference BN is an affine map per channel, so it merges into the convolution's weights
    and a bias (V1 Sec. 3.1 counts no cost for it for this reason). ``torch.nn.utils.fusion``
    does the arithmetic; the BN slot becomes an identity so the module tree keeps its shape.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return folded


def strip_dropout(model: nn.Module) -> nn.Module:
    """``model`` (an inference copy) with every dropout replaced by the identity it is at inference.

    An eval-mode dropout still appears in a captured graph as a no-op node; int8 quantizers give it
    its own observer, and a converter that then drops the node can pair the classifier's bias with
    the wrong input scale (LiteRT did: int8 top-1 agreement with fp32 fell to ~75 %).
    """
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, nn.Identity())
    return model


class Logits(nn.Module):
    """``model.forward`` without its Python input checks, which would become graph asserts.

    The exported graph fixes channels and side and checks them itself (``load_exported`` gives
    the same one-line error as the eager model).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(x))


# --------------------------------------------------------------------------- export


def check_output(path: str | os.PathLike, fmt: str) -> Path:
    """Reject an unknown format, a wrong suffix or an unwritable place before any work is done."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    path = Path(path)
    suffixes = FORMATS[fmt].suffixes
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"--format {fmt} writes {' or '.join(suffixes)} files, not {path.name}")
    if path.is_dir() and not FORMATS[fmt].folder:
        raise IsADirectoryError(f"{path} is a folder; give a file name ending in {suffixes[0]}")
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {parent}")
    return path


def check_export(out: str | os.PathLike, fmt: str, int8: bool = False) -> Path:
    """Everything that can be checked before loading a model: format, path, int8 support, packages."""
    out = check_output(out, fmt)
    spec = FORMATS[fmt]
    if int8 and not spec.int8:
        names = [n for n, f in FORMATS.items() if f.int8]
        raise ValueError(f"--int8 is available for --format {', '.join(names[:-1])} and {names[-1]}")
    int8_packages = ()
    if int8:
        from .quantize import QUANTIZERS

        int8_packages = QUANTIZERS[fmt].packages if fmt in QUANTIZERS else ()
    for package in (*spec.packages, *int8_packages):
        require_installed(package)
    return out


def load_source(
    checkpoint: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    width_mult: float = 1.0,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_size: int | None = None,
):
    """The model to export, as a ``predict.LoadedModel``: a training checkpoint (which brings its
    classes and preprocessing), or ``model`` built from arguments with optional ``weights``."""
    from .predict import LoadedModel, imagenet_class_names, load_model
    from .registry import create_model
    from .weights import load_weights

    if checkpoint is not None:
        loaded = load_model(checkpoint)
        if input_size and input_size != loaded.preprocess.size:
            loaded = LoadedModel(loaded.model, replace(loaded.preprocess, input_size=input_size), loaded.class_names)
        return loaded
    num_classes, in_chans = num_classes or 1000, in_chans or 3
    net = create_model(model, width_mult=width_mult, num_classes=num_classes, in_chans=in_chans)
    saved = load_weights(net, weights) if weights is not None else {}
    if saved.get("class_names"):
        names = list(saved["class_names"])
    elif num_classes == 1000:
        names = imagenet_class_names()
    else:
        names = [f"class {i}" for i in range(num_classes)]
    if saved.get("preprocess"):
        pre = Preprocess.from_dict(saved["preprocess"])
        pre = replace(pre, input_size=input_size) if input_size else pre
    else:
        pre = Preprocess.imagenet(input_size or 224, in_chans)
    return LoadedModel(net.eval(), pre, names)


def files_of(path: Path, fmt: str) -> tuple[Path, ...]:
    """Every file an export writes; the entry point last (moved last, read first)."""
    return (path.with_suffix(".bin"), path) if fmt == "openvino" else (path,)


def export_model(
    model: nn.Module,
    out: str | os.PathLike,
    fmt: str,
    *,
    preprocess: Preprocess,
    class_names: Sequence[str],
    calibration: Sequence[Tensor] | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``model`` (a ``MobileNet``) to ``out`` in format ``fmt``, verified, atomically.

    ``calibration`` (float model-input batches) turns on int8 post-training quantization.
    """
    int8 = calibration is not None
    out = check_export(out, fmt, int8)
    args = getattr(model, "args", None)
    if args is None or not hasattr(model, "forward_head"):
        raise ValueError("export needs a classifier built by mobilenets.create_model")
    reference = model.eval()
    size, channels = preprocess.size, reference.in_chans
    if preprocess.channels != channels:
        raise ValueError(f"the preprocessing gives {preprocess.channels} channel(s), the model takes {channels}")
    folded = strip_dropout(fold_batchnorm(reference))
    fold_diff, limit = _max_diff(lambda x: folded(x), reference, channels, size, FOLD_TOLERANCE)
    if not fold_diff <= limit:  # float rounding stays far below; guards the folding itself
        raise ValueError(f"batch-norm folding changed the outputs by {fold_diff:.2e} (> {limit:.2g})")
    meta = ExportMeta(
        model_args=args.to_dict(),
        preprocess=preprocess.to_dict(),
        class_names=tuple(class_names),
        input_size=size,
        format=fmt,
    )
    # Work in a hidden folder beside the output (same file system, so the final moves are renames).
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        work = Path(tmp) / ("model" + out.suffix)
        meta = _write(Logits(folded).eval(), work, meta, calibration)
        notes: list[str] = []
        if fmt == "onnx":
            _check_standard_onnx(work)
        max_diff = limit = agreement = None
        if runs_here(fmt):
            forward = runtime_forward(work, fmt, threads=None)
            max_diff, limit = _max_diff(forward, reference, channels, size, FP32_TOLERANCE)
        if not int8 and max_diff is not None and not max_diff <= limit:
            raise ValueError(
                f"verification failed: the {fmt} export differs from PyTorch by {max_diff:.2e} "
                f"(> {limit:.2g}); nothing was written"
            )
        if int8 and max_diff is not None:
            if not math.isfinite(max_diff):
                raise ValueError(f"verification failed: the int8 {fmt} export gives non-finite logits")
            agreement = _top1_agreement(forward, reference, calibration)
            if agreement < 0.9:
                notes.append(f"int8 and fp32 agree on top-1 for only {agreement:.1%} of the calibration images")
        sources = files_of(work, fmt)
        targets = files_of(out, fmt)
        for src, dst in zip(sources, targets, strict=True):
            if src.is_dir():
                replace_folder(src, dst)
            else:
                atomic_write(dst, lambda tmp_path, src=src: os.replace(src, tmp_path))
    size_bytes = sum(_size(p) for p in targets)
    for note in notes:
        log(f"warning: {note}")
    return ExportResult(out, targets, fmt, meta.int8, max_diff, size_bytes, agreement, tuple(notes), limit)


def runs_here(fmt: str) -> bool:
    """Whether this OS can run a model of format ``fmt`` (Core ML runs on macOS and iOS only)."""
    return fmt not in MOBILE_FORMATS or MOBILE_FORMATS[fmt].runs_here()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _write(model: nn.Module, path: Path, meta: ExportMeta, calibration: Sequence[Tensor] | None) -> ExportMeta:
    """Write ``model`` in ``meta.format`` to ``path``, int8 if ``calibration`` is given; the metadata written.

    The server runtimes' quantizers read the fp32 file (``quantize.QUANTIZERS``); the mobile ones
    quantize the PyTorch graph before conversion, inside their writer.
    """
    fmt, channels, size = meta.format, ModelArgs(**meta.model_args).in_chans, meta.input_size
    if fmt in MOBILE_FORMATS:
        return write_mobile(model, path, meta, _example(channels, size, batch=1), calibration)
    if calibration is None:
        _WRITERS[fmt](model, path, channels, size, meta)
        return meta
    from .quantize import QUANTIZERS

    quantizer = QUANTIZERS[fmt]
    fp32 = path.with_name("fp32" + path.suffix)
    _WRITERS[fmt](model, fp32, channels, size, meta)
    meta = replace(meta, int8=quantizer.name)
    quantizer.quantize(fp32, path, calibration, meta.to_json())
    return meta


def write_mobile(model: nn.Module, path: Path, meta: ExportMeta, example: Tensor,
                 calibration: Sequence[Tensor] | None, float_parts: tuple[type[nn.Module], ...] = ()) -> ExportMeta:
    """``model`` (traced at ``example``, one image) converted to the phone format ``meta.format``
    (int8 with ``calibration``, but for the modules of the types ``float_parts``);
    returns the metadata written."""
    runtime = MOBILE_FORMATS[meta.format]
    meta = replace(meta, int8=runtime.INT8_METHOD if calibration is not None else None)
    try:
        runtime.write(model, path, example, meta.to_json(), calibration, float_parts)
    except MissingRuntime:
        raise
    except Exception as e:  # the converters raise anything (theirs, torch.export's, JAX's): one line
        raise ValueError(f"{FORMATS[meta.format].runtime} conversion failed: {first_line(e)[:300]}") from e
    return meta


def _example(channels: int, size: int, batch: int = 2) -> Tensor:
    # batch 2 where the batch is dynamic: torch.export specialises a dimension whose example value is 1
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


def _write_onnx(model: nn.Module, path: Path, channels: int, size: int, meta: ExportMeta) -> None:
    onnx = require("onnx")
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (_example(channels, size),),
            dynamo=True,
            verbose=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
        )
    proto = program.model_proto
    set_onnx_meta(proto, meta.to_json())
    onnx.save(proto, str(path))


def _write_openvino(model: nn.Module, path: Path, channels: int, size: int, meta: ExportMeta) -> None:
    ov = require("openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(
            model, example_input=_example(channels, size), input=[ov.PartialShape([-1, channels, size, size])]
        )
    save_openvino(ov_model, path, meta.to_json())


def _write_torchscript(model: nn.Module, path: Path, channels: int, size: int, meta: ExportMeta) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream; still the widest-read format
        traced = torch.jit.trace(model, _example(channels, size), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={META_FILE: meta.to_json()})


def _write_exported_program(model: nn.Module, path: Path, channels: int, size: int, meta: ExportMeta) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (_example(channels, size),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path), extra_files={META_FILE: meta.to_json()})


_WRITERS = {
    "onnx": _write_onnx,
    "openvino": _write_openvino,
    "torchscript": _write_torchscript,
    "exported-program": _write_exported_program,
}


def _check_standard_onnx(path: Path) -> None:
    """Only standard ONNX operators: hard-swish and hard-sigmoid are (HardSwish needs opset >= 14)."""
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in STANDARD_ONNX_DOMAINS})
    if custom or proto.functions:
        what = custom or [f.name for f in proto.functions]
        raise ValueError(f"the ONNX graph uses non-standard operators: {', '.join(what)}")


def onnx_ops(path: str | os.PathLike) -> tuple[int, set[str]]:
    """(default-domain opset, operator types) of an ONNX file."""
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in STANDARD_ONNX_DOMAINS)
    return opset, {n.op_type for n in proto.graph.node}


@torch.no_grad()
def _max_diff(forward: Forward, reference: nn.Module, channels: int, size: int, tolerance: float
              ) -> tuple[float, float]:
    """The max abs difference of ``forward`` from ``reference`` on random inputs, and its limit:
    ``tolerance`` per unit of the largest |logit| when that is over 1."""
    gen = torch.Generator().manual_seed(1)
    worst = largest = 0.0
    for batch in VERIFY_BATCHES:
        x = torch.randn(batch, channels, size, size, generator=gen)
        out, ref = forward(x), reference(x)
        if out.shape != ref.shape:
            raise ValueError(f"verification failed: output shape {tuple(out.shape)}, PyTorch gives {tuple(ref.shape)}")
        worst = max(worst, (out.float() - ref).abs().max().item())
        largest = max(largest, ref.abs().max().item())
    return worst, tolerance * max(1.0, largest)


@torch.no_grad()
def _top1_agreement(forward: Forward, reference: nn.Module, batches: Sequence[Tensor]) -> float:
    same = total = 0
    for x in batches:
        same += (forward(x).argmax(1) == reference(x).argmax(1)).sum().item()
        total += len(x)
    return same / max(total, 1)


def describe(result: ExportResult) -> str:
    kind = f"int8 ({result.int8})" if result.int8 else "fp32"
    batches = " and ".join(map(str, VERIFY_BATCHES))
    runtime = FORMATS[result.format].runtime
    lines = [
        f"wrote {', '.join(str(p) for p in result.files)}  ({result.format}, {kind}, "
        f"{result.size_bytes / 1e6:.2f} MB)",
    ]
    if result.max_diff is None:
        lines.append(f"not verified: {runtime} cannot run a model on this OS ({sys.platform}); "
                     f"run {result.path.name} on a Mac or the device to check it")
    else:
        lines.append(f"verified in {runtime} at batch {batches}: max abs difference from PyTorch "
                     + (f"{result.max_diff:.2e} (limit {result.limit:.2g})" if not result.int8
                        else f"(fp32) {result.max_diff:.2e} on random inputs"))
    if result.top1_agreement is not None:
        lines.append(f"int8 top-1 agrees with fp32 on {result.top1_agreement:.1%} of the calibration images")
    return "\n".join(lines)


__all__ = ["ExportResult", "check_export", "export_model", "fold_batchnorm", "load_source"]
