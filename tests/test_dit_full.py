"""A full fine-tune of a DiT: the whole pipeline folder loads in diffusers and draws differently from the base,
the frozen T5 is written unchanged, Compare draws the run, and the single file holds the transformer under
the names ComfyUI and diffusers' converter read (checked against ComfyUI's Flux mapping on the tiny model and
against diffusers' own converter on the full-size architecture, on the meta device). Z-Image and Qwen-Image: a
full fine-tune trains, and its single file (ComfyUI's names) reads back through diffusers' from_single_file to
the trained transformer, and is detected as its family by ComfyUI's rules (tests/comfy_detect.py)."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import comfy_lora_rules as comfy
from comfy_detect import image_model
from conftest import make_images, run_training, sets
from engine.builtin import resolve_builtin
from engine.families.keys.checkpoints import flux1_checkpoint, zimage_checkpoint


def _image(pipe) -> np.ndarray:
    return pipe("a red square", num_inference_steps=2, height=64, width=64, guidance_scale=3.0, output_type="np",
                generator=torch.Generator().manual_seed(0), max_sequence_length=32).images[0]


@pytest.mark.slow
def test_flux_full_fine_tune_writes_a_pipeline_and_a_bfl_file(tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    data = make_images(tmp_path / "data", n=2)
    run_training(sets(pretrained_model_name_or_path="builtin:tiny-flux", train_data_dir=data, output_dir=tmp_path,
                      adaptor_name="full", method="full", train_text_encoder=True, resolution=64, max_train_steps=2,
                      train_batch_size=2, learning_rate=1e-3, seed=1, report_to="none"), launch=False)
    run = tmp_path / "full"
    base_dir = resolve_builtin("builtin:tiny-flux")
    trained = FluxPipeline.from_pretrained(run / "diffusers")
    assert np.abs(_image(trained) - _image(FluxPipeline.from_pretrained(base_dir))).max() > 1e-3
    # the T5 is frozen in every method (only the CLIP trains with train_text_encoder)
    t5 = load_file(str(run / "diffusers" / "text_encoder_2" / "model.safetensors"))
    t5_base = load_file(str(base_dir / "text_encoder_2" / "model.safetensors"))
    assert all(torch.equal(t5[k], t5_base[k]) for k in t5_base)
    # applying the run to a loaded base swaps in the trained transformer and CLIP, and keeps the base's T5
    from engine.config import load_config
    from engine.methods import full
    pipe = FluxPipeline.from_pretrained(base_dir)
    t5_object, clip_object = pipe.text_encoder_2, pipe.text_encoder
    full.load_into_pipeline(pipe, run, load_config(run / "config.toml"))
    assert pipe.text_encoder_2 is t5_object and pipe.text_encoder is not clip_object
    assert np.abs(_image(pipe) - _image(trained)).max() < 1e-5

    # the single file against ComfyUI's Flux mapping (diffusers weight -> BFL weight, row slice, function)
    single = load_file(str(run / "full.safetensors"))
    transformer = FluxTransformer2DModel.from_pretrained(run / "diffusers", subfolder="transformer")
    c = comfy.flux_config(transformer.config)
    assert set(single) >= set(comfy.flux_weights(c))
    state = transformer.state_dict()
    for diffusers_key, target in comfy.flux_to_diffusers(c, prefix="").items():
        name, rows, fn = comfy.split_target(target)
        for suffix in ("weight", "bias"):  # a bias follows its weight's rows
            key, value = name.replace(".weight", f".{suffix}"), state[diffusers_key.replace(".weight", f".{suffix}")]
            stored = single[key] if rows is None else single[key].narrow(0, rows[1], rows[2])
            assert torch.equal(fn(stored) if fn else stored, value), key


def test_flux_single_file_round_trips_through_diffusers_converter_at_full_size():
    """Flux.1 dev's architecture on the meta device: diffusers' own BFL converter (what from_single_file uses)
    reads our file back to the model's every key and shape."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=19, num_single_layers=38, guidance_embeds=True)
    state = model.state_dict()
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(flux1_checkpoint(state)))
    assert back.keys() == state.keys()
    assert all(back[k].shape == state[k].shape for k in state)


# family -> (tiny built-in, diffusers transformer class, ComfyUI's config and Linear weights for that config)
LLM_DITS = {"zimage": ("builtin:tiny-zimage", "ZImageTransformer2DModel", comfy.zimage_config, comfy.zimage_weights),
            "qwenimage": ("builtin:tiny-qwenimage", "QwenImageTransformer2DModel", comfy.qwenimage_config,
                          comfy.qwenimage_weights)}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(LLM_DITS))
