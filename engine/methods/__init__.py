"""Training methods. Each module answers the same questions for the loop:

- `prepare(comps, cfg) -> param groups`: freeze what stays fixed, make trainable what is trained;
- `trained_modules(comps, cfg) -> {component name: module}`;
- `state_dicts(modules)` / `load_state(modules, state)`: the exact trained weights, for checkpoints;
- `output_path(run_dir, cfg)`: the file or folder whose presence means a run already finished here;
- `write_outputs(folder, cfg, comps, modules, stats) -> {kind: path}`: what a finished run leaves;
- `model_card(cfg, comps, stats, outputs, samples) -> str`;
- `load_into_pipeline(pipe, run_dir, cfg, scale=1.0)`: apply a finished run's output to a loaded base pipeline
  (validation images, comparisons).

Optional hooks (the loop uses them where a method has them):
- `discover_items(cfg, comps, warn, device, accelerator, say) -> items`: the training images (DreamBooth:
  instance captions, then class images);
- `batch_sampler(cfg, dataset) -> sampler or None`: how examples are batched (DreamBooth prior preservation);
- `compute_loss(batch, comps, unet, encode_text, cfg, ...)`: in place of objective.compute_loss; may return
  (loss, {name: detached tensor}) to report parts of the loss in step events;
- `after_optimizer_step(modules)`: e.g. textual inversion restores the embedding rows it does not train.
"""
from __future__ import annotations

from engine.methods import dreambooth, full, lora, textual_inversion

METHODS = {"lora": lora, "full": full, "dreambooth": dreambooth, "textual_inversion": textual_inversion}


def get_method(name: str):
    return METHODS[name]
