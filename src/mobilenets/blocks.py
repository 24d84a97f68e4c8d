"""The two block types of the family, built from the shared layers."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import ConvBNAct, SqueezeExcite


class DepthwiseSeparable(nn.Module):
    """V1 block: 3x3 depthwise conv + BN + act, then 1x1 pointwise conv + BN + act (V1 Fig. 3)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: str, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, act=act, bn_eps=bn_eps)
        self.pw = ConvBNAct(in_ch, out_ch, 1, act=act, bn_eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    """V2/V3 block: 1x1 expand, kxk depthwise, optional SE, linear 1x1 projection, residual.

    The expansion is skipped when it would not change the width (V2's t = 1 rows, V3's first
    bneck); the residual is used when stride is 1 and the width is kept (V2 Fig. 4, V3 Fig. 4).
    """

    def __init__(
        self,
        in_ch: int,
        hidden_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        act: str,
        se_ch: int = 0,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand = (
            ConvBNAct(in_ch, hidden_ch, 1, act=act, bn_eps=bn_eps) if hidden_ch != in_ch else nn.Identity()
        )
        self.dw = ConvBNAct(hidden_ch, hidden_ch, kernel, stride, groups=hidden_ch, act=act, bn_eps=bn_eps)
        self.se = SqueezeExcite(hidden_ch, se_ch) if se_ch else nn.Identity()
        self.project = ConvBNAct(hidden_ch, out_ch, 1, act=None, bn_eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_residual else out
