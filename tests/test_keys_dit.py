"""The Flux.1, SD3, Z-Image and Qwen-Image single-file LoRA key maps, checked against ComfyUI's rules (ported in comfy_lora_rules) and
diffusers' own loaders: full-size models on the meta device for every key and shape, tiny ones for the numbers."""
import copy

import pytest
import torch
from diffusers import (FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, QwenImagePipeline,
                       QwenImageTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline, ZImagePipeline,
                       ZImageTransformer2DModel)
from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from engine import export
from engine.families import FAMILIES
from engine.families.keys import flux1 as keys_flux1
from engine.families.keys import qwenimage as keys_qwenimage
from engine.families.keys import sd3 as keys_sd3
from engine.families.keys import zimage as keys_zimage
from engine.methods.lora import module_alphas
from tests import comfy_lora_rules as comfy

# Published transformer configs (black-forest-labs/FLUX.1-dev, stabilityai/stable-diffusion-3.5-large,
# -3.5-medium, -3-medium-diffusers, Tongyi-MAI/Z-Image-Turbo, Qwen/Qwen-Image), written here so nothing is downloaded.
FLUX1_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=(16, 56, 56))
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                   dual_attention_layers=tuple(range(13)))
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
Z_IMAGE = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
               n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0,
               t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
TINY_ZIMAGE = dict(in_channels=16, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=24,
                   axes_dims=[8, 4, 4], axes_lens=[64, 32, 32])
QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
                 guidance_embeds=True)
# hidden = 64 x num_layers: ComfyUI reads SD3's depth as hidden / 64 (true of every released model)
TINY_SD3 = dict(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=128, pooled_projection_dim=32,
                out_channels=16, pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,))
TINY_QWEN = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(8, 4, 4))
# a part of a fused qkv trained at another rank and scale: the fused file must still give each its own scale
PATTERNS = dict(rank_pattern={"attn.to_k": 2}, alpha_pattern={"attn.to_k": 3.0})
ZIMAGE_PATTERNS = dict(rank_pattern={"attention.to_k": 2}, alpha_pattern={"attention.to_k": 3.0})


def adapted_layers(model, conv=False) -> list[str]:
    kinds = (torch.nn.Linear, torch.nn.Conv2d) if conv else (torch.nn.Linear,)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def with_lora(model, targets, **patterns):
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2, target_modules=targets, **patterns), model)
    return get_peft_model_state_dict(model), module_alphas(model)


def meta_lora(cls, config, targets, **patterns):
    with torch.device("meta"):
        model = cls(**config)
        if targets == "all":
            targets = adapted_layers(model, conv=True)
        sd, alphas = with_lora(model, targets, **patterns)
    return model, sd, alphas


def stems(file_sd: dict) -> set[str]:
    return {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in file_sd}


def assert_comfy_loads_all(file_sd: dict, arch: str, cfg: dict):
    """Every key has a stem ComfyUI maps to a weight the model has, and the LoRA's shape is that weight's."""
    key_map, weights = comfy.lora_key_map(arch, cfg), comfy.model_weights(arch, cfg)
    patches, not_loaded = comfy.load_lora(file_sd, key_map)
    assert not_loaded == [], f"lora key not loaded: {not_loaded[:5]}"
    assert set(patches) == stems(file_sd)
    for stem, patch in patches.items():
        key, offset, _fn = comfy.split_target(patch.target)
        assert key in weights, f"{stem} -> {key}, which the model does not have"
        shape = weights[key]
        rows = shape[0] if offset is None else offset[2]
        assert patch.shape() == (rows, int(torch.Size(shape[1:]).numel())), stem
        if patch.kind == "lora":
            assert patch.w["up"].shape[1] == patch.w["down"].shape[0], stem
        if patch.dora_scale is not None:  # per output row of its slice (ComfyUI's wd_on_output_axis)
            assert tuple(patch.dora_scale.shape) == (rows, 1), stem


# ---- full size, meta device: every key and shape --------------------------------------------------------------

