"""Training images/s of `mobilenets train`'s step against a plain eager loop over timm's V1.

Both train MobileNet V1 1.0 on the same real Fashion-MNIST batches, at the same batch size and
resolution, with the same optimizer (SGD, Nesterov momentum 0.9). The peer is the loop a
PyTorch user writes first: timm ``mobilenetv1_100``, default memory format, fp32. Our side is
``Trainer._step`` exactly as ``mobilenets train`` runs it (augmentation, preprocessing, loss,
backward, optimizer, scheduler and EMA included). The two are timed in alternating rounds in one
process, and the ratio of the medians is printed. Where the package's kernels are built
(``mobilenets/kernels``: the fused batch norm, the depthwise convolution), our step is also timed
with each switched off (PyTorch's ops instead) in the same rounds, so that each kernel's share shows.

    .venv/bin/python benchmarks/train_throughput.py --recipe fashion-mnist --input-size 56 --batch-size 128
"""

from __future__ import annotations

import argparse
import tempfile

import timm
import torch
from alternating import medians, without_kernel
from torch.nn import functional as F

from mobilenets.kernels import bn_act, depthwise
from mobilenets.run_config import make_config
from mobilenets.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fashion-mnist")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--input-size", type=int, default=56)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast on our side (default: the recipe's; --no-amp times the fp32 step)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as out:
        cfg = make_config("mobilenet_v1", "fashion-mnist", out, args.recipe, width_mult=args.width_mult,
                          input_size=args.input_size, batch_size=args.batch_size, amp=args.amp)
        trainer = Trainer(cfg, quiet=True)
    batches = []
    for images, labels in trainer.train_loader:
        batches.append((images, labels))
        if len(batches) == args.steps:
            break

    peer = timm.create_model("mobilenetv1_100", in_chans=1, num_classes=10)
    peer_opt = torch.optim.SGD(peer.parameters(), lr=trainer.optimizer.param_groups[0]["lr"], momentum=0.9,
                               nesterov=True, weight_decay=trainer.recipe.weight_decay)
    prepare = trainer.task.preprocess.batch_transform()  # contiguous fp32, as a plain loop would feed it
    peer_batches = [(prepare(x), y) for x, y in batches]

    def ours() -> None:
        for batch in batches:
            trainer._step(batch)

    def plain() -> None:
        for x, y in peer_batches:
            loss = F.cross_entropy(peer(x), y)
            peer_opt.zero_grad()
            loss.backward()
            peer_opt.step()

    contestants = {"mobilenets": ours, "plain timm": plain}
    for name, kernels in (("bn_act", bn_act), ("depthwise", depthwise)):
        if kernels.kernel() is not None:
            contestants[f"without {name}"] = without_kernel(kernels, ours)
    seconds = medians(contestants, args.rounds)
    images = args.steps * args.batch_size
    rates = {name: images / t for name, t in seconds.items()}
    r = trainer.recipe
    print(f"MobileNet V1 {args.width_mult:g}, {args.input_size}x{args.input_size}, batch {args.batch_size}, "
          f"{args.threads} threads, {args.rounds} rounds of {args.steps} steps; medians")
    print(f"  mobilenets train step ({r.name}: channels_last={r.channels_last}, amp={r.amp}, "
          f"compile={r.compile}, EMA={r.ema_decay}): {rates['mobilenets']:8.1f} images/s")
    for name in [n for n in rates if n.startswith("without")]:
        print(f"  the same step {name} kernel (PyTorch's ops): {rates[name]:8.1f} images/s "
              f"(the kernel: {rates['mobilenets'] / rates[name]:.2f}x)")
    print(f"  plain eager timm mobilenetv1_100 (fp32, contiguous): {rates['plain timm']:8.1f} images/s")
    print(f"  ratio: {rates['mobilenets'] / rates['plain timm']:.2f}x")

if __name__ == "__main__":
    main()
