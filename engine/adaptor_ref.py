"""Which adaptor and which base a generation request means: a run folder (its config.toml says the base, trigger
word, method, resolution and clip_skip) or a LoRA .safetensors file (kohya or diffusers layout, checked before
loading). Used by engine.generate (Compare, img2img, inpaint) and the tools."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import FIELD_BY_NAME, ConfigError, flatten, read_toml
from engine.export import DIFFUSERS_WEIGHT_NAME
from engine.gen_worker import GenerationError

_FULL_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")


@dataclass(frozen=True)
class ModelRef:
    """What family.load needs to know about a model (the fields share the training config's names)."""
    pretrained_model_name_or_path: str
    pretrained_vae_model_name_or_path: str | None = None
    revision: str | None = None
    variant: str | None = None
    model_family: str = "auto"
    allow_pickle: bool = False


@dataclass
class Adaptor:
    kind: str  # "lora" (path: a LoRA file), "full" (path: a whole diffusers pipeline folder) or "method"
    # (path: a run folder whose method applies itself: textual inversion, LoHa/LoKr)
    path: Path
    base: ModelRef
    trigger: str
    resolution: int | None = None  # the run's training resolution, when known
    clip_skip: int = 1  # the run's: its images are drawn with the text-encoder layer it trained on


def run_settings(run_dir: Path) -> dict[str, Any]:
    """A run's config.toml with schema defaults filled in (not re-validated: its dataset may be gone)."""
    path = run_dir / "config.toml"
    try:
        raw = flatten(read_toml(path))
    except ConfigError as e:
        raise GenerationError(f"cannot read the run's settings {path}: {e}") from None
    return {f.name: raw.get(f.name, f.default) for f in FIELD_BY_NAME.values()}


def _model_ref(base: str, settings: dict | None, vae: str | None) -> ModelRef:
    """The base as given; the run's VAE, revision, variant and family apply only to the run's own base."""
    if settings is None or base != settings["pretrained_model_name_or_path"]:
        return ModelRef(base, vae)
    s = settings
    return ModelRef(base, vae if vae is not None else s["pretrained_vae_model_name_or_path"], s["revision"],
                    s["variant"], s["model_family"], bool(s["allow_pickle"]))


def _owning_run(file: Path) -> dict | None:
    """The settings of the run folder a LoRA file sits in (`<run>/x.safetensors`, `<run>/diffusers/...`)."""
    for folder in (file.parent, file.parent.parent):
        if (folder / "config.toml").is_file():
            with contextlib.suppress(GenerationError):
                return run_settings(folder)
    return None


def _check_lora_file(path: Path) -> dict[str, str]:
    """The file's metadata, after making sure it is a safetensors LoRA."""
    from engine.safetensors_files import NotSafetensors, read_lora_header
    try:
        keys, meta = read_lora_header(path)
    except NotSafetensors as e:
        raise GenerationError(str(e)) from None
    if not any("lora" in k for k in keys):
        what = ("a full model checkpoint: give it as the base model instead"
                if any(k.startswith(_FULL_CHECKPOINT_PREFIXES) for k in keys) else "not a LoRA (no lora keys)")
        raise GenerationError(f"{path} is {what}")
    return meta


def _run_trigger(s: dict) -> str:
    """What turns the adaptor on in a prompt: the trigger word; a DreamBooth run's instance prompt; a textual
    inversion's token."""
    if s["method"] == "textual_inversion":
        return s["placeholder_token"] or ""
    if s["method"] == "dreambooth":
        return s["instance_prompt"] or ""
    return s["trigger_word"] or ""


def resolve_adaptor(adaptor: str | Path, base: str | None = None, trigger: str | None = None,
                    vae: str | None = None) -> Adaptor:
    path = Path(adaptor).expanduser()
    if not path.exists():
        raise GenerationError(f"adaptor {path} not found: give a run folder (with config.toml) or a LoRA "
                              ".safetensors file")
    if path.is_dir() and not (path / "config.toml").is_file():
        if not (path / DIFFUSERS_WEIGHT_NAME).is_file():
            raise GenerationError(f"{path} is neither a run folder (no config.toml) nor a diffusers LoRA folder "
                                  f"(no {DIFFUSERS_WEIGHT_NAME})")
        path = path / DIFFUSERS_WEIGHT_NAME
    if path.is_dir():
        s = run_settings(path)
        base = base or s["pretrained_model_name_or_path"]
        trig = trigger if trigger is not None else _run_trigger(s)
        if s["method"] == "textual_inversion" or s["lora_type"] != "lora":
            if not (path / "diffusers").is_dir() and not (path / "peft").is_dir():
                raise GenerationError(f"run {path} has no adaptor yet: training has not finished; see its train.log")
            return Adaptor("method", path, _model_ref(base, s, vae), trig, s["resolution"], s["clip_skip"])
        if s["method"] == "full" or (s["method"] == "dreambooth" and s["dreambooth_full"]):
            if not (path / "diffusers" / "model_index.json").is_file():
                raise GenerationError(f"run {path} has no trained model yet (no diffusers/model_index.json): "
                                      "wait for training to finish, or see its train.log")
            return Adaptor("full", path / "diffusers", _model_ref(base, s, vae), trig, s["resolution"], s["clip_skip"])
        files = [path / "diffusers" / DIFFUSERS_WEIGHT_NAME, path / f"{s['adaptor_name']}.safetensors"]
        lora = next((f for f in files if f.is_file()), None)
        if lora is None:
            raise GenerationError(f"run {path} has no adaptor yet (no {files[1].name} or diffusers/"
                                  f"{DIFFUSERS_WEIGHT_NAME}): training has not finished; see its train.log")
        _check_lora_file(lora)
        return Adaptor("lora", lora, _model_ref(base, s, vae), trig, s["resolution"], s["clip_skip"])
    meta = _check_lora_file(path)
    run = _owning_run(path)
    if not base and not run:
        hint = f" (the file says it was trained on {meta['ss_sd_model_name']!r})" if meta.get("ss_sd_model_name") else ""
        raise GenerationError(f"{path} is a bare LoRA file: give the base model it was trained for{hint}")
    if trigger is None:
        trigger = meta.get("modelspec.trigger_phrase") or (run["trigger_word"] if run else "") or ""
    base = base or run["pretrained_model_name_or_path"]
    return Adaptor("lora", path, _model_ref(base, run, vae), trigger, run["resolution"] if run else None,
                   run["clip_skip"] if run else 1)
