"""What the tabs share: where user data lives, the job queue, the generation worker, and components that
one tab offers another (e.g. the Dataset tab's folder, which the Training tab's train_data_dir follows).

Each tab module has `build(studio: Studio) -> None`, called inside its `gr.Tab(...)` block. Tabs hold no
training logic: they call engine functions, write configs and read run folders.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import paths


@dataclass
class Studio:
    home: Path = field(default_factory=paths.studio_home)
    # what a fresh page opens with (app.py fills these in: builtin:toy, toy-star, presets/toy-lora.toml)
    default_preset: Path | None = None
    default_dataset: Path | None = None
    default_prompts: str = ""  # the Compare tab's prompts, one per line
    queue: Any = None   # engine.jobs.JobQueue
    worker: Any = None  # engine.generate.GenerationWorker, started on first use
    caption_job: Any = None  # engine.caption.job.CaptionJob: the newest auto-caption run (one at a time)
    shared: dict[str, Any] = field(default_factory=dict)  # gradio components tabs offer each other

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"
