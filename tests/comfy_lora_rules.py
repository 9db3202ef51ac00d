"""ComfyUI's LoRA key rules for Flux.1, SD3, Z-Image and Qwen-Image, ported small so tests can ask "would ComfyUI load this key, into
which weight, and what delta would it add?" without ComfyUI installed.

Ported from Comfy-Org/ComfyUI (GPL-3.0), as stored at:
- comfy/lora.py @ 17358c8f73b581a0d22facc3c385822f09b8bfb1: model_lora_keys_unet (the generic
  `lora_unet_<weight with _>` / bare-key map, the SD3 and Flux branches) and load_lora ("lora key not loaded").
- comfy/utils.py @ 09708eae709a992a5684bed3595ce4d07e705b4e: flux_to_diffusers, mmdit_to_diffusers,
  swap_scale_shift (weight entries only: LoRA keys come from `.weight`).
- comfy/weight_adapter/lora.py @ 6f98b150e065f1ffc788558574a887835068bd40: the LoRA name variants and the
  scale alpha / down.shape[0] (1 without alpha).
- comfy/model_patcher.py add_patches: a target is a key, (key, (dim, start, length)) or (key, None, function).
- comfy/lora.py calculate_weight (same commit): a patch with an offset works on weight.narrow(*offset), in place.
- comfy/weight_adapter/loha.py @ 183b377588102d00131247aec399f8b34e1122b4, lokr.py @
  2bffe2f4ce5763dcb83df6a670657b6d5c8f85a5 (Comfy-Org), base.py @ 9c0cf36cd7964978850fd40f8cf76ac2cf9f9e15:
  LoHa / LoKr load and calculate_weight, and weight_decompose (DoRA's dora_scale).
The BFL / SAI weight shapes follow comfy/ldm/flux/layers.py and comfy/ldm/modules/diffusionmodules/mmdit.py; Z-Image's
are the released checkpoint's (ComfyUI loads it as is; diffusers' convert_z_image_transformer_checkpoint_to_diffusers
only renames it and splits attention.qkv).
Qwen-Image's follow comfy/ldm/qwen_image/model.py (comfyanonymous/ComfyUI @ 01f4512b), which keeps diffusers' names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def swap_scale_shift(weight):
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


# ---- the models ComfyUI holds (BFL Flux, SAI MMDiT): weight key -> shape -------------------------------------

def flux_config(cfg) -> dict:
    """ComfyUI's Flux unet_config for a diffusers FluxTransformer2DModel config."""
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    return dict(hidden_size=hidden, mlp_ratio=4, depth=cfg.num_layers, depth_single_blocks=cfg.num_single_layers,
                in_channels=cfg.in_channels, out=cfg.patch_size ** 2 * (cfg.out_channels or cfg.in_channels),
                context_in_dim=cfg.joint_attention_dim, vec_in_dim=cfg.pooled_projection_dim,
                guidance_embed=cfg.guidance_embeds)


def flux_weights(c: dict) -> dict[str, tuple]:
    h = c["hidden_size"]
    m = h * c["mlp_ratio"]
    w = {"img_in.weight": (h, c["in_channels"]), "txt_in.weight": (h, c["context_in_dim"]),
         "time_in.in_layer.weight": (h, 256), "time_in.out_layer.weight": (h, h),
         "vector_in.in_layer.weight": (h, c["vec_in_dim"]), "vector_in.out_layer.weight": (h, h),
         "final_layer.linear.weight": (c["out"], h), "final_layer.adaLN_modulation.1.weight": (2 * h, h)}
    if c["guidance_embed"]:
        w.update({"guidance_in.in_layer.weight": (h, 256), "guidance_in.out_layer.weight": (h, h)})
    for i in range(c["depth"]):
        for s in ("img", "txt"):
            b = f"double_blocks.{i}.{s}"
            w.update({f"{b}_mod.lin.weight": (6 * h, h), f"{b}_attn.qkv.weight": (3 * h, h),
                      f"{b}_attn.proj.weight": (h, h), f"{b}_mlp.0.weight": (m, h), f"{b}_mlp.2.weight": (h, m)})
    for i in range(c["depth_single_blocks"]):
        b = f"single_blocks.{i}"
        w.update({f"{b}.linear1.weight": (3 * h + m, h), f"{b}.linear2.weight": (h, h + m),
                  f"{b}.modulation.lin.weight": (3 * h, h)})
    return w


