"""What a LoRA file is: layout, family, modules per component, rank and alpha (and where they vary), its
`ss_*` / `modelspec.*` metadata, trigger words and tag frequency, and whether ComfyUI and diffusers would load
every key.

The diffusers verdict runs diffusers' own conversion (`lora_state_dict`, then the PEFT key conversion its
loaders apply) and checks each module it names against the model. The ComfyUI verdict rebuilds the key map of
comfy/lora.py (model_lora_keys_unet / model_lora_keys_clip) for the model and the key suffixes its LoRA,
LoHa and LoKr adapters take: a key that matches nothing is what ComfyUI logs as "lora key not loaded".
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from engine.tools import ToolError, lora_file, names

_COMFY_SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", "_lora.up.weight",
                   "_lora.down.weight", ".lora_B.weight", ".lora_A.weight", ".lora.up.weight", ".lora.down.weight",
                   ".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", ".alpha", ".dora_scale",
                   ".diff", ".diff_b", ".reshape_weight", ".set_weight", ".w_norm", ".b_norm",
                   *(f".{n}" for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                                       "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b",
                                       "lokr_t2")))
_CLIP_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                 "mlp.fc1", "mlp.fc2")  # comfy/lora.py LORA_CLIP_MAP: the text-encoder modules kohya keys reach


def comfy_key_map(arch: names.Arch) -> set[str]:
    """The LoRA module names ComfyUI maps to a weight of this model (comfy/lora.py, SD 1.x / 2.x / XL)."""
    out: set[str] = set()
    for component, path in arch.shapes:
        if component == "unet":
            ldm = arch.ldm(path)
            out |= {"lora_unet_" + ldm.replace(".", "_"), names.COMFY_UNET + ldm,
                    "lora_unet_" + path.replace(".", "_"), "lycoris_" + path.replace(".", "_")}
            proc = path.replace(".to_", ".processor.to_")
            proc = proc[:-2] if proc.endswith(".to_out.0") else proc
            out |= {proc, "unet." + proc}
            continue
        clip = arch.comfy_clip(component)
        out.add(f"{names.COMFY_TE}{clip}.transformer.{path}")
        rest = path.removeprefix("text_model.encoder.layers.")
        layer, _, module = rest.partition(".")
        if module in _CLIP_MODULES:
            under = f"text_model_encoder_layers_{layer}_{module.replace('.', '_')}"
            if component == "text_encoder_2":
                out |= {f"lora_te2_{under}", f"text_encoder_2.{path}"}
            else:
                out |= {f"lora_te_{under}", f"lora_te1_{under}", f"text_encoder.{path}"}
        if component == "text_encoder_2" and path == "text_projection":
            out.add("lora_te2_text_projection")
    return out


def comfy_unloaded(keys: list[str], arch: names.Arch) -> list[str]:
    known = comfy_key_map(arch)
    missing = []
    for key in keys:
        base = next((key[: -len(s)] for s in _COMFY_SUFFIXES if key.endswith(s)), None)
        if base is None or base not in known:
            missing.append(key)
    return missing


def diffusers_unloaded(state: dict[str, torch.Tensor], arch: names.Arch | None) -> tuple[list[str], str | None]:
    """(keys or modules diffusers would not load, the error it would raise instead, if any)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, \
        convert_unet_state_dict_to_peft

    from diffusers.configuration_utils import FrozenDict

    dropped = [k for k in state if "dora_scale" in k]  # diffusers filters them out with a warning
    # the pipelines pass their UNet's config, with which kohya's SDXL block names (input_blocks_4_1_...) map
    unet_config = FrozenDict(arch.unet_config) if arch is not None else None
    try:
        sd, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(dict(state), unet_config=unet_config)
    except Exception as e:  # its own words: e.g. "keys have not been correctly renamed"
        return list(state), str(e).strip().splitlines()[0][:300]
    if not all("lora" in k for k in sd):
        return list(state), "Invalid LoRA checkpoint (diffusers wants 'lora' in every key)"
    missing = dropped + [k for k in sd if k.partition(".")[0] not in names.COMPONENTS]
    for component in names.COMPONENTS:
        part = {k[len(component) + 1:]: v for k, v in sd.items() if k.startswith(component + ".")}
        if not part:
            continue
        try:  # the conversions diffusers' loaders apply (lora_base._load_lora_into_text_encoder)
            if component == "unet":
                peft = convert_unet_state_dict_to_peft(part)
            else:
                peft = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        except ValueError as e:  # e.g. a kohya text-encoder LoRA on q/v only: "Could not ... infer state dict type"
            return list(state), f"{component}: {str(e).strip().splitlines()[0][:300]}"
        modules = {k.split(".lora_")[0] for k in peft if ".lora_" in k}
        if arch is not None:
            fix = names.canonical_te if component != "unet" else (lambda p: p)
            missing += [f"{component}.{m}" for m in sorted(modules) if (component, fix(m)) not in arch.shapes]
    return missing, None


