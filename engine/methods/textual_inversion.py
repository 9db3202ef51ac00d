"""Textual inversion (Gal et al. 2022, as diffusers' textual_inversion.py does it): a new token
(`placeholder_token`, standing for `num_vectors` embedding vectors) is added to the tokenizer(s), its rows
start as `initializer_token`'s embedding, and only those rows train; every other row of the embedding matrix
is put back after each optimizer step (weight decay and Adam would otherwise move them). Captions are
templates of `learnable_property` ("a photo of a {}" for an object, "a painting in the style of {}" for a
style). SDXL trains a token in both text encoders.

Outputs: `diffusers/learned_embeds.safetensors` ({token: vectors}, `pipe.load_textual_inversion(path)`;
SDXL adds `learned_embeds_2.safetensors` for the second encoder) and `{adaptor_name}.safetensors` in the
embedding format AUTOMATIC1111 and ComfyUI read (`emb_params`; SDXL: `clip_l` and `clip_g`).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine import objective
from engine.config import ConfigError
from engine.atomic import save_safetensors
from engine.export import finish_card
from engine.methods.lora import trainable_params

# diffusers' imagenet_templates_small and imagenet_style_templates_small
OBJECT_TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}", "a large painting in the style of {}",
]
DIFFUSERS_FILES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")  # one per text encoder
KOHYA_KEYS = {1: ("emb_params",), 2: ("clip_l", "clip_g")}  # by number of text encoders


def placeholder_tokens(cfg) -> list[str]:
    """"<tok>", "<tok>_1", ...: the names diffusers' loader gives the extra vectors too."""
    return [cfg.placeholder_token] + [f"{cfg.placeholder_token}_{i}" for i in range(1, cfg.num_vectors)]


def prepare(comps, cfg) -> list[dict]:
    """Add the tokens, start them as the initializer, and make the embedding matrix the only trained weight."""
    comps.unet.requires_grad_(False)
    comps.vae.requires_grad_(False)
    tokens = placeholder_tokens(cfg)
    groups = []
    for name, tok, te in zip(comps.family.text_encoder_names, comps.tokenizers, comps.text_encoders):
        init = tok.encode(cfg.initializer_token, add_special_tokens=False)
        if len(init) != 1:
            raise ConfigError(f"initializer_token = {cfg.initializer_token!r} is {len(init)} tokens for {name}'s "
                              "tokenizer; it must be one existing word (e.g. \"toy\", \"dog\", \"style\")")
        if tok.add_tokens(tokens) != len(tokens):
            raise ConfigError(f"placeholder_token = {cfg.placeholder_token!r} is already a token of {name}'s "
                              "tokenizer; choose a new one, e.g. \"<my-concept>\"")
        ids = tok.convert_tokens_to_ids(tokens)
        te.resize_token_embeddings(len(tok), mean_resizing=False)
        te.requires_grad_(False)
        weight = te.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = weight[init[0]].clone()
        weight.requires_grad_(True)
        keep = torch.ones(weight.shape[0], dtype=torch.bool)
        keep[ids] = False
        # what after_optimizer_step puts back: every row but the new ones, exactly as loaded
        te._ti_rows = {"ids": ids, "keep": keep, "original": weight.detach().float().clone()}
        _keep_output_dtype(te.get_input_embeddings(), weight.dtype)
        groups.append({"params": trainable_params(te), "lr": cfg.learning_rate, "name": name})
    return groups


def _keep_output_dtype(embedding: torch.nn.Module, dtype: torch.dtype) -> None:
    """The embedding's output in the encoder's own dtype once its matrix trains in float32.

    Without this a bf16/fp16 encoder gets float32 hidden states (fp32 token rows + bf16 positions), and CPU's
    layer norm refuses a float32 input with bf16 weights ("mixed dtype (CPU)"); CUDA's autocast upcast both."""
    if dtype != torch.float32:
        embedding.register_forward_hook(lambda module, args, out: out.to(dtype))


def trained_modules(comps, cfg) -> dict[str, torch.nn.Module]:
    return dict(zip(comps.family.text_encoder_names, comps.text_encoders))


@torch.no_grad()
def after_optimizer_step(modules: dict[str, torch.nn.Module]) -> None:
    """Every embedding row but the new tokens' back to its loaded value (as diffusers' script does)."""
    for te in modules.values():
        rows = te._ti_rows
        weight = te.get_input_embeddings().weight
        if rows["original"].device != weight.device:
            rows["original"] = rows["original"].to(weight.device)
            rows["keep"] = rows["keep"].to(weight.device)
        weight[rows["keep"]] = rows["original"][rows["keep"]].to(weight.dtype)


def compute_loss(batch, comps, unet, encode_text, cfg, device, weight_dtype, prediction_type, alphas_cumprod, gen,
                 *rest):
    """objective.compute_loss with each caption a template naming the tokens (drawn from the step's seed)."""
    pick = random.Random(gen.initial_seed() ^ 0x7E3B)
    text = " ".join(placeholder_tokens(cfg))
    templates = STYLE_TEMPLATES if cfg.learnable_property == "style" else OBJECT_TEMPLATES
    captions = [pick.choice(templates).format(text) for _ in batch["captions"]]
    return objective.compute_loss({**batch, "captions": captions}, comps, unet, encode_text, cfg, device,
                                  weight_dtype, prediction_type, alphas_cumprod, gen, *rest)


