"""WD14 tagger (SmilingWolf wd-v1-4 / wd-*-tagger-v3) run with onnxruntime, as kohya_ss's
tag_images_by_wd14_tagger.py and the SmilingWolf demo run it.

The model is a folder (or hub repo) holding model.onnx and selected_tags.csv (tag_id,name,category,count;
category 9 = rating, 0 = general, 4 = character). Images are composited on white, padded to a square
on white, resized (bicubic) to the model's input size and fed as BGR float32 0..255, NHWC, unnormalised.
"""
from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.images import load_rgb

from .base import hub_source, is_local_model, pick_device
from .options import CaptionError, CaptionOptions, undesired

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
DEFAULT_SIZE = 448  # every published WD14 model; used only when the ONNX input size is dynamic
FREQUENCY_LIMIT = 100  # tags named in the report line; the rest are counted as "N more"

# kohya's list, kept verbatim; _is_kaomoji also catches others of the same shape.
KAOMOJIS = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
            "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}


def _is_kaomoji(tag: str) -> bool:
    """A face such as ^_^ or o_o keeps its underscore: it is in kohya's list, or it is short and has no
    two letters/digits in a row (so no word: 'long_hair', '3d_background' and 'a_b_c_d_e' are not faces)."""
    return tag in KAOMOJIS or ("_" in tag and len(tag) <= 8 and not re.search(r"[^\W_]{2}", tag))


def _clean(tag: str) -> str:
    """The form undesired tags are compared in (underscores as spaces, single spaces)."""
    return " ".join(tag.replace("_", " ").split())


def _fetch(model_id: str) -> tuple[Path, Path]:
    if is_local_model(model_id):
        folder = Path(model_id).expanduser()
        if not folder.is_dir():
            raise CaptionError(f"WD14 model folder {folder} does not exist or is not a folder; "
                               f"give a folder holding {MODEL_FILE} and {TAGS_FILE}")
        files = folder / MODEL_FILE, folder / TAGS_FILE
        for f in files:
            if not f.is_file():
                raise CaptionError(f"{f} is missing: a WD14 model folder needs {MODEL_FILE} and {TAGS_FILE}")
        return files
    # CaptionError at once when offline and not cached
    cached = hub_source(model_id, local=f"a local folder holding {MODEL_FILE} and {TAGS_FILE}") == "cached"
    try:
        from huggingface_hub import hf_hub_download

        from engine.hub import offline
        local = cached and offline()  # the cache alone: no minutes of retries first
        return tuple(Path(hf_hub_download(model_id, name, local_files_only=local)) for name in (MODEL_FILE, TAGS_FILE))
    except Exception as e:  # offline, no such repo, gated, network down: all fixable the same way
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise CaptionError(f"WD14 model {model_id!r} is no local folder and could not be downloaded from the "
                           f"Hugging Face Hub ({type(e).__name__}: {detail}); give a local folder holding "
                           f"{MODEL_FILE} and {TAGS_FILE} instead") from e


