"""Module names in every layout, and the architecture that decides the ones that depend on it.

A module is named inside the tools as (component, diffusers path): ("unet", "down_blocks.1.attentions.0.
transformer_blocks.0.attn1.to_q"), ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"). Layouts:

- kohya: `lora_unet_` / `lora_te_` (SD 1/2) / `lora_te1_` + `lora_te2_` (SDXL) + the path with `_` for `.`.
  Underscores inside names (`to_q`, `down_blocks`) are told apart by the names the models use (COMPOUNDS).
  kohya's own SDXL files use the original (LDM) block names (`input_blocks_4_1_...`): those need the UNet's
  layout (layers per block), so they are mapped through an Arch.
- ComfyUI: what ComfyUI's own LoRA writer (comfy_extras/nodes_lora_extract.py) emits and comfy/lora.py maps
  as "generic lora format": `diffusion_model.<LDM path>` for the UNet and `text_encoders.<ComfyUI CLIP state
  dict path>` (`clip_l.transformer.text_model...`; SD 2 `clip_h`; SDXL `clip_l` + `clip_g`).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.tools import ToolError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
COMFY_UNET = "diffusion_model."
COMFY_TE = "text_encoders."
# ComfyUI's CLIP model names per family and diffusers component (comfy/sd1_clip.py, sd2_clip.py, sdxl_clip.py)
COMFY_CLIP = {"sd1": {"text_encoder": "clip_l"}, "sd2": {"text_encoder": "clip_h"},
              "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}}

# Names with an underscore inside one module name, in the diffusers, LDM and CLIP layouts.
COMPOUNDS = sorted((tuple(c.split("_")) for c in (
    "down_blocks up_blocks mid_block transformer_blocks to_q to_k to_v to_out proj_in proj_out conv_shortcut "
    "time_emb_proj conv_in conv_out conv_norm_out time_embedding linear_1 linear_2 add_embedding "
    "input_blocks middle_block output_blocks in_layers out_layers emb_layers skip_connection time_embed "
    "label_emb text_model self_attn q_proj k_proj v_proj out_proj text_projection layer_norm1 layer_norm2 "
    "final_layer_norm token_embedding position_embedding "
    "double_blocks single_blocks img_attn txt_attn img_mlp txt_mlp img_mod txt_mod "  # Flux.1's BFL names
    "add_q_proj add_k_proj add_v_proj to_add_out").split()),  # the joint attention of SD3 / Qwen-Image
    key=len, reverse=True)
_LDM_STARTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")


def dotted(underscored: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` -> `down_blocks.0.attentions.0.proj_in`."""
    tokens, out, i = underscored.split("_"), [], 0
    while i < len(tokens):
        for comp in COMPOUNDS:
            if tuple(tokens[i:i + len(comp)]) == comp:
                out.append("_".join(comp))
                i += len(comp)
                break
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


def canonical_te(path: str) -> str:
    """CLIP paths with `text_model.` (transformers 5's CLIPTextModel drops it; every file layout has it)."""
    return path if path.startswith(("text_model.", "text_projection")) else f"text_model.{path}"


def kohya_te_prefixes(family: str) -> dict[str, str]:
    return {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"} if family == "sdxl" \
        else {"text_encoder": "lora_te"}


# ----------------------------------------------------------------------------- architectures

# (hidden, intermediate, layers, projection) of the published text encoders
_PUBLISHED_TE = {"sd1": {"text_encoder": (768, 3072, 12, None)}, "sd2": {"text_encoder": (1024, 4096, 23, None)},
                 "sdxl": {"text_encoder": (768, 3072, 12, None), "text_encoder_2": (1280, 5120, 32, 1280)}}
FAMILY_LABELS = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "Stable Diffusion XL"}
# The DiT families, by the words their files' ss_base_model_version / modelspec.architecture use (ours, sd-scripts',
# musubi-tuner's, ai-toolkit's). Their denoiser is the component "transformer"; the tools read and inspect their
# LoRAs, and the UNet-only tools (resize, merge, extract, convert) refuse them by name.
DIT_WORDS = {"flux1": ("flux",), "sd3": ("stable-diffusion-3", "sd3"), "zimage": ("z-image", "z_image", "zimage"),
             "qwenimage": ("qwen-image", "qwen_image")}


def family_label(family: str | None) -> str:
    if family in DIT_WORDS:
        from engine.families import FAMILIES
        return FAMILIES[family].label
    return FAMILY_LABELS.get(family or "", "unknown")


@dataclass
class Arch:
    """The weight shape of every Linear / Conv2d of a model, by (component, path); and its LDM names."""
    family: str
    source: str  # what it was read from, for messages
    unet_config: dict
    shapes: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    _from_ldm: dict[str, str] = field(default_factory=dict)

    def ldm(self, path: str) -> str:
        from engine.single_file import unet_key

        return unet_key(path + ".weight", _Config(self.unet_config))[: -len(".weight")]

    def from_ldm(self, ldm_path: str) -> str | None:
        if not self._from_ldm:
            self._from_ldm = {self.ldm(p): p for c, p in self.shapes if c == "unet"}
        return self._from_ldm.get(ldm_path)

    def comfy_clip(self, component: str) -> str:
        return COMFY_CLIP[self.family][component]

    def misfits(self, modules: dict) -> list[str]:
        """Modules (of a LoraFile) this architecture lacks or whose weight shape differs."""
        bad = []
        for key, module in modules.items():
            want = self.shapes.get(key)
            if want is None or tuple(module.weight_shape()) != want:
                bad.append(f"{key[0]}.{key[1]}")
        return bad


