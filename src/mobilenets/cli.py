"""The ``mobilenets`` command: one sub-command per job, one-line errors, no tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

EXAMPLES = {
    "list": "mobilenets list",
    "cost": "mobilenets cost mobilenet_v1 --width-mult 0.5 --input-size 160\n  mobilenets cost --paper",
    "predict": "mobilenets predict --model mobilenet_v2 --weights mobilenet_v2.pth cat.jpg\n"
    "  mobilenets predict --checkpoint runs/fmnist/best.pt shirt.png",
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
    p.add_argument("--input-size", type=int, default=224, help="input side in pixels (rho = size / 224)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print JSON (macs, params, by_type, layers)")
    p.add_argument("--paper", action="store_true", help="compare with the papers' tables")

    p = _subparser(sub, "predict", "top-5 classes of images")
    _add_model_args(p, name_positional=False)
    p.add_argument("--weights", help="weights file (mobilenets, torchvision or timm)")
    p.add_argument("--checkpoint", help="training checkpoint (brings model, classes, preprocessing)")
    p.add_argument("--input-size", type=int, default=None, help="input side for --model (default 224)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    return parser


def cmd_list(args: argparse.Namespace) -> None:
    from .registry import MODELS, create_model

    for name, spec in MODELS.items():
        n = sum(p.numel() for p in create_model(name).parameters())
        print(f"{name:<22} {n:>11,} params  {spec.paper}")


def cmd_cost(args: argparse.Namespace) -> None:
    from .cost import profile
    from .registry import create_model

    if args.paper:
        from .paper import PAPER_ROWS, compare_row, compare_table_2, format_comparison

        rows, table_2 = [compare_row(r) for r in PAPER_ROWS], compare_table_2()
        print(json.dumps({"rows": rows, "table_2": table_2}, indent=2) if args.json else format_comparison(rows, table_2))
        return
    if not args.model:
        raise CliError("cost needs a model name (or --paper)")
    model = create_model(args.model, width_mult=args.width_mult, num_classes=args.num_classes)
    _check_input_size(args.input_size)
    report = profile(model, args.input_size)
    if args.json:
        print(json.dumps({"model": args.model, "width_mult": args.width_mult, **report.to_dict()}, indent=2))
    else:
        print(f"{args.model}  width {args.width_mult:g}  input {args.input_size}x{args.input_size}")
        print(report.format_table())


def cmd_predict(args: argparse.Namespace) -> None:
    from .predict import load_model, predict

    if bool(args.checkpoint) == bool(args.model):
        raise CliError("predict needs either --checkpoint PATH or --model NAME [--weights PATH]")
    if args.input_size is not None:
        _check_input_size(args.input_size)
    loaded = load_model(
        args.checkpoint, model=args.model, weights=args.weights, width_mult=args.width_mult, input_size=args.input_size
    )
    for path, top in zip(args.images, predict(loaded, args.images, args.top_k)):
        print(path)
        for name, prob in top:
            print(f"  {prob:7.2%}  {name}")


def _check_input_size(size: int) -> None:
    from .model import MIN_INPUT_SIZE

    if size < MIN_INPUT_SIZE:
        raise CliError(f"--input-size {size} is too small: MobileNets need at least {MIN_INPUT_SIZE}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "list": cmd_list,
    "cost": cmd_cost,
    "predict": cmd_predict,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # usage errors and --help
        return int(e.code or 0)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