@pytest.mark.parametrize("targets", ["default", "sd-scripts", "all"])
def test_flux1_dev_every_key_loads_in_comfyui(targets):
    chosen = {"default": keys_flux1.DEFAULT_TARGETS, "sd-scripts": keys_flux1.SD_SCRIPTS_TARGETS}.get(targets, "all")
    model, sd, alphas = meta_lora(FluxTransformer2DModel, FLUX1_DEV, chosen, **PATTERNS)
    out = keys_flux1.to_single_file(sd, alphas)
    assert all(k.startswith("lora_unet_") for k in out)
    assert_comfy_loads_all(out, "flux", comfy.flux_config(model.config))
    assert out["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (12, 3072)  # 3 parts x width 4
    assert out["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (9216, 12)
    assert out["lora_unet_single_blocks_37_linear1.lora_up.weight"].shape == (21504, 16)
    # q (2/4) sets the scale; alpha = 0.5 x rank 12
    assert out["lora_unet_double_blocks_18_txt_attn_qkv.alpha"].item() == 6.0
    assert out["lora_unet_double_blocks_18_txt_attn_qkv.alpha"].dtype == torch.float32
    if targets == "default":  # diffusers' list: 19 x (2 qkv + 2 proj + 4 mlp) + 38 linear1 (q, k, v)
        assert len(stems(out)) == 19 * 8 + 38
    if targets == "sd-scripts":  # every Linear of every block, like lora_flux.py
        assert len(stems(out)) == 19 * 10 + 38 * 3
    if targets == "all":
        assert len(stems(out)) == 19 * 10 + 38 * 3 + 10


@pytest.mark.parametrize("config", [SD35_LARGE, SD35_MEDIUM, SD3_MEDIUM], ids=["sd35-large", "sd35-medium", "sd3"])
@pytest.mark.parametrize("targets", ["default", "all"])
def test_sd3_every_key_loads_in_comfyui(config, targets):
    chosen = keys_sd3.DEFAULT_TARGETS if targets == "default" else "all"
    model, sd, alphas = meta_lora(SD3Transformer2DModel, config, chosen)
    out = keys_sd3.to_single_file(sd, alphas)
    assert all(k.startswith("transformer.") and ".lora_" in k for k in out)  # diffusers needs "lora" in every key
    assert_comfy_loads_all(out, "sd3", comfy.mmdit_config(model.config))
    assert len(out) == len(sd)
    if targets == "all" and config is SD35_MEDIUM:
        assert "transformer.transformer_blocks.12.attn2.to_q.lora_A.weight" in out


@pytest.mark.parametrize("targets", ["default", "all"])
def test_zimage_every_key_loads_in_comfyui(targets):
    chosen = keys_zimage.DEFAULT_TARGETS if targets == "default" else "all"
    model, sd, alphas = meta_lora(ZImageTransformer2DModel, Z_IMAGE, chosen, **ZIMAGE_PATTERNS)
    out = keys_zimage.to_single_file(sd, alphas)
    assert all(k.startswith("diffusion_model.") for k in out)
    assert_comfy_loads_all(out, "zimage", comfy.zimage_config(model.config))
    assert out["diffusion_model.layers.29.attention.to_k.alpha"].item() == 3.0  # its own alpha, rank 2
    assert out["diffusion_model.noise_refiner.1.attention.to_q.alpha"].dtype == torch.float32
    blocks = 30 + 2 + 2  # layers, noise_refiner, context_refiner
    if targets == "default":  # diffusers' script: q, k, v, out of every attention
        assert len(stems(out)) == blocks * 4
    else:  # + the feed-forwards, the modulations (not in context_refiner) and the 6 top-level Linears
        assert len(stems(out)) == blocks * 7 + 32 + 6


@pytest.mark.parametrize("targets", ["default", "all"])
def test_qwenimage_every_key_loads_in_comfyui_and_diffusers(targets):
    chosen = keys_qwenimage.DEFAULT_TARGETS if targets == "default" else "all"
    model, sd, alphas = meta_lora(QwenImageTransformer2DModel, QWEN_IMAGE, chosen)
    out = keys_qwenimage.to_single_file(sd, alphas)
    assert_comfy_loads_all(out, "qwenimage", comfy.qwenimage_config(model.config))
    assert len(out) == len(sd) // 2 * 3  # down, up and alpha per module
    # diffusers' converter puts every module back under its own name (shapes only: the tensors are on meta)
    loaded = QwenImagePipeline.lora_state_dict(out)
    assert set(loaded) == {f"transformer.{k}" for k in sd}
    assert all(loaded[f"transformer.{k}"].shape == v.shape for k, v in sd.items())
    if targets == "default":  # diffusers' list: the image stream's q, k, v and out in each of the 60 blocks
        assert len(sd) // 2 == 60 * 4
    else:  # 14 Linears per block + img_in, txt_in, the timestep embedder's two, norm_out.linear, proj_out
        assert len(sd) // 2 == 60 * 14 + 6


# ---- tiny models, real numbers ----------------------------------------------------------------------------------

def randomise_lora(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in ("lora_", "hada_", "lokr_")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def peft_deltas(model) -> dict[str, torch.Tensor]:
    """Each adapted layer's weight delta as PEFT applies it: scale x lora_B @ lora_A."""
    out = {}
    for name, layer in model.named_modules():
        if hasattr(layer, "lora_A") and "default" in getattr(layer, "lora_A", {}):
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            out[name] = layer.scaling["default"] * (b.flatten(1).double() @ a.flatten(1).double()).float()
    return out


def assert_comfy_deltas_match(file_sd, model, arch, cfg):
    weights = comfy.model_weights(arch, cfg)
    patches, not_loaded = comfy.load_lora(file_sd, comfy.lora_key_map(arch, cfg))
    assert not_loaded == []
    got = comfy.deltas(patches, weights)
    want = comfy.expected_deltas(peft_deltas(model), comfy.diffusers_map(arch, cfg), weights)
    assert set(got) == set(want)
    for key in want:
        assert want[key].abs().max() > 1e-3, key  # lora_B is not zero: the check is not vacuous
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0, msg=key)


def tiny(cls, config, targets, **patterns):
    torch.manual_seed(0)
    base = cls(**config).eval()
    trained = copy.deepcopy(base)
    _, alphas = with_lora(trained, targets, **patterns)
    randomise_lora(trained)
    return base, trained, get_peft_model_state_dict(trained), alphas


def flux_inputs():
    gen = torch.Generator().manual_seed(1)
    ids = torch.arange(16)
    img_ids = torch.stack([torch.zeros(16), ids // 4, ids % 4], dim=1).float()
    return dict(hidden_states=torch.randn(1, 16, 16, generator=gen),
                encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
                pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.6]),
                img_ids=img_ids, txt_ids=torch.zeros(5, 3), guidance=torch.tensor([1.0]), return_dict=False)


def sd3_inputs():
    gen = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
                pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([600.0]),
                return_dict=False)


def assert_same_output(base, trained, loaded_pipe_model, inputs):
    def run(model):  # Z-Image's transformer returns a list of per-image outputs
        out = model(**inputs)[0]
        return torch.stack(out) if isinstance(out, list) else out

    with torch.no_grad():
        before, want, got = run(base), run(trained), run(loaded_pipe_model)
    assert (want - before).abs().max() > 1e-2  # the LoRA changes the output
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_flux_tiny_comfyui_deltas_match_peft():
    model = FluxTransformer2DModel(**TINY_FLUX)
    _, trained, sd, alphas = tiny(FluxTransformer2DModel, TINY_FLUX, adapted_layers(model), **PATTERNS)
    out = keys_flux1.to_single_file(sd, alphas)
    assert_comfy_deltas_match(out, trained, "flux", comfy.flux_config(trained.config))


def test_flux_tiny_diffusers_loads_the_file(tmp_path):
    """Every block module but single blocks' linear1, whose split diffusers hard-codes at Flux.1's full size
    (next test); the top-level modules diffusers drops (test_diffusers_drops_flux_top_level_modules)."""
    model = FluxTransformer2DModel(**TINY_FLUX)
    targets = [n for n in adapted_layers(model) if "blocks." in n
               and not (n.startswith("single_") and n.endswith(("to_q", "to_k", "to_v", "proj_mlp")))]
    base, trained, sd, alphas = tiny(FluxTransformer2DModel, TINY_FLUX, targets, **PATTERNS)
    save_file(keys_flux1.to_single_file(sd, alphas), tmp_path / "lora.safetensors")
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=copy.deepcopy(base))
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    assert_same_output(base, trained, pipe.transformer, flux_inputs())


