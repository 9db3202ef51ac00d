"""Any LoRA file in one internal form, and back out in any layout.

Internal form: LoraFile.modules = {(component, diffusers path): Module}, each Module holding PEFT's own tensor
names (`lora_A.weight`, `lora_B.weight`, `lora_magnitude_vector` for DoRA; `hada_w1_a`...; `lokr_w1`...) and
PEFT's meaning of alpha: the weight change is f(tensors) * alpha / rank for every kind. Layouts read:

- kohya / LyCORIS (`lora_unet_...lora_down.weight`, `.alpha`, `.dora_scale`, `.hada_w1_a`, `.lokr_w1`; also
  SimpleTuner's `lycoris_` UNet prefix), diffusers names or kohya's LDM (SGM) block names;
- diffusers / PEFT (`unet.<path>.lora_A.weight`, the LoraConfig in the `lora_adapter_metadata` header; older
  `lora.down.weight`, `processor.to_q_lora.down.weight`, `lora_linear_layer.down.weight`);
- ComfyUI (`diffusion_model.<LDM path>.lora_up.weight`, `text_encoders.clip_l.transformer...`);
- a peft folder (`<component>/adapter_model.safetensors` + `adapter_config.json`, what LoHa/LoKr runs write).
Only safetensors are read (never a pickle).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import atomic, export
from engine.tools import ToolError, names

KINDS = ("lora", "loha", "lokr")
LAYOUTS = ("kohya", "diffusers", "comfyui", "peft")
# file suffix -> PEFT part name, for LoRA keys every trainer spells its own way
_LORA_SUFFIXES = {".lora_down.weight": "lora_A.weight", ".lora_up.weight": "lora_B.weight",
                  ".lora_A.weight": "lora_A.weight", ".lora_B.weight": "lora_B.weight",
                  ".lora.down.weight": "lora_A.weight", ".lora.up.weight": "lora_B.weight",
                  "_lora.down.weight": "lora_A.weight", "_lora.up.weight": "lora_B.weight",
                  ".lora_linear_layer.down.weight": "lora_A.weight", ".lora_linear_layer.up.weight": "lora_B.weight",
                  ".dora_scale": "lora_magnitude_vector", ".lora_magnitude_vector": "lora_magnitude_vector",
                  ".alpha": "alpha"}
_SUFFIXES = {**_LORA_SUFFIXES, **{f".{n}": n for n in export._LYCORIS_NAMES}}
_SUFFIX_ORDER = sorted(_SUFFIXES, key=len, reverse=True)
ADAPTER_METADATA = "lora_adapter_metadata"  # diffusers' header key (LORA_ADAPTER_METADATA_KEY)


@dataclass
class Module:
    kind: str  # lora | loha | lokr
    parts: dict[str, torch.Tensor]
    alpha: float
    rank: int

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def dora(self) -> bool:
        return "lora_magnitude_vector" in self.parts

    def peft_parts(self) -> dict[str, torch.Tensor]:
        """The tensors as PEFT holds them (a conv DoRA magnitude is shaped [1, out, 1, 1] there)."""
        mag = self.parts.get("lora_magnitude_vector")
        if mag is None or self.parts["lora_A.weight"].dim() == 2:
            return dict(self.parts)
        return {**self.parts, "lora_magnitude_vector": mag.reshape(1, -1, *([1] * (mag.dim() + 1)))}

    def flat_shape(self) -> tuple[int, int]:
        """(out, in x kernel) of the weight it changes."""
        p = self.parts
        if self.kind == "lora":
            return p["lora_B.weight"].shape[0], p["lora_A.weight"][0].numel()
        if self.kind == "loha":
            return p["hada_w1_a"].shape[0], p["hada_w1_b"].shape[1]
        w1, w2 = self._lokr_factors()
        return w1.shape[0] * w2.shape[0], w1.shape[1] * w2[0].numel()

    def weight_shape(self) -> tuple[int, ...]:
        """The weight's shape where the tensors tell it (LoRA, and LyCORIS kinds with a 4-d factor), else flat."""
        if self.kind == "lora":
            return (self.parts["lora_B.weight"].shape[0], *self.parts["lora_A.weight"].shape[1:])
        w2 = self.parts.get("lokr_w2")
        if self.kind == "lokr" and w2 is not None and w2.dim() == 4:
            w1, _ = self._lokr_factors()
            return (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], *w2.shape[2:])
        return self.flat_shape()

    def _lokr_factors(self):
        p = self.parts
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        return w1.float(), w2.float()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(up, down) with up @ down = the flat weight change (scale included), for LoRA; None otherwise."""
        if self.kind != "lora":
            return None
        up = self.parts["lora_B.weight"].float().flatten(1) * self.scale
        return up, self.parts["lora_A.weight"].float().flatten(1)

    def delta(self) -> torch.Tensor:
        """The flat weight change (out, in x kernel), scale included; DoRA's renormalisation is not in it."""
        p = self.parts
        if self.kind == "lora":
            up, down = self.factors()
            return up @ down
        if self.kind == "loha":
            if "hada_t1" in p:
                raise ToolError("LoHa with Tucker factors (hada_t1) is not supported")
            d = (p["hada_w1_a"].float() @ p["hada_w1_b"].float()) * (p["hada_w2_a"].float() @ p["hada_w2_b"].float())
            return d * self.scale
        if "lokr_t2" in p:
            raise ToolError("LoKr with a Tucker factor (lokr_t2) is not supported")
        w1, w2 = self._lokr_factors()
        return torch.kron(w1, w2.flatten(1)) * self.scale


