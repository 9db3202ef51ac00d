"""What a captioning run is asked to do: the captioner, its model, how captions are written, and each
captioner's own knobs. The CLI (engine/caption/__main__.py) and the Dataset tab build one of these;
`check` turns every bad value into a message that names the option and what to give instead.

Defaults follow kohya_ss where it has the option (BLIP min/max length 5/75, top_p 0.9, WD14 general
threshold 0.35) and the WD14 authors' demo for the character threshold (0.85).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from engine.paths import UnsafePath, caption_extension

CAPTIONERS = ("blip", "blip2", "git", "florence2", "wd14")
MODES = ("overwrite", "skip", "append")
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
DEVICES = ("auto", "cpu", "cuda")

# Hub ids used when --model is not given (real users; every test passes a local folder).
DEFAULT_MODELS = {
    "blip": "Salesforce/blip-image-captioning-large",
    "blip2": "Salesforce/blip2-opt-2.7b",
    "git": "microsoft/git-large-coco",
    "florence2": "florence-community/Florence-2-large",
    "wd14": "SmilingWolf/wd-eva02-large-tagger-v3",
}


HELP = {
    "captioner": "which captioner", "model": "hub id or local folder (default: the captioner's usual model)",
    "mode": "overwrite every caption, skip images that have one, or append new text/tags to it",
    "trigger": "word put first in every caption written", "batch_size": "images per model call",
    "caption_extension": "caption file extension", "device": "where the model runs",
    "trust_remote_code": "let a hub model run its own Python code (off: only models transformers knows)",
    "num_beams": "beam search width", "min_length": "fewest new tokens", "max_length": "most new tokens",
    "nucleus_sampling": "sample with top_p instead of beam search", "top_p": "nucleus sampling top_p",
    "seed": "seed for sampling", "florence_task": "Florence-2 task",
    "general_threshold": "WD14: lowest probability for a general tag",
    "character_threshold": "WD14: lowest probability for a character tag",
    "undesired_tags": "WD14: comma-separated tags never written",
    "replace_underscores": "WD14: long_hair -> long hair", "character_tags_first": "WD14: character tags first",
    "use_rating_tags": "WD14: put the rating tag first", "tag_frequency": "WD14: report tag counts at the end",
    "tag_separator": "WD14: text between tags",
}
CHOICES = {"captioner": CAPTIONERS, "mode": MODES, "device": DEVICES, "florence_task": FLORENCE_TASKS}
# How the Dataset tab groups the options (every field of CaptionOptions is in exactly one group).
GENERAL = ("captioner", "model", "mode", "trigger", "batch_size", "caption_extension", "device",
           "trust_remote_code")
GENERATIVE = ("num_beams", "min_length", "max_length", "nucleus_sampling", "top_p", "seed", "florence_task")
TAGGER = ("general_threshold", "character_threshold", "undesired_tags", "replace_underscores",
          "character_tags_first", "use_rating_tags", "tag_frequency", "tag_separator")


class CaptionError(ValueError):
    """A problem the user can fix (bad option, missing model, unreadable folder); the message says how."""


@dataclass
class CaptionOptions:
    captioner: str = "blip"
    model: str = ""  # hub id or local folder; "" = DEFAULT_MODELS[captioner]
    mode: str = "overwrite"  # overwrite | skip (images that already have a caption) | append
    trigger: str = ""  # put first in every caption written ("trigger, caption"), never twice
    batch_size: int = 4
    caption_extension: str = ".txt"
    device: str = "auto"
    trust_remote_code: bool = False  # never by default: a hub repo's Python would run here
    # BLIP, BLIP-2, GIT, Florence-2 (generate())
    num_beams: int = 3  # beam search width; ignored with nucleus sampling
    min_length: int = 5
    max_length: int = 75
    nucleus_sampling: bool = False  # sample with top_p instead of beam search
    top_p: float = 0.9
    seed: int = 42
    florence_task: str = "<DETAILED_CAPTION>"
    # WD14 tagger (onnxruntime)
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    undesired_tags: str = ""  # comma-separated tags never written
    replace_underscores: bool = True  # "long_hair" -> "long hair" (kaomoji such as ^_^ kept)
    character_tags_first: bool = False
    use_rating_tags: bool = False
    tag_frequency: bool = True  # report how often each tag was written, at the end
    tag_separator: str = ", "

    @property
    def model_id(self) -> str:
        return self.model.strip() or DEFAULT_MODELS[self.captioner]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CaptionOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CaptionError(f"unknown caption option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return check(cls(**values))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise CaptionError(f"{name} = {value!r} is not one of: {', '.join(allowed)}")


def _at_least(name: str, value, low) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low:
        raise CaptionError(f"{name} = {value!r}: give a number >= {low}")


def _unit(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise CaptionError(f"{name} = {value!r}: give a number from 0 to 1")


def check(o: CaptionOptions) -> CaptionOptions:
    """Raise CaptionError naming the first bad option; return the options (caption_extension normalised:
    "txt" -> ".txt") when all are good."""
    _choice("captioner", o.captioner, CAPTIONERS)
    _choice("mode", o.mode, MODES)
    _choice("device", o.device, DEVICES)
    _choice("florence_task", o.florence_task, FLORENCE_TASKS)
    for name, low in (("batch_size", 1), ("num_beams", 1), ("min_length", 0), ("max_length", 1)):
        _at_least(name, getattr(o, name), low)
    if o.min_length > o.max_length:
        raise CaptionError(f"min_length = {o.min_length} is above max_length = {o.max_length}; "
                           "lower min_length or raise max_length")
    for name in ("top_p", "general_threshold", "character_threshold"):
        _unit(name, getattr(o, name))
    try:
        o.caption_extension = caption_extension(o.caption_extension)
    except UnsafePath as e:
        raise CaptionError(f"caption_extension: {e}") from None
    return o


def undesired(o: CaptionOptions) -> set[str]:
    """The undesired tags as the tagger compares them (spaces and underscores alike)."""
    return {" ".join(t.replace("_", " ").split()) for t in o.undesired_tags.split(",") if t.strip()}