def test_llm_dit_full_fine_tune_writes_a_pipeline_and_a_comfyui_file(family, tmp_path):
    import diffusers
    from safetensors import safe_open

    builtin, cls_name, comfy_config, comfy_weights = LLM_DITS[family]
    cls = getattr(diffusers, cls_name)
    data = make_images(tmp_path / "data", n=2)
    run_training(sets(pretrained_model_name_or_path=builtin, train_data_dir=data, output_dir=tmp_path,
                      adaptor_name="full", method="full", resolution=64, max_train_steps=2, train_batch_size=2,
                      learning_rate=1e-3, seed=1, report_to="none"), launch=False)
    run = tmp_path / "full"
    assert (run / "diffusers" / "model_index.json").is_file()
    model = cls.from_pretrained(run / "diffusers", subfolder="transformer")
    trained = model.state_dict()
    base = cls.from_pretrained(resolve_builtin(builtin), subfolder="transformer").state_dict()
    moved = [k for k in base if not torch.equal(trained[k], base[k])]
    assert len(moved) > len(base) // 2, moved  # it trained: most tensors moved in two steps at lr 1e-3

    # the single file reads back through diffusers' from_single_file (its ComfyUI-name converter) to the
    # trained transformer, tensor for tensor
    single = run / "full.safetensors"
    back = cls.from_single_file(str(single), config=str(run / "diffusers"), subfolder="transformer").state_dict()
    assert back.keys() == trained.keys() and all(torch.equal(back[k], trained[k]) for k in trained)
    # ComfyUI's names and shapes: its model's every Linear weight, and its family detection
    stored = load_file(str(single))
    expected = comfy_weights(comfy_config(model.config))
    assert {k: tuple(stored[k].shape) for k in expected if k in stored} == expected
    assert image_model(stored) == {"zimage": "lumina2", "qwenimage": "qwen_image"}[family]  # lumina2: tiny width
    with safe_open(str(single), "pt") as f:
        assert f.metadata()["modelspec.architecture"] == {"zimage": "Z-Image", "qwenimage": "Qwen-Image"}[family]
    from engine.families import detect_family, resolve_source
    assert detect_family(resolve_source(str(single))) == family  # the file as a base: our own detection reads it


def test_llm_dit_single_files_at_full_size_are_detected_and_read_back():
    """The released architectures on the meta device: ComfyUI's rules detect Z-Image (width 3840, pad tokens)
    and Qwen-Image from our files' keys, and diffusers' own single-file mapping reads them back to the model's
    every key and shape."""
    from diffusers import QwenImageTransformer2DModel, ZImageTransformer2DModel
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    from engine.families import FAMILIES

    with torch.device("meta"):
        models = {"zimage": ZImageTransformer2DModel(), "qwenimage": QwenImageTransformer2DModel()}
    for family, model in models.items():
        state = model.state_dict()
        ours = FAMILIES[family].checkpoint_state_dict(model)
        assert image_model(ours) == {"zimage": "z_image", "qwenimage": "qwen_image"}[family]
        convert = SINGLE_FILE_LOADABLE_CLASSES[type(model).__name__]["checkpoint_mapping_fn"]
        back = convert(dict(ours))
        assert back.keys() == state.keys() and all(back[k].shape == state[k].shape for k in state)
    assert zimage_checkpoint(models["zimage"].state_dict())["layers.0.attention.qkv.weight"].shape == (3 * 3840, 3840)


@pytest.mark.slow
def test_sd3_full_fine_tune_writes_its_single_file(tmp_path):
    """Two full steps on tiny-sd3: the transformer trains, and the single file is the trained transformer in
    diffusers' MMDiT names (ComfyUI's diffusion-model loader converts those: convert_diffusers_mmdit)."""
    from diffusers import SD3Transformer2DModel
    from safetensors import safe_open

    data = make_images(tmp_path / "data", n=2)
    run_training(sets(pretrained_model_name_or_path="builtin:tiny-sd3", train_data_dir=data, output_dir=tmp_path,
                      adaptor_name="full", method="full", resolution=64, max_train_steps=2, train_batch_size=2,
                      learning_rate=1e-3, seed=1, report_to="none"), launch=False)
    run = tmp_path / "full"
    trained = SD3Transformer2DModel.from_pretrained(run / "diffusers", subfolder="transformer").state_dict()
    base = SD3Transformer2DModel.from_pretrained(resolve_builtin("builtin:tiny-sd3"), subfolder="transformer")
    moved = [k for k, v in base.state_dict().items() if not torch.equal(trained[k], v)]
    assert len(moved) > len(trained) // 2, moved
    single = load_file(str(run / "full.safetensors"))
    assert single.keys() == trained.keys() and all(torch.equal(single[k], trained[k]) for k in trained)
    with safe_open(str(run / "full.safetensors"), "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-3-medium"  # sd-scripts' id, no qk-norm
