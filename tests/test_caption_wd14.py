"""WD14 tagger against a real (tiny) ONNX model: tests/tiny_tagger.py documents its tags and colour rule."""
import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from engine.caption.options import CaptionError, CaptionOptions
from engine.caption.wd14 import WD14Tagger, _is_kaomoji
from tiny_tagger import COLOURS, EXPECTED, TAGS, expected_probs, make_tiny_tagger


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_tagger(tmp_path_factory.mktemp("tagger"))


def solid(colour, size=(40, 40), mode="RGB"):
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    return Image.new(mode, size, rgb + ((255,) if mode == "RGBA" else ()))


def expected_caption(rgb):
    """The caption at default options for mean colour rgb, from the tiny tagger's formulas."""
    p = expected_probs(rgb)
    general = [t for t in TAGS if t[1] == 0 and p[t[0]] >= 0.35]
    character = [t for t in TAGS if t[1] == 4 and p[t[0]] >= 0.85]
    ranked = sorted(general, key=lambda t: -p[t[0]]) + sorted(character, key=lambda t: -p[t[0]])
    return ", ".join(t[0] if t[0] == "^_^" else t[0].replace("_", " ") for t in ranked)


def tag(model_dir, images, **kw):
    tagger = WD14Tagger(CaptionOptions(captioner="wd14", model=str(model_dir), **kw))
    try:
        return tagger.caption(images)
    finally:
        tagger.close()


def test_exact_tags_per_colour(model_dir):
    names = list(EXPECTED)
    assert [expected_caption(COLOURS[c]) for c in names] == [EXPECTED[c] for c in names]
    assert tag(model_dir, [solid(c) for c in names]) == [EXPECTED[c] for c in names]


def test_general_threshold(model_dir):
    # long_hair is 0.60 on blue, blue_sky 0.9975
    assert expected_probs(COLOURS["blue"])["long_hair"] == pytest.approx(0.6)
    assert tag(model_dir, [solid("blue")], general_threshold=0.59) == ["blue sky, long hair"]
    assert tag(model_dir, [solid("blue")], general_threshold=0.61) == ["blue sky"]
    assert tag(model_dir, [solid("blue")], general_threshold=1.0) == [""]


def test_character_threshold_is_separate(model_dir):
    # hakurei_reimu is 0.70 on red: shown only once character_threshold drops below it
    assert tag(model_dir, [solid("red")], character_threshold=0.69) == ["red, hakurei reimu"]
    assert tag(model_dir, [solid("red")], character_threshold=0.71) == ["red"]
    # a high general threshold leaves characters alone
    assert tag(model_dir, [solid("green")], general_threshold=0.999) == ["hatsune miku"]
    assert tag(model_dir, [solid("green")], character_threshold=0.999) == ["green"]


@pytest.mark.parametrize("spelling", ["long_hair", "long hair", "  long   hair "])
def test_undesired_tags_both_spellings(model_dir, spelling):
    assert tag(model_dir, [solid("blue")], undesired_tags=f"{spelling}, nothing_here") == ["blue sky"]


def test_undesired_without_replacing_underscores(model_dir):
    out = tag(model_dir, [solid("blue"), solid("white")], undesired_tags="blue sky,^_^", replace_underscores=False)
    assert out == ["long_hair", "white_background"]


def test_replace_underscores_keeps_kaomoji(model_dir):
    assert tag(model_dir, [solid("white"), solid("green")], replace_underscores=False) == [
        "white_background, ^_^", "green, hatsune_miku"]
    assert tag(model_dir, [solid("white")], replace_underscores=True) == ["white background, ^_^"]


def test_kaomoji_rule():
    for face in ["^_^", ">_<", "o_o", "0_0", "(o)_(o)", "+_+", "=_=", "<o>_<o>", "<|>_<|>", "|_|", "._.",
                 "u_u", "@_@", "x_x", "3_3", ">_o", "-_-", "t_t", "||_||"]:
        assert _is_kaomoji(face), face
    for word in ["long_hair", "blue_sky", "3d_background", "a_b_c_d_e", "hatsune_miku", "x_x_x_x_x", "no_humans"]:
        assert not _is_kaomoji(word), word


def test_character_tags_first(model_dir):
    assert tag(model_dir, [solid("green")]) == ["green, hatsune miku"]
    assert tag(model_dir, [solid("green")], character_tags_first=True) == ["hatsune miku, green"]
    # within a group the most probable tag comes first: red 0.9975 before hakurei_reimu 0.70
    assert tag(model_dir, [solid("red")], character_threshold=0.5, character_tags_first=True) == [
        "hakurei reimu, red"]