def mmdit_config(cfg) -> dict:
    """ComfyUI's SD3 unet_config (depth = hidden / 64, as its model detection reads it) for a diffusers config."""
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    return dict(depth=hidden // 64, num_blocks=cfg.num_layers, patch_size=cfg.patch_size,
                in_channels=cfg.in_channels, out_channels=cfg.out_channels, adm_in_channels=cfg.pooled_projection_dim,
                context_in=cfg.joint_attention_dim, x_block_self_attn_layers=list(cfg.dual_attention_layers))


def mmdit_weights(c: dict) -> dict[str, tuple]:
    h, p, n = c["depth"] * 64, c["patch_size"], c["num_blocks"]
    w = {"x_embedder.proj.weight": (h, c["in_channels"], p, p), "t_embedder.mlp.0.weight": (h, 256),
         "t_embedder.mlp.2.weight": (h, h), "y_embedder.mlp.0.weight": (h, c["adm_in_channels"]),
         "y_embedder.mlp.2.weight": (h, h), "context_embedder.weight": (h, c["context_in"]),
         "final_layer.linear.weight": (p * p * c["out_channels"], h),
         "final_layer.adaLN_modulation.1.weight": (2 * h, h)}
    for i in range(n):
        last, dual = i == n - 1, i in c["x_block_self_attn_layers"]
        x, ctx = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        w.update({f"{x}.adaLN_modulation.1.weight": ((9 if dual else 6) * h, h), f"{x}.attn.qkv.weight": (3 * h, h),
                  f"{x}.attn.proj.weight": (h, h), f"{x}.mlp.fc1.weight": (4 * h, h), f"{x}.mlp.fc2.weight": (h, 4 * h),
                  f"{ctx}.adaLN_modulation.1.weight": ((2 if last else 6) * h, h), f"{ctx}.attn.qkv.weight": (3 * h, h)})
        if dual:
            w.update({f"{x}.attn2.qkv.weight": (3 * h, h), f"{x}.attn2.proj.weight": (h, h)})
        if not last:
            w.update({f"{ctx}.attn.proj.weight": (h, h), f"{ctx}.mlp.fc1.weight": (4 * h, h),
                      f"{ctx}.mlp.fc2.weight": (h, 4 * h)})
    return w


def zimage_config(cfg) -> dict:
    """What ComfyUI's Lumina2 unet_config holds for a Z-Image diffusers config (the entries used here)."""
    return dict(dim=cfg.dim, n_layers=cfg.n_layers, n_refiner_layers=cfg.n_refiner_layers,
                in_channels=cfg.in_channels, patch_size=2, cap_feat_dim=cfg.cap_feat_dim)


def zimage_weights(c: dict) -> dict[str, tuple]:
    d, p, cin = c["dim"], c["patch_size"], c["in_channels"]
    ffn, ada = int(d / 3 * 8), min(d, 256)  # feed_forward width; the adaLN conditioning width
    w = {"x_embedder.weight": (d, p * p * cin), "final_layer.linear.weight": (p * p * cin, d),
         "final_layer.adaLN_modulation.1.weight": (d, ada), "cap_embedder.1.weight": (d, c["cap_feat_dim"]),
         "t_embedder.mlp.0.weight": (1024, 256), "t_embedder.mlp.2.weight": (ada, 1024)}
    blocks = [f"layers.{i}" for i in range(c["n_layers"])]
    blocks += [f"{kind}.{i}" for kind in ("noise_refiner", "context_refiner") for i in range(c["n_refiner_layers"])]
    for b in blocks:
        w.update({f"{b}.attention.qkv.weight": (3 * d, d), f"{b}.attention.out.weight": (d, d),
                  f"{b}.feed_forward.w1.weight": (ffn, d), f"{b}.feed_forward.w2.weight": (d, ffn),
                  f"{b}.feed_forward.w3.weight": (ffn, d)})
        if not b.startswith("context_refiner"):  # the caption refiner has no modulation
            w[f"{b}.adaLN_modulation.0.weight"] = (4 * d, ada)
    return w


def qwenimage_config(cfg) -> dict:
    """What ComfyUI's QwenImageTransformer2DModel is built from, for a diffusers config."""
    return dict(hidden=cfg.num_attention_heads * cfg.attention_head_dim, depth=cfg.num_layers,
                in_channels=cfg.in_channels, out=cfg.patch_size ** 2 * cfg.out_channels,
                context_in_dim=cfg.joint_attention_dim)


