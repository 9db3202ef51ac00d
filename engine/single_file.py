"""A diffusers pipeline as one original-layout (LDM / SGM) checkpoint, the single `.safetensors` file that
AUTOMATIC1111, ComfyUI and `<Pipeline>.from_single_file` load.

diffusers 0.42 ships only the reading direction (loaders/single_file_utils); this is its inverse, written
from the UNet's and VAE's configs (block counts, layers per block), so the tiny built-in models map too.
The tests check it by loading the file back with `from_single_file` and comparing every weight.
"""
from __future__ import annotations

from pathlib import Path

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _inner(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_key(key: str, config) -> str:
    """diffusers UNet2DConditionModel key -> LDM key (without the `model.diffusion_model.` prefix)."""
    per = config.layers_per_block
    if not isinstance(per, int):
        raise ValueError("single-file export needs one layers_per_block for every block")
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        i, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.weight
            return f"input_blocks.{(i + 1) * (per + 1)}.0.op." + ".".join(parts[5:])
        j, rest = int(parts[3]), ".".join(parts[4:])
        block = 1 + i * (per + 1) + j
        return (f"input_blocks.{block}.0.{_inner(rest, _RESNET)}" if kind == "resnets"
                else f"input_blocks.{block}.1.{rest}")
    if parts[0] == "mid_block":
        j, rest = int(parts[2]), ".".join(parts[3:])
        return (f"middle_block.{2 * j}.{_inner(rest, _RESNET)}" if parts[1] == "resnets"
                else f"middle_block.1.{rest}")
    if parts[0] == "up_blocks":
        i, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # after the block's resnet (and attention, when the block has them)
            has_attn = "CrossAttn" in config.up_block_types[i]
            return f"output_blocks.{i * (per + 1) + per}.{2 if has_attn else 1}." + ".".join(parts[4:])
        j, rest = int(parts[3]), ".".join(parts[4:])
        block = i * (per + 1) + j
        return (f"output_blocks.{block}.0.{_inner(rest, _RESNET)}" if kind == "resnets"
                else f"output_blocks.{block}.1.{rest}")
    raise ValueError(f"no single-file name for UNet key {key!r}")


def vae_key(key: str, config) -> str:
    """diffusers AutoencoderKL key -> LDM first_stage_model key (without the prefix)."""
    n = len(config.block_out_channels)
    parts = key.split(".")
    coder = parts[0]
    if coder in ("quant_conv", "post_quant_conv"):
        return key
    rest = ".".join(parts[1:])
    if rest.startswith("conv_norm_out."):
        return f"{coder}.norm_out." + rest[len("conv_norm_out."):]
    if parts[1] in ("down_blocks", "up_blocks"):
        i = int(parts[2]) if parts[1] == "down_blocks" else n - 1 - int(parts[2])
        level = "down" if parts[1] == "down_blocks" else "up"
        if parts[3] in ("downsamplers", "upsamplers"):
            return f"{coder}.{level}.{i}.{'downsample' if level == 'down' else 'upsample'}." + ".".join(parts[5:])
        return f"{coder}.{level}.{i}.block.{parts[4]}." + _inner(".".join(parts[5:]), {"conv_shortcut": "nin_shortcut"})
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{coder}.mid.block_{int(parts[3]) + 1}." + _inner(".".join(parts[4:]),
                                                                      {"conv_shortcut": "nin_shortcut"})
        return f"{coder}.mid.attn_1." + _inner(".".join(parts[4:]), _VAE_ATTN)
    return key  # conv_in, conv_out keep their names


def _clip_l(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP text model keys as LDM stores them (`text_model.` wrapper; transformers 5 drops it)."""
    from engine.export import canonical_keys

    return canonical_keys("text_encoder", {k: v for k, v in sd.items() if not k.endswith("position_ids")})


def _open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL's second encoder (HF CLIPTextModelWithProjection) in OpenCLIP's layout (fused q/k/v)."""
    sd = _clip_l(sd)
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].t().contiguous()}
    names = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    prefix = "text_model.encoder.layers."
    layers = sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})
    for i in layers:
        p = f"{prefix}{i}."
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{p}self_attn.{x}_proj.{kind}"] for x in "qkv"])
            for old, new in names.items():
                out[f"transformer.resblocks.{i}.{new}.{kind}"] = sd[f"{p}{old}.{kind}"]
    return out


def pipeline_state_dict(pipe, family_name: str) -> dict[str, torch.Tensor]:
    """Every weight of an SD 1/2 or SDXL pipeline under its original single-file name."""
    out: dict[str, torch.Tensor] = {}
    unet, vae = pipe.unet, pipe.vae
    for k, v in unet.state_dict().items():
        out["model.diffusion_model." + unet_key(k, unet.config)] = v
    for k, v in vae.state_dict().items():
        name = vae_key(k, vae.config)
        if ".mid.attn_1." in name and name.endswith("weight") and v.dim() == 2:
            v = v[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        out["first_stage_model." + name] = v
    if family_name == "sdxl":
        for k, v in _clip_l(pipe.text_encoder.state_dict()).items():
            out["conditioner.embedders.0.transformer." + k] = v
        for k, v in _open_clip(pipe.text_encoder_2.state_dict()).items():
            out["conditioner.embedders.1.model." + k] = v
    else:
        for k, v in _clip_l(pipe.text_encoder.state_dict()).items():
            out["cond_stage_model.transformer." + k] = v
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def write_single_file(pipe, family_name: str, path: Path, metadata: dict[str, str] | None = None) -> Path:
    from engine.atomic import save_safetensors

    return save_safetensors(pipeline_state_dict(pipe, family_name), Path(path), metadata or {})
