"""Model families: detect which one a model is, and get the object that knows how to train it."""
from __future__ import annotations

from pathlib import Path

from .base import Components, Family, ModelError, ModelSource, read_json, resolve_source, safetensors_keys
from .flux1 import Flux1Family
from .qwenimage import QwenImageFamily
from .sd import SD2Family, SDFamily
from .sd3 import SD3Family
from .sdxl import SDXLFamily
from .zimage import ZImageFamily

FAMILIES: dict[str, Family] = {f.name: f for f in (SDFamily(), SD2Family(), SDXLFamily(), SD3Family(),
                                                   Flux1Family(), ZImageFamily(), QwenImageFamily())}
# pipeline class names -> family, for the families a model_index.json names outright
PIPELINE_FAMILIES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux1", "ZImagePipeline": "zimage",
                     "QwenImagePipeline": "qwenimage"}


def _family_from_configs(model_index: dict, text_encoder_cfg: dict | None) -> str:
    cls = model_index.get("_class_name", "")
    if cls in PIPELINE_FAMILIES:
        return PIPELINE_FAMILIES[cls]
    if "transformer" in model_index:
        raise ModelError(f"{cls or 'this pipeline'} is a transformer model of a family the studio does not train yet; "
                         f"supported: {', '.join(f.label for f in FAMILIES.values())}")
    if "XL" in cls or "text_encoder_2" in model_index:
        return "sdxl"
    if text_encoder_cfg and text_encoder_cfg.get("hidden_size") == 1024:
        return "sd2"  # SD 2.x uses OpenCLIP ViT-H (1024 wide); SD 1.x uses CLIP ViT-L (768)
    return "sd1"


def _family_from_single_file(path: str) -> str | None:
    if not path.lower().endswith(".safetensors"):
        return None
    keys = safetensors_keys(Path(path), "pretrained_model_name_or_path")
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "flux1"
    if any(k.startswith(("joint_blocks.", "model.diffusion_model.joint_blocks.")) for k in keys):
        return "sd3"
    if any(k.startswith(("transformer_blocks.0.img_mod.", "model.diffusion_model.transformer_blocks.0.img_mod."))
           for k in keys):
        return "qwenimage"
    # Z-Image (Comfy-Org's file, engine.families.keys.checkpoints.zimage_checkpoint): Lumina 2's NextDiT names
    # (caption embedder, refiners with fused q/k/v) plus the pad tokens Lumina 2 has not (ComfyUI tells them apart
    # by those and the 3840 width)
    for prefix in ("", "model.diffusion_model."):
        if {f"{prefix}cap_embedder.1.weight", f"{prefix}noise_refiner.0.attention.qkv.weight",
                f"{prefix}cap_pad_token"} <= set(keys):
            return "zimage"
    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer") for k in keys):
        return "sd1"
    return None


def detect_family(source: ModelSource, revision: str | None = None) -> str | None:
    """The family's name read from the model's own files; None if it cannot be told."""
    if source.kind == "dir":
        d = Path(source.location)
        te = d / "text_encoder" / "config.json"
        return _family_from_configs(read_json(d / "model_index.json"), read_json(te) if te.is_file() else None)
    if source.kind == "single_file":
        return _family_from_single_file(source.location)
    from diffusers import DiffusionPipeline

    from .base import hub_error
    try:
        index = DiffusionPipeline.load_config(source.location, revision=revision)
    except Exception as e:
        raise hub_error(source, e) from None
    te_cfg = None
    if "text_encoder_2" not in index and "transformer" not in index:
        try:
            from transformers import CLIPTextConfig
            te_cfg = CLIPTextConfig.from_pretrained(source.location, subfolder="text_encoder",
                                                    revision=revision).to_dict()
        except Exception:
            te_cfg = None
    return _family_from_configs(index, te_cfg)


def pipeline_call_kwargs(pipe) -> dict:
    """What a call of this pipeline (text-to-image, img2img or inpaint) adds for its family: the DiTs' T5
    length as training used it."""
    name = type(pipe).__name__
    for family in FAMILIES.values():
        base = getattr(family, "pipeline_prefix", None)
        if base and name.startswith(base):
            return family.call_kwargs(pipe)
    return {}


def get_family(cfg) -> tuple[Family, ModelSource]:
    source = resolve_source(cfg.pretrained_model_name_or_path, cfg.allow_pickle)
    detected = detect_family(source, cfg.revision)
    wanted = cfg.model_family
    if wanted == "auto":
        if detected is None:
            raise ModelError(f"cannot tell which model family {source.name!r} is; set model_family to one of "
                             f"{', '.join(FAMILIES)}")
        return FAMILIES[detected], source
    interchangeable = {"sd1", "sd2"}  # one architecture: only the text encoder's width differs
    if detected is not None and detected != wanted and not {detected, wanted} <= interchangeable:
        raise ModelError(f"model_family = {wanted!r} but {source.name!r} is a {FAMILIES[detected].label} "
                         "model; set model_family = \"auto\"")
    return FAMILIES[wanted], source


__all__ = ["Components", "Family", "FAMILIES", "ModelError", "ModelSource", "detect_family", "get_family",
           "pipeline_call_kwargs", "resolve_source"]
