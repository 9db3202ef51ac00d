"""Push a finished run to the Hugging Face Hub: a model card (base model, trigger word, parameters, samples,
license) and the run's files: the adaptor in both formats (or the whole model of a full run), peft/ folders of
LoHa / LoKr runs, config.toml and the sample images. Checkpoints, logs and events stay home.

`stage` says what would go (and `--out FOLDER` writes it there, to look at or upload later); `upload` needs a
token (--token, HF_TOKEN or `hf auth login`) and the Hub to answer, and says so in one line when either is
missing, before anything is sent.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from engine.tools import ToolError, names

# The base models' own licenses, which their LoRAs and fine-tunes inherit unless the user says otherwise.
LICENSES = {"sd1": "creativeml-openrail-m", "sd2": "openrail++", "sdxl": "openrail++"}
_KEPT_FOLDERS = ("diffusers", "peft", "samples")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _settings(run: Path):
    from engine.config import ConfigError, load_config

    if not (run / "config.toml").is_file():
        raise ToolError(f"{run} is not a run folder (no config.toml)")
    try:
        return load_config(run / "config.toml")
    except ConfigError as e:
        raise ToolError(str(e)) from None


def _family(run: Path, cfg) -> str | None:
    from engine.safetensors_files import NotSafetensors, read_header

    single = run / f"{cfg.adaptor_name}.safetensors"
    try:
        _, meta = read_header(single, "") if single.is_file() else (None, {})
    except NotSafetensors:
        meta = {}
    return names.guess_family(meta or {}, set(), {})


def stage(run: str | Path) -> dict[str, Path]:
    """{path in the repository: local file} of everything a run publishes (README.md is the card, made apart)."""
    run = Path(run).expanduser()
    cfg = _settings(run)
    files = {"config.toml": run / "config.toml"}
    single = run / f"{cfg.adaptor_name}.safetensors"
    if single.is_file():
        files[single.name] = single
    for folder in _KEPT_FOLDERS:
        for f in sorted((run / folder).rglob("*")) if (run / folder).is_dir() else []:
            if f.is_file() and not f.name.startswith(".") and (folder != "samples" or f.suffix == ".png"):
                files[f.relative_to(run).as_posix()] = f
    if not any(k.startswith(("diffusers/", "peft/")) for k in files) and single.name not in files:
        raise ToolError(f"{run} has no finished adaptor yet (no {single.name}, diffusers/ or peft/): has training "
                        "finished?")
    return files


def _widget(run: Path, cfg, files: dict[str, Path]) -> list[dict]:
    """The last sampled step's images with their prompts (events.jsonl), as the Hub's widget gallery."""
    from engine.events import read_events

    events = read_events(run / "events.jsonl") if (run / "events.jsonl").is_file() else []
    samples = [e for e in events if e.get("type") == "sample"]
    last = max((e.get("step", 0) for e in samples), default=None)
    out = []
    for e in samples:
        rel = Path(e["path"]).name
        if e.get("step") == last and f"samples/{rel}" in files:
            out.append({"text": e.get("prompt") or cfg.validation_prompt or "", "output": {"url": f"samples/{rel}"}})
    return out


def card(run: str | Path, repo_id: str, license: str | None = None) -> str:
    """README.md for the Hub: the Hub's metadata block, then the run's own card with paths made the repo's."""
    from huggingface_hub import ModelCardData

    run = Path(run).expanduser()
    cfg = _settings(run)
    files = stage(run)
    family = _family(run, cfg)
    license = license or LICENSES.get(family or "", "other")
    base = str(cfg.pretrained_model_name_or_path)
    full = cfg.method == "full" or (cfg.method == "dreambooth" and getattr(cfg, "dreambooth_full", False))
    kind = "full fine-tune" if full else cfg.method if cfg.method != "lora" else getattr(cfg, "lora_type", "lora")
    tags = ["text-to-image", "diffusers", "adaptor-studio",
            "stable-diffusion-xl" if family == "sdxl" else "stable-diffusion"]
    tags += [] if full else ["lora", "template:sd-lora"]
    meta = ModelCardData(license=license, base_model=base if _HUB_ID.match(base) and not Path(base).exists() else None,
                         library_name="diffusers", tags=tags, instance_prompt=cfg.trigger_word or None,
                         widget=_widget(run, cfg, files) or None)
    readme = run / "README.md"
    own = readme.read_text(encoding="utf-8") if readme.is_file() else f"# {cfg.adaptor_name}\n"
    own = own.replace(f'"{run}/diffusers"', f'"{repo_id}", subfolder="diffusers"').replace(str(run), repo_id)
    if meta.base_model:
        own = own.replace("from_pretrained(BASE_MODEL)", f'from_pretrained("{base}")')
    head, _, rest = own.partition("\n")
    facts = [f"- Base model: `{base}`" + ("" if meta.base_model else " (not on the Hub: give the same base to use it)"),
             f"- Kind: {kind}", f"- License: {license} (the base model's unless the publisher chose another)"]
    if "Trigger word" not in rest:
        facts.append(f"- Trigger word: `{cfg.trigger_word}`" if cfg.trigger_word else "- Trigger word: none")
    if "config.toml" not in rest:
        facts.append("- Training settings: `config.toml` (`python -m engine.train config.toml` trains it again)")
    return f"---\n{meta.to_yaml()}\n---\n\n{head}\n\n" + "\n".join(facts) + "\n" + rest


def write_folder(run: str | Path, out: str | Path, repo_id: str, license: str | None = None) -> Path:
    """The repository as it would be uploaded, in `out` (a new folder, written atomically)."""
    from engine import atomic

    out = Path(out).expanduser()
    if out.exists():
        raise ToolError(f"{out} already exists: give a new folder")
    files, text = stage(run), card(run, repo_id, license)
    tmp = atomic.temp_dir(out.parent, out.name)
    try:
        for rel, src in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        (tmp / "README.md").write_text(text, encoding="utf-8")
        atomic.normal_modes(tmp)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def upload(run: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
           license: str | None = None) -> str:
    """Create (or reuse) `repo_id` and commit the card and files in one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from engine import hub

    if not _HUB_ID.match(repo_id or ""):
        raise ToolError(f"repository {repo_id!r}: give it as owner/name")
    files, text = stage(run), card(run, repo_id, license)
    token = token or get_token()
    if not token:
        raise ToolError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`; nothing was "
                        "uploaded (--out FOLDER writes the repository here instead)")
    why = hub.unreachable_reason()
    if why:
        raise ToolError(f"the Hugging Face Hub ({hub.endpoint()}) cannot be reached ({why}); nothing was uploaded "
                        "(--out FOLDER writes the repository here, to upload later)")
    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=text.encode("utf-8"))]
    ops += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(src)) for rel, src in files.items()]
    api = HfApi(endpoint=hub.endpoint(), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, ops, commit_message=f"Adaptor Studio: {Path(run).name}")
    except HfHubHTTPError as e:
        raise ToolError(f"the Hub refused the upload to {repo_id}: {str(e).splitlines()[0]}") from None
    return info.commit_url
