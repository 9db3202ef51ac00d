"""Auto-captioning: BLIP, BLIP-2, GIT and Florence-2 (transformers) and a WD14 tagger (onnxruntime).

`load_captioner(options)` gives the Captioner for options.captioner; engine/caption/run.py walks a
dataset folder with it; `python -m engine.caption DIR ...` is the CLI; engine/caption/job.py runs that CLI
as a subprocess for the Dataset tab.
"""
from __future__ import annotations

from .base import Captioner
from .options import CAPTIONERS, DEFAULT_MODELS, MODES, CaptionError, CaptionOptions, check


def load_captioner(options: CaptionOptions) -> Captioner:
    if options.captioner == "wd14":
        from .wd14 import WD14Tagger

        return WD14Tagger(options)
    from .generative import GenerativeCaptioner

    return GenerativeCaptioner(options)


__all__ = ["CAPTIONERS", "DEFAULT_MODELS", "MODES", "CaptionError", "CaptionOptions", "Captioner", "check",
           "load_captioner"]
