"""The package's depthwise training kernel against oneDNN's, layer by layer and in a detector's step.

Layers: forward + backward of the depthwise layers of V1 in the ``fashion-mnist`` recipe (72 px,
batch 256) and of SSDLite-V3-Large at 320 px (batch 4), on channels-last maps, three ways in
alternating rounds: the kernel (``mobilenets.kernels.depthwise``), oneDNN in the same dtype
(bf16 under autocast), and oneDNN in float on a float copy of the map, which is how the package
ran strided and 5x5 layers under autocast before the kernel. Step: the SSDLite-V3-Large
training step (bf16 autocast, channels-last, SGD) on random 320x320 images with random boxes,
with the kernel and with PyTorch's op, in alternating rounds. Medians; run with nothing else on
the cores.

    .venv/bin/python benchmarks/depthwise_kernel.py [--dtype float32] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from alternating import medians, without_kernel
from torch import nn

from mobilenets import create_model
from mobilenets.kernels import depthwise
from mobilenets.memory import keep_freed_memory

# (batch, channels, side, kernel, stride)
LAYERS = {
    "V1, 72 px": [(256, 32, 36, 3, 1), (256, 64, 36, 3, 2), (256, 128, 18, 3, 1), (256, 128, 18, 3, 2),
                  (256, 256, 9, 3, 1), (256, 512, 5, 3, 1)],
    "SSDLite-V3-Large, 320 px": [(4, 16, 160, 3, 1), (4, 64, 160, 3, 2), (4, 72, 80, 5, 2), (4, 120, 40, 5, 1),
                                 (4, 480, 10, 5, 1), (4, 672, 20, 3, 1), (4, 672, 20, 5, 2)],
}


def layer(n: int, c: int, side: int, k: int, s: int, dtype: torch.dtype, rounds: int) -> dict[str, float]:
    conv = nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False)
    x = torch.randn(n, c, side, side).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn_like(depthwise.depthwise_conv(conv, x))

    def kernel() -> None:
        depthwise.depthwise_conv(conv, x).backward(grad)

    def onednn() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            conv(x).backward(grad)

    def onednn_float() -> None:
        with torch.autocast("cpu", enabled=False):
            conv(x.float()).to(dtype).backward(grad)

    return medians({"kernel": kernel, "oneDNN": onednn, "oneDNN float": onednn_float}, rounds)


def detector_step(batch: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = create_model("ssdlite_mobilenet_v3_large", num_classes=11, reduced_tail=True)
    net = net.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    images = [torch.rand(3, 320, 320) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2) * 240
        targets.append({"boxes": torch.cat([xy, xy + 20 + torch.rand(4, 2) * 60], 1),
                        "labels": torch.randint(1, 11, (4,))})

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = net(images, targets)
        optimizer.zero_grad()
        (losses["bbox_regression"].float() + losses["classification"].float()).backward()
        optimizer.step()

    return medians({"kernel": step, "pytorch": without_kernel(depthwise, step)}, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--step-batch", type=int, default=8, help="the detector step's images (0: no step)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as training runs: large maps reuse their pages
    if depthwise.kernel() is None:
        raise SystemExit("the depthwise kernel is not available here (no compiler?)")
    dtype = getattr(torch, args.dtype)
    print(f"depthwise layers, forward + backward, {args.dtype}, channels-last, {args.threads} threads, "
          f"medians of {args.rounds} rounds (ms)")
    for model, shapes in LAYERS.items():
        print(f"  {model}")
        for n, c, side, k, s in shapes:
            t = {name: 1000 * v for name, v in layer(n, c, side, k, s, dtype, args.rounds).items()}
            print(f"    {n:3d} x {c:3d} x {side:3d}^2, {k}x{k} stride {s}: kernel {t['kernel']:7.2f}  "
                  f"oneDNN {t['oneDNN']:7.2f} ({t['oneDNN'] / t['kernel']:5.2f}x)  "
                  f"oneDNN float {t['oneDNN float']:7.2f} ({t['oneDNN float'] / t['kernel']:5.2f}x)")
    if args.step_batch and args.dtype == "bfloat16":
        t = detector_step(args.step_batch, max(args.rounds // 2, 3))
        rate = {name: args.step_batch / v for name, v in t.items()}
        print(f"SSDLite-V3-Large training step, batch {args.step_batch}, 320 px, bf16: kernel "
              f"{rate['kernel']:.1f} images/s, PyTorch's op {rate['pytorch']:.1f} images/s "
              f"({rate['kernel'] / rate['pytorch']:.2f}x)")


if __name__ == "__main__":
    main()
