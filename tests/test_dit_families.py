"""The DiT families (Flux.1, SD3, Z-Image, Qwen-Image) on their tiny built-ins: a LoRA trains through `accelerate
launch`, both files load in diffusers and give the same image, the trained alpha is the scale, the single file
names the architecture as sd-scripts / musubi-tuner do, resume is exact, a text-encoder cache changes nothing,
Flux runs in two processes, validation images and Compare draw, CUDA-only switches and options of the other
objective are refused; the LoRA tools read their files; Flux schnell and DreamBooth with prior preservation; LoHa,
LoKr and DoRA train and their single file (LyCORIS' layout) gives the run's own output where ComfyUI's rules apply
it."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from conftest import make_images, run_training, sets
from engine.builtin import resolve_builtin
from engine.events import read_events

pytestmark = pytest.mark.slow

MODELS = {"flux1": "builtin:tiny-flux", "sd3": "builtin:tiny-sd3", "zimage": "builtin:tiny-zimage",
          "qwenimage": "builtin:tiny-qwenimage"}
# diffusers splits a Flux single file's single-block linear1 only at Flux.1's full size (keys_flux1): the files'
# image check trains the double blocks' fused q/k/v and a single block's linear2 (ComfyUI's rules for the default
# targets of the full-size models: tests/test_keys_dit.py)
FLUX_CHECKED_TARGETS = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                        "transformer_blocks.0.attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                        "attn.add_v_proj", "attn.to_add_out", "ff.net.2", "single_transformer_blocks.0.proj_out"]
# Qwen-Image: every Linear (diffusers' default, the image stream's attention, barely moves a 4-step tiny image), so
# the image check also covers diffusers' reading of every module name in the single file
QWEN_CHECKED_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                        "img_mod.1", "txt_mod.1", "net.0.proj", "net.2", "img_in", "txt_in", "linear_1", "linear_2",
                        "norm_out.linear", "proj_out"]
# every Linear of Flux.1's transformer (norm_out.linear, whose halves ComfyUI swaps, included)
FLUX_EVERY_LINEAR = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                     "net.0.proj", "net.2", "norm1.linear", "norm1_context.linear", "norm.linear", "proj_mlp",
                     "proj_out", "x_embedder", "context_embedder", "linear_1", "linear_2", "norm_out.linear"]
CHECKED_TARGETS = {"flux1": FLUX_CHECKED_TARGETS, "qwenimage": QWEN_CHECKED_TARGETS}
BASE = dict(resolution=64, rank=4, lora_alpha=2, learning_rate=2e-3, lr_warmup_steps=0, seed=3,
            train_batch_size=2, max_train_steps=4, report_to="none")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("dit") / "data", n=4)


def train(data, out, name, family, launch=False, expect_rc=0, **kw):
    cfg = {**BASE, "pretrained_model_name_or_path": MODELS[family], "train_data_dir": data, **kw}
    return run_training(sets(**cfg, output_dir=out, adaptor_name=name), launch=launch, expect_rc=expect_rc)


def pipeline(family):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(resolve_builtin(MODELS[family]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe) -> np.ndarray:
    return pipe("a red square", num_inference_steps=3, height=64, width=64, guidance_scale=3.0, output_type="np",
                generator=torch.Generator().manual_seed(0), max_sequence_length=32).images[0]


def _losses(run) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run / "events.jsonl") if e["type"] == "step"}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One LoRA per family through accelerate launch (Flux and SD3 with their CLIPs' LoRA too, Z-Image drawing
    validation images), alpha 2 != rank 4."""
    out = tmp_path_factory.mktemp("runs")
    for family in MODELS:
        extra = dict(lora_target_modules=CHECKED_TARGETS[family]) if family in CHECKED_TARGETS else {}
        if family in ("flux1", "sd3"):  # the CLIPs' LoRA: Flux.1's one, SD3's two
            extra["train_text_encoder"] = True
        if family == "zimage":  # validation images through the family's pipeline during training
            extra.update(validation_prompt="a red square", num_validation_images=1, num_inference_steps=2)
        train(data, out, family, family, launch=True, **extra)
    return out


