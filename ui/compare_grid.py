"""The Compare tab's grid as HTML, filled in as the worker reports: a row per prompt (the prompt written at
its start), a column per model (base | adaptor | adaptor + trigger word) under a header, each cell waiting,
at step n of N, or its image, shown at a readable size (small cells scaled up with crisp pixels).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from ui.files import file_url

SHOWN_PX, MAX_SHOWN_PX = 256, 384  # displayed cell widths: small images scaled up, big ones down


@dataclass
class GridProgress:
    prompts: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    steps: int = 0
    cells: dict[tuple[int, int], dict] = field(default_factory=dict)  # (row, col) -> {"step"} or {"done", "size"}

    def apply(self, event: dict) -> None:
        """One progress event from engine.generate.compare_grid."""
        if "columns" in event:
            self.prompts, self.columns = list(event["prompts"]), list(event["columns"])
            self.steps = int(event.get("steps") or 0)
        elif "cell" in event:
            r, c = (int(x) for x in event["cell"])
            self.cells[(r, c)] = {k: v for k, v in event.items() if k != "cell"}

    @property
    def total(self) -> int:
        return len(self.prompts) * len(self.columns)

    @property
    def done(self) -> int:
        return sum("done" in cell for cell in self.cells.values())

    def status(self) -> str:
        if not self.columns:
            return "Starting the generation worker…"
        return f"Generating: {self.done} of {self.total} cells done…"

    def _cell(self, r: int, c: int) -> str:
        cell = self.cells.get((r, c))
        if cell and "done" in cell:
            w, h = cell.get("size") or (SHOWN_PX, SHOWN_PX)
            shown_w = min(max(w, SHOWN_PX), MAX_SHOWN_PX)
            shown_h = round(h * shown_w / w) if w else shown_w
            crisp = " crisp" if w < SHOWN_PX else ""
            alt = f"{self.columns[c]}: {self.prompts[r]}"
            return (f'<td data-state="done"><img class="cell{crisp}" src="{html.escape(file_url(Path(cell["done"])))}" '
                    f'width="{shown_w}" height="{shown_h}" alt="{html.escape(alt)}"></td>')
        if cell:
            step, steps = int(cell.get("step", 0)), int(cell.get("steps") or self.steps or 1)
            return (f'<td data-state="running"><div class="cell-wait"><progress value="{step}" max="{steps}">'
                    f'</progress><span>step {step}/{steps}</span></div></td>')
        return '<td data-state="waiting"><div class="cell-wait"><span>waiting</span></div></td>'

    def html(self) -> str:
        if not self.columns:
            return f'<div class="compare-grid" data-done="0" data-total="0"><p>{self.status()}</p></div>'
        head = "".join(f"<th>{html.escape(col)}</th>" for col in self.columns)
        body = "".join(f'<tr><th class="prompt" scope="row">{html.escape(prompt)}</th>'
                       f'{"".join(self._cell(r, c) for c in range(len(self.columns)))}</tr>'
                       for r, prompt in enumerate(self.prompts))
        return (f'<div class="compare-grid" data-done="{self.done}" data-total="{self.total}"><table>'
                f'<thead><tr><th>prompt</th>{head}</tr></thead><tbody>{body}</tbody></table></div>')
