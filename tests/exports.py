"""Helpers shared by the export tests: small models with non-trivial batch norms, export, eval."""

import json

from cli_helpers import run_cli
from model_helpers import randomize_batchnorm

import mobilenets
from mobilenets import export as ex
from mobilenets.preprocess import Preprocess

SIZE = 64  # small inputs keep every export under a few seconds


def small_model(name="mobilenet_v1", width=0.25, num_classes=10, in_chans=3):
    """A model whose batch norms are not the identity, so folding has something to fold."""
    model = mobilenets.create_model(name, width_mult=width, num_classes=num_classes, in_chans=in_chans)
    return randomize_batchnorm(model, scale=0.1, seed=0)


def export(model, path, fmt, **kw):
    pre = Preprocess.imagenet(SIZE, model.in_chans)
    names = [f"c{i}" for i in range(model.args.num_classes)]
    return ex.export_model(model, path, fmt, preprocess=pre, class_names=names, log=lambda _: None, **kw)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def eval_json(capsys, tmp_path, model, data):
    code, out, err = run_cli(capsys, "eval", "--checkpoint", model, "--data", data, "--json",
                             "--confusion", tmp_path / "confusion.png")
    assert code == 0, err
    return json.loads(out)
