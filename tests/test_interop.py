"""Interop defects found with the loaders' own code (issue #13 part 3b):

- a full fine-tune's `diffusers/` folder holds its text encoders in the classic CLIP layout ComfyUI's
  diffusers-folder loader reads, and transformers 5 still loads it;
- a DoRA with a trained text encoder previews (load_into_pipeline, the Compare tab) with the trained
  text-encoder magnitudes, i.e. as the DoRA-merged weights draw;
- textual inversion trains in bf16 on a CPU.
"""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_training, sets
from lora_checks import image, load_base
from engine.builtin import resolve_builtin
from engine.config import load_config
from engine.export import DIFFUSERS_WEIGHT_NAME

pytestmark = pytest.mark.slow

COMMON = dict(resolution=64, seed=3, train_batch_size=2, report_to="none", lr_warmup_steps=0)
MODELS = [("builtin:tiny-sd", "sd1"), ("builtin:tiny-sdxl", "sdxl")]


def _train(tmp_path, data, name, **kw):
    out = tmp_path / "runs"
    run_training(sets(**COMMON, **kw, train_data_dir=data, output_dir=out, adaptor_name=name), launch=False)
    return out / name


def _text_encoder_classes(family):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    return {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection} if family == "sdxl" \
        else {"text_encoder": CLIPTextModel}


