import pytest
import torch

import mobilenets
from mobilenets.cost import layer_type
from mobilenets.paper import PAPER_ROWS, compare_row, compare_table_2


@pytest.mark.parametrize("name", mobilenets.list_models())
def test_params_equal_numel_and_types_add_up(name):
    model = mobilenets.create_model(name, width_mult=0.75)
    report = mobilenets.profile(model, 96)
    assert report.params == sum(p.numel() for p in model.parameters())
    assert sum(t["macs"] for t in report.by_type.values()) == report.macs
    assert sum(t["params"] for t in report.by_type.values()) == report.params
    assert report.by_type["other"]["macs"] == 0


def test_bad_input_sizes_are_named():
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25)
    for size in (-5, 0, (64,), 64.0):
        with pytest.raises(ValueError, match="input_size must be a positive side"):
            mobilenets.profile(model, size)
    with pytest.raises(ValueError, match="too small"):
        mobilenets.profile(model, 31)


def test_v1_layer_rows_by_hand():
    report = mobilenets.profile(mobilenets.create_model("mobilenet_v1"), 224)
    rows = {r.name: r for r in report.layers}
    stem = rows["stem.conv"]
    assert (stem.type, stem.input_shape, stem.output_shape) == ("conv", (3, 224, 224), (32, 112, 112))
    assert stem.macs == 112 * 112 * 32 * 3 * 3 * 3
    dw = rows["blocks.1.dw.conv"]  # Conv dw / s2 on 112x112x64
    assert (dw.type, dw.output_shape, dw.macs) == ("depthwise", (64, 56, 56), 56 * 56 * 64 * 9)
    pw = rows["blocks.12.pw.conv"]
    assert (pw.type, pw.macs, pw.params) == ("pointwise", 7 * 7 * 1024 * 1024, 1024 * 1024)
    fc = rows["classifier"]
    assert (fc.type, fc.macs, fc.params) == ("fc", 1024 * 1000, 1024 * 1000 + 1000)
    assert report.macs == 568_740_352


def test_resolution_multiplier_scales_macs_quadratically_except_fc():
    model = mobilenets.create_model("mobilenet_v1")
    base, double = mobilenets.profile(model, 224), mobilenets.profile(model, 448)
    fc = base.by_type["fc"]["macs"]
    assert double.by_type["fc"]["macs"] == fc
    assert (base.macs - fc) * 4 == double.macs - fc


def test_layer_types():
    assert layer_type(torch.nn.Conv2d(8, 8, 3, groups=8)) == "depthwise"
    assert layer_type(torch.nn.Conv2d(8, 16, 1)) == "pointwise"
    assert layer_type(torch.nn.Conv2d(3, 16, 3)) == "conv"
    assert layer_type(torch.nn.Conv2d(8, 16, 3, groups=2)) == "conv"
    assert layer_type(torch.nn.Linear(4, 2)) == "fc"
    assert layer_type(torch.nn.BatchNorm2d(4)) == "other"


@pytest.mark.parametrize("row", PAPER_ROWS, ids=lambda r: f"{r.table}-{r.label}")
def test_paper_costs(row):
    result = compare_row(row)
    assert result["ok"], result
    # Parameters, batch norm folded, agree with the paper's rounding (V2 and V3-Large print less).
    if row.model.startswith("mobilenet_v1"):
        digits = len(str(row.params_m).split(".")[1])
        assert round(result["params_m"], digits) == row.params_m


def test_table_9_exact_count_is_shown():
    row = next(r for r in PAPER_ROWS if r.table == "V1 Table 9")
    result = compare_row(row)
    assert result["exact_macs_m"] == 76.52 and result["macs_m"] == 76.27


def test_table_2_shares():
    rows = {r["type"]: r for r in compare_table_2()}
    for name in ("Conv 1x1", "Conv DW 3x3", "Fully Connected"):
        assert rows[name]["macs_pct"] == pytest.approx(rows[name]["paper_macs_pct"], abs=0.01)
        assert rows[name]["params_pct"] == pytest.approx(rows[name]["paper_params_pct"], abs=0.03)
    assert rows["Conv 3x3"]["macs_pct"] == 1.91  # printed as 1.19 in the paper