def _read_tags(path: Path) -> tuple[list[str], np.ndarray]:
    """Tag names and categories, in the model's output order."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM must not hide tag_id
            reader = csv.DictReader(f)
            missing = [c for c in ("name", "category") if c not in (reader.fieldnames or [])]
            if missing:
                raise CaptionError(f"{path} has no {' or '.join(missing)} column; a WD14 selected_tags.csv "
                                   f"has the columns tag_id,name,category,count")
            rows = [(r["name"], r["category"]) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CaptionError(f"{path} cannot be read as a tag list: {e}") from e
    if not rows:
        raise CaptionError(f"{path} lists no tags")
    try:
        categories = np.array([int(c) for _, c in rows])
    except (TypeError, ValueError):
        bad = next(i for i, (_, c) in enumerate(rows) if not str(c).strip().lstrip("-").isdigit())
        raise CaptionError(f"{path} row {bad + 2}: category {rows[bad][1]!r} is not a number") from None
    return [name for name, _ in rows], categories


class WD14Tagger:
    def __init__(self, options: CaptionOptions):
        import onnxruntime as ort

        self.options = options
        self._undesired = undesired(options)
        self._counts: Counter[str] = Counter()
        model_path, tags_path = _fetch(options.model_id)
        self.tags, self.categories = _read_tags(tags_path)
        self._names = [t if not options.replace_underscores or _is_kaomoji(t) else t.replace("_", " ")
                       for t in self.tags]

        providers = ["CPUExecutionProvider"]
        if pick_device(options.device) == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("onnxruntime offers no CUDAExecutionProvider (install onnxruntime-gpu); "
                            "tagging on the CPU")
        so = ort.SessionOptions()
        so.log_severity_level = 3  # onnxruntime's own warnings are noise to a user
        try:
            self._session = ort.InferenceSession(str(model_path), so, providers=providers)
        except Exception as e:
            raise CaptionError(f"{model_path} is not a model onnxruntime can load: {e}") from e

        inp = self._session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] != 3:
            raise CaptionError(f"{model_path} takes input of shape {shape}; a WD14 tagger takes "
                               f"[batch, height, width, 3] (NHWC)")
        h, w = shape[1], shape[2]
        self.size = h if isinstance(h, int) and h > 0 else w if isinstance(w, int) and w > 0 else DEFAULT_SIZE
        self._input = inp.name
        out = self._session.get_outputs()[0]
        self._output = out.name
        width = out.shape[-1] if out.shape else None
        if isinstance(width, int):
            self._check_width(width, model_path, tags_path)
        self._model_path, self._tags_path = model_path, tags_path

    def _check_width(self, width: int, model_path: Path, tags_path: Path) -> None:
        if width != len(self.tags):
            raise CaptionError(f"{model_path} gives {width} tag scores but {tags_path} lists {len(self.tags)} "
                               f"tags; use the selected_tags.csv that came with this model")

    def _prepare(self, image: Image.Image) -> np.ndarray:
        image = load_rgb(image)  # transparency over white, as the reference tagger does
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        if side != self.size:
            square = square.resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR, as the models were trained

    def _tags_for(self, probs: np.ndarray) -> list[str]:
        o = self.options
        cats = self.categories

        def pick(category: int, threshold: float) -> list[int]:
            idx = np.nonzero((cats == category) & (probs >= threshold))[0]
            return [int(i) for i in idx[np.argsort(-probs[idx], kind="stable")]]

        general, character = pick(GENERAL, o.general_threshold), pick(CHARACTER, o.character_threshold)
        order = character + general if o.character_tags_first else general + character
        if o.use_rating_tags:
            ratings = np.nonzero(cats == RATING)[0]
            if len(ratings):
                order.insert(0, int(ratings[np.argmax(probs[ratings])]))
        return [self._names[i] for i in order if _clean(self.tags[i]) not in self._undesired]

    def caption(self, images: list[Image.Image]) -> list[str]:
        if self._session is None:
            raise CaptionError("the WD14 tagger was closed; load it again")
        if not images:
            return []
        batch = np.ascontiguousarray(np.stack([self._prepare(im) for im in images]))
        probs = self._session.run([self._output], {self._input: batch})[0]
        if probs.shape[-1] != len(self.tags):  # dynamic output width: only checkable now
            self._check_width(probs.shape[-1], self._model_path, self._tags_path)
        out = []
        for row in probs:
            tags = self._tags_for(row.astype(np.float64))
            self._counts.update(tags)
            out.append(self.options.tag_separator.join(tags))
        return out

    def report(self) -> list[str]:
        if not self.options.tag_frequency or not self._counts:
            return []
        ranked = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))
        line = ", ".join(f"{n} {tag}" for tag, n in ranked[:FREQUENCY_LIMIT])
        if len(ranked) > FREQUENCY_LIMIT:
            line += f", ... ({len(ranked) - FREQUENCY_LIMIT} more tags)"
        return [f"tag frequency: {line}"]

    def close(self) -> None:
        self._session = None