@pytest.mark.parametrize("family", list(MODELS))
def test_lora_files_load_in_diffusers_and_give_the_same_image(family, trained):
    run = trained / family
    base = image(pipeline(family))
    pipe = pipeline(family)
    pipe.load_lora_weights(str(run / "diffusers"))
    from_diffusers = image(pipe)
    assert np.abs(from_diffusers - base).max() > 1e-3  # the adaptor changes the image
    pipe = pipeline(family)
    pipe.load_lora_weights(str(run / f"{family}.safetensors"))
    assert np.abs(image(pipe) - from_diffusers).max() < 1e-3  # the single file is the same adaptor

    # the scale is the trained alpha / rank: the weights put back with training's LoraConfig give the same image
    from engine.families import FAMILIES
    from engine.methods.lora import TEXT_ENCODER_TARGETS
    sd = load_file(str(run / "diffusers" / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("text_encoder.") for k in sd) == (family in ("flux1", "sd3"))
    assert any(k.startswith("text_encoder_2.") for k in sd) == (family == "sd3")  # SD3's CLIP-G; no T5 LoRA
    pipe = pipeline(family)
    for component, targets in (("transformer", CHECKED_TARGETS.get(family, FAMILIES[family].lora_default_targets)),
                               ("text_encoder", TEXT_ENCODER_TARGETS), ("text_encoder_2", TEXT_ENCODER_TARGETS)):
        part = {k[len(component) + 1:]: v for k, v in sd.items() if k.startswith(component + ".")}
        if part:
            module = getattr(pipe, component)
            module.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=list(targets)))
            # CLIPTextModelWithProjection (SD3) keeps its text_model. prefix; CLIPTextModel's file names drop it
            keep = type(module).__name__.endswith("WithProjection")
            set_peft_model_state_dict(module, {k if keep else k.removeprefix("text_model."): v
                                               for k, v in part.items()})
    assert np.abs(image(pipe) - from_diffusers).max() < 1e-4
    meta = read_events(run / "events.jsonl")
    assert next(e for e in meta if e["type"] == "start")["model_family"] == family


@pytest.mark.parametrize("family", list(MODELS))
def test_resume_is_exact(family, data, tmp_path):
    args = dict(checkpointing_steps=2, max_train_steps=4)
    train(data, tmp_path, "r", family, **args)
    full = load_file(str(tmp_path / "r" / "diffusers" / "pytorch_lora_weights.safetensors"))
    train(data, tmp_path, "r", family, resume_from_checkpoint=tmp_path / "r" / "checkpoints" / "checkpoint-2", **args)
    events = read_events(tmp_path / "r" / "events.jsonl")
    assert [e for e in events if e["type"] == "start"][-1]["first_step"] == 2
    resumed = load_file(str(tmp_path / "r" / "diffusers" / "pytorch_lora_weights.safetensors"))
    assert max((full[k] - resumed[k]).abs().max().item() for k in full) < 1e-6


@pytest.mark.parametrize("family", list(MODELS))
def test_text_encoder_cache_gives_the_same_losses(family, data, tmp_path):
    """Captions of different lengths: an LLM encoder's embeddings vary in length (Qwen-Image pads them and
    carries the mask), so batches mix lengths."""
    import shutil
    shutil.copytree(data, tmp_path / "data")
    (tmp_path / "data" / "img1.txt").write_text("a photo of a green square on a white background, high quality")
    (tmp_path / "data" / "img2.txt").write_text("blue")
    data = tmp_path / "data"
    train(data, tmp_path, "plain", family)
    proc = train(data, tmp_path, "cached", family, cache_text_encoder_outputs=True)
    assert "text-encoder cache: 4 captions encoded" in proc.stdout
    plain, cached = _losses(tmp_path / "plain"), _losses(tmp_path / "cached")
    assert plain.keys() == cached.keys() and len(plain) == 4
    assert np.allclose(list(plain.values()), list(cached.values()), rtol=1e-5), (plain, cached)