def test_flux1_full_size_fused_parts_load_in_diffusers(tmp_path):
    """linear1 / qkv at Flux.1's real sizes: diffusers splits the fused LoRAs back into the PEFT modules' deltas,
    with a part untrained (proj_mlp), a part at another rank and scale (to_k), and all four parts trained."""
    model, meta_sd, alphas = meta_lora(FluxTransformer2DModel, FLUX1_DEV, ["attn.to_q", "attn.to_k", "attn.to_v",
                                                                             "add_q_proj", "proj_mlp"], **PATTERNS)
    keep = ("single_transformer_blocks.0.attn.", "single_transformer_blocks.1.", "transformer_blocks.0.")
    gen = torch.Generator().manual_seed(2)
    sd = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in meta_sd.items() if k.startswith(keep)}
    out = keys_flux1.to_single_file(sd, alphas)
    assert out["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape == (16, 3072)  # 4 parts x width 4
    save_file(out, tmp_path / "lora.safetensors")
    loaded = FluxPipeline.lora_state_dict(str(tmp_path / "lora.safetensors"))
    probe = torch.randn(3072, generator=gen, dtype=torch.float64)
    for module in {k.rsplit(".", 2)[0] for k in sd}:
        a, b = sd[f"{module}.lora_A.weight"].double(), sd[f"{module}.lora_B.weight"].double()
        alpha, rank = alphas[module]
        la = loaded[f"transformer.{module}.lora_A.weight"].double()
        lb = loaded[f"transformer.{module}.lora_B.weight"].double()
        torch.testing.assert_close(lb @ (la @ probe), alpha / rank * (b @ (a @ probe)), atol=1e-6, rtol=1e-6)
    # untrained proj_mlp comes back as a zero LoRA
    zero = loaded["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"]
    assert zero.shape == (12288, 4) and not zero.any()


def test_diffusers_drops_flux_top_level_modules():
    """diffusers 0.42.1 converts kohya Flux LoRAs on img_in / txt_in / time_in / vector_in / guidance_in /
    final_layer to keys without the `transformer.` prefix, which load_lora_weights then ignores. When this test
    fails, diffusers has fixed it: widen test_flux_tiny_diffusers_loads_the_file to every module."""
    _, _, sd, alphas = tiny(FluxTransformer2DModel, TINY_FLUX, ["x_embedder", "transformer_blocks.0.attn.to_q"])
    loaded = FluxPipeline.lora_state_dict(keys_flux1.to_single_file(sd, alphas))
    assert "x_embedder.lora_A.weight" in loaded and "transformer.x_embedder.lora_A.weight" not in loaded
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in loaded


def test_sd3_tiny_comfyui_and_diffusers_match_peft(tmp_path):
    model = SD3Transformer2DModel(**TINY_SD3)
    base, trained, sd, alphas = tiny(SD3Transformer2DModel, TINY_SD3, adapted_layers(model, conv=True), **PATTERNS)
    out = keys_sd3.to_single_file(sd, alphas)
    assert_comfy_deltas_match(out, trained, "sd3", comfy.mmdit_config(trained.config))
    save_file(out, tmp_path / "lora.safetensors")
    pipe = StableDiffusion3Pipeline(transformer=copy.deepcopy(base), scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    assert_same_output(base, trained, pipe.transformer, sd3_inputs())


def zimage_inputs():
    gen = torch.Generator().manual_seed(1)
    return dict(x=[torch.randn(16, 1, 8, 8, generator=gen)], t=torch.tensor([0.4]),
                cap_feats=[torch.randn(5, 24, generator=gen)], return_dict=False)


def check_unfused_tiny(tmp_path, model_cls, tiny_cfg, keys, arch, comfy_cfg, pipe_cls, inputs, patterns):
    """Every Linear, one at another rank and alpha: ComfyUI's deltas are PEFT's, and the pipeline's
    load_lora_weights (its converter folds alpha / rank) gives the trained model's output."""
    model = model_cls(**tiny_cfg)
    base, trained, sd, alphas = tiny(model_cls, tiny_cfg, adapted_layers(model), **patterns)
    out = keys.to_single_file(sd, alphas)
    assert_comfy_deltas_match(out, trained, arch, comfy_cfg(trained.config))
    save_file(out, tmp_path / "lora.safetensors")
    pipe = pipe_cls(transformer=copy.deepcopy(base), scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                    text_encoder=None, tokenizer=None)
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    assert_same_output(base, trained, pipe.transformer, inputs)


def test_zimage_tiny_comfyui_and_diffusers_match_peft(tmp_path):
    check_unfused_tiny(tmp_path, ZImageTransformer2DModel, TINY_ZIMAGE, keys_zimage, "zimage", comfy.zimage_config,
                       ZImagePipeline, zimage_inputs(), ZIMAGE_PATTERNS)


def qwenimage_inputs():
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False  # a shorter prompt, as QwenImagePipeline pads a batch
    return dict(hidden_states=torch.randn(2, 16, 64, generator=gen),
                encoder_hidden_states=torch.randn(2, 5, 32, generator=gen), encoder_hidden_states_mask=mask,
                timestep=torch.tensor([0.6, 0.3]), img_shapes=[(1, 4, 4)] * 2, return_dict=False)


def test_qwenimage_tiny_comfyui_and_diffusers_match_peft(tmp_path):
    check_unfused_tiny(tmp_path, QwenImageTransformer2DModel, TINY_QWEN, keys_qwenimage, "qwenimage",
                       comfy.qwenimage_config, QwenImagePipeline, qwenimage_inputs(), PATTERNS)


# ---- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("writer, module", [
    (keys_flux1, "transformer_blocks.0.attn.norm_q"), (keys_flux1, "single_transformer_blocks.0.attn.to_out.0"),
    (keys_flux1, "pos_embed.proj"), (keys_sd3, "transformer_blocks.0.attn.norm_q"), (keys_sd3, "x_embedder"),
    (keys_zimage, "layers.0.attention.norm_q"), (keys_zimage, "all_x_embedder.4-1"),

    (keys_qwenimage, "transformer_blocks.0.attn.norm_q"), (keys_qwenimage, "x_embedder")])
