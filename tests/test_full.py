"""method = "full": every UNet (and text-encoder) weight trained, a whole pipeline written, resumable."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_images, run_training, sets
from test_cli import cli
from engine.builtin import resolve_builtin
from engine.config import validate
from engine.events import read_events
from engine.export import canonical_keys
from engine.objective import compute_loss

pytestmark = pytest.mark.slow

COMMON = dict(pretrained_model_name_or_path="builtin:tiny-sd", method="full", resolution=64, learning_rate=1e-3,
              lr_warmup_steps=0, seed=3, train_batch_size=2, report_to="none")


def _weights(folder):
    return {k: v.float() for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_full_training_writes_a_pipeline_that_loads_and_changed(tmp_path, tiny_data):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "runs"
    held_out = make_images(tmp_path / "held-out", n=2, seed=5)
    run_training(sets(**COMMON, train_data_dir=tiny_data, output_dir=out, adaptor_name="ft", max_train_steps=3,
                      train_text_encoder=True, caption_dropout_rate=0.5, validation_data_dir=held_out))
    losses = [e for e in read_events(out / "ft" / "events.jsonl") if e["type"] == "validation_loss"]
    # a baseline, each epoch (2 steps of 2 images) and the end; full fine-tuning reports one too
    assert [e["step"] for e in losses] == [0, 2, 3] and all(0 < e["loss"] < 10 for e in losses)
    model = out / "ft" / "diffusers"
    base = resolve_builtin("builtin:tiny-sd")
    # the base's sampler is kept, not replaced by the validation sampler
    assert json.loads((model / "model_index.json").read_text())["scheduler"][1] == "PNDMScheduler"
    for part, should_change in (("unet", True), ("text_encoder", True), ("vae", False)):
        # the text encoder is written in the classic `text_model.` layout whatever the base's (test_interop)
        new, old = _weights(model / part), canonical_keys(part, _weights(base / part))
        assert new.keys() == old.keys(), part
        changed = max((new[k] - old[k]).abs().max().item() for k in new)
        assert (changed > 0) == should_change, (part, changed)
    pipe = StableDiffusionPipeline.from_pretrained(model)
    image = pipe("a red square", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    assert (out / "ft" / "README.md").read_text().startswith("# ft\n\nA fully trained")

    # a second fresh run into the same folder is refused, naming what it would replace
    again = cli(*sets(**COMMON, train_data_dir=tiny_data, output_dir=out, adaptor_name="ft", max_train_steps=1))
    assert again.returncode == 2
    assert "model_index.json already exists" in again.stderr


def test_full_training_resumes_onto_the_same_weights(tmp_path, tiny_data):
    out = tmp_path / "runs"
    args = dict(COMMON, train_data_dir=tiny_data, output_dir=out, adaptor_name="r", max_train_steps=4,
                checkpointing_steps=2)
    run_training(sets(**args))
    run = out / "r"
    uninterrupted = _weights(run / "diffusers" / "unet")
    assert (run / "checkpoints" / "checkpoint-2" / "diffusers" / "model_index.json").is_file()
    run_training(sets(**args, resume_from_checkpoint=run / "checkpoints" / "checkpoint-2"))
    events = read_events(run / "events.jsonl")
    assert [e for e in events if e["type"] == "start"][-1]["first_step"] == 2
    assert events[-1]["type"] == "done" and events[-1]["optimizer_steps"] == 4
    resumed = _weights(run / "diffusers" / "unet")
    assert max((uninterrupted[k] - resumed[k]).abs().max().item() for k in resumed) < 1e-5


class _Recorder:
    """Stands in for the text encoder: records the captions it is asked to encode."""

    def __init__(self):
        self.seen = []

    def __call__(self, captions):
        self.seen += list(captions)
        return torch.zeros(len(captions), 77, 32), None


@pytest.mark.parametrize("rate,empty", [(0.0, 0), (1.0, 64)])
def test_caption_dropout_replaces_captions_with_empty_text(rate, empty):
    from engine.families import get_family

    cfg = validate({"pretrained_model_name_or_path": "builtin:tiny-sd", "caption_dropout_rate": rate,
                    "resolution": 64, "train_data_dir": "unused"})
    family, source = get_family(cfg)
    comps = family.load(source, cfg, torch.float32)
    rec = _Recorder()
    batch = {"latents": torch.zeros(64, 4, 8, 8), "captions": ["a red square"] * 64}
    sched = comps.noise_scheduler
    compute_loss(batch, comps, comps.unet, rec, cfg, torch.device("cpu"), torch.float32, "epsilon",
                 sched.alphas_cumprod, torch.Generator().manual_seed(0))
    assert sum(c == "" for c in rec.seen) == empty and len(rec.seen) == 64


def test_half_dropout_drops_about_half():
    from engine.families import get_family

    cfg = validate({"pretrained_model_name_or_path": "builtin:tiny-sd", "caption_dropout_rate": 0.5,
                    "resolution": 64, "train_data_dir": "unused"})
    family, source = get_family(cfg)
    comps = family.load(source, cfg, torch.float32)
    rec = _Recorder()
    batch = {"latents": torch.zeros(200, 4, 8, 8), "captions": ["a red square"] * 200}
    compute_loss(batch, comps, comps.unet, rec, cfg, torch.device("cpu"), torch.float32, "epsilon",
                 comps.noise_scheduler.alphas_cumprod, torch.Generator().manual_seed(0))
    assert 70 < sum(c == "" for c in rec.seen) < 130