class _Config:
    """Attribute access to a config dict, as single_file.unet_key expects."""

    def __init__(self, d: dict):
        self.__dict__.update(d)


def _unet_shapes(config: dict) -> dict[tuple[str, str], tuple[int, ...]]:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # shapes without memory: the SDXL UNet in ~0.3 s
        unet = UNet2DConditionModel.from_config(config)
    return {("unet", name): tuple(m.weight.shape) for name, m in unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def _te_shapes(component: str, hidden: int, inter: int, layers: int, projection: int | None):
    out = {}
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[(component, f"{p}self_attn.{name}")] = (hidden, hidden)
        out[(component, f"{p}mlp.fc1")] = (inter, hidden)
        out[(component, f"{p}mlp.fc2")] = (hidden, inter)
    if projection:
        out[(component, "text_projection")] = (projection, hidden)
    return out


@functools.lru_cache(maxsize=16)
def _arch(family: str, source: str, unet_json: str, te_json: str) -> Arch:
    config = json.loads(unet_json)
    shapes = _unet_shapes(config)
    for component, dims in json.loads(te_json).items():
        shapes.update(_te_shapes(component, *dims))
    return Arch(family, source, config, shapes)


def refuse_dit(family: str | None, what: str) -> None:
    """The writers rebuild UNet layouts (kohya, LDM/ComfyUI names); a DiT's single file has its own per-family
    layout (engine/families/keys), which only training writes so far."""
    if family in DIT_WORDS or family == "transformer":
        label = family_label(family) if family in DIT_WORDS else "DiT"
        raise ToolError(f"{what}: this is a {label} LoRA; resize, merge, convert and extract handle SD 1.x/2.x/SDXL "
                        "LoRAs only. Inspect it, or use the files its run wrote (the diffusers folder and the "
                        "single .safetensors file ComfyUI loads)")


def published_arch(family: str) -> Arch:
    from engine.builtin.fullsize import SD2_UNET, SD15_UNET, SDXL_UNET

    refuse_dit(family, f"the published {family} architecture")

    unet = {"sd1": SD15_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET}[family]
    return _arch(family, f"the published {FAMILY_LABELS[family]} architecture", json.dumps(unet),
                 json.dumps(_PUBLISHED_TE[family]))


def model_arch(name: str, allow_pickle: bool = False) -> Arch:
    """The architecture of a base model: a diffusers folder, builtin:, a single-file checkpoint or a hub id
    (its configs only; no weights are read)."""
    from engine.families import FAMILIES, ModelError, detect_family, resolve_source
    from engine.families.base import read_json

    try:
        source = resolve_source(name, allow_pickle)
        family = detect_family(source)
    except ModelError as e:
        raise ToolError(str(e)) from None
    if family is None:
        raise ToolError(f"cannot tell which model family {name!r} is (SD 1.x, 2.x or XL)")
    refuse_dit(family, name)
    if source.kind != "dir":  # a single file or a hub id: the family's published shapes
        return published_arch(family)
    root = Path(source.location)
    unet = {k: v for k, v in read_json(root / "unet" / "config.json").items() if not k.startswith("_")}
    tes = {}
    for component in FAMILIES[family].text_encoder_names:
        c = read_json(root / component / "config.json")
        tes[component] = (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                          c.get("projection_dim") if "WithProjection" in str(c.get("architectures")) else None)
    return _arch(family, name, json.dumps(unet, sort_keys=True), json.dumps(tes))


def guess_family(metadata: dict[str, str], components: set[str], shapes: dict[tuple[str, str], tuple]) -> str | None:
    """sd1 / sd2 / sdxl from what a LoRA file says of itself, else from its widths; None if it cannot tell."""
    said = (metadata.get("ss_base_model_version", "") + " " + metadata.get("modelspec.architecture", "")).lower()
    for family, words in DIT_WORDS.items():
        if any(w in said for w in words):
            return family
    if "transformer" in components:
        return None  # a DiT whose file does not say which
    if "sdxl" in said or "-xl-" in said:
        return "sdxl"
    if "v2" in said:
        return "sd2"
    if "sd_v1" in said or "-v1/" in said or "diffusion-v1" in said:  # a full run's single file: stable-diffusion-v1
        return "sd1"
    if "text_encoder_2" in components:
        return "sdxl"
    for (component, path), shape in shapes.items():
        width = shape[1] if len(shape) > 1 else None
        if component == "unet" and path.endswith("attn2.to_k"):
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)
        if component == "text_encoder" and path.endswith("self_attn.q_proj"):
            return {768: "sd1", 1024: "sd2"}.get(width)
    return None


def module_from_ldm(arch: Arch | None, ldm_path: str, what: str) -> str:
    if arch is None:
        raise ToolError(f"{what} uses the original (LDM) UNet block names, which depend on the model's layout: "
                        "give the base model (--base)")
    path = arch.from_ldm(ldm_path)
    if path is None:
        raise ToolError(f"{what}: the UNet of {arch.source} has no module {ldm_path!r}; is the file made for "
                        "another model? Give its base model (--base)")
    return path


def is_ldm(path: str) -> bool:
    return path.startswith(_LDM_STARTS)
