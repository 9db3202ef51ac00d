"""Links to files under the studio home, served by Gradio's file route (app.py allows the home and nothing
else), so a big adaptor is never copied into Gradio's cache or hashed to be offered."""
from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote


def file_url(path: Path) -> str:
    """A page-relative URL (works behind a proxy's sub-path); the mtime makes a rewritten file load anew."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0
    return f"gradio_api/file={quote(str(path))}?v={stamp}"


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def download_link(path: Path, text: str | None = None) -> str:
    size = f" ({human_size(path.stat().st_size)})" if path.is_file() else ""
    return (f'<a href="{html.escape(file_url(path))}" download="{html.escape(path.name)}" '
            f'data-path="{html.escape(str(path))}">{html.escape(text or path.name)}</a>{size}')
