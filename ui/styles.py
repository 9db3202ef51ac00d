"""CSS for the Run and Compare tabs' HTML panels (charts, image grids, the log tail, badges)."""

PANEL_CSS = """
.studio-chart { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 4px; }
.studio-chart .chart-title { font-weight: 600; text-align: center; }
.studio-chart .chart-empty { color: var(--body-text-color-subdued); text-align: center; padding: 3em 0; }
.sample-grid, .compare-grid { overflow-x: auto; }
.sample-grid table, .compare-grid table { border-collapse: collapse; }
.sample-grid th, .sample-grid td, .compare-grid th, .compare-grid td {
  border: 1px solid var(--border-color-primary); padding: 4px; vertical-align: middle; text-align: center; }
.sample-grid th.prompt, .compare-grid th.prompt { text-align: left; max-width: 16em; font-weight: 500; }
.sample-grid td img { width: 96px; height: auto; image-rendering: pixelated; margin: 1px; }
.compare-grid img.crisp { image-rendering: pixelated; }
.compare-grid .cell-wait { width: 256px; height: 256px; display: flex; flex-direction: column;
  align-items: center; justify-content: center; gap: 6px; background: var(--background-fill-secondary); }
.log-tail { max-height: 22em; overflow-y: auto; display: flex; flex-direction: column-reverse;
  border: 1px solid var(--border-color-primary); border-radius: 6px; background: var(--background-fill-secondary); }
.log-tail pre { margin: 0; padding: 6px 8px; font-size: 12px; white-space: pre-wrap; }
.device-badge { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; }
.device-badge.cpu { background: #fff3bf; color: #5c3c00; }
.device-badge.gpu { background: #d3f9d8; color: #1b4d2a; }
.run-intermediates table { border-collapse: collapse; }
.run-intermediates td { padding: 2px 10px; border-bottom: 1px solid var(--border-color-primary); }
.run-intermediates button.compare-this { padding: 2px 10px; border-radius: 6px; font-size: var(--text-sm);
  border: 1px solid var(--button-secondary-border-color); background: var(--button-secondary-background-fill); }
"""
