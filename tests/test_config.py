"""The config schema: TOML anywhere-keys, overrides, aliases, and errors that name the key."""
import pytest

from engine.config import (FIELDS, ConfigError, load_config, parse_override, save_config, to_toml_dict,
                           validate)


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_keys_at_top_level_or_in_any_table(tmp_path):
    p = write(tmp_path, """
train_data_dir = "data"
[whatever]
learning_rate = 5e-5
[deeply.nested]
rank = 16
""")
    cfg = load_config(p)
    assert cfg.learning_rate == 5e-5 and cfg.rank == 16 and cfg.train_data_dir == "data"
    assert cfg.resolution == 512  # default filled


def test_unknown_key_names_it_and_the_closest(tmp_path):
    p = write(tmp_path, 'train_data_dir = "d"\n[training]\nlearning_rat = 1e-4\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "learning_rat" in msg and "learning_rate" in msg and "[training]" in msg


@pytest.mark.parametrize("key,value,needle", [
    ("resolution", 4096, "from 64 to 2048"),
    ("resolution", 100, "multiple of 8"),
    ("gradient_accumulation_steps", 33, "from 1 to 32"),
    ("num_train_epochs", 0, "from 1 to 1000"),
    ("lr_scheduler", "cosine_annealing", "one of constant"),
    ("mixed_precision", "fp8", "one of no, fp16, bf16"),
])
def test_out_of_range_names_key_value_and_range(key, value, needle):
    with pytest.raises(ConfigError) as e:
        validate({"train_data_dir": "d", key: value})
    msg = str(e.value)
    assert key in msg and repr(value) in msg and needle in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="learning_rate = 'fast' is not a number"):
        validate({"train_data_dir": "d", "learning_rate": "fast"})
    with pytest.raises(ConfigError, match="rank = 2.5 is not a whole number"):
        validate({"train_data_dir": "d", "rank": 2.5})


def test_zero_is_a_value_not_unset():
    cfg = validate({"train_data_dir": "d", "lr_warmup_steps": 0, "noise_offset": 0.0, "max_grad_norm": 0,
                    "adam_weight_decay": 0})
    assert cfg.lr_warmup_steps == 0 and cfg.max_grad_norm == 0.0 and cfg.adam_weight_decay == 0.0
    out = to_toml_dict(cfg)
    assert out["training"]["lr_warmup_steps"] == 0  # written out, not dropped


def test_exactly_one_data_source():
    with pytest.raises(ConfigError, match="exactly one of train_data_dir"):
        validate({})
    with pytest.raises(ConfigError, match="exactly one of train_data_dir"):
        validate({"train_data_dir": "a", "dataset_name": "b"})


def test_overrides_parse_toml_values_and_aliases(tmp_path):
    p = write(tmp_path, 'train_data_dir = "d"\n')
    cfg = load_config(p, ["learning_rate=5e-5", "center_crop=true", "lora_r=32", "eval_prompt=a red circle",
                          "lora_target_modules=to_q,to_v", "log_to_wandb=false", "eval_steps=3"])
    assert cfg.learning_rate == 5e-5 and cfg.center_crop is True and cfg.rank == 32
    assert cfg.validation_prompt == "a red circle" and cfg.lora_target_modules == ["to_q", "to_v"]
    assert cfg.report_to == "none" and cfg.validation_epochs == 3
    assert parse_override("x=[1, 2]") == ("x", [1, 2])
    # text fields keep what was typed, even when it would read as a TOML number, bool or nan
    cfg = load_config(p, ["adaptor_name=nan", "trigger_word=true", "validation_prompt=1e3", 'adaptor_name="q"'])
    assert cfg.adaptor_name == "q" and cfg.trigger_word == "true" and cfg.validation_prompt == "1e3"
    assert load_config(p, ["adaptor_name=inf"]).adaptor_name == "inf"
    with pytest.raises(ConfigError, match="key=value"):
        load_config(p, ["learning_rate"])
    with pytest.raises(ConfigError, match="--set lerning_rate=1: unknown key 'lerning_rate'.*learning_rate"):
        load_config(p, ["lerning_rate=1"])


def test_key_given_twice_is_an_error(tmp_path):
    p = write(tmp_path, 'train_data_dir = "d"\nrank = 4\n[lora]\nlora_r = 8\n')
    with pytest.raises(ConfigError, match="rank is set twice"):
        load_config(p)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    p = write(tmp_path, "rank = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_adaptor_name_cannot_escape_its_folder():
    for bad in ("../x", "a/b", "..", "c:\\x"):
        with pytest.raises(ConfigError, match="adaptor_name"):
            validate({"train_data_dir": "d", "adaptor_name": bad})


def test_save_then_load_round_trips(tmp_path):
    cfg = validate({"train_data_dir": "d", "learning_rate": 3e-4, "rank": 4, "lora_alpha": 2,
                    "validation_prompt": "x", "seed": 7})
    save_config(cfg, tmp_path / "out.toml")
    again = load_config(tmp_path / "out.toml")
    assert again == cfg
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_schema_names_are_unique_and_have_help():
    names = [f.name for f in FIELDS] + [a for f in FIELDS for a in f.aliases]
    assert len(names) == len(set(names))
    assert all(f.help and f.group for f in FIELDS)


def test_config_pickles_for_dataloader_workers():
    import pickle
    cfg = validate({"train_data_dir": "d", "rank": 12})
    assert pickle.loads(pickle.dumps(cfg)) == cfg
