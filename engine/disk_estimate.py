"""About how much disk a run needs: its checkpoints and its outputs, from the base model's tensor shapes.

The shapes come from the safetensors headers of the model's folder (a built-in, a local folder, a single
file or the Hub cache), so no weights are read; a model not on this machine is sized by its family. The
figure is an estimate for the pre-flight check (engine/preflight.py), deliberately on the high side.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# parameters of the published models, for a base that is not on this machine yet
_FAMILY_PARAMS = {"sd1": (860e6, 123e6), "sd2": (866e6, 340e6), "sdxl": (2.57e9, 817e6)}  # (UNet, text encoders)
# optimizer state per trained parameter, in bytes (fp32 moments; 8-bit Adam keeps two bytes)
_OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "adafactor": 4, "lion": 4}
_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class DiskNeed:
    checkpoint_bytes: int  # one checkpoint
    checkpoints: int  # how many exist at once at most
    output_bytes: int  # the adaptor (or pipeline) files of the finished run

    @property
    def total(self) -> int:
        return self.checkpoint_bytes * self.checkpoints + self.output_bytes


@dataclass
class _Shapes:
    unet: list[tuple[str, tuple]]
    text: list[tuple[str, tuple]]
    total_bytes: int  # every weight file of the model


def model_location(name: str) -> Path | None:
    """The base model's folder or file on this machine, without building or downloading anything."""
    from engine.builtin import SHIPPED, is_builtin
    from engine.paths import cache_root
    if is_builtin(name):
        short = name.split(":", 1)[1]
        folder = SHIPPED.get(short) or cache_root() / "builtin" / short
        return folder if folder.is_dir() else None
    path = Path(name).expanduser()
    if path.exists():
        return path
    if name.count("/") == 1:
        from engine.hub import cache_folder
        return cache_folder(name)
    return None


def _shapes(files: list[Path]) -> list[tuple[str, tuple]]:
    from safetensors import safe_open
    out = []
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                out += [(k, tuple(fh.get_slice(k).get_shape())) for k in fh.keys()]
        except Exception:  # noqa: BLE001 - not a readable safetensors file: loading will say so; size it by family
            return []
    return out


def _read(location: Path) -> _Shapes | None:
    if location.is_file():
        shapes = _shapes([location])
        unet = [(k, s) for k, s in shapes if k.startswith("model.diffusion_model.")]
        text = [(k, s) for k, s in shapes if k.startswith(("cond_stage_model.", "conditioner."))]
        return _Shapes(unet, text, location.stat().st_size) if unet else None
    files = lambda part: sorted((location / part).glob("*.safetensors"))  # noqa: E731
    unet = _shapes(files("unet"))
    if not unet:
        return None
    text = _shapes(files("text_encoder") + files("text_encoder_2"))
    total = sum(p.stat().st_size for p in location.rglob("*.safetensors"))
    return _Shapes(unet, text, total)


def _count(shapes: list[tuple[str, tuple]]) -> int:
    total = 0
    for _, shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _lora_params(shapes: list[tuple[str, tuple]], targets: tuple[str, ...], rank: int,
                 conv_rank: int | None) -> int:
    """rank x (in + out) for each targeted linear layer; conv_rank x (in x k x k + out) for 3x3 convs."""
    n = 0
    for key, shape in shapes:
        if not key.endswith(".weight"):
            continue
        module = key[:-len(".weight")]
        if len(shape) == 2 and any(module.endswith("." + t) for t in targets):
            n += rank * (shape[0] + shape[1])
        elif conv_rank and len(shape) == 4 and shape[2] == 3:
            n += conv_rank * (shape[1] * 9 + shape[0])
    return n


def _family(cfg) -> str:
    if cfg.model_family != "auto":
        return cfg.model_family
    return "sdxl" if "xl" in cfg.pretrained_model_name_or_path.lower() else "sd1"


def trained_params(cfg) -> tuple[int, int]:
    """(trained parameters, bytes of the whole base model) for cfg's method."""
    location = model_location(cfg.pretrained_model_name_or_path)
    shapes = _read(location) if location is not None else None
    text = cfg.train_text_encoder and cfg.method != "textual_inversion"
    full = cfg.method == "full" or (cfg.method == "dreambooth" and cfg.dreambooth_full)
    if shapes is None:  # sized by its family: the published parameter counts
        unet_n, text_n = _FAMILY_PARAMS[_family(cfg)]
        if full:
            return int(unet_n + (text_n if text else 0)), int(4 * (unet_n + text_n) + 4 * 84e6)
        per_target = 1e-4 * cfg.rank * unet_n  # measured on SD 1.5 attention layers, rounded up
        return int(per_target * len(cfg.lora_target_modules) * (2 if text else 1)), int(4 * (unet_n + text_n))
    if cfg.method == "textual_inversion":
        width = max((s[-1] for k, s in shapes.text if k.endswith("token_embedding.weight")), default=1024)
        return cfg.num_vectors * width, shapes.total_bytes
    if full:
        return _count(shapes.unet) + (_count(shapes.text) if text else 0), shapes.total_bytes
    n = _lora_params(shapes.unet, tuple(cfg.lora_target_modules), cfg.rank, cfg.conv_rank)
    if text:
        n += _lora_params(shapes.text, _TEXT_ENCODER_TARGETS, cfg.rank, None)
    return n * (2 if cfg.lora_type == "loha" else 1), shapes.total_bytes


def estimate(cfg, total_steps: int | None) -> DiskNeed:
    """Bytes one checkpoint takes (fp32 weights, optimizer state, the adaptor files it carries), how many
    checkpoints exist at once, and the finished outputs."""
    params, model_bytes = trained_params(cfg)
    full = cfg.method == "full" or (cfg.method == "dreambooth" and cfg.dreambooth_full)
    per_param = 4 + _OPTIMIZER_BYTES.get(cfg.optimizer, 8) + (4 if cfg.use_ema else 0) + (0 if full else 8)
    checkpoints = 0
    if cfg.checkpointing_steps and total_steps:
        checkpoints = total_steps // cfg.checkpointing_steps
        if cfg.checkpoints_total_limit:
            checkpoints = min(checkpoints, cfg.checkpoints_total_limit + 1)  # one more while the oldest goes
    output = 2 * model_bytes if full else 8 * params  # a pipeline folder and a single file; both adaptor formats
    return DiskNeed(params * per_param, checkpoints, output)