def qwenimage_weights(c: dict) -> dict[str, tuple]:
    """The Linear weights of ComfyUI's Qwen-Image model (the RMSNorms have no LoRA)."""
    h = c["hidden"]
    w = {"img_in.weight": (h, c["in_channels"]), "txt_in.weight": (h, c["context_in_dim"]),
         "time_text_embed.timestep_embedder.linear_1.weight": (h, 256),
         "time_text_embed.timestep_embedder.linear_2.weight": (h, h), "norm_out.linear.weight": (2 * h, h),
         "proj_out.weight": (c["out"], h)}
    for i in range(c["depth"]):
        b = f"transformer_blocks.{i}"
        for q in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            w[f"{b}.attn.{q}.weight"] = (h, h)
        for s in ("img", "txt"):
            w.update({f"{b}.{s}_mod.1.weight": (6 * h, h), f"{b}.{s}_mlp.net.0.proj.weight": (4 * h, h),
                      f"{b}.{s}_mlp.net.2.weight": (h, 4 * h)})
    return w


# ---- comfy.utils: diffusers weight -> ComfyUI target ---------------------------------------------------------

def flux_to_diffusers(c: dict, prefix: str = "diffusion_model.") -> dict:
    h = c["hidden_size"]
    out = {}
    for i in range(c["depth"]):
        frm, to = f"transformer_blocks.{i}", f"{prefix}double_blocks.{i}"
        for j, (img, txt) in enumerate([("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj")]):
            out[f"{frm}.attn.{img}.weight"] = (f"{to}.img_attn.qkv.weight", (0, h * j, h))
            out[f"{frm}.attn.{txt}.weight"] = (f"{to}.txt_attn.qkv.weight", (0, h * j, h))
        for d, b in {"attn.to_out.0": "img_attn.proj", "norm1.linear": "img_mod.lin", "norm1_context.linear":
                     "txt_mod.lin", "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2":
                     "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}.items():
            out[f"{frm}.{d}.weight"] = f"{to}.{b}.weight"
    for i in range(c["depth_single_blocks"]):
        frm, to = f"single_transformer_blocks.{i}", f"{prefix}single_blocks.{i}"
        for j, q in enumerate(("to_q", "to_k", "to_v")):
            out[f"{frm}.attn.{q}.weight"] = (f"{to}.linear1.weight", (0, h * j, h))
        out[f"{frm}.proj_mlp.weight"] = (f"{to}.linear1.weight", (0, h * 3, h * 4))
        out[f"{frm}.norm.linear.weight"] = f"{to}.modulation.lin.weight"
        out[f"{frm}.proj_out.weight"] = f"{to}.linear2.weight"
    for b, d in [("final_layer.linear", "proj_out"), ("img_in", "x_embedder"), ("txt_in", "context_embedder"),
                 ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                 ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                 ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                 ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                 ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                 ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")]:
        out[f"{d}.weight"] = f"{prefix}{b}.weight"
    out["norm_out.linear.weight"] = (f"{prefix}final_layer.adaLN_modulation.1.weight", None, swap_scale_shift)
    return out


_MMDIT_BLOCK = {"norm1_context.linear": "context_block.adaLN_modulation.1", "attn.to_add_out": "context_block.attn.proj",
                "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
                "norm1.linear": "x_block.adaLN_modulation.1", "attn.to_out.0": "x_block.attn.proj",
                "attn2.to_out.0": "x_block.attn2.proj", "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2"}
_MMDIT_BASIC = {"context_embedder": "context_embedder", "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
                "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2", "pos_embed.proj": "x_embedder.proj",
                "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
                "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear"}


def mmdit_to_diffusers(c: dict, prefix: str = "diffusion_model.") -> dict:
    depth = c["depth"]
    offset = depth * 64
    out = {}
    for i in range(c.get("num_blocks", depth)):
        frm, to = f"transformer_blocks.{i}", f"{prefix}joint_blocks.{i}"
        for j, (q, add, q2) in enumerate([("to_q", "add_q_proj", "to_q"), ("to_k", "add_k_proj", "to_k"),
                                          ("to_v", "add_v_proj", "to_v")]):
            out[f"{frm}.attn.{q}.weight"] = (f"{to}.x_block.attn.qkv.weight", (0, offset * j, offset))
            out[f"{frm}.attn.{add}.weight"] = (f"{to}.context_block.attn.qkv.weight", (0, offset * j, offset))
            out[f"{frm}.attn2.{q2}.weight"] = (f"{to}.x_block.attn2.qkv.weight", (0, offset * j, offset))
        for d, s in _MMDIT_BLOCK.items():
            out[f"{frm}.{d}.weight"] = f"{to}.{s}.weight"
    for d, s in _MMDIT_BASIC.items():
        out[f"{d}.weight"] = f"{prefix}{s}.weight"
    out["norm_out.linear.weight"] = (f"{prefix}final_layer.adaLN_modulation.1.weight", None, swap_scale_shift)
    # ComfyUI uses depth - 1 here, not num_blocks - 1 (equal for every released SD3 / SD3.5)
    out[f"transformer_blocks.{depth - 1}.norm1_context.linear.weight"] = (
        f"{prefix}joint_blocks.{depth - 1}.context_block.adaLN_modulation.1.weight", None, swap_scale_shift)
    return out


def z_image_to_diffusers(c: dict, prefix: str = "diffusion_model.") -> dict:
    d = c["dim"]
    out = {}
    blocks = [f"layers.{i}" for i in range(c["n_layers"])]
    blocks += [f"{kind}.{i}" for kind in ("context_refiner", "noise_refiner") for i in range(c["n_refiner_layers"])]
    for b in blocks:
        for j, q in enumerate(("to_q", "to_k", "to_v")):
            out[f"{b}.attention.{q}.weight"] = (f"{prefix}{b}.attention.qkv.weight", (0, d * j, d))
        out[f"{b}.attention.to_out.0.weight"] = f"{prefix}{b}.attention.out.weight"
        for same in ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0"):
            out[f"{b}.{same}.weight"] = f"{prefix}{b}.{same}.weight"  # ComfyUI maps it for every block kind
    for comfy, diffusers in [("final_layer.linear", "all_final_layer.2-1.linear"),
                             ("final_layer.adaLN_modulation.1", "all_final_layer.2-1.adaLN_modulation.1"),
                             ("x_embedder", "all_x_embedder.2-1"), ("cap_embedder.1", "cap_embedder.1"),
                             ("t_embedder.mlp.0", "t_embedder.mlp.0"), ("t_embedder.mlp.2", "t_embedder.mlp.2")]:
        out[f"{diffusers}.weight"] = f"{prefix}{comfy}.weight"
    return out


# ---- comfy/lora.py model_lora_keys_unet: LoRA stem -> target -------------------------------------------------

def _weights(arch: str, c: dict) -> dict[str, tuple]:
    return {"flux": flux_weights, "sd3": mmdit_weights, "zimage": zimage_weights, "qwenimage": qwenimage_weights}[arch](c)


def diffusers_map(arch: str, c: dict) -> dict:
    """comfy.utils' diffusers weight -> ComfyUI target table for the architecture."""
    if arch == "qwenimage":  # Qwen-Image's names are diffusers' own
        return {k: "diffusion_model." + k for k in qwenimage_weights(c)}
    return {"flux": flux_to_diffusers, "sd3": mmdit_to_diffusers, "zimage": z_image_to_diffusers}[arch](c)


def lora_key_map(arch: str, c: dict) -> dict:
    weights = _weights(arch, c)
    key_map = {}
    for k in weights:  # generic: every model weight, kohya-style and bare
        key_map["lora_unet_" + k[:-len(".weight")].replace(".", "_")] = "diffusion_model." + k
        key_map["diffusion_model." + k[:-len(".weight")]] = "diffusion_model." + k
    if arch == "sd3":
        for k, to in mmdit_to_diffusers(c).items():
            stem = k[:-len(".weight")]
            for name in (f"transformer.{stem}", f"base_model.model.{stem}", "lora_transformer_" + stem.replace(".", "_"),
                         "lycoris_" + stem.replace(".", "_")):
                key_map[name] = to
    elif arch == "zimage":  # the Lumina2 branch
        for k, to in z_image_to_diffusers(c).items():
            stem = k[:-len(".weight")]
            for name in (f"diffusion_model.{stem}", f"transformer.{stem}", "lycoris_" + stem.replace(".", "_"), stem):
                key_map[name] = to
    elif arch == "flux":
        for k, to in flux_to_diffusers(c).items():
            stem = k[:-len(".weight")]
            for name in (f"transformer.{stem}", "lycoris_" + stem.replace(".", "_"),
                         "lora_transformer_" + stem.replace(".", "_"), stem):
                key_map[name] = to
    else:  # QwenImage: its own weight names, bare, under `transformer.` and SimpleTuner's lycoris_
        for k in weights:
            stem = k[:-len(".weight")]
            for name in (stem, f"transformer.{stem}", "lycoris_" + stem.replace(".", "_")):
                key_map[name] = "diffusion_model." + k
    return key_map


def model_weights(arch: str, c: dict) -> dict[str, tuple]:
    weights = _weights(arch, c)
    return {"diffusion_model." + k: v for k, v in weights.items()}


def split_target(target) -> tuple[str, tuple | None, object]:
    if isinstance(target, str):
        return target, None, None
    return target[0], target[1], target[2] if len(target) > 2 else None


_NAMES = [("{}.lora_up.weight", "{}.lora_down.weight"), ("{}.lora_B.weight", "{}.lora_A.weight")]
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_LOKR = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")


@dataclass
class Patch:
    """One loaded adapter as comfy/weight_adapter holds it: the file's tensors by their LyCORIS / kohya names."""
    target: object  # a weight key, (key, (dim, start, length)) or (key, None, function)
    kind: str  # lora | loha | lokr
    w: dict
    alpha: float | None
    dora_scale: torch.Tensor | None = None

    def shape(self) -> tuple[int, int]:
        """(rows, input numel) of the weight change (shapes only: works on meta tensors)."""
        w = self.w
        if self.kind == "lora":
            return w["up"].shape[0], math.prod(w["down"].shape[1:])
        if self.kind == "loha":
            return w["hada_w1_a"].shape[0], math.prod(w["hada_w1_b"].shape[1:])
        w1 = w["lokr_w1"].shape if "lokr_w1" in w else (w["lokr_w1_a"].shape[0], w["lokr_w1_b"].shape[1])
        w2 = w["lokr_w2"].shape if "lokr_w2" in w else (w["lokr_w2_a"].shape[0], *w["lokr_w2_b"].shape[1:])
        return w1[0] * w2[0], w1[1] * math.prod(w2[1:])

    def diff(self) -> tuple[torch.Tensor, float]:
        """(the unscaled weight change [rows, in], its scale) as each adapter's calculate_weight computes them:
        lora.py alpha / down.shape[0]; loha.py alpha / hada_w1_b.shape[0]; lokr.py alpha / the split factor's
        rank, 1 when neither factor is split (dim None); no alpha: 1."""
        w = {k: v.double() for k, v in self.w.items()}
        if self.kind == "lora":
            d, dim = w["up"].flatten(1) @ w["down"].flatten(1), w["down"].shape[0]
        elif self.kind == "loha":
            d, dim = (w["hada_w1_a"] @ w["hada_w1_b"]) * (w["hada_w2_a"] @ w["hada_w2_b"]), w["hada_w1_b"].shape[0]
        else:
            dim = None
            w1, w2 = w.get("lokr_w1"), w.get("lokr_w2")
            if w1 is None:
                dim, w1 = w["lokr_w1_b"].shape[0], w["lokr_w1_a"] @ w["lokr_w1_b"]
            if w2 is None:
                dim, w2 = w["lokr_w2_b"].shape[0], w["lokr_w2_a"] @ w["lokr_w2_b"]
            d = torch.kron(w1, w2.flatten(1))
        scale = 1.0 if self.alpha is None or dim is None else self.alpha / dim
        return d, scale


def load_lora(lora: dict, key_map: dict) -> tuple[dict, list[str]]:
    """{stem: Patch} and the file keys ComfyUI would log as "lora key not loaded" (comfy/lora.py load_lora: alpha,
    dora_scale, then each weight_adapter's load: LoRA's up/down names, LoHa's hada_*, LoKr's lokr_*)."""
    patches, loaded = {}, set()
    for stem, target in key_map.items():
        alpha = lora.get(f"{stem}.alpha")
        alpha = None if alpha is None else float(alpha.item())
        dora = lora.get(f"{stem}.dora_scale")
        loaded |= {f"{stem}.alpha", f"{stem}.dora_scale"}  # taken for every mapped stem, an adapter or not
        found = None
        for up_name, down_name in _NAMES:
            if up_name.format(stem) in lora:
                found = Patch(target, "lora", {"up": lora[up_name.format(stem)], "down": lora[down_name.format(stem)]},
                              alpha, dora)
                loaded |= {up_name.format(stem), down_name.format(stem)}
                break
        if found is None and f"{stem}.hada_w1_a" in lora:
            found = Patch(target, "loha", {n: lora[f"{stem}.{n}"] for n in _LOHA}, alpha, dora)
        lokr = {n: lora[f"{stem}.{n}"] for n in _LOKR if f"{stem}.{n}" in lora}
        if found is None and lokr:
            found = Patch(target, "lokr", lokr, alpha, dora)
        if found is not None:
            patches[stem] = found
            loaded |= {f"{stem}.{n}" for n in (*_LOHA, *lokr)}
    return patches, sorted(k for k in lora if k not in loaded)


def weight_decompose(dora_scale, weight, lora_diff, function, norm_of="weight"):
    """comfy/weight_adapter/base.py weight_decompose at strength 1, output-axis magnitude (dora_scale [rows, 1]), in
    place. ComfyUI divides by the base weight's row norms (`norm_of="weight"`); DoRA, peft, LyCORIS and ComfyUI's open
    PR #15458 divide by those of the adapted weight W + dW (`norm_of="adapted"`)."""
    assert dora_scale.shape[0] == weight.shape[0], "ComfyUI reads a magnitude of another length per input column"
    calc = weight + function(lora_diff)
    norm = (weight if norm_of == "weight" else calc).flatten(1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
    weight[:] = calc * (dora_scale.double().reshape(norm.shape) / (norm + torch.finfo(torch.float32).eps))


def apply(patches: dict, weights: dict[str, torch.Tensor], dora_norm="weight") -> dict[str, torch.Tensor]:
    """The model weights after every patch at strength 1 (comfy/lora.py calculate_weight: the weight narrowed to the
    patch's slice, the adapter's change added to it, or DoRA's decomposition of it). `weights`: float tensors."""
    out = {k: v.double().clone() for k, v in weights.items()}
    for patch in patches.values():
        key, offset, function = split_target(patch.target)
        function = function or (lambda a: a)
        view = out[key] if offset is None else out[key].narrow(*offset)
        d, scale = patch.diff()
        d = (scale * d).reshape(view.shape)
        if patch.dora_scale is not None:
            weight_decompose(patch.dora_scale, view, d, function, dora_norm)
        else:
            view += function(d)
    return out


def deltas(patches: dict, weights: dict) -> dict[str, torch.Tensor]:
    """The weight deltas ComfyUI adds (strength 1) to zero weights: scale x the adapter's change, into its slice,
    through function (not for DoRA, whose result depends on the base weight: apply)."""
    base = {split_target(p.target)[0]: torch.zeros(weights[split_target(p.target)[0]]) for p in patches.values()}
    return {k: v.float() for k, v in apply(patches, base).items()}


def place(modules: dict[str, torch.Tensor], diffusers_map: dict, weights: dict, base: dict | None = None) -> dict:
    """Tensors of diffusers modules ({module path: weight or delta}) where ComfyUI's diffusers map puts them (a slice
    of a fused weight, through its function), on zeros or on a copy of `base` (ComfyUI-named weights)."""
    out = {} if base is None else {k: v.double().clone() for k, v in base.items()}
    for module, value in modules.items():
        key, offset, function = split_target(diffusers_map[f"{module}.weight"])
        full = out.setdefault(key, torch.zeros(weights[key], dtype=torch.float64))
        view = full if offset is None else full.narrow(*offset)
        view += (value if function is None else function(value)).reshape(view.shape).double()
    return out


def unplace(comfy_weights: dict, diffusers_map: dict, modules) -> dict[str, torch.Tensor]:
    """The inverse of place for whole weights: each diffusers module's weight cut from ComfyUI's (swap_scale_shift,
    the only function, is its own inverse)."""
    out = {}
    for module in modules:
        key, offset, function = split_target(diffusers_map[f"{module}.weight"])
        view = comfy_weights[key] if offset is None else comfy_weights[key].narrow(*offset)
        out[module] = view if function is None else function(view)
    return out


def merged_by_comfy(lora: dict, arch: str, c: dict, modules: dict[str, torch.Tensor], dora_norm="weight"):
    """(each diffusers module's weight after ComfyUI loads `lora` onto the model holding `modules` ({module path:
    weight}, placed as ComfyUI's diffusers map says), the keys ComfyUI would not load)."""
    dmap, weights = diffusers_map(arch, c), model_weights(arch, c)
    patches, not_loaded = load_lora(lora, lora_key_map(arch, c))
    return unplace(apply(patches, place(modules, dmap, weights), dora_norm), dmap, modules), not_loaded


def expected_deltas(module_deltas: dict[str, torch.Tensor], diffusers_map: dict, weights: dict) -> dict:
    """The trained diffusers modules' deltas placed where ComfyUI's diffusers map says they belong."""
    return {k: v.float() for k, v in place(module_deltas, diffusers_map, weights).items()}