def learned_vectors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """text encoder name -> (num_vectors, hidden) float32 vectors of the new tokens."""
    return {name: te.get_input_embeddings().weight[te._ti_rows["ids"]].detach().float().cpu().contiguous()
            for name, te in modules.items()}


def state_dicts(modules):
    return {name: {"embeddings": v} for name, v in learned_vectors(modules).items()}


@torch.no_grad()
def load_state(modules, state) -> None:
    for name, te in modules.items():
        weight = te.get_input_embeddings().weight
        weight[te._ti_rows["ids"]] = state[name]["embeddings"].to(weight.device, weight.dtype)


def output_path(run_dir: Path, cfg) -> Path:
    return run_dir / f"{cfg.adaptor_name}.safetensors"


def write_outputs(folder: Path, cfg, comps, modules: dict, stats: dict) -> dict[str, str]:
    vectors = list(learned_vectors(modules).values())
    meta = {"modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": comps.family.modelspec_architecture(comps, "textual-inversion"),
            "modelspec.title": cfg.adaptor_name, "modelspec.trigger_phrase": cfg.placeholder_token,
            "ss_initializer_token": cfg.initializer_token, "ss_num_vectors": str(cfg.num_vectors),
            "ss_steps": str(stats.get("step", 0)), "ss_sd_model_name": comps.source.name}
    kohya = Path(folder) / f"{cfg.adaptor_name}.safetensors"
    save_safetensors(dict(zip(KOHYA_KEYS[len(vectors)], vectors)), kohya, meta)
    out = {"kohya": str(kohya)}
    for file, v in zip(DIFFUSERS_FILES, vectors):
        path = Path(folder) / "diffusers" / file
        save_safetensors({cfg.placeholder_token: v}, path, meta)
        out.setdefault("diffusers", str(path))
    return out


def load_into_pipeline(pipe, run_dir: Path, cfg, scale: float = 1.0) -> None:
    """The learned token(s) into every text encoder of a loaded base pipeline. `scale` does not apply: an
    embedding has no strength (weight the token in the prompt instead)."""
    folder = Path(run_dir) / "diffusers"
    names = [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    for name, file in zip(names, DIFFUSERS_FILES):
        (vectors,) = load_file(str(folder / file)).values()
        pipe.load_textual_inversion(vectors, token=cfg.placeholder_token, text_encoder=getattr(pipe, name),
                                    tokenizer=getattr(pipe, name.replace("text_encoder", "tokenizer")))


def model_card(cfg, comps, stats: dict, outputs: dict[str, str], samples: list[str]) -> str:
    fam = comps.family
    two = len(comps.text_encoders) == 2
    lines = [
        f"# {cfg.adaptor_name}",
        "",
        f"A textual inversion embedding for **{comps.source.name}** ({fam.label}), trained with Adaptor Studio.",
        "",
        f"- Token: `{cfg.placeholder_token}` ({cfg.num_vectors} vector{'s' if cfg.num_vectors > 1 else ''}, "
        f"started from `{cfg.initializer_token}`), learned as {'an' if cfg.learnable_property == 'object' else 'a'} "
        f"{cfg.learnable_property}",
        f"- Steps: {stats.get('step')} ({stats.get('epoch')} epochs) on {stats.get('num_train_images')} images, "
        f"learning rate {cfg.learning_rate:g}, batch {cfg.train_batch_size} x {cfg.gradient_accumulation_steps}, "
        f"seed {cfg.seed}",
        "",
        "## Files",
        f"- `{cfg.adaptor_name}.safetensors`: for AUTOMATIC1111 and ComfyUI (`embeddings/`), keys "
        f"{' and '.join(KOHYA_KEYS[2 if two else 1])}.",
        "- `diffusers/learned_embeds.safetensors`" + (" and `learned_embeds_2.safetensors` (second encoder)"
                                                      if two else "") + ": diffusers format.",
    ]
    if two:
        usage = [f"pipe = {fam.pipeline_class.__name__}.from_pretrained(BASE_MODEL)",
                 f"pipe.load_textual_inversion(\"{outputs.get('run_dir', '.')}/diffusers/learned_embeds.safetensors\", "
                 f"token=\"{cfg.placeholder_token}\", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)",
                 f"pipe.load_textual_inversion(\"{outputs.get('run_dir', '.')}/diffusers/learned_embeds_2.safetensors\", "
                 f"token=\"{cfg.placeholder_token}\", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)"]
    else:
        usage = [f"pipe = {fam.pipeline_class.__name__}.from_pretrained(BASE_MODEL)",
                 f"pipe.load_textual_inversion(\"{outputs.get('run_dir', '.')}/diffusers/learned_embeds.safetensors\")"]
    prompt = cfg.validation_prompt or f"a photo of {cfg.placeholder_token}"
    return finish_card(lines, usage + [f"image = pipe(\"{prompt}\").images[0]"], samples)
