"""PEFT LoRA state dicts read module by module, for the DiT single-file writers (keys_flux1, keys_sd3)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.export import group_modules


@dataclass
class LoraModule:
    path: str  # diffusers module path, e.g. "transformer_blocks.0.attn.to_q"
    down: torch.Tensor  # PEFT lora_A: [rank, in, ...]
    up: torch.Tensor  # PEFT lora_B: [out, rank, ...]
    alpha: float
    rank: int

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_modules(state_dict: dict[str, torch.Tensor], alphas: dict[str, tuple[float, int]]) -> list[LoraModule]:
    """Every module of a PEFT LoRA state dict with its (alpha, rank); ValueError for anything but plain LoRA.

    LoHa, LoKr and DoRA have no fused-weight layout ComfyUI and diffusers agree on for DiTs: keys/lycoris.py
    writes them; these writers refuse them rather than drop a part."""
    out = []
    for path, parts in group_modules(state_dict).items():
        if set(parts) != {"lora_A.weight", "lora_B.weight"}:
            raise ValueError(f"{path}: only LoRA (lora_A / lora_B) has a single-file key map for this family, "
                             f"got {sorted(parts)}; LoHa / LoKr / DoRA are written in LyCORIS' layout "
                             "(keys/lycoris.py)")
        if path not in alphas:
            raise ValueError(f"{path}: no (alpha, rank) given for this module")
        alpha, rank = alphas[path]
        down, up = parts["lora_A.weight"], parts["lora_B.weight"]
        if down.shape[0] != rank or up.shape[1] != rank:
            raise ValueError(f"{path}: rank {rank} does not match lora_A {tuple(down.shape)} / lora_B "
                             f"{tuple(up.shape)}")
        out.append(LoraModule(path, down, up, float(alpha), int(rank)))
    return out


def alpha_tensor(alpha: float) -> torch.Tensor:
    """kohya's `.alpha`: a float32 scalar (an int64 one, as diffusers' own helper writes, loses fractions)."""
    return torch.tensor(float(alpha), dtype=torch.float32)


def check_mappable(mappable, path: str, what: str) -> None:
    """ValueError naming a module ComfyUI's map for the family (`mappable`, a regex) does not name."""
    if not mappable.fullmatch(path):
        raise ValueError(f"{path}: no {what} single-file key for this module")


def unfused_single_file(state_dict: dict[str, torch.Tensor], alphas: dict[str, tuple[float, int]], mappable,
                        what: str, stem, names: tuple[str, str]) -> dict[str, torch.Tensor]:
    """A single file whose modules keep diffusers' names (Z-Image, Qwen-Image): `stem(path)` + the down / up
    names + a float32 `.alpha`; a module ComfyUI does not map (`mappable`, a regex) is refused by name."""
    out: dict[str, torch.Tensor] = {}
    for mod in lora_modules(state_dict, alphas):
        check_mappable(mappable, mod.path, what)
        s = stem(mod.path)
        out[f"{s}.{names[0]}"] = mod.down.contiguous()
        out[f"{s}.{names[1]}"] = mod.up.contiguous()
        out[f"{s}.alpha"] = alpha_tensor(mod.alpha)
    return out
