"""The studio's Gradio app: four tabs over the engine. `build_app(studio)` returns the Blocks."""
from __future__ import annotations

import gradio as gr

from ui.studio import Studio
from ui.styles import PANEL_CSS

CSS = """
.field-error { color: #c0392b; font-weight: 600; margin: 0 0 0.5em 0; }
.field-warning { color: #9a6700; margin: 0 0 0.5em 0; }
/* the flag name, first in a field's info, sits small beside its label (still text: Ctrl-F finds it) */
.schema-field { position: relative; }
.schema-field [data-testid="block-info"] { display: inline-block; max-width: 56%; }
.schema-field .info-text > code:first-child { position: absolute; top: 6px; right: 8px; max-width: 42%;
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-size: 11px; opacity: 0.65;
  background: none; padding: 0; }
/* the Training tab's action bar stays in reach while the form scrolls (overflow: hidden on the container
   would make it the scroll box sticky positions against; clip cuts the same without being one) */
.gradio-container { overflow: clip !important; }
#training-actions { position: sticky; top: 0; z-index: 1000; background: var(--body-background-fill) !important;
  border-bottom: 1px solid var(--border-color-primary); padding-bottom: 6px; max-height: 70vh; overflow-y: auto;
  gap: 2px !important; }
#training-actions .prose:empty, #training-actions .md:empty { display: none; }
#training-actions .action-panel.closed { display: none; }
#training-on, #training-plan, #training-summary, #training-preset-status, #training-start-status { font-size: 0.9em; }
#training-summary ul { margin: 0.2em 0 0.2em 1.2em; }
#training-summary .problem-error { color: #c0392b; }
.form-ready { color: #1e7b34; font-weight: 600; margin: 0; }
""" + PANEL_CSS

# Links in the Training tab's summary open the accordions around their field, then scroll to it and focus it.
STUDIO_JS = """() => {
  if (window.studioShowField) return;
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const appear = async (id) => {  // a closed accordion's content is drawn only once it opens
    for (let i = 0; i < 60; i++) {
      const node = document.getElementById(id);
      if (node) return node;
      await sleep(50);
    }
    return null;
  };
  // path: the ids of the accordions around the field, outermost first
  window.studioShowField = async (name, path) => {
    for (const id of path) {
      const accordion = await appear(id);
      const toggle = accordion && accordion.querySelector(':scope > button.label-wrap');
      if (toggle && !toggle.classList.contains('open')) toggle.click();
    }
    const field = await appear('field-' + name);
    if (!field) return;
    field.scrollIntoView({block: 'center'});
    const input = field.querySelector('input, textarea');
    if (input) input.focus({preventScroll: true});
  };
  document.addEventListener('click', (event) => {
    const link = event.target.closest('a.field-link');
    if (!link) return;
    event.preventDefault();
    window.studioShowField(link.dataset.field, (link.dataset.path || '').split(' ').filter(Boolean));
  });
}"""
TABS = (("Dataset", "dataset"), ("Training", "training"), ("Run", "run"), ("Compare", "compare"),
        ("Utilities", "utilities"))


def build_app(studio: Studio) -> gr.Blocks:
    from ui import compare_tab, dataset_tab, run_tab, training_tab, utilities_tab

    builders = {"dataset": dataset_tab.build, "training": training_tab.build, "run": run_tab.build,
                "compare": compare_tab.build, "utilities": utilities_tab.build}
    with gr.Blocks(title="Adaptor Studio") as demo:
        studio.shared["demo"] = demo  # tabs refresh what a reloaded page would otherwise show stale
        gr.Markdown("# Adaptor Studio", elem_id="title")
        with gr.Tabs(elem_id="tabs") as tabs:
            studio.shared["tabs"] = tabs
            tab_objects = {}
            for label, key in TABS:
                with gr.Tab(label, id=key, elem_id=f"tab-{key}") as tab:
                    tab_objects[key] = tab
                    builders[key](studio)
        refresh, refreshed = studio.shared["compare_refresh"]
        tab_objects["compare"].select(refresh, [], refreshed)  # a run that just finished is there to pick
        run_tab.wire_compare_this(studio, tabs)
        demo.load(None, js=STUDIO_JS)
    return demo