def test_flux_trains_in_two_processes(data, tmp_path):
    proc = run_training(sets(**{**BASE, "train_batch_size": 1}, pretrained_model_name_or_path=MODELS["flux1"],
                             train_data_dir=data, output_dir=tmp_path, adaptor_name="ddp"), num_processes=2)
    events = read_events(tmp_path / "ddp" / "events.jsonl")
    assert next(e for e in events if e["type"] == "start")["num_processes"] == 2
    assert sum(e["type"] == "done" for e in events) == 1, proc.stdout  # only the main process writes
    assert (tmp_path / "ddp" / "ddp.safetensors").is_file()


@pytest.mark.parametrize("family", ["flux1", "sd3", "zimage", "qwenimage"])
def test_compare_grid_draws_a_dit_run(family, trained, tmp_path):
    from PIL import Image

    from engine.generate import compare_grid

    result = compare_grid(None, trained / family, ["a red square"], trigger="sks", steps=2, seed=1, guidance=3.0,
                          out=tmp_path / "grid.png")
    assert result["cols"] == 3 and result["base"] == MODELS[family]
    base, adaptor = (np.asarray(Image.open(c), dtype=float) for c in result["cells"][0][:2])
    assert np.abs(base - adaptor).max() > 0  # the adaptor column is drawn with the LoRA

    # img2img and inpainting through diffusers' pipelines of the family for those tasks, with the run's LoRA
    from engine.generate import img2img, inpaint
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "src.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    for task, extra in ((img2img, ()), (inpaint, (tmp_path / "mask.png",))):
        out = tmp_path / f"{task.__name__}.png"
        result = task(None, trained / family, "a red square", tmp_path / "src.png", *extra, steps=2, strength=0.8,
                      out=out)
        assert result["size"] == [64, 64] and Image.open(out).size == (64, 64)


