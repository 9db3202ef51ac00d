"""The studio's Gradio app: four tabs over the engine. `build_app(studio)` returns the Blocks."""
from __future__ import annotations

import gradio as gr

from ui.studio import Studio
from ui.styles import PANEL_CSS

CSS = ".field-error p { color: #c0392b; font-weight: 600; margin: 0 0 0.5em 0; }" + PANEL_CSS
TABS = (("Dataset", "dataset"), ("Training", "training"), ("Run", "run"), ("Compare", "compare"))


def build_app(studio: Studio) -> gr.Blocks:
    from ui import compare_tab, dataset_tab, run_tab, training_tab

    builders = {"dataset": dataset_tab.build, "training": training_tab.build, "run": run_tab.build,
                "compare": compare_tab.build}
    with gr.Blocks(title="Adaptor Studio") as demo:
        gr.Markdown("# Adaptor Studio", elem_id="title")
        with gr.Tabs(elem_id="tabs") as tabs:
            studio.shared["tabs"] = tabs
            tab_objects = {}
            for label, key in TABS:
                with gr.Tab(label, id=key, elem_id=f"tab-{key}") as tab:
                    tab_objects[key] = tab
                    builders[key](studio)
        refresh, run_box = studio.shared["compare_refresh"]
        tab_objects["compare"].select(refresh, [], [run_box])  # a run that just finished is there to pick
        run_tab.wire_compare_this(studio, tabs)
    return demo
