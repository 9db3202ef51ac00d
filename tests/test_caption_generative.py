"""GenerativeCaptioner with real tiny random models (tests/tiny_generative.py): no mocks, no hub."""
import gc
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from engine.caption.generative import GenerativeCaptioner
from engine.caption.options import CaptionError, CaptionOptions
from tiny_generative import make_tiny_blip, make_tiny_blip2, make_tiny_florence2, make_tiny_git

BUILDERS = {"blip": make_tiny_blip, "blip2": make_tiny_blip2, "git": make_tiny_git,
            "florence2": make_tiny_florence2}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each tiny model built once for the module, on first use."""
    root = tmp_path_factory.mktemp("caption-models")
    built = {}

    def get(kind):
        if kind not in built:
            built[kind] = BUILDERS[kind](root / kind)
        return built[kind]

    return get


def images():
    """Three images of different sizes and modes (one greyscale) - the processor resizes them."""
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 60), (64, 64))]
    out.append(Image.fromarray(rng.integers(0, 255, (100, 30), dtype=np.uint8), mode="L"))
    return out


def make(folder, captioner="blip", **options):
    return GenerativeCaptioner(CaptionOptions(captioner=captioner, model=str(folder), device="cpu", **options))


def n_tokens(captioner, text):
    return len(captioner.processor.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_one_caption_per_image(models, kind):
    c = make(models(kind), kind)
    captions = c.caption(images())
    assert len(captions) == 3
    for text in captions:
        assert text and text == " ".join(text.split()), captions
        assert "[" not in text and "<" not in text, f"special token left in {text!r}"
    assert c.caption([]) == []
    assert c.report() == []
    c.close()


def test_beam_search_is_deterministic(models):
    first = make(models("blip"), num_beams=3)
    again = make(models("blip"), num_beams=3)
    assert first.caption(images()) == first.caption(images()) == again.caption(images())


@pytest.mark.parametrize("kind", ["blip", "florence2"])
def test_nucleus_sampling_reproducible_with_seed(models, kind):
    c = make(models(kind), kind, nucleus_sampling=True, top_p=0.9, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = c.caption(images())
    assert torch.equal(state, torch.get_rng_state()), "the caller's global RNG was disturbed"
    assert c.caption(images()) == first
    assert make(models(kind), kind, nucleus_sampling=True, top_p=0.9, seed=7).caption(images()) == first
    other = make(models(kind), kind, nucleus_sampling=True, top_p=0.9, seed=8).caption(images())
    assert other != first  # the seed is what is used


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("sampling", [False, True])
def test_length_limits_count_new_tokens(models, kind, sampling):
    c = make(models(kind), kind, min_length=1, max_length=3, nucleus_sampling=sampling)
    for text in c.caption(images()):
        assert 1 <= n_tokens(c, text) <= 3, text
    # min == max: exactly that many words (the tiny vocabularies are whole words); BLIP-2's 4 query
    # tokens and Florence's task prompt don't count against the budget. BART (Florence-2) forces EOS
    # into the last slot (forced_eos_token_id), so it writes one word fewer.
    c = make(models(kind), kind, min_length=4, max_length=4, nucleus_sampling=sampling)
    expected = 3 if kind == "florence2" else 4
    for text in c.caption(images()):
        assert n_tokens(c, text) == expected, text


@pytest.mark.parametrize("kind", ["blip", "blip2"])
def test_a_length_past_the_models_positions_is_clamped_and_said(tmp_path, kind):
    """The issue's BLIP with 40 positions crashed with IndexError at the default max_length of 75."""
    folder = BUILDERS[kind](tmp_path / kind, positions=40)
    c = make(folder, kind, min_length=75, max_length=75)  # forces the longest caption the model can write
    limit = 39 if kind == "blip" else 35  # BLIP-2's 4 query tokens take positions too
    assert all(n_tokens(c, text) == limit for text in c.caption(images()[:1]))
    assert c.report() == [f"max_length = 75 is more than {folder} can write: its text model has 40 positions, so "
                          f"captions are at most {limit} tokens (max_length = {limit}, min_length too)"]


def test_missing_local_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CaptionError) as e:
        make(missing)
    assert str(missing) in str(e.value) and "does not exist" in str(e.value)


def test_hub_id_offline_is_a_caption_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CaptionError) as e:
        make("nobody-here/no-such-captioner")
    assert "nobody-here/no-such-captioner" in str(e.value) and "hub id" in str(e.value)


def test_bin_only_folder_refused_without_unpickling(models, tmp_path, monkeypatch):
    folder = tmp_path / "bin-only"
    folder.mkdir()
    for name in ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((models("blip") / name).read_bytes())
    torch.save({"weight": torch.zeros(2)}, folder / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on an untrusted checkpoint")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(CaptionError) as e:
        make(folder)
    message = str(e.value)
    assert str(folder) in message and "safetensors" in message and "pytorch_model.bin" in message


def test_file_instead_of_folder(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(CaptionError, match="is a file"):
        make(weights)


def test_folder_with_broken_weights(models, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for p in models("blip").iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CaptionError) as e:
        make(folder)
    assert str(folder) in str(e.value)


def test_not_a_generative_captioner(models):
    with pytest.raises(CaptionError, match="wd14"):
        make(models("blip"), "wd14")


def test_close_drops_the_model(models):
    c = make(models("blip"))
    c.caption(images()[:1])
    ref = weakref.ref(c.model)
    c.close()
    gc.collect()
    assert c.model is None and c.processor is None
    assert ref() is None, "something still holds the model"
    c.close()  # twice is harmless


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_cuda_half_precision(models, kind):
    c = GenerativeCaptioner(CaptionOptions(captioner=kind, model=str(models(kind)), device="auto"))
    assert c.device == "cuda" and c.model.dtype == torch.float16
    assert all(c.caption(images()))
    c.close()
