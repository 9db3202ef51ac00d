"""The studio's glue without a browser: the schema form's value conversions and the image editor's mask."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.config import FIELDS, load_config, validate
from engine.paths import PROJECT_ROOT
from ui.compare_tab import _editor_to_files
from ui.schema_form import UNSET, field_for_error, from_widget, to_widget


@pytest.mark.parametrize("preset", sorted((PROJECT_ROOT / "presets").glob("*.toml")), ids=lambda p: p.stem)
def test_every_field_survives_the_form_both_ways(preset):
    cfg = load_config(preset)
    back = {}
    for f in FIELDS:
        shown = to_widget(f, getattr(cfg, f.name))
        if f.optional and getattr(cfg, f.name) is None:
            assert shown in ("", UNSET)  # unset shows as empty, never as 0
        value = from_widget(f, shown)
        if value is not None:
            back[f.name] = value
    assert validate(back) == cfg


def test_an_empty_optional_number_is_unset_and_zero_is_a_value():
    seed = next(f for f in FIELDS if f.name == "seed")
    assert from_widget(seed, "") is None and from_widget(seed, " 0 ") == "0"
    assert validate({"train_data_dir": "x", "seed": from_widget(seed, "0")}).seed == 0


def test_an_optional_switch_can_stay_unset():
    """A checkbox has no "unset": flow_dynamic_shift left to the model must not come back as false (which the
    UNet families refuse as a flow-matching option)."""
    import gradio as gr

    from ui.schema_form import make_widget
    switches = [f for f in FIELDS if f.type is bool and f.optional]
    assert switches
    for f in switches:
        widget = make_widget(f, None)
        assert isinstance(widget, gr.Dropdown) and widget.value == UNSET
        assert from_widget(f, widget.value) is None
        assert from_widget(f, "true") is True and from_widget(f, "false") is False
        assert to_widget(f, False) == "false" and to_widget(f, True) == "true"


def test_a_cross_field_message_lands_on_the_first_field_it_names():
    msg = "cache_text_encoder_outputs = true cannot be used with train_text_encoder = true"
    assert field_for_error(msg) == "cache_text_encoder_outputs"
    assert field_for_error("something else entirely") == ""


def test_the_painted_layer_becomes_a_white_mask(tmp_path):
    background = np.zeros((40, 48, 4), np.uint8)
    background[..., :3] = 90
    background[..., 3] = 255
    layer = np.zeros((40, 48, 4), np.uint8)
    layer[10:20, 5:15] = (255, 0, 0, 255)  # a brush stroke, any colour
    image_path, mask_path = _editor_to_files({"background": background, "layers": [layer], "composite": None},
                                             tmp_path)
    mask = np.asarray(Image.open(mask_path))
    assert Image.open(image_path).size == (48, 40) and np.asarray(Image.open(image_path))[0, 0, 0] == 90
    assert mask[15, 10] == 255 and mask[30, 30] == 0 and (mask == 255).sum() == 100
    with pytest.raises(ValueError, match="upload an image"):
        _editor_to_files({"background": None, "layers": []}, tmp_path)


def test_the_gpus_and_machines_group_and_the_effective_batch_line_follow_the_fields(tmp_path):
    """The Training tab built in-process: the [distributed] fields in their own accordion under the machine's GPUs
    (or a CPU note), and the effective batch line that the form's refresh (every field's change) rewrites."""
    import gradio as gr

    from ui import training_tab
    from ui.run_device import training_gpus
    from ui.studio import Studio

    with gr.Blocks() as demo:
        with gr.Tabs() as tabs, gr.Tab("Training"):
            studio = Studio(home=tmp_path, shared={"tabs": tabs})
            form = training_tab.build(studio)
    assert "distributed" in form.accordions
    assert {"num_processes", "gpu_ids", "num_machines", "machine_rank", "main_process_ip", "main_process_port",
            "accelerate_config_file"} <= set(form.widgets)
    note = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "group-note-distributed").value
    assert ("GPUs on this machine" if training_gpus() else "No CUDA GPU here") in note
    unit = "GPU" if training_gpus() else "process"

    refresh = next(f for f in demo.fns.values() if f.api_name == "refresh_form").fn
    values = {**{n: w.value for n, w in form.widgets.items()}, "train_data_dir": str(tmp_path)}
    assert f"= 1 per {unit} × 1 {unit} × 1 accumulation = **1** image" in refresh(*values.values())[-1]
    values.update(train_batch_size=2, num_processes="2", gradient_accumulation_steps=4)
    assert f"= 2 per {unit} × 2 {unit}{'es' if unit == 'process' else 's'} × 4 accumulation = **16** images" in \
        refresh(*values.values())[-1]
    values.update(num_processes="3", num_machines="2", main_process_ip="10.0.0.1")  # not a multiple: the field says why
    out = refresh(*values.values())
    assert out[-1].startswith("Effective batch: shown once")
    assert "multiple of num_machines" in out[form.names.index("num_processes")]["value"]


def test_compare_draws_with_the_runs_own_sample_steps_and_guidance(tmp_path):
    """Compare's steps and guidance start from the picked run's sample settings (builtin:toy's presets sample
    at guidance 4, not 7.5), so its grid shows what the Run tab's samples showed; a value that names no run
    inside the runs folder reads nothing (and the tab leaves its boxes alone)."""
    from ui.compare_tab import run_sampling

    run = tmp_path / "runs" / "toy-star"
    run.mkdir(parents=True)
    run.joinpath("config.toml").write_text("[validation]\nguidance_scale = 4.0\nnum_inference_steps = 30\n")
    assert run_sampling(tmp_path / "runs", str(run)) == (30, 4.0)
    assert run_sampling(tmp_path / "runs", "toy-star") == (30, 4.0)
    run.joinpath("config.toml").write_text("[output]\nadaptor_name = \"x\"\n")
    assert run_sampling(tmp_path / "runs", "toy-star") == (20, 7.5)  # the schema's defaults
    tmp_path.joinpath("config.toml").write_text("[validation]\nguidance_scale = 9.0\n")
    assert run_sampling(tmp_path / "runs", str(tmp_path)) is None  # outside the runs folder: not read
    assert run_sampling(tmp_path / "runs", "../config.toml") is None
    assert run_sampling(tmp_path / "runs", None) is None


def test_opening_compare_picks_the_newest_run_and_its_sample_settings_in_one_answer(tmp_path):
    """Opening the tab (or Refresh) answers with the newest finished run and its steps and guidance together:
    set by a second, chained event they could arrive after a quick Generate click, and the README's grid was
    drawn at 7.5 where the run sampled at 4."""
    import json

    import gradio as gr

    from ui import compare_tab
    from ui.studio import Studio

    with gr.Blocks(), gr.Tabs() as tabs, gr.Tab("Compare"):
        studio = Studio(home=tmp_path, shared={"tabs": tabs})
        compare_tab.build(studio)
    refresh, outputs = studio.shared["compare_refresh"]
    run = studio.runs_dir / "toy-star"
    run.mkdir(parents=True)
    run.joinpath("config.toml").write_text("[validation]\nguidance_scale = 4.0\nnum_inference_steps = 30\n")
    run.joinpath("events.jsonl").write_text(json.dumps({"type": "done", "time": 0.0}) + "\n")
    answer = refresh()
    assert len(answer) == len(outputs) == 3
    assert answer[0]["value"] == str(run) and answer[1:] == (30, 4.0)