def test_unmappable_module_is_named(writer, module):
    sd = {f"{module}.lora_A.weight": torch.zeros(4, 8), f"{module}.lora_B.weight": torch.zeros(8, 4)}
    with pytest.raises(ValueError, match=module.replace(".", r"\.")):
        writer.to_single_file(sd, {module: (2.0, 4)})


@pytest.mark.parametrize("writer", [keys_flux1, keys_sd3, keys_zimage, keys_qwenimage])
def test_lora_writers_leave_lycoris_and_dora_to_their_own_layout(writer):
    """The LoRA writers refuse LoHa / DoRA parts rather than drop them (export sends those to keys/lycoris.py)."""
    module = "transformer_blocks.0.attn.to_q"
    loha = {f"{module}.hada_w1_a": torch.zeros(8, 4), f"{module}.hada_w1_b": torch.zeros(4, 8)}
    dora = {f"{module}.lora_A.weight": torch.zeros(4, 8), f"{module}.lora_B.weight": torch.zeros(8, 4),
            f"{module}.lora_magnitude_vector": torch.ones(8)}
    for sd in (loha, dora):
        with pytest.raises(ValueError, match="LyCORIS' layout"):
            writer.to_single_file(sd, {module: (2.0, 4)})


# ---- LoHa, LoKr, DoRA: LyCORIS' layout (keys/lycoris.py), unfused ------------------------------------------------