def _where(paths: list[str]) -> str:
    """Module kinds a list of paths covers, most common first: 'to_q x12, conv1 x4'."""
    kinds = Counter(p.split(".")[-1] if not p.endswith(".0") else ".".join(p.split(".")[-2:]) for p in paths)
    return ", ".join(f"{k} x{n}" for k, n in kinds.most_common(8)) + (" ..." if len(kinds) > 8 else "")


def _tags(metadata: dict[str, str], top: int) -> list[tuple[str, int]]:
    try:
        freq = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        return []
    total: Counter = Counter()
    for per_dir in (freq.values() if isinstance(freq, dict) else []):
        if isinstance(per_dir, dict):
            total.update({str(t).strip(): int(n) for t, n in per_dir.items() if isinstance(n, (int, float))})
    return total.most_common(top)


def inspect(path: str | Path, base: str | None = None, top_tags: int = 20) -> dict:
    """A report (plain data, JSON-ready) of one LoRA file or folder."""
    arch = names.model_arch(base) if base else None
    lf = lora_file.read(path, arch)
    family_from = "the base model" if base else ("its metadata or widths" if lf.family else None)
    dit = lf.family in names.DIT_WORDS or "transformer" in lf.components
    if arch is None and lf.family and not dit:
        published = names.published_arch(lf.family)
        arch = published if not published.misfits(lf.modules) else None
    groups: dict[tuple, list[str]] = {}
    per_module = []
    for (component, p), m in sorted(lf.modules.items()):
        kind = "dora" if m.dora else m.kind
        groups.setdefault((component, kind, m.rank, m.alpha), []).append(p)
        per_module.append({"component": component, "module": p, "kind": kind, "rank": m.rank, "alpha": m.alpha,
                           "shape": list(m.weight_shape()), "norm": round(lora_file.frobenius(m), 6)})
    ranks = [{"component": c, "kind": k, "rank": r, "alpha": a, "scale": a / r, "modules": len(ps),
              "where": _where(ps)} for (c, k, r, a), ps in groups.items()]
    report = {
        "file": str(lf.path), "layout": lf.layout, "family": lf.family, "family_from": family_from,
        "family_label": names.family_label(lf.family), "kinds": sorted(lf.kinds()),
        "components": dict(Counter(c for c, _ in lf.modules)), "ranks": ranks,
        "rank_varies": len({(r["rank"], r["alpha"]) for r in ranks}) > 1, "modules": per_module,
        "ss": {k: v for k, v in lf.metadata.items() if k.startswith("ss_") and k != "ss_tag_frequency"},
        "modelspec": {k: v for k, v in lf.metadata.items() if k.startswith("modelspec.")},
        "trigger": lf.metadata.get("modelspec.trigger_phrase") or "", "tags": _tags(lf.metadata, top_tags),
        "ignored_keys": lf.ignored, "checked_against": arch.source if arch else None,
    }
    report["loaders"] = _dit_loader_verdicts(lf) if dit else _loader_verdicts(lf, arch)
    return report