def transformer_inputs(family, config) -> dict:
    """Fixed inputs for a tiny Flux.1 / Qwen-Image transformer: 16 image tokens, 5 text tokens."""
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(1, 5, config.joint_attention_dim, generator=gen)
    if family == "qwenimage":
        return dict(hidden_states=torch.randn(1, 16, config.in_channels, generator=gen), encoder_hidden_states=text,
                    timestep=torch.tensor([0.6]), img_shapes=[(1, 4, 4)], return_dict=False)
    ids = torch.arange(16)
    return dict(hidden_states=torch.randn(1, 16, config.in_channels, generator=gen), encoder_hidden_states=text,
                pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=gen),
                timestep=torch.tensor([0.6]), img_ids=torch.stack([torch.zeros(16), ids // 4, ids % 4], dim=1).float(),
                txt_ids=torch.zeros(5, 3), guidance=torch.tensor([1.0]), return_dict=False)


@pytest.mark.parametrize("family", ["flux1", "qwenimage"])
@pytest.mark.parametrize("kind", ["loha", "lokr", "dora"])
def test_lycoris_and_dora_train_and_the_single_file_gives_the_trained_output(family, kind, data, tmp_path):
    """Two steps of LoHa / LoKr / DoRA on every Linear: the run writes the single file (LyCORIS' layout) and peft's
    own adaptor (`peft/transformer`; DoRA: `diffusers/`, which load_lora_weights reads). Every key of the single file
    loads under ComfyUI's rules (tests/comfy_lora_rules.py), and the base weights with the file applied as ComfyUI
    applies it (DoRA by its definition: tests/test_keys_dit.py) give the output of the run's own adaptor."""
    import copy

    from engine.config import load_config
    from engine.methods.lora import load_into_pipeline
    from tests import comfy_lora_rules as comfy

    kw = dict(use_dora=True) if kind == "dora" else dict(lora_type=kind)
    if family == "flux1" and kind == "dora":
        kw["train_text_encoder"] = True  # the CLIP's DoRA goes under kohya's lora_te1_, which ComfyUI maps
    targets = QWEN_CHECKED_TARGETS if family == "qwenimage" else FLUX_EVERY_LINEAR
    train(data, tmp_path, kind, family, max_train_steps=2, learning_rate=1e-2, lora_target_modules=targets, **kw)
    run = tmp_path / kind
    assert (run / ("diffusers/pytorch_lora_weights.safetensors" if kind == "dora"
                   else "peft/transformer/adapter_model.safetensors")).is_file()
    single = load_file(str(run / f"{kind}.safetensors"))
    te = {k for k in single if k.startswith("lora_te1_text_model_encoder_layers_")}
    assert bool(te) == ("train_text_encoder" in kw)
    transformer_keys = {k: v for k, v in single.items() if k not in te}
    assert transformer_keys and all(k.startswith("lycoris_") for k in transformer_keys)
    from engine.tools.inspect import inspect
    report = inspect(run / f"{kind}.safetensors")  # the LoRA tools read the layout
    assert report["family"] == family and report["kinds"] == [kind]

    pipe = pipeline(family)
    base = pipe.transformer
    inputs = transformer_inputs(family, base.config)
    modules = {n: m.weight.detach() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    arch, comfy_cfg = {"flux1": ("flux", comfy.flux_config), "qwenimage": ("qwenimage", comfy.qwenimage_config)}[family]
    merged, not_loaded = comfy.merged_by_comfy(transformer_keys, arch, comfy_cfg(base.config), modules, "adapted")
    assert not_loaded == [], f"lora key not loaded: {not_loaded[:5]}"
    from_file = copy.deepcopy(base)
    from_file.load_state_dict({f"{m}.weight": w.float() for m, w in merged.items()}, strict=False)
    with torch.no_grad():
        before, got = base(**inputs)[0], from_file(**inputs)[0]
    load_into_pipeline(pipe, run, load_config(run / "config.toml"))
    with torch.no_grad():
        want = pipe.transformer(**inputs)[0]
    assert (want - before).abs().max() > 1e-3  # the adaptor changes the output: the comparison is not vacuous
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family,key,value,says", [
    ("sd3", "snr_gamma", 5.0, "flow matching"),
    ("flux1", "prediction_type", "v_prediction", "flow matching"),
    ("flux1", "noise_offset", 0.1, "flow matching"),
    ("flux1", "method", "textual_inversion", "not yet available"),
    ("zimage", "train_text_encoder", True, "LLM"),
    ("qwenimage", "train_text_encoder", True, "LLM"),
])
def test_options_of_the_other_objective_are_refused(data, tmp_path, family, key, value, says):
    ti = {"placeholder_token": "<t>", "initializer_token": "toy"} if value == "textual_inversion" else {}
    proc = train(data, tmp_path, "x", family, expect_rc=2, **{key: value}, **ti)
    err = proc.stdout + proc.stderr
    assert key in err and says in err and "Traceback" not in err


def test_flow_options_are_refused_for_a_unet_family(data, tmp_path):
    cfg = {**BASE, "pretrained_model_name_or_path": "builtin:tiny-sd", "train_data_dir": data,
           "weighting_scheme": "logit_normal"}
    proc = run_training(sets(**cfg, output_dir=tmp_path, adaptor_name="x"), launch=False, expect_rc=2)
    err = proc.stdout + proc.stderr
    assert "weighting_scheme" in err and "noise prediction" in err and "Traceback" not in err


@pytest.mark.parametrize("preset,family", [("flux1-dev-lora", "flux1"), ("sd35-large-lora", "sd3"),
                                           ("sd35-medium-lora", "sd3"), ("zimage-lora", "zimage"),
                                           ("qwenimage-lora", "qwenimage")])