@dataclass
class LoraFile:
    modules: dict[tuple[str, str], Module]
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = "kohya"
    family: str | None = None
    path: Path | None = None
    ignored: list[str] = field(default_factory=list)  # keys no layout explains

    @property
    def components(self) -> set[str]:
        return {c for c, _ in self.modules}

    def kinds(self) -> set[str]:
        return {("dora" if m.dora else m.kind) for m in self.modules.values()}


# ----------------------------------------------------------------------------- reading

def _open(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load_file

    from engine.safetensors_files import NotSafetensors, read_lora_header

    if not path.exists():
        raise ToolError(f"{path} not found")
    try:
        _, meta = read_lora_header(path)
    except NotSafetensors as e:
        raise ToolError(str(e)) from None
    return load_file(str(path)), meta


def _split(key: str) -> tuple[str, str] | None:
    for suffix in _SUFFIX_ORDER:
        if key.endswith(suffix):
            return key[: -len(suffix)], _SUFFIXES[suffix]
    return None


def _module_name(name: str, family_hint: str | None) -> tuple[str, str, str, bool] | None:
    """(layout, component, path, path is LDM) of a module name as a file writes it; None if unknown."""
    for prefix, component in names.KOHYA_PREFIXES.items():
        if name.startswith(prefix):
            path = names.dotted(name[len(prefix):])
            return "kohya", component, path, component == "unet" and names.is_ldm(path)
    if name.startswith("lycoris_"):
        return "kohya", "unet", names.dotted(name[len("lycoris_"):]), False
    if name.startswith(names.COMFY_UNET):
        if family_hint in names.DIT_WORDS:  # a DiT's ComfyUI keys carry the diffusers module path itself
            return "comfyui", "transformer", name[len(names.COMFY_UNET):], False
        return "comfyui", "unet", name[len(names.COMFY_UNET):], True
    if name.startswith(names.COMFY_TE):
        clip, _, rest = name[len(names.COMFY_TE):].partition(".")
        component = {"clip_l": "text_encoder", "clip_h": "text_encoder",
                     "clip_g": "text_encoder_2" if family_hint != "sd2" else "text_encoder"}.get(clip)
        if component and rest.startswith("transformer."):
            return "comfyui", component, rest[len("transformer."):], False
        return None
    component, _, path = name.partition(".")
    if component in names.COMPONENTS and path:
        # diffusers' attention-processor era: `attn1.processor.to_q_lora`, `to_out_lora`
        path = path.replace(".processor.", ".").removesuffix("_lora")
        path = path[: -len("to_out")] + "to_out.0" if path.endswith(".to_out") else path
        return "diffusers", component, path, False
    return None


def read_state(state: dict[str, torch.Tensor], metadata: dict[str, str], *, arch=None, path: Path | None = None,
               peft_configs: dict[str, dict] | None = None) -> LoraFile:
    what = str(path or "the LoRA")
    hint = arch.family if arch else names.guess_family(metadata, set(), {})
    groups: dict[tuple, dict[str, torch.Tensor]] = {}
    layouts: dict[str, int] = {}
    ignored = []
    for key, value in state.items():
        split = _split(key)
        named = _module_name(split[0], hint) if split and not peft_configs else None
        if peft_configs and split:  # a peft folder: keys are `<component>/<module path>`
            component, _, p = split[0].partition("/")
            named = ("peft", component, p, False)
        if named is None:
            ignored.append(key)
            continue
        layout, component, p, ldm = named
        if component == "unet" and hint in names.DIT_WORDS:  # kohya's `lora_unet_` names a DiT's transformer
            component, ldm = "transformer", False
        layouts[layout] = layouts.get(layout, 0) + 1
        if component != "unet":
            p = names.canonical_te(p)
        groups.setdefault((component, p, ldm), {})[split[1]] = value
    if not groups:
        raise ToolError(f"{what} holds no LoRA keys of any layout this tool knows (kohya, LyCORIS, diffusers/PEFT, "
                        f"ComfyUI); first keys: {', '.join(list(state)[:3])}")
    layout = max(layouts, key=layouts.get)
    adapter = _adapter_configs(metadata, peft_configs)
    raw = {key: _module(parts, adapter.get(key[0]), key[1], f"{what}: {key[1]}") for key, parts in groups.items()}
    family = arch.family if arch else names.guess_family(
        metadata, {c for c, _, _ in raw}, {(c, p): m.weight_shape() for (c, p, ldm), m in raw.items() if not ldm})
    modules = {}
    if any(ldm for _, _, ldm in raw):
        arch = arch or (names.published_arch(family) if family else None)
    for (component, p, ldm), module in raw.items():
        if ldm:
            p = names.module_from_ldm(arch, p, what)
        modules[(component, p)] = module
    return LoraFile(modules, dict(metadata), layout, family, path, ignored)


def _module(parts: dict[str, torch.Tensor], config: dict | None, p: str, what: str) -> Module:
    alpha_t = parts.pop("alpha", None)
    if "lora_A.weight" in parts or "lora_B.weight" in parts:
        if not {"lora_A.weight", "lora_B.weight"} <= parts.keys():
            raise ToolError(f"{what}: a LoRA module without both its down and up weights")
        kind, rank = "lora", parts["lora_A.weight"].shape[0]
        if "lora_magnitude_vector" in parts:
            parts["lora_magnitude_vector"] = parts["lora_magnitude_vector"].flatten()
    elif "hada_w1_a" in parts:
        kind, rank = "loha", parts["hada_w1_b"].shape[0]
    elif any(k.startswith("lokr_") for k in parts):
        kind = "lokr"
        split = parts.get("lokr_w2_a", parts.get("lokr_w1_a"))
        rank = split.shape[1] if split is not None else None
    else:
        raise ToolError(f"{what}: parts {sorted(parts)} make no LoRA, LoHa or LoKr module")
    if alpha_t is not None:
        alpha = float(alpha_t.float().item())
    elif config is not None:
        alpha = float(_pattern(config.get("alpha_pattern") or {}, p, config.get("lora_alpha", config.get("alpha"))))
        if kind == "lokr" and rank is None:
            rank = int(_pattern(config.get("rank_pattern") or {}, p, config.get("r")))
    else:  # diffusers without a stored config, ComfyUI's own writer: alpha = rank (scale 1)
        alpha = float(rank) if rank else 1.0
    if kind == "lokr" and rank is None:
        rank = alpha = alpha or 1.0  # LyCORIS: a LoKr with no split factor is scaled by 1, whatever alpha says
    return Module(kind, parts, alpha, int(rank))


def _pattern(patterns: dict, path: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup (a key matches a module path ending in it)."""
    from peft.utils.other import get_pattern_key

    bare = path.removeprefix("text_model.")
    for candidate in (path, bare):
        key = get_pattern_key(list(patterns), candidate) if patterns else candidate
        if key in patterns:
            return patterns[key]
    return default


def _adapter_configs(metadata: dict[str, str], peft_configs: dict | None) -> dict[str, dict]:
    """{component: LoraConfig fields} from diffusers' header (`unet.lora_alpha`...) or a peft folder."""
    if peft_configs:
        return peft_configs
    raw = metadata.get(ADAPTER_METADATA)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except ValueError:
        return {}
    out: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, field_name = key.partition(".")
        out.setdefault(component, {})[field_name] = value
    return out


def read(path: str | Path, arch=None) -> LoraFile:
    """A LoRA .safetensors file, a diffusers LoRA folder (pytorch_lora_weights.safetensors), a run folder, or a
    peft folder (`peft/<component>/adapter_model.safetensors`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_folder(path, arch)
    state, meta = _open(path)
    return read_state(state, meta, arch=arch, path=path)


def _read_folder(path: Path, arch) -> LoraFile:
    peft_root = path / "peft" if (path / "peft").is_dir() else path
    parts = sorted(p for p in peft_root.iterdir() if (p / "adapter_config.json").is_file()) \
        if peft_root.is_dir() else []
    if parts:
        state, configs = {}, {}
        for folder in parts:
            tensors, _ = _open(folder / "adapter_model.safetensors")
            state.update({f"{folder.name}/{k}": v for k, v in tensors.items()})
            configs[folder.name] = json.loads((folder / "adapter_config.json").read_text())
        return read_state(state, {}, arch=arch, path=path, peft_configs=configs)
    for candidate in (path / export.DIFFUSERS_WEIGHT_NAME, path / "diffusers" / export.DIFFUSERS_WEIGHT_NAME):
        if candidate.is_file():
            return read(candidate, arch)
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return read(found[0], arch)
    raise ToolError(f"{path} is a folder with no LoRA in it (no {export.DIFFUSERS_WEIGHT_NAME}, peft/ adapter "
                    "folders or a single .safetensors file)")


# ----------------------------------------------------------------------------- writing

def _family_for(lf: LoraFile, family: str | None) -> str:
    family = family or lf.family
    if "text_encoder_2" in lf.components:
        return "sdxl"
    return family or "sd1"


def kohya_state(lf: LoraFile, family: str | None = None, unet_name=None, te_name=None) -> dict[str, torch.Tensor]:
    """kohya / LyCORIS keys through export.kohya_module; `unet_name` / `te_name` rename modules (ComfyUI)."""
    prefixes = {"unet": "lora_unet", **names.kohya_te_prefixes(_family_for(lf, family))}
    out = {}
    for (component, p), m in lf.modules.items():
        if component == "unet":
            name = unet_name(p) if unet_name else f"lora_unet_{p.replace('.', '_')}"
        else:
            name = te_name(component, p) if te_name else f"{prefixes[component]}_{p.replace('.', '_')}"
        out.update({f"{name}.{part}": v for part, v in export.kohya_module(m.parts, m.alpha, m.rank).items()})
    return out


def diffusers_state(lf: LoraFile) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """diffusers / PEFT keys and the `lora_adapter_metadata` header its loader builds each LoraConfig from."""
    if lf.kinds() - {"lora", "dora"}:
        raise ToolError(f"diffusers cannot load {'/'.join(sorted(lf.kinds() - {'lora', 'dora'}))} modules: write "
                        "the kohya (LyCORIS) layout or a peft folder instead")
    state, packed = {}, {}
    for component in sorted(lf.components):
        mods = {p: m for (c, p), m in lf.modules.items() if c == component}
        for p, m in mods.items():
            state.update({f"{component}.{p}.{part}": v.contiguous() for part, v in m.peft_parts().items()})
        for k, v in lora_config(mods).items():
            packed[f"{component}.{k}"] = v
    return state, {"format": "pt", ADAPTER_METADATA: json.dumps(packed, indent=2, sort_keys=True)}


def lora_config(mods: dict[str, Module]) -> dict:
    """LoraConfig fields for these modules: the commonest rank and alpha, patterns for the others (keys
    without `text_model.`, so they match transformers 5's CLIPTextModel and the classic layout alike)."""
    ranks = [m.rank for m in mods.values()]
    alphas = [m.alpha for m in mods.values()]
    r = max(set(ranks), key=ranks.count)
    a = max(set(alphas), key=alphas.count)
    bare = {p: p.removeprefix("text_model.") for p in mods}
    return {"r": r, "lora_alpha": a, "target_modules": sorted(set(bare.values())),
            "rank_pattern": {bare[p]: m.rank for p, m in mods.items() if m.rank != r},
            "alpha_pattern": {bare[p]: m.alpha for p, m in mods.items() if m.alpha != a},
            "use_dora": any(m.dora for m in mods.values()), "lora_dropout": 0.0, "bias": "none"}


def write(lf: LoraFile, out: str | Path, layout: str, *, family: str | None = None, arch=None,
          metadata: dict[str, str] | None = None) -> Path:
    """`lf` in `layout` at `out` (a .safetensors file; for "peft" a folder), atomically. The ComfyUI layout
    names UNet modules by their LDM path, which needs `arch` (the base model's, or the family's published one)."""
    out = Path(out).expanduser()
    names.refuse_dit("transformer" if "transformer" in lf.components else lf.family, str(lf.path or out))
    meta = {k: str(v) for k, v in (lf.metadata if metadata is None else metadata).items() if k != ADAPTER_METADATA}
    if layout == "peft":
        from engine.tools.peft_folder import write_peft_folders
        return write_peft_folders(lf, out)
    if out.suffix.lower() != ".safetensors":
        raise ToolError(f"{out}: the output must be a .safetensors file")
    if layout == "kohya":
        state = kohya_state(lf, family)
    elif layout == "diffusers":
        state, header = diffusers_state(lf)
        meta.update(header)
    elif layout == "comfyui":
        state = comfy_state(lf, arch)
    else:
        raise ToolError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
    return atomic.save_safetensors(state, out, meta)


def comfy_state(lf: LoraFile, arch) -> dict[str, torch.Tensor]:
    family = _family_for(lf, arch.family if arch else None)
    if arch is None:
        arch = names.published_arch(family)
    bad = arch.misfits({k: m for k, m in lf.modules.items() if k[0] == "unet"})
    if bad:
        raise ToolError(f"the LoRA does not fit {arch.source} ({len(bad)} modules differ, e.g. {bad[0]}); give the "
                        "base model (--base) so the UNet's original block names can be worked out")
    return kohya_state(lf, family, unet_name=lambda p: names.COMFY_UNET + arch.ldm(p),
                       te_name=lambda c, p: f"{names.COMFY_TE}{arch.comfy_clip(c)}.transformer.{p}")


def frobenius(m: Module) -> float:
    """‖ΔW‖_F of a module, cheaply for LoRA (through its factors)."""
    f = m.factors()
    if f is None:
        return float(torch.linalg.norm(m.delta()))
    up, down = f
    return math.sqrt(max(float(torch.trace((up.T @ up) @ (down @ down.T))), 0.0))