def test_rating_tag_first(model_dir):
    out = tag(model_dir, [solid(c) for c in ("red", "green", "black")], use_rating_tags=True)
    assert out == ["questionable, red", "general, green, hatsune miku", "general"]
    out = tag(model_dir, [solid("green")], use_rating_tags=True, character_tags_first=True)
    assert out == ["general, hatsune miku, green"]
    assert tag(model_dir, [solid("red")], use_rating_tags=True, undesired_tags="questionable") == ["red"]


def test_tag_separator(model_dir):
    assert tag(model_dir, [solid("blue")], tag_separator=" | ") == ["blue sky | long hair"]
    assert tag(model_dir, [solid("blue")], tag_separator=",") == ["blue sky,long hair"]


def test_batch_equals_one_at_a_time(model_dir):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(3)]
    images[1] = solid("green", (48, 48))
    tagger = WD14Tagger(CaptionOptions(captioner="wd14", model=str(model_dir), general_threshold=0.1))
    batched = tagger.caption(images)
    single = [tagger.caption([im])[0] for im in images]
    assert batched == single and batched[1] == "green, hatsune miku"
    assert tagger.caption([]) == []
    tagger.close()
    with pytest.raises(CaptionError, match="closed"):
        tagger.caption(images)


def test_report_counts_tags_across_calls(model_dir):
    tagger = WD14Tagger(CaptionOptions(captioner="wd14", model=str(model_dir)))
    assert tagger.report() == []
    tagger.caption([solid("blue"), solid("blue"), solid("green")])
    tagger.caption([solid("blue"), solid("white")])
    assert tagger.report() == ["tag frequency: 3 blue sky, 3 long hair, 1 ^_^, 1 green, 1 hatsune miku, "
                               "1 white background"]
    quiet = WD14Tagger(CaptionOptions(captioner="wd14", model=str(model_dir), tag_frequency=False))
    quiet.caption([solid("blue")])
    assert quiet.report() == []


def test_rgba_and_non_square(model_dir):
    # fully transparent pixels become white: a transparent red image tags as white
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    opaque = solid("white", (40, 40), mode="RGBA")
    assert tag(model_dir, [clear, opaque]) == [EXPECTED["white"]] * 2
    # non-square images are padded with white, centred: a 120x40 red strip averages (255, 170, 170)
    sizes = [(120, 40), (40, 120), (7, 200), (500, 500)]
    fractions = [1 / 3, 1 / 3, 7 / 200, 1.0]
    want = [expected_caption((255, 255 * (1 - f), 255 * (1 - f))) for f in fractions]
    assert want == ["white background, red", "white background, red", EXPECTED["white"], "red"]
    assert tag(model_dir, [solid("red", s) for s in sizes]) == want
    assert tag(model_dir, [Image.new("L", (20, 30), 255), Image.new("P", (16, 16))]) == [
        EXPECTED["white"], EXPECTED["black"]]


def test_missing_model_file(model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    (folder / "model.onnx").unlink()
    with pytest.raises(CaptionError, match="model.onnx is missing"):
        tag(folder, [])
    with pytest.raises(CaptionError, match="does not exist"):
        tag(tmp_path / "nowhere", [])


def test_bad_csv(model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    csv_path = folder / "selected_tags.csv"
    csv_path.write_text("tag_id,tag,count\n1,red,5\n")
    with pytest.raises(CaptionError, match=r"selected_tags\.csv has no name or category column"):
        tag(folder, [])
    csv_path.write_text("tag_id,name,category,count\n1,red,zero,5\n")
    with pytest.raises(CaptionError, match=r"selected_tags\.csv row 2: category 'zero'"):
        tag(folder, [])


def test_width_mismatch(model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    rows = list(csv.reader(open(model_dir / "selected_tags.csv")))
    with open(folder / "selected_tags.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows[:-1])
    with pytest.raises(CaptionError, match=r"model\.onnx gives 12 tag scores but .*selected_tags\.csv lists 11"):
        tag(folder, [])


def test_not_an_onnx_file(model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    (folder / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(CaptionError, match=r"model\.onnx is not a model onnxruntime can load"):
        tag(folder, [])


def test_hub_id_offline_names_the_id():
    # conftest sets HF_HUB_OFFLINE=1, so this is the real hf_hub_download failing as it does offline
    with pytest.raises(CaptionError, match=r"'nobody/no-such-tagger'.*local folder holding model\.onnx"):
        tag("nobody/no-such-tagger", [])