def _tokens(pipe_folder, name, text="a photo of a red square"):
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(pipe_folder, subfolder=name.replace("text_encoder", "tokenizer"))
    return tok([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


# ----------------------------------------------------------------------------- 1. full fine-tune folder

def comfy_clip_keys(config, projection: bool) -> set[str]:
    """The state dict ComfyUI's diffusers-folder loader fills (comfy/diffusers_load.py load_diffusers ->
    comfy/sd.py load_clip -> sd1_clip.SDClipModel.load_sd: `transformer.load_state_dict(sd, strict=False)`):
    comfy/clip_model.py CLIPTextModel, i.e. `text_model.` + embeddings / encoder.layers.N / final_layer_norm,
    and `text_projection.weight` (SDXL's clip_g; clip_l keeps its identity projection)."""
    per_layer = [f"{part}.{w}" for part in ("layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj",
                                            "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
                 for w in ("weight", "bias")]
    keys = {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
            "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"}
    keys |= {f"text_model.encoder.layers.{i}.{k}" for i in range(config.num_hidden_layers) for k in per_layer}
    return keys | ({"text_projection.weight"} if projection else set())


@pytest.mark.parametrize("model,family", MODELS)
def test_full_folder_writes_text_encoders_in_the_classic_clip_layout(tmp_path, tiny_data, model, family):
    from transformers import CLIPTextModelWithProjection

    run = _train(tmp_path, tiny_data, "ft", pretrained_model_name_or_path=model, method="full",
                 train_text_encoder=True, learning_rate=1e-3, max_train_steps=1)
    folder, base = run / "diffusers", resolve_builtin(model)
    pipe = load_base(str(folder), family)
    references = {}
    for name, cls in _text_encoder_classes(family).items():
        saved = load_file(str(folder / name / "model.safetensors"))
        assert all(k.startswith("text_model.") or k == "text_projection.weight" for k in saved), name
        assert set(saved) == comfy_clip_keys(pipe.components[name].config, cls is CLIPTextModelWithProjection)

        loaded, info = cls.from_pretrained(folder, subfolder=name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (name, info)
        # the same tensors under transformers 5's own names (what the folder held before) give the same outputs
        reference = cls(loaded.config).eval()
        flat = not hasattr(reference, "text_model")  # transformers 5's CLIPTextModel
        reference.load_state_dict({k.removeprefix("text_model.") if flat else k: v for k, v in saved.items()})
        ids = _tokens(folder, name)
        with torch.no_grad():
            ours, theirs = loaded.eval()(ids).last_hidden_state, reference(ids).last_hidden_state
            untrained = cls.from_pretrained(base, subfolder=name).eval()(ids).last_hidden_state
        assert torch.equal(ours, theirs), name
        assert not torch.equal(ours, untrained), name  # it is the trained encoder
        references[name] = reference

    # the whole pipeline from the folder draws what the trained weights under their old names drew
    from_folder = image(pipe)
    for name, reference in references.items():
        setattr(pipe, name, reference)
    assert np.array_equal(from_folder, image(pipe))


# ----------------------------------------------------------------------------- 2. DoRA text-encoder magnitudes

@torch.no_grad()
def merge_dora(pipe, state: dict[str, torch.Tensor], scale: float, trained_text_magnitudes: bool = True) -> None:
    """Every adapted Linear weight replaced by DoRA's merged weight (Liu et al. 2024, as peft merges it):
    m * V / ||V|| per output row, V = W + scale * B @ A. Without trained_text_magnitudes the text encoders
    keep m = ||W|| (what a fresh DoRA layer starts with), as a loader that drops them does."""
    for key in [k for k in state if k.endswith(".lora_A.weight")]:
        module_key = key.removesuffix(".lora_A.weight")
        component, _, path = module_key.partition(".")
        module = getattr(pipe, component)
        if not hasattr(module, "text_model"):  # transformers 5's CLIPTextModel: no text_model wrapper
            path = path.removeprefix("text_model.")
        layer = module.get_submodule(path)
        weight = layer.weight.float()
        merged = weight + scale * state[f"{module_key}.lora_B.weight"] @ state[key]
        magnitude = state[f"{module_key}.lora_magnitude_vector"]
        if component != "unet" and not trained_text_magnitudes:
            magnitude = weight.norm(dim=1)
        layer.weight.copy_(merged * (magnitude / merged.norm(dim=1))[:, None])


@pytest.mark.parametrize("model,family", MODELS)
def test_dora_with_a_trained_text_encoder_previews_as_the_merged_weights_draw(tmp_path, tiny_data, model, family):
    from engine.generate import PipeCache, adaptor_pipeline, resolve_adaptor
    from engine.methods import lora

    run = _train(tmp_path, tiny_data, "dora", pretrained_model_name_or_path=model, use_dora=True,
                 train_text_encoder=True, rank=4, lora_alpha=8.0, learning_rate=5e-2, max_train_steps=3)
    cfg = load_config(run / "config.toml")
    state = load_file(str(run / "diffusers" / DIFFUSERS_WEIGHT_NAME))
    assert any(k.startswith("text_encoder.") and k.endswith(".lora_magnitude_vector") for k in state)
    scale = cfg.lora_alpha / cfg.rank

    merged = load_base(model, family)
    merge_dora(merged, state, scale)
    want = image(merged)
    ours = load_base(model, family)
    lora.load_into_pipeline(ours, run, cfg)
    for name in _text_encoder_classes(family):
        ids = _tokens(resolve_builtin(model), name)
        with torch.no_grad():
            hidden = [getattr(p, name)(ids).last_hidden_state for p in (ours, merged)]
        assert torch.allclose(*hidden, atol=1e-5), name
    assert np.abs(image(ours) - want).max() < 1e-4

    # the text encoders' magnitudes decide the image here: with untrained ones (a loader dropping them) it differs
    dropped = load_base(model, family)
    merge_dora(dropped, state, scale, trained_text_magnitudes=False)
    assert np.abs(image(dropped) - want).max() > 1e-3

    # the Compare tab (its own pipeline and sampler) applies them too
    cache = PipeCache(device=torch.device("cpu"))
    with adaptor_pipeline(cache, resolve_adaptor(run), torch.float32, 1.0) as pipe:
        merged.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        assert np.abs(image(pipe) - image(merged)).max() < 1e-4


# ----------------------------------------------------------------------------- 3. bf16 textual inversion on CPU

@pytest.mark.parametrize("model,family", MODELS)
def test_textual_inversion_trains_in_bf16_on_cpu(tmp_path, tiny_data, model, family):
    from engine.methods.textual_inversion import DIFFUSERS_FILES

    run = _train(tmp_path, tiny_data, "ti", pretrained_model_name_or_path=model, method="textual_inversion",
                 placeholder_token="<tok>", initializer_token="dog", mixed_precision="bf16", learning_rate=5e-2,
                 max_train_steps=2, validation_prompt="a photo of <tok>", num_validation_images=1,
                 num_inference_steps=2)
    assert list((run / "samples").glob("*.png"))  # validation drew with the bf16 encoders and the new token
    base = resolve_builtin(model)
    for name, file in zip(_text_encoder_classes(family), DIFFUSERS_FILES):
        (vector,) = load_file(str(run / "diffusers" / file)).values()
        encoder = _text_encoder_classes(family)[name].from_pretrained(base, subfolder=name)
        dog = _tokens(base, name, "dog")[0, 1]
        start = encoder.get_input_embeddings().weight[dog].detach()
        assert vector.dtype == torch.float32 and torch.isfinite(vector).all()
        assert (vector[0] - start).abs().max() > 1e-3, name  # the token trained away from "dog"
