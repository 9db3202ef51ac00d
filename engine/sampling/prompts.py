"""Sample prompts, one per line, with sd-scripts' per-line options (its `--sample_prompts` file syntax):

    a red star on a white background --n blurry, lowres --w 512 --h 768 --s 28 --d 42 --l 7.5 --ss euler_a

--n negative prompt, --w/--h size, --s steps, --d seed, --l guidance (CFG) scale, --ss sampler. Empty lines and
lines starting with # are skipped. Anything a line leaves out comes from the config (resolution,
num_inference_steps, validation_seed, guidance_scale, sample_sampler).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from engine.sampling import samplers

_OPTION = re.compile(r"^(n|w|h|s|d|l|ss)(?:\s+(.*))?$", re.S)
_NAMES = {"n": "negative prompt", "w": "width", "h": "height", "s": "steps", "d": "seed", "l": "guidance scale",
          "ss": "sampler"}


@dataclass(frozen=True)
class SamplePrompt:
    index: int  # which prompt (0-based, comments and blank lines not counted)
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None


def parse(text: str | None) -> list[SamplePrompt]:
    """The prompts of a multi-line text; ValueError names the line and the option for a bad value."""
    out: list[SamplePrompt] = []
    for line_no, line in enumerate((text or "").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        prompt, *options = re.split(r"\s+--", " " + line)
        fields: dict = {}
        for option in options:
            m = _OPTION.match(option.strip())
            if not m:
                flag = option.split()[0] if option.split() else ""
                raise ValueError(f"line {line_no}: unknown option --{flag} (use --n, --w, --h, --s, --d, --l, --ss)")
            flag, value = m.group(1), (m.group(2) or "").strip()
            if flag != "n" and not value:
                raise ValueError(f"line {line_no}: --{flag} needs a value ({_NAMES[flag]})")
            try:
                if flag == "n":
                    fields["negative_prompt"] = value
                elif flag in ("w", "h"):
                    fields["width" if flag == "w" else "height"] = _int(value, 64, 4096, 8)
                elif flag == "s":
                    fields["steps"] = _int(value, 1, 200)
                elif flag == "d":
                    fields["seed"] = _int(value, 0, 2**63 - 1)
                elif flag == "l":
                    fields["guidance_scale"] = _float(value, 0.0, 50.0)
                else:
                    name = samplers.canonical(value)
                    if name not in samplers.NAMES:
                        raise ValueError(f"{value!r} is not a sampler; use one of {', '.join(samplers.NAMES)}")
                    fields["sampler"] = name
            except ValueError as e:
                raise ValueError(f"line {line_no}: --{flag} ({_NAMES[flag]}): {e}") from None
        if not prompt.strip():
            raise ValueError(f"line {line_no}: the prompt is empty (options come after the prompt)")
        out.append(SamplePrompt(index=len(out), prompt=prompt.strip(), **fields))
    return out


def _int(text: str, lo: int, hi: int, multiple: int = 1) -> int:
    if not re.fullmatch(r"\d+", text):
        raise ValueError(f"{text!r} is not a whole number")
    value = int(text)
    if not lo <= value <= hi or value % multiple:
        extra = f", a multiple of {multiple}" if multiple > 1 else ""
        raise ValueError(f"{value} must be from {lo} to {hi}{extra}")
    return value


def _float(text: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not lo <= value <= hi:
        raise ValueError(f"{value:g} must be from {lo:g} to {hi:g}")
    return value


def resolved(p: SamplePrompt, cfg) -> SamplePrompt:
    """Every setting filled in: the line's own, else the config's; the trigger word put first if missing."""
    prompt = p.prompt
    if cfg.trigger_word and cfg.trigger_word not in prompt:
        prompt = f"{cfg.trigger_word}, {prompt}"
    return replace(p, prompt=prompt, width=p.width or cfg.resolution, height=p.height or cfg.resolution,
                   steps=p.steps or cfg.num_inference_steps,
                   seed=cfg.validation_seed if p.seed is None else p.seed,
                   guidance_scale=cfg.guidance_scale if p.guidance_scale is None else p.guidance_scale,
                   sampler=p.sampler or cfg.sample_sampler)
