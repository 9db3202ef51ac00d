"""Captioners that write a sentence with transformers' generate(): BLIP, BLIP-2, GIT and Florence-2.

Weights are loaded from safetensors only (use_safetensors=True): a .bin checkpoint is a pickle and
could run code when loaded, so a folder or hub repo without safetensors is refused with a message.
Every load problem (missing folder, offline hub id, no safetensors) becomes a CaptionError.
"""
from __future__ import annotations

import gc
import re
from pathlib import Path

from PIL import Image

from .base import hub_source, is_local_model, pick_device
from .options import CaptionError, CaptionOptions

GENERATIVE = ("blip", "blip2", "git", "florence2")
_FIX = "give a local folder with model.safetensors (and the processor files), or check the hub id / network"


def resolve_model(model_id: str) -> str:
    """The local folder (checked) or the hub id to hand to from_pretrained."""
    path = Path(model_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CaptionError(f"model {model_id!r} is a file; give the folder that holds model.safetensors "
                               "and the processor files")
        if not any(path.glob("*.safetensors")):
            found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise CaptionError(f"model folder {model_id!r} has no .safetensors weights (found: {found}); "
                               "only safetensors are loaded (a .bin checkpoint is a pickle that could run "
                               "code) - convert it to model.safetensors or use a hub id that has them")
        return str(path)
    if is_local_model(model_id):
        raise CaptionError(f"model folder {model_id!r} does not exist; {_FIX}")
    hub_source(model_id)
    return model_id


class GenerativeCaptioner:
    """One caption per image from a BLIP / BLIP-2 / GIT / Florence-2 model (options.captioner)."""

    def __init__(self, options: CaptionOptions):
        if options.captioner not in GENERATIVE:
            raise CaptionError(f"captioner {options.captioner!r} is not a generative captioner "
                               f"({', '.join(GENERATIVE)})")
        import torch

        self.options = options
        self.kind = options.captioner
        self.device = pick_device(options.device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise CaptionError("device = cuda but torch sees no GPU; use device auto or cpu")
        # fp16 halves GPU memory and is what these checkpoints are usually run in; CPU needs fp32.
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.model_id = options.model_id
        self.notes: list[str] = []
        source = resolve_model(self.model_id)
        self.processor, self.model = self._load(source)
        self.max_new_tokens, self.min_new_tokens = self._lengths()

    def _load(self, source: str):
        import transformers as tf

        remote = bool(self.options.trust_remote_code)
        model_class = {
            "blip": tf.BlipForConditionalGeneration,
            "blip2": tf.Blip2ForConditionalGeneration,
            "git": tf.AutoModelForCausalLM,
            # old microsoft/Florence-2-* repos ship their own code under AutoModelForCausalLM
            "florence2": tf.AutoModelForCausalLM if remote else tf.Florence2ForConditionalGeneration,
        }[self.kind]
        what = f"{self.kind} model {self.model_id!r}"
        from engine.hub import offline
        # offline, a cached hub id loads from the cache alone (else every file retries the network first)
        local = {"local_files_only": True} if source == self.model_id and offline() else {}
        try:
            processor = tf.AutoProcessor.from_pretrained(source, trust_remote_code=remote, **local)
        except Exception as e:  # noqa: BLE001 - hub, tokenizers and JSON errors alike
            raise CaptionError(f"cannot load the processor of {what}: {_short(e)}; {_FIX}") from e
        try:
            model = model_class.from_pretrained(source, use_safetensors=True, trust_remote_code=remote,
                                                dtype=self.dtype, **local)
        except Exception as e:  # noqa: BLE001 - also safetensors' own error for a truncated file
            raise CaptionError(f"cannot load {what}: {_short(e)}; {_FIX}") from e
        model.to(self.device).eval()
        return processor, model

    def _lengths(self) -> tuple[int, int]:
        """(max, min) new tokens: the options', within the positions the text model has (a BLIP with 40
        positions indexes past its position table at max_length 75), with a note when they are cut."""
        o, config = self.options, self.model.config
        text = getattr(config, "text_config", None) or config
        positions = getattr(text, "max_position_embeddings", None)
        if not positions:
            return o.max_length, o.min_length
        # the prompt takes positions too: BOS (or the decoder start), and BLIP-2's query tokens
        prompt = 1 + (getattr(config, "num_query_tokens", 0) if self.kind == "blip2" else 0)
        limit = max(positions - prompt, 1)
        if o.max_length <= limit:
            return o.max_length, o.min_length
        self.notes.append(f"max_length = {o.max_length} is more than {self.model_id} can write: its text model "
                          f"has {positions} positions, so captions are at most {limit} tokens (max_length = "
                          f"{limit}{', min_length too' if o.min_length > limit else ''})")
        return limit, min(o.min_length, limit)

    def _generate_kwargs(self) -> dict:
        o = self.options
        # new-token limits, so a prompt (Florence task, BLIP-2 query tokens) doesn't eat the budget
        kw = {"min_new_tokens": self.min_new_tokens, "max_new_tokens": self.max_new_tokens}
        if o.nucleus_sampling:
            kw.update(do_sample=True, top_p=o.top_p, num_beams=1)
        else:
            kw.update(do_sample=False, num_beams=o.num_beams)
        return kw

    def caption(self, images: list[Image.Image]) -> list[str]:
        if not images:
            return []
        import torch

        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        if self.kind == "florence2":
            inputs = self.processor(text=[self.options.florence_task] * len(images), images=images,
                                    return_tensors="pt")
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        devices = [torch.device(self.device)] if self.device.startswith("cuda") else []
        # fork_rng: seed sampling for reproducible runs without resetting the caller's global RNG
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.options.seed)
            out = self.model.generate(**inputs, **self._generate_kwargs())
        if self.kind == "blip2":
            # BLIP-2 returns its prompt (query image tokens + BOS) before the new tokens
            prompt = self.model.config.num_query_tokens + 1
            out = out[:, prompt:] if out.shape[1] >= prompt else out
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        if self.kind == "florence2":
            texts = [self._florence_text(t, im) for t, im in zip(texts, images)]
        return [" ".join(t.split()) for t in texts]

    def _florence_text(self, text: str, image: Image.Image) -> str:
        task = self.options.florence_task
        try:
            parsed = self.processor.post_process_generation(text, task=task, image_size=image.size)
        except ValueError:
            # a processor_config without a "pure_text" parse rule; for caption tasks the parse only
            # strips <s></s>, which skip_special_tokens has done already
            return text
        answer = parsed.get(task, text) if isinstance(parsed, dict) else parsed
        return answer if isinstance(answer, str) else text

    def report(self) -> list[str]:
        return list(self.notes)

    def close(self) -> None:
        was_cuda = self.device.startswith("cuda")
        self.model = None
        self.processor = None
        gc.collect()
        if was_cuda:
            import torch

            torch.cuda.empty_cache()


def _short(error: Exception) -> str:
    """The first line of a transformers / hub error, without its long help text."""
    lines = str(error).strip().splitlines()
    text = re.sub(r"\s+", " ", lines[0])[:300] if lines else ""
    return f"{type(error).__name__}: {text}"
