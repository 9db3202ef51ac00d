"""LoRA / LoHa / LoKr as peft adapter folders, the layout LoHa and LoKr runs keep under `peft/` (diffusers has
no loader for those kinds): `<component>/adapter_model.safetensors` + `adapter_config.json`, with the module
names of the live models (transformers 5's CLIPTextModel has no `text_model.` wrapper) so that
`engine.methods.lora.load_into_pipeline` (inject_adapter_in_model + set_peft_model_state_dict) takes them.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

from engine.methods.lora import write_peft_folder
from engine.tools import ToolError


@functools.lru_cache(maxsize=2)
def _flat_text_model(component: str) -> bool:
    """Whether this component's transformers class names its layers without `text_model.`."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
    with torch.device("meta"):
        model = cls(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1))
    return not hasattr(model, "text_model")


def native_path(component: str, path: str) -> str:
    if component != "unet" and _flat_text_model(component):
        return path.removeprefix("text_model.")
    return path


def _check_lokr_factors(path: str, m) -> None:
    """peft builds a LoKr's w1 as (l, m) with out = l x k and in = m x n from its own factorization (LyCORIS'
    too, with factor -1); factors cut another way have no place in a peft layer."""
    from peft.tuners.lokr.layer import factorization

    w1 = m.parts["lokr_w1"] if "lokr_w1" in m.parts else m.parts["lokr_w1_a"] @ m.parts["lokr_w1_b"]
    out, flat_in = m.flat_shape()
    ins = [flat_in // k for k in (1, 9, 4, 25, 49) if flat_in % k == 0]  # kernel areas 1x1 .. 7x7
    if w1.shape[0] != factorization(out)[0] or not any(factorization(i)[0] == w1.shape[1] for i in ins):
        raise ToolError(f"{path}: this LoKr's factors ({tuple(w1.shape)} x ...) are not cut as peft cuts them, so "
                        "peft cannot hold it: keep the kohya / LyCORIS layout")


def _lokr_rank(m) -> tuple[int, float]:
    """(r, alpha) that make peft build this LoKr's factors with the same scale: a split factor fixes r; with
    both factors whole, r must be at least half of lokr_w2's larger side (peft's rule for keeping it whole)."""
    p = m.parts
    split = p.get("lokr_w2_a", p.get("lokr_w1_a"))
    if split is not None:
        return split.shape[1], m.alpha
    w2 = p["lokr_w2"]
    r = max(m.rank, math.ceil(max(w2.shape[0], w2.shape[1]) / 2))
    return r, m.scale * r


def _config(kind: str, mods: dict) -> dict:
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    ranks = {p: (_lokr_rank(m) if kind == "lokr" else (m.rank, m.alpha)) for p, m in mods.items()}
    r = max({v[0] for v in ranks.values()}, key=[v[0] for v in ranks.values()].count)
    a = max({v[1] for v in ranks.values()}, key=[v[1] for v in ranks.values()].count)
    common = dict(r=r, target_modules=sorted(mods), rank_pattern={p: v[0] for p, v in ranks.items() if v[0] != r},
                  alpha_pattern={p: v[1] for p, v in ranks.items() if v[1] != a})
    if kind == "loha":
        return LoHaConfig(alpha=a, **common).to_dict()
    if kind == "lokr":
        return LoKrConfig(alpha=a, decompose_both=any("lokr_w1_a" in m.parts for m in mods.values()),
                          **common).to_dict()
    return LoraConfig(lora_alpha=a, use_dora=any(m.dora for m in mods.values()), **common).to_dict()


def write_peft_folders(lf, root: Path) -> Path:
    """One peft adapter folder per component under `root` (each written atomically)."""
    root = Path(root)
    if root.suffix:
        raise ToolError(f"{root}: a peft layout is a folder (one adapter folder per component); give a folder name")
    kinds = {m.kind for m in lf.modules.values()}
    if len(kinds) != 1:
        raise ToolError(f"a peft adapter holds one kind of module; this LoRA mixes {', '.join(sorted(kinds))}")
    kind = kinds.pop()
    if kind == "lokr":  # every module checked before anything is written
        for (component, p), m in lf.modules.items():
            _check_lokr_factors(f"{component}.{p}", m)
    for component in sorted(lf.components):
        mods = {native_path(c, p): m for (c, p), m in lf.modules.items() if c == component}
        state = {f"{p}.{part}": v.contiguous() for p, m in mods.items() for part, v in m.peft_parts().items()}
        write_peft_folder(root / component, _config(kind, mods), state)
    return root