def test_dit_presets_train_on_the_tiny_builtin(preset, family, data, tmp_path):
    """Every setting a DiT preset makes (bf16, cached text encoders and latents, gradient checkpointing, the
    flow options) is one its family trains with: the preset on the family's tiny built-in, two steps."""
    from engine.presets import find_preset

    proc = run_training([str(find_preset(preset).path)] + sets(
        pretrained_model_name_or_path=MODELS[family], train_data_dir=data, output_dir=tmp_path, resolution=64,
        max_train_steps=2, gradient_accumulation_steps=1, validation_prompt="", report_to="none"), launch=False)
    name = {"flux1-dev-lora": "flux1-dev-sks-dog", "sd35-large-lora": "sd35-large-sks-dog",
            "sd35-medium-lora": "sd35-medium-sks-dog", "zimage-lora": "zimage-sks-dog",
            "qwenimage-lora": "qwenimage-sks-dog"}[preset]
    assert read_events(tmp_path / name / "events.jsonl")[-1]["type"] == "done"
    # the two SD3.5 presets share tiny-sd3 and the data: the second reuses the first's caches (0 encoded)
    assert re.search(r"text-encoder cache: [04] captions encoded", proc.stdout), proc.stdout
    assert "latent cache" in proc.stdout, proc.stdout


# Flux's quantize_base refusals: tests/test_memory.py
@pytest.mark.parametrize("family,key,value", [("flux1", "optimizer", "adamw8bit")] + [
    (family, key, value) for family in ("sd3", "zimage", "qwenimage")
    for key, value in (("optimizer", "adamw8bit"), ("quantize_base", "nf4"))])
def test_cuda_only_switch_fails_clearly_on_cpu(data, tmp_path, family, key, value):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = train(data, tmp_path, "x", family, expect_rc=2, **{key: value})
    err = proc.stdout + proc.stderr
    assert f'{key} = "{value}" needs a CUDA GPU' in err and "Traceback" not in err, err
    assert not (tmp_path / "x" / "x.safetensors").exists()


@pytest.mark.parametrize("family", list(MODELS))
def test_the_lora_tools_inspect_a_dit_lora_and_refuse_to_rewrite_it(family, trained, tmp_path):
    """`engine.tools inspect` names the family and reads both files' modules (each file as its own layout: the
    single file's per-family names, the diffusers `transformer.` keys); the UNet-only tools refuse by name."""
    from engine.families import FAMILIES
    from engine.tools import ToolError, lora_file
    from engine.tools.inspect import inspect
    from engine.tools.resize import resize

    run = trained / family
    single = inspect(run / f"{family}.safetensors")
    assert (single["family"], single["family_label"]) == (family, FAMILIES[family].label)
    assert single["components"]["transformer"] > 0 and "unet" not in single["components"]
    assert single["loaders"]["diffusers"]["all"], single["loaders"]["diffusers"]
    folder = inspect(run / "diffusers" / "pytorch_lora_weights.safetensors")
    assert folder["components"]["transformer"] >= single["components"]["transformer"]  # Flux's fused q/k/v: fewer
    with pytest.raises(ToolError, match=f"a {FAMILIES[family].label} LoRA; resize, merge"):
        resize(lora_file.read(run / f"{family}.safetensors"), 2)


