"""The phone runtimes: ExecuTorch (``.pte``), LiteRT (``.tflite``) and Core ML (``.mlpackage``).

One module per runtime, each with the same small interface, which ``export.py`` (writing) and
``exported.py`` (reading, running) dispatch to:

* ``write(model, path, example, meta_json, calibration, float_parts)``: convert the BN-folded
  model, traced at ``example`` (one image: a phone runs one frame at a time, and ahead-of-time
  memory planning sizes every buffer for exactly that), int8 when ``calibration`` batches are
  given, but for the modules of the types in ``float_parts``;
* ``forward(path, threads)``: a ``Forward`` that runs the file in its runtime on an NCHW float
  batch, image by image, doing the layout and int8 conversions an app would do;
* ``read_meta(path)``: the metadata JSON stored inside the file, or ``None``;
* ``runs_here()``: whether the runtime can run a model on this OS;
* ``PACKAGES`` (what to install: ``pip install 'mobilenets[mobile]'``) and ``INT8_METHOD``.

The packages are imported on first use only.
"""

from types import ModuleType

from . import coreml_package, executorch_pte, litert_tflite

MOBILE_FORMATS: dict[str, ModuleType] = {
    "executorch": executorch_pte,
    "tflite": litert_tflite,
    "coreml": coreml_package,
}
