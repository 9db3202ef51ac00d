"""A tiny WD14-format tagger (model.onnx + selected_tags.csv) whose tags follow from an image's colour,
so tests can assert exact captions without a real SmilingWolf model.

The model takes what engine/caption/wd14.py feeds a real tagger (NHWC float32 [N, size, size, 3], BGR,
0..255), averages each channel to r, g, b in 0..1 and gives sigmoid(w . (r, g, b) + c) per tag:

    idx  name              category        logit                          solid colour -> probability
    0    general           9 rating        2 - 6r + 3g + 3b               top rating for every colour but red
    1    sensitive         9 rating        -1                             0.27 always
    2    questionable      9 rating        4r - 4g - 4b                   red 0.982 (top rating for red)
    3    explicit          9 rating        -3                             0.047 always
    4    red               0 general       8r - 4g - 4b - 2               red 0.9975
    5    green             0 general       8g - 4r - 4b - 2               green 0.9975
    6    blue_sky          0 general       8b - 4r - 4g - 2               blue 0.9975
    7    long_hair         0 general       ln 1.5 + 4(b - 1) - 2r - 2g    blue 0.60
    8    white_background  0 general       3(r + g + b) - 6               white 0.953
    9    ^_^               0 general       4(r + g + b) - 10              white 0.881 (a kaomoji)
    10   hatsune_miku      4 character     8g - 4r - 4b - 2               green 0.9975
    11   hakurei_reimu     4 character     ln(7/3) + 2.8473(r - 1) - 2g - 2b   red 0.70 (below 0.85)

Every other (tag, solid colour) pair is <= sigmoid(-2) = 0.12. So at the default thresholds
(general 0.35, character 0.85), replace_underscores on, general tags before character tags:

    red   (255,0,0)     -> "red"                              rating questionable
    green (0,255,0)     -> "green, hatsune miku"              rating general
    blue  (0,0,255)     -> "blue sky, long hair"              rating general
    white (255,255,255) -> "white background, ^_^"            rating general
    black (0,0,0)       -> "" (no tag)                        rating general

`expected_probs(rgb)` gives every tag's probability for mean colour rgb (0..255), computed in numpy.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

# (name, category, (w_r, w_g, w_b), c) in CSV order; categories as in SmilingWolf's selected_tags.csv.
TAGS = [
    ("general", 9, (-6.0, 3.0, 3.0), 2.0),
    ("sensitive", 9, (0.0, 0.0, 0.0), -1.0),
    ("questionable", 9, (4.0, -4.0, -4.0), 0.0),
    ("explicit", 9, (0.0, 0.0, 0.0), -3.0),
    ("red", 0, (8.0, -4.0, -4.0), -2.0),
    ("green", 0, (-4.0, 8.0, -4.0), -2.0),
    ("blue_sky", 0, (-4.0, -4.0, 8.0), -2.0),
    ("long_hair", 0, (-2.0, -2.0, 4.0), math.log(1.5) - 4.0),
    ("white_background", 0, (3.0, 3.0, 3.0), -6.0),
    ("^_^", 0, (4.0, 4.0, 4.0), -10.0),
    ("hatsune_miku", 4, (-4.0, 8.0, -4.0), -2.0),
    ("hakurei_reimu", 4, (2.8473, -2.0, -2.0), math.log(7 / 3) - 2.8473),
]
NAMES = [t[0] for t in TAGS]
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
           "black": (0, 0, 0)}
# Captions at default options (see the table above).
EXPECTED = {"red": "red", "green": "green, hatsune miku", "blue": "blue sky, long hair",
            "white": "white background, ^_^", "black": ""}

_onnx_cache: dict[int, bytes] = {}  # exporting once per size keeps many fixtures fast


def expected_probs(rgb) -> dict[str, float]:
    """Each tag's probability for an image whose mean colour (after padding/resizing) is rgb (0..255)."""
    x = np.asarray(rgb, np.float64) / 255.0
    return {name: float(1 / (1 + np.exp(-(np.dot(w, x) + c)))) for name, _, w, c in TAGS}


def _export(size: int) -> bytes:
    import io
    import warnings

    import torch

    weights = torch.tensor([w for _, _, w, _ in TAGS], dtype=torch.float32)[:, [2, 1, 0]]  # RGB -> BGR columns
    bias = torch.tensor([c for _, _, _, c in TAGS], dtype=torch.float32)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", weights.T.contiguous())
            self.register_buffer("b", bias)

        def forward(self, x):  # x: [N, H, W, 3] BGR 0..255
            means = x.mean(dim=(1, 2)) / 255.0
            return torch.sigmoid(means @ self.w + self.b)

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy; it is also 10x faster
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Tiny().eval(), (torch.zeros(1, size, size, 3),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["predictions_sigmoid"],
                          dynamic_axes={"input": {0: "batch"}, "predictions_sigmoid": {0: "batch"}})
    return buf.getvalue()


def make_tiny_tagger(folder: Path, size: int = 32) -> Path:
    """Write folder/model.onnx (input [batch, size, size, 3]) and folder/selected_tags.csv; return folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if size not in _onnx_cache:
        _onnx_cache[size] = _export(size)
    (folder / "model.onnx").write_bytes(_onnx_cache[size])
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _, _) in enumerate(TAGS):
            out.writerow([9999000 + i, name, category, 1000 - i])
    return folder
