"""Sampler names that ComfyUI, AUTOMATIC1111 and kohya users know, mapped to diffusers schedulers.

(LMS is left out: diffusers' LMS scheduler needs scipy, which nothing else here does.) Each is built from the
base model's own scheduler config (prediction type, timestep spacing, zero-terminal SNR
and the beta schedule carry over), as diffusers' docs map AUTOMATIC1111's samplers.
"""
from __future__ import annotations

import re

DEFAULT = "default"  # the scheduler the base model ships with
# name -> (diffusers class, overrides, AUTOMATIC1111's display name)
SAMPLERS: dict[str, tuple[str, dict, str]] = {
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {}, "PLMS"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "dpm_2": ("KDPM2DiscreteScheduler", {}, "DPM2"),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}, "DPM2 a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM++ 2M"),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
                        "DPM++ 2M Karras"),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, "DPM++ 2M SDE Karras"),
    "dpm_single": ("DPMSolverSinglestepScheduler", {}, "DPM++ 2S"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
}
NAMES = (DEFAULT, *SAMPLERS)
# other spellings: ComfyUI's, kohya's sample_sampler values, AUTOMATIC1111's display names
ALIASES = {
    "euler_ancestral": "euler_a", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2",
    "k_dpm_2_a": "dpm_2_a", "dpmsolverpp": "dpmpp_2m", "dpmsolver": "dpmpp_2m", "dpmsingle": "dpm_single",
    "dpmpp_2s": "dpm_single", "uni_pc": "unipc", "plms": "pndm", "dpm2": "dpm_2", "dpm2_a": "dpm_2_a",
    "dpmpp_2m_karras_sde": "dpmpp_2m_sde_karras",
}


def canonical(name: str) -> str:
    """'DPM++ 2M Karras', 'dpmpp_2m karras', 'k_euler_a', 'Euler a' -> our name; anything else comes back as
    given, for the caller's own error."""
    if not isinstance(name, str):
        return name
    key = re.sub(r"[\s\-]+", "_", name.strip().lower().replace("++", "pp"))
    key = ALIASES.get(key, key)
    return key if key in NAMES else name


def make_scheduler(name: str, base_scheduler):
    """A scheduler for `name` with the base's noise schedule; `default` is the base's own class."""
    import diffusers

    name = canonical(name)
    if name == DEFAULT:
        return type(base_scheduler).from_config(base_scheduler.config)
    cls, overrides, _ = SAMPLERS[name]
    return getattr(diffusers, cls).from_config(base_scheduler.config, **overrides)


def display_name(name: str, scheduler) -> str:
    """AUTOMATIC1111's name for the PNG 'parameters' text, or the scheduler class for `default`."""
    name = canonical(name)
    return SAMPLERS[name][2] if name in SAMPLERS else type(scheduler).__name__