def lycoris_config(kind, targets, **patterns):
    if kind == "loha":
        return LoHaConfig(r=4, alpha=2, target_modules=targets, **patterns)
    if kind == "lokr":
        return LoKrConfig(r=4, alpha=2, target_modules=targets, **patterns)
    return LoraConfig(r=4, lora_alpha=2, use_dora=True, target_modules=targets, **patterns)


def lycoris_file(family, model):
    """The single file export writes for `model`'s adaptor (its dispatch by kind included), and peft's state dict."""
    sd = get_peft_model_state_dict(model)
    return export.kohya_state_dict(FAMILIES[family], {"unet": sd}, {"unet": module_alphas(model)}), sd


FULL_SIZE = {"flux1": (FluxTransformer2DModel, FLUX1_DEV, "flux", comfy.flux_config),
             "sd3": (SD3Transformer2DModel, SD35_MEDIUM, "sd3", comfy.mmdit_config),
             "zimage": (ZImageTransformer2DModel, Z_IMAGE, "zimage", comfy.zimage_config),
             "qwenimage": (QwenImageTransformer2DModel, QWEN_IMAGE, "qwenimage", comfy.qwenimage_config)}


@pytest.mark.parametrize("family, kind", [(f, k) for f in ("flux1", "sd3") for k in ("loha", "lokr", "dora")]
                         + [("zimage", "lokr"), ("qwenimage", "dora")])
