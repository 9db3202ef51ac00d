"""The validation loss: held-out images (validation_split or validation_data_dir), fixed timesteps and noise, so
the same model always scores the same; reported as events and to TensorBoard on its own schedule. Each method
reports one (DreamBooth and textual inversion in test_methods_db_ti, full in test_full)."""
import pytest

from conftest import make_images, run_training, sets
from engine.config import validate
from engine.data import DataError, discover_items
from engine.events import read_events
from engine.sampling.validation_loss import split

BASE = dict(pretrained_model_name_or_path="builtin:tiny-sd", resolution=64, train_batch_size=2, rank=4,
            lora_alpha=4, learning_rate=5e-2, lr_warmup_steps=0, cache_latents=True)


def test_the_split_holds_out_the_same_images_whatever_the_seed(tmp_path):
    data = make_images(tmp_path / "d", n=8)
    cfg = validate({"train_data_dir": str(data), "validation_split": 0.25, "seed": 1})
    items = discover_items(cfg, print)
    train, held = split(items, cfg, print)
    assert len(held) == 2 and len(train) == 6 and {i.key for i in held}.isdisjoint(i.key for i in train)
    again = split(items, cfg.replace(seed=99), print)[1]
    assert [i.key for i in again] == [i.key for i in held]  # the run's seed does not move the split
    other = split(items, cfg.replace(validation_seed=5), print)[1]
    assert [i.key for i in other] != [i.key for i in held] or len(items) < 3
    with pytest.raises(DataError, match="would hold out all 1 training images"):
        one = make_images(tmp_path / "one", n=1)
        c = validate({"train_data_dir": str(one), "validation_split": 0.5})
        split(discover_items(c, print), c, print)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vloss")
    data = make_images(tmp / "d", n=6)
    out = tmp / "runs"
    for name, seed in (("a", 1), ("b", 2)):
        run_training(sets(**BASE, train_data_dir=data, output_dir=out, adaptor_name=name, seed=seed,
                          max_train_steps=6, validation_split=0.34, validation_loss_steps=2,
                          report_to="tensorboard"), launch=False)
    return out


def _losses(run):
    return [(e["step"], e["loss"]) for e in read_events(run / "events.jsonl") if e["type"] == "validation_loss"]


def test_the_loss_is_on_its_own_schedule_and_the_same_model_scores_the_same(runs):
    a, b = _losses(runs / "a"), _losses(runs / "b")
    assert [s for s, _ in a] == [0, 2, 4, 6]  # a baseline, then every validation_loss_steps
    assert a[0][1] == b[0][1]  # the base model, other seeds: fixed timesteps and noise give one number
    assert a[-1][1] != a[0][1]  # the model learned something, and the loss saw it
    start = next(e for e in read_events(runs / "a" / "events.jsonl") if e["type"] == "start")
    assert start["num_images"] == 4  # 2 of 6 held out


def test_the_loss_reaches_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = next((runs / "a" / "logs").rglob("events.out.tfevents*")).parent
    acc = EventAccumulator(str(logs))
    acc.Reload()
    assert "validation_loss" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("validation_loss")] == [0, 2, 4, 6]


@pytest.mark.slow
def test_the_overfitting_bench_plots_the_loss_it_trained_with(tmp_path):
    """bench.validation_overfit at a few steps: one point per validation_loss_steps from step 0, the figures
    read from those points, and the plot written."""
    import json
    import subprocess
    import sys

    from PIL import Image

    from conftest import ROOT

    out = tmp_path / "plot.png"
    proc = subprocess.run([sys.executable, "-m", "bench.validation_overfit", "--out", str(out), "--steps", "4",
                           "--every", "2", "--train-images", "2", "--held-out", "2", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [s for s, _ in r["points"]] == [0, 2, 4]
    losses = [v for _, v in r["points"]]
    assert r["lowest"] == round(min(losses), 5) and r["first"] == round(losses[0], 5) and r["last_step"] == 4
    assert r["lowest"] <= min(r["first"], r["last"]) and r["rise"] >= 0 and r["fall"] >= 0
    assert Image.open(out).size == (720, 420)
