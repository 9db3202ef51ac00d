"""LoRA files for the engine/tools tests, written the way other programs write them: diffusers'
`save_lora_weights`, our training exporter's kohya writer, and LyCORIS' key names by hand; and the CLI."""
import contextlib
import io
import json
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lokr.layer import factorization
from safetensors.torch import save_file

from engine.export import write_kohya_lora
from engine.families import FAMILIES
from engine.tools.__main__ import main

BASE = "builtin:tiny-sd"

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _layers(model, targets):
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and n.endswith(targets)}


def lora_state(model, targets, rank: int, seed: int, spread: float = 1.0) -> dict[str, torch.Tensor]:
    """PEFT-named LoRA tensors (`<path>.lora_A.weight` ...) for every target layer; singular values fall off
    by `spread` per rank (1: random factors) so a lower rank keeps most of the change, as trained LoRAs do."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, layer in _layers(model, targets).items():
        w = layer.weight
        down = torch.randn(rank, *w.shape[1:], generator=gen) / w[0].numel() ** 0.5
        up = torch.randn(w.shape[0], rank, *([1] * (w.dim() - 2)), generator=gen) * 0.3
        up = up * (spread ** -torch.arange(rank, dtype=torch.float32)).reshape(1, rank, *([1] * (w.dim() - 2)))
        out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = down.contiguous(), up.contiguous()
    return out


def save_diffusers_lora(pipe, folder: Path, rank=4, unet_alpha=2.0, te_alpha=8.0, seed=0, spread=1.0) -> Path:
    """diffusers' own writer, with each component's LoraConfig as adapter metadata (alpha != rank)."""
    cfg = lambda targets, alpha: LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)).to_dict()
    kw = {"unet_lora_layers": lora_state(pipe.unet, UNET_TARGETS, rank, seed, spread),
          "unet_lora_adapter_metadata": cfg(UNET_TARGETS, unet_alpha)}
    for i, name in enumerate(n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None):
        kw[f"{name}_lora_layers"] = lora_state(getattr(pipe, name), TE_TARGETS, rank, seed + 1 + i, spread)
        kw[f"{name}_lora_adapter_metadata"] = cfg(TE_TARGETS, te_alpha / (i + 1))  # SDXL's second: another alpha
    type(pipe).save_lora_weights(str(folder), safe_serialization=True, **kw)
    return Path(folder) / "pytorch_lora_weights.safetensors"


def save_kohya_lora(pipe, path: Path, rank=4, alpha=2.0, seed=10, metadata=None) -> Path:
    """Our training exporter's kohya writer (engine.export.write_kohya_lora), UNet and text encoder."""
    sds = {"unet": lora_state(pipe.unet, UNET_TARGETS, rank, seed),
           "text_encoder": lora_state(pipe.text_encoder, TE_TARGETS, rank, seed + 1)}
    return write_kohya_lora(path, FAMILIES["sd1"], sds, alpha, metadata or {})


def save_lycoris_file(pipe, path: Path, kind: str, rank=4, alpha=2.0, seed=20) -> Path:
    """A LyCORIS file as LyCORIS names it (`lora_unet_<path>.hada_w1_a` ..., `.alpha` per module) on the attention
    q / v projections and the ResNets' 3x3 first convolutions: LoHa, or LoKr with w1 whole and w2 split
    (convolutions' factors flat, as LyCORIS keeps them without Tucker)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen) * 0.2
    state = {}
    for name, layer in _layers(pipe.unet, ("to_q", "to_v", "conv1")).items():
        key = "lora_unet_" + name.replace(".", "_")
        out_f, flat_in = layer.weight.shape[0], layer.weight[0].numel()
        if kind == "lokr":  # LyCORIS' factorization (peft has the same function): out = l x k, in = m x n
            (l, k), (m, n) = factorization(out_f), factorization(layer.weight.shape[1])
            state |= {f"{key}.lokr_w1": rnd(l, m), f"{key}.lokr_w2_a": rnd(k, rank),
                      f"{key}.lokr_w2_b": rnd(rank, flat_in // m)}
        else:
            state |= {f"{key}.hada_w1_a": rnd(out_f, rank), f"{key}.hada_w1_b": rnd(rank, flat_in),
                      f"{key}.hada_w2_a": rnd(out_f, rank), f"{key}.hada_w2_b": rnd(rank, flat_in)}
        state[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path), {"ss_network_module": "lycoris.kohya", "ss_network_dim": str(rank),
                                 "ss_network_alpha": str(alpha),
                                 "ss_network_args": json.dumps({"algo": kind, "conv_dim": str(rank)})})
    return Path(path)


def tools(*args, expect_rc=0):
    """`python -m engine.tools ARGS` run in this process (its main(), as the module runs it): (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    assert rc == expect_rc, err.getvalue()[-3000:]
    return out.getvalue(), err.getvalue()