def test_the_transformer_can_come_from_its_own_single_file(data, tmp_path):
    """pretrained_transformer_model_name_or_path: diffusers' from_single_file reads the file, shaped by the base's
    config (Qwen-Image's release names are diffusers' own); the text encoders and VAE still come from the base.
    Flux.1's BFL file is read by diffusers' converter too, which splits q/k/v at the full-size widths only: a
    narrower Flux's file is refused by name. A UNet family refuses the key."""
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel
    from safetensors.torch import save_file

    from engine.config import validate
    from engine.families import FAMILIES, ModelError, get_family
    from engine.families.keys.checkpoints import flux1_checkpoint
    from engine.objective_flow import option_problems
    from engine.quantize import load_transformer

    def load(cls, model, file):
        cfg = validate({"pretrained_model_name_or_path": model, "train_data_dir": str(data),
                        "pretrained_transformer_model_name_or_path": str(file)})
        return load_transformer(cls, get_family(cfg)[1], cfg, torch.float32)

    base = QwenImageTransformer2DModel.from_pretrained(resolve_builtin(MODELS["qwenimage"]), subfolder="transformer")
    g = torch.Generator().manual_seed(0)
    tuned = {k: (v + 0.01 * torch.randn(v.shape, generator=g)).contiguous() for k, v in base.state_dict().items()}
    save_file(tuned, tmp_path / "qwen-tuned.safetensors")
    got = load(QwenImageTransformer2DModel, MODELS["qwenimage"], tmp_path / "qwen-tuned.safetensors").state_dict()
    assert got.keys() == tuned.keys() and all(torch.equal(got[k], tuned[k]) for k in tuned)
    train(data, tmp_path, "own", "qwenimage", max_train_steps=1,
          pretrained_transformer_model_name_or_path=tmp_path / "qwen-tuned.safetensors")
    assert (tmp_path / "own" / "own.safetensors").is_file()

    flux = FluxTransformer2DModel.from_pretrained(resolve_builtin(MODELS["flux1"]), subfolder="transformer")
    save_file({k: v.contiguous() for k, v in flux1_checkpoint(flux.state_dict()).items()}, tmp_path / "f.safetensors")
    with pytest.raises(ModelError, match="pretrained_transformer_model_name_or_path = .*f.safetensors.*could not "
                                         "load it as builtin:tiny-flux's FluxTransformer2DModel"):
        load(FluxTransformer2DModel, MODELS["flux1"], tmp_path / "f.safetensors")
    cfg = validate({"train_data_dir": str(data), "pretrained_transformer_model_name_or_path": "x.safetensors"})
    assert [k for k, _ in option_problems(cfg, FAMILIES["sd1"])] == ["pretrained_transformer_model_name_or_path"]


def test_lycoris_on_an_nf4_base_is_refused_by_name():
    """peft's LoHa / LoKr layers size themselves from the base weight, which nf4 packs: refused before anything loads
    (DoRA, which peft supports on bitsandbytes layers, and LoHa / LoKr on other bases are not)."""
    from engine.config import validate
    from engine.families import FAMILIES
    from engine.objective_flow import option_problems

    def problems(**kw):
        cfg = validate({"pretrained_model_name_or_path": MODELS["flux1"], "train_data_dir": "unused", **kw})
        return option_problems(cfg, FAMILIES["flux1"])

    (key, message), = problems(lora_type="lokr", quantize_base="nf4")
    assert key == "lora_type" and "Flux.1" in message and "nf4" in message and "lokr" in message
    assert problems(lora_type="loha") == problems(use_dora=True, quantize_base="nf4") == []


# What sd-scripts (flux1, sd3: library/sai_model_spec.py, the trainers' model_version) and musubi-tuner (zimage,
# qwenimage: architecture_full_name, sai_model_spec) write: tiny-sd3 has no qk-norm, so it is SD3 Medium's layout
ARCHITECTURE_IDS = {"flux1": ("flux1", "flux-1-dev/lora"), "sd3": ("medium", "stable-diffusion-3-medium/lora"),
                    "zimage": ("z_image", "Z-Image/lora"), "qwenimage": ("qwen_image", "Qwen-Image/lora")}


