"""Low-rank approximations shared by resize, merge and extract: the SVD of a weight change (cheaply through
its factors when it is a LoRA), the rank to keep (a fixed one, or kohya resize_lora.py's dynamic rules), and
the LoRA module that keeps it.

Dynamic rules, as sd-scripts' networks/resize_lora.py (rank_resize) states them, capped at the given rank:
- sv_ratio r: keep the singular values larger than S[0] / r;
- sv_cumulative t: the fewest that sum to at least t of the sum of all;
- sv_fro t: the fewest whose Frobenius norm is at least t of the whole (sum of squares >= t^2).
"""
from __future__ import annotations

import math

import torch

from engine.tools import ToolError
from engine.tools.lora_file import Module

METHODS = ("sv_ratio", "sv_cumulative", "sv_fro")
MIN_SV = 1e-6  # below this the change is taken as zero (kohya's MIN_SV): rank 1


def check_method(method: str | None, param: float | None) -> None:
    if method is None:
        return
    if method not in METHODS:
        raise ToolError(f"dynamic method {method!r}: one of {', '.join(METHODS)}")
    if param is None or not math.isfinite(param):
        raise ToolError(f"{method} needs a number (--param)")
    if method == "sv_ratio" and param < 1:
        raise ToolError(f"sv_ratio = {param:g}: the ratio of the largest singular value to the smallest kept, >= 1")
    if method != "sv_ratio" and not 0 < param <= 1:
        raise ToolError(f"{method} = {param:g}: the fraction to keep, in (0, 1]")


def svd_of_factors(up: torch.Tensor, down: torch.Tensor):
    """U, S, Vh of up @ down (out x r, r x in) without forming it: two thin QRs and the SVD of an r x r core."""
    up, down = up.double(), down.double()
    qu, ru = torch.linalg.qr(up)
    qd, rd = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(ru @ rd.T)
    return qu @ u, s, vh @ qd.T


def svd_of(delta: torch.Tensor):
    return torch.linalg.svd(delta.double(), full_matrices=False)


def choose_rank(s: torch.Tensor, max_rank: int, method: str | None = None, param: float | None = None) -> int:
    if len(s) == 0 or float(s[0]) <= MIN_SV:
        return 1
    if method == "sv_ratio":
        k = int((s > s[0] / param).sum())
    elif method == "sv_cumulative":
        k = int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), torch.tensor(param, dtype=s.dtype))) + 1
    elif method == "sv_fro":
        sq = s.pow(2)
        k = int(torch.searchsorted(torch.cumsum(sq, 0) / sq.sum(), torch.tensor(param**2, dtype=s.dtype))) + 1
    else:
        k = max_rank
    return max(1, min(k, max_rank, len(s)))


def kept(s: torch.Tensor, k: int) -> dict:
    """What rank k keeps of the change: the Frobenius norm and the sum of singular values, as fractions."""
    total = float(s.pow(2).sum().sqrt())
    return {"fro_retained": float(s[:k].pow(2).sum().sqrt()) / total if total > 0 else 1.0,
            "sum_retained": float(s[:k].sum() / s.sum()) if float(s.sum()) > 0 else 1.0,
            "fro_norm": total}


def lora_module(u, s, vh, k: int, shape: tuple[int, ...], scale: float = 1.0) -> Module:
    """The rank-k LoRA of U S Vh for a weight of `shape`; singular values go into up (as kohya does) and
    alpha = scale x k, so the module's scale (alpha / rank) is `scale`."""
    up = (u[:, :k] * s[:k] / scale).float()
    down = vh[:k].float()
    if len(shape) == 4:
        up, down = up.reshape(shape[0], k, 1, 1), down.reshape(k, *shape[1:])
    return Module("lora", {"lora_A.weight": down.contiguous(), "lora_B.weight": up.contiguous()},
                  float(scale * k), k)


def decompose(m: Module):
    """U, S, Vh of a module's whole (flat) weight change."""
    if m.dora:
        raise ToolError("DoRA modules cannot be resized or merged as low-rank changes: DoRA renormalises each "
                        "weight row by its magnitude, so the change is not up @ down; merge it into a base instead")
    f = m.factors()
    return svd_of_factors(*f) if f is not None else svd_of(m.delta())


_CONV_NAMES = ("conv", "conv1", "conv2", "conv_shortcut", "conv_in", "conv_out", "proj_in", "proj_out")


def full_shape(m: Module, key, arch) -> tuple[int, ...]:
    """The weight shape a module changes. A LyCORIS module's factors are flat (out, in x kernel): the model's
    shape tells a convolution's kernel, else a name that can be a convolution needs the base model."""
    shape = m.weight_shape()
    if len(shape) == 4 or m.kind == "lora":
        return tuple(shape)
    known = arch.shapes.get(key) if arch is not None else None
    if known is not None and known[0] == shape[0] and math.prod(known[1:]) == shape[1]:
        return tuple(known)
    if key[1].split(".")[-1] in _CONV_NAMES:
        raise ToolError(f"{key[0]}.{key[1]}: a {m.kind} module whose factors do not tell whether it is a "
                        "convolution: give the base model (--base)")
    return tuple(shape)