def _dit_loader_verdicts(lf: lora_file.LoraFile) -> dict:
    """diffusers: the family pipeline's own lora_state_dict (its kohya/BFL/ComfyUI conversions) must turn every
    key into a transformer / text-encoder key. ComfyUI's key map is checked per family by the tests
    (tests/comfy_lora_rules.py on the full-size architectures), not rebuilt here."""
    comfy = {"all": None, "note": "the single file a run writes is checked against ComfyUI's rules by the tests"}
    if lf.path is None or lf.path.is_dir() or lf.family not in names.DIT_WORDS:
        return {"diffusers": {"note": "load it with the family's pipeline: pipe.load_lora_weights(path)"},
                "comfyui": comfy}
    from safetensors.torch import load_file

    from engine.families import FAMILIES

    state = load_file(str(lf.path))
    try:
        sd = FAMILIES[lf.family].pipeline_class.lora_state_dict(dict(state))
        sd = sd[0] if isinstance(sd, tuple) else sd
        error = None
    except Exception as e:  # its own words (an assert has none: diffusers' Flux.1 conversion assumes the
        # full-size widths, so a LoRA of a narrower Flux, e.g. builtin:tiny-flux's, fails there)
        sd, error = {}, (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    # nothing back (Flux.1's converter drops `lycoris_` LoRA/DoRA keys silently) is nothing loaded, not all of it
    missing = list(state) if error or not sd else [k for k in sd if not k.startswith(("transformer.", "text_encoder"))]
    return {"diffusers": {"all": not missing and not error, "not_loaded": missing[:50], "count": len(missing),
                          "total": len(state), "error": error}, "comfyui": comfy}


def _loader_verdicts(lf: lora_file.LoraFile, arch: names.Arch | None) -> dict:
    if lf.path is None or lf.path.is_dir():
        return {"diffusers": {"note": "a folder (peft adapters): engine.methods.lora.load_into_pipeline loads it"},
                "comfyui": {"note": "a folder: ComfyUI loads single .safetensors files"}}
    from safetensors.torch import load_file

    state = load_file(str(lf.path))
    missing, error = diffusers_unloaded(state, arch)
    out = {"diffusers": {"all": not missing and not error, "not_loaded": missing[:50], "count": len(missing),
                         "total": len(state), "error": error}}
    if arch is None:
        out["comfyui"] = {"all": None, "note": "give --base: the file does not fit the family's published "
                                               "architecture, so ComfyUI's key map cannot be rebuilt"}
    else:
        unloaded = comfy_unloaded(list(state), arch)
        out["comfyui"] = {"all": not unloaded, "not_loaded": unloaded[:50], "count": len(unloaded),
                          "total": len(state)}
    return out


def format_report(r: dict, modules: bool = False) -> str:
    lines = [f"{r['file']}", f"  layout: {r['layout']}   kinds: {', '.join(r['kinds'])}",
             f"  family: {r['family_label']}" + (f" (from {r['family_from']})" if r["family_from"] else ""),
             "  modules: " + ", ".join(f"{c} {n}" for c, n in sorted(r["components"].items()))]
    lines.append("  rank / alpha" + (" (they vary):" if r["rank_varies"] else ":"))
    for g in r["ranks"]:
        lines.append(f"    {g['component']:<15} {g['kind']:<5} rank {g['rank']:<4} alpha {g['alpha']:g} "
                     f"(scale {g['scale']:g}) on {g['modules']} modules: {g['where']}")
    if modules:
        for m in r["modules"]:
            lines.append(f"      {m['component']}.{m['module']}  {m['kind']} r{m['rank']} a{m['alpha']:g} "
                         f"{tuple(m['shape'])} |dW| {m['norm']:.4g}")
    lines.append(f"  trigger: {r['trigger'] or '(none given)'}")
    if r["tags"]:
        lines.append("  tags: " + ", ".join(f"{t} ({n})" for t, n in r["tags"]))
    for name in ("ss", "modelspec"):
        for k, v in sorted(r[name].items()):
            lines.append(f"  {k} = {v if len(v) < 120 else v[:117] + '...'}")
    for loader, v in r["loaders"].items():
        if v.get("note"):
            lines.append(f"  {loader}: {v['note']}")
        elif v.get("error"):
            lines.append(f"  {loader}: refuses the file: {v['error']}")
        else:
            lines.append(f"  {loader}: " + ("loads every key" if v["all"] else
                         f"would not load {v['count']} of {v['total']} keys, e.g. {', '.join(v['not_loaded'][:3])}"))
    if r["ignored_keys"]:
        lines.append(f"  keys of no known layout ({len(r['ignored_keys'])}): {', '.join(r['ignored_keys'][:5])}")
    return "\n".join(lines)


def check_loadable(r: dict) -> None:
    if not r["modules"]:
        raise ToolError(f"{r['file']} holds no LoRA modules")