@pytest.mark.parametrize("family", list(MODELS))
def test_lora_files_name_the_architecture_as_sd_scripts_does(family, trained):
    from safetensors import safe_open

    with safe_open(str(trained / family / f"{family}.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ARCHITECTURE_IDS[family]
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"


@pytest.mark.parametrize("config,version", [
    (dict(qk_norm="rms_norm", dual_attention_layers=()), "5-large"),  # stabilityai/stable-diffusion-3.5-large
    (dict(qk_norm="rms_norm", dual_attention_layers=tuple(range(13))), "5-medium"),  # 3.5 Medium: MMDiT-X
    (dict(qk_norm=None, dual_attention_layers=()), "medium"),  # stable-diffusion-3-medium
])
def test_sd3_versions_are_sd_scripts_model_types(config, version):
    from types import SimpleNamespace

    from diffusers.configuration_utils import FrozenDict

    from engine.families import FAMILIES
    comps = SimpleNamespace(unet=SimpleNamespace(config=FrozenDict(config)))
    assert FAMILIES["sd3"].base_model_version(comps) == version
    assert FAMILIES["sd3"].modelspec_architecture(comps) == f"stable-diffusion-3-{version}/lora"


def test_a_dit_run_draws_its_validation_images(trained):
    from PIL import Image

    run = trained / "zimage"
    samples = [e for e in read_events(run / "events.jsonl") if e["type"] == "sample"]
    assert samples and {e["prompt"] for e in samples} == {"a red square"}
    for e in samples:
        path = run / "samples" / Path(e["path"]).name
        assert path.is_file() and Image.open(path).size == (64, 64)
        assert np.asarray(Image.open(path), dtype=float).std() > 0  # an image, not a blank
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == sorted(Path(e["path"]).name for e in samples)


def test_a_flux_schnell_lora_says_schnell(data, tmp_path):
    """Flux.1 schnell is Flux without the guidance embedding: tiny-flux's folder with its transformer rebuilt so,
    a 2-step LoRA, and the file names the architecture as sd-scripts does."""
    import json
    import shutil

    from diffusers import FluxTransformer2DModel

    schnell = tmp_path / "tiny-flux-schnell"
    shutil.copytree(resolve_builtin(MODELS["flux1"]), schnell, ignore=shutil.ignore_patterns("transformer"))
    dev = FluxTransformer2DModel.from_pretrained(resolve_builtin(MODELS["flux1"]), subfolder="transformer")
    model = FluxTransformer2DModel.from_config({**dev.config, "guidance_embeds": False})
    missing, _ = model.load_state_dict(dev.state_dict(), strict=False)  # all but the guidance embedder
    assert not missing
    model.save_pretrained(schnell / "transformer")
    assert json.loads((schnell / "transformer" / "config.json").read_text())["guidance_embeds"] is False

    run_training(sets(**{**BASE, "max_train_steps": 2}, pretrained_model_name_or_path=schnell, train_data_dir=data,
                      output_dir=tmp_path, adaptor_name="schnell"), launch=False)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "schnell" / "schnell.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ("flux1", "flux-1-schnell/lora")


def test_flux_dreambooth_lora_with_prior_preservation(data, tmp_path):
    """DreamBooth-LoRA on tiny-flux: the class images are drawn by the Flux pipeline before training, each step's
    loss is the subject's plus the prior's, and the LoRA's single file carries the instance prompt."""
    from safetensors import safe_open

    classes = tmp_path / "class"
    cfg = {**BASE, "train_batch_size": 1, "max_train_steps": 2, "pretrained_model_name_or_path": MODELS["flux1"]}
    run_training(sets(**cfg, method="dreambooth", train_data_dir=data, instance_prompt="a photo of sks square",
                      with_prior_preservation=True, class_prompt="a photo of a square", class_data_dir=classes,
                      num_class_images=2, sample_batch_size=2, num_inference_steps=2, output_dir=tmp_path,
                      adaptor_name="db"), launch=False)
    from PIL import Image
    made = sorted(classes.glob("*.png"))
    assert len(made) == 2 and all(Image.open(p).size == (64, 64) for p in made)
    steps = [e for e in read_events(tmp_path / "db" / "events.jsonl") if e["type"] == "step"]
    assert len(steps) == 2
    assert all(e["prior_loss"] > 0 and e["loss"] == pytest.approx(e["instance_loss"] + e["prior_loss"], rel=1e-5)
               for e in steps)
    with safe_open(str(tmp_path / "db" / "db.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.trigger_phrase"] == "a photo of sks square"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