def test_lycoris_every_key_loads_in_comfyui(family, kind):
    """Every Linear of the full-size model (one part of each fused qkv at another rank and alpha): every key maps
    onto a weight or slice ComfyUI holds, with its shape; DoRA's magnitude has one value per row of its slice."""
    cls, config, arch, comfy_cfg = FULL_SIZE[family]
    with torch.device("meta"):
        model = cls(**config)
        inject_adapter_in_model(lycoris_config(kind, adapted_layers(model),
                                               **(ZIMAGE_PATTERNS if family == "zimage" else PATTERNS)), model)
    out, sd = lycoris_file(family, model)
    assert all(k.startswith("lycoris_") for k in out)
    assert_comfy_loads_all(out, arch, comfy_cfg(model.config))
    assert len(stems(out)) == len({k.rsplit(".", 2 if k.endswith(".weight") else 1)[0] for k in sd})
    assert all(v.dtype == torch.float32 and v.dim() == 0 for k, v in out.items() if k.endswith(".alpha"))


def merged_modules(model) -> dict[str, torch.Tensor]:
    """Every Linear's weight with its adaptor merged as peft merges it (DoRA: m (W + dW) / ||W + dW|| per row)."""
    merged = copy.deepcopy(model)
    out = {}
    for name, layer in merged.named_modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge(adapter_names=["default"])
            out[name] = layer.get_base_layer().weight.detach()
        elif isinstance(layer, torch.nn.Linear) and ".base_layer" not in name + ".":
            out[name] = layer.weight.detach()
    return out


@pytest.mark.parametrize("family", ["flux1", "sd3"])
@pytest.mark.parametrize("kind", ["loha", "lokr", "dora"])
def test_lycoris_tiny_comfyui_weights_match_peft(family, kind):
    """Every Linear of a tiny model (norm_out.linear and SD3's last norm1_context.linear, whose halves ComfyUI swaps,
    included), random adaptor weights: ComfyUI's weights after loading the file are peft's merged weights. DoRA by
    its definition (||W + dW||, as peft, LyCORIS and ComfyUI's open PR #15458); today's ComfyUI divides by ||W||."""
    cls, config, arch, comfy_cfg = {"flux1": (FluxTransformer2DModel, TINY_FLUX, "flux", comfy.flux_config),
                                    "sd3": (SD3Transformer2DModel, TINY_SD3, "sd3", comfy.mmdit_config)}[family]
    torch.manual_seed(0)
    model = cls(**config).eval()
    base = {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    inject_adapter_in_model(lycoris_config(kind, list(base), **PATTERNS), model)
    randomise_lora(model)
    out, _ = lycoris_file(family, model)
    got, not_loaded = comfy.merged_by_comfy(out, arch, comfy_cfg(model.config), base, dora_norm="adapted")
    assert not_loaded == [] and got.keys() == base.keys()
    want = merged_modules(model)
    for name in base:
        assert (want[name] - base[name]).abs().max() > 1e-3, name  # every module is changed: the check is not vacuous
        torch.testing.assert_close(got[name].float(), want[name], atol=1e-5, rtol=0, msg=name)
