"""Training methods. Each module answers the same questions for the loop:

- `prepare(comps, cfg) -> param groups`: freeze what stays fixed, make trainable what is trained;
- `trained_modules(comps, cfg) -> {component name: module}`;
- `state_dicts(modules)` / `load_state(modules, state)`: the exact trained weights, for checkpoints;
- `output_path(run_dir, cfg)`: the file or folder whose presence means a run already finished here;
- `write_outputs(folder, cfg, comps, modules, stats) -> {kind: path}`: what a finished run leaves;
- `model_card(cfg, comps, stats, outputs, samples) -> str`.
"""
from __future__ import annotations

from engine.methods import full, lora

METHODS = {"lora": lora, "full": full}


def get_method(name: str):
    return METHODS[name]
