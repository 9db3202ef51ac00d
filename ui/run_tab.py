"""The Run tab: the job queue, and the selected run live (progress and ETA, loss and LR curves, speed, the
device, the validation images as a prompt x step grid, the log tail, errors with their hint) and its files
(the Outputs panel, intermediate adaptors, the TensorBoard command). A one-second timer refreshes it from the
run folders; the jobs themselves run as `accelerate launch` subprocesses.

The pick is the user's: the timer never changes it. Until the user picks a run (or while "Follow new runs" is
ticked), the tab follows the newest run, so a run started from the Training tab shows at once.

elem_ids: run-queue, run-select, run-follow, run-refresh, run-cancel, run-cancel-confirm, run-cancel-yes,
run-cancel-no, run-action-status, run-progress, run-stats, run-device, run-loss-plot, run-lr-plot,
run-smoothing, run-log-scale, run-samples, run-outputs, run-intermediates, run-tracker, run-log, run-error.
"""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from engine.events import format_duration
from engine.jobs import progress
from ui import loss_plot, run_panels
from ui.run_device import device_badge
from ui.studio import Studio

QUEUE_COLUMNS = ["id", "name", "status", "progress", "elapsed"]
VIEW = ("progress", "stats", "device", "loss", "lr", "samples", "error", "outputs", "intermediates", "tracker",
        "log")
NO_RUN = {"progress": "<div id='run-progress-box' data-status='none'>No run selected.</div>"}


def queue_rows(studio: Studio) -> pd.DataFrame:
    rows = []
    for job in studio.queue.jobs():
        p = progress(job)
        done = f"{p.step}/{p.total_steps}" if p.total_steps else "-"
        rows.append([job.id, job.name, job.status, done, format_duration(job.elapsed) if job.started else "-"])
    return pd.DataFrame(rows, columns=QUEUE_COLUMNS)


def _job_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(f"{j.name} ({j.id}, {j.status})", j.id) for j in studio.queue.jobs()]


def progress_html(job, p) -> str:
    total = p.total_steps or 0
    frac = (p.step / total) if total else 0.0
    eta = f" · ETA {format_duration(p.eta_s)}" if job.status == "running" and p.eta_s is not None else ""
    label = f"{job.status} · step {p.step}/{total or '?'}{eta}"
    return (f'<div id="run-progress-box" data-step="{p.step}" data-total="{total}" data-status="{job.status}">'
            f'<progress value="{p.step}" max="{max(total, 1)}" style="width:100%"></progress>'
            f"<div>{html.escape(label)} ({frac:.0%})</div></div>")


def stats_text(job, p) -> str:
    parts = [f"elapsed {format_duration(job.elapsed)}" if job.started else "not started"]
    if p.it_per_s:
        parts.append(f"{p.it_per_s:.2f} it/s")
    if p.peak_memory_mb:
        parts.append(f"peak memory {p.peak_memory_mb:.0f} MB")
    if p.epoch:
        parts.append(f"epoch {p.epoch}")
    if job.attempts and job.attempts > 1:
        parts.append(f"attempt {job.attempts}")
    return " · ".join(parts)


def error_text(job, p) -> str:
    if p.error:
        return f"**Error:** {p.error}" + (f"\n\n**Hint:** {p.hint}" if p.hint else "")
    if job.status == "interrupted":
        return (f"**Interrupted:** {job.reason or 'the process ended before finishing'}. Press Resume to continue "
                "from its last checkpoint.")
    if job.status == "cancelled":
        return "Cancelled."
    return ""


def log_html(text: str) -> str:
    """The log tail in a box that stays scrolled to its bottom (column-reverse anchors the scroll there)."""
    return f'<div class="log-tail"><pre>{html.escape(text) or "(no output yet)"}</pre></div>'


def _find(studio: Studio, job_id: str | None):
    return next((j for j in studio.queue.jobs() if j.id == job_id), None) if job_id else None


def view(studio: Studio, job_id: str | None, smoothing: float = 0.6, log_y: bool = False, p=None) -> dict:
    """Everything the selected run shows, by VIEW name (`p`: its progress, when the caller has read it)."""
    job = _find(studio, job_id)
    if job is None:
        return {name: NO_RUN.get(name, "") for name in VIEW}
    p = p or progress(job)
    settings = run_panels.run_settings(job)
    items = run_panels.intermediates(job, p, settings)
    comparable = settings.get("method") in run_panels.COMPARABLE_METHODS and settings.get("lora_type") == "lora"
    running = job.status == "running"
    return {
        "progress": progress_html(job, p), "stats": stats_text(job, p),
        "device": device_badge(p.device) if running else "",
        "loss": loss_plot.loss_chart(p.losses, p.validation_losses, smoothing, log_y),
        "lr": loss_plot.lr_chart(p.lrs),
        "samples": run_panels.sample_grid([s for s in p.sample_records  # only what the page may link to
                                           if run_panels.servable(studio.runs_dir, job.run_dir, s.path)]),
        "error": error_text(job, p),
        "outputs": run_panels.outputs_html(job, p, studio.runs_dir),
        "intermediates": run_panels.intermediates_html(job, items, studio.runs_dir, comparable),
        "tracker": run_panels.tracker_html(job, settings),
        "log": log_html(p.log_tail),
    }


def _updates(values: dict, sent: dict | None, job_id: str | None) -> tuple[list, dict]:
    """gr.skip() for what the page shows already (a finished run's grid and plots are not re-sent every
    second); `sent` keeps a hash of each output as last sent, with the run it belonged to."""
    sent = sent if sent and sent.get("job") == job_id else {"job": job_id}
    out = []
    for name in VIEW:
        key = hash(values[name])
        out.append(gr.skip() if sent.get(name) == key else values[name])
        sent[name] = key
    return out, sent


def build(studio: Studio) -> None:
    with gr.Row():
        queue_df = gr.Dataframe(queue_rows(studio), headers=QUEUE_COLUMNS, interactive=False, label="Queue",
                                elem_id="run-queue")
    with gr.Row():
        select = gr.Dropdown(_job_choices(studio), value=None, label="Run", elem_id="run-select", scale=3)
        follow = gr.Checkbox(True, label="Follow new runs", elem_id="run-follow", scale=1,
                             info="off once you pick a run yourself")
        refresh_btn = gr.Button("Refresh", elem_id="run-refresh", scale=1)
        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="run-cancel", scale=1)
        resume_btn = gr.Button("Resume", elem_id="run-resume", scale=1)
    with gr.Row(visible=False, elem_id="run-cancel-confirm") as confirm_row:
        confirm_text = gr.Markdown(elem_id="run-cancel-question")
        yes_btn = gr.Button("Yes, cancel it", variant="stop", elem_id="run-cancel-yes", scale=0)
        no_btn = gr.Button("No, keep it running", elem_id="run-cancel-no", scale=0)
    action_status = gr.Markdown("", elem_id="run-action-status")
    progress_box = gr.HTML(NO_RUN["progress"], elem_id="run-progress")
    with gr.Row():
        stats = gr.Markdown(elem_id="run-stats")
        device = gr.HTML(elem_id="run-device")
    with gr.Row():
        loss_box = gr.HTML(elem_id="run-loss-plot")
        lr_box = gr.HTML(elem_id="run-lr-plot")
    with gr.Row():
        smoothing = gr.Slider(0, 0.99, value=0.6, step=0.01, label="Loss smoothing (0: raw)",
                              elem_id="run-smoothing")
        log_y = gr.Checkbox(False, label="Log scale for the loss", elem_id="run-log-scale")
    gr.Markdown("**Validation images** (a row per prompt, a column per step)")
    samples = gr.HTML(elem_id="run-samples")
    error_md = gr.Markdown(elem_id="run-error")
    gr.Markdown("### Outputs")
    outputs_box = gr.HTML(elem_id="run-outputs")
    intermediates_box = gr.HTML(elem_id="run-intermediates", js_on_load=run_panels.INTERMEDIATES_JS)
    tracker = gr.HTML(elem_id="run-tracker")
    gr.Markdown("**Log**")
    log_box = gr.HTML(elem_id="run-log")
    outputs = [progress_box, stats, device, loss_box, lr_box, samples, error_md, outputs_box, intermediates_box,
               tracker, log_box]
    newest_seen, sent = gr.State(None), gr.State(None)

    def tick(job_id, following, known_newest, sent_v, smooth_v, log_v):
        """Refresh what changed. The pick moves only to follow a run queued since the last tick, and only while
        following; otherwise the dropdown gets new choices (a new run, a new status) and keeps its value."""
        choices = _job_choices(studio)
        newest = choices[-1][1] if choices else None
        select_update = gr.skip()
        if following and newest and newest != known_newest and newest != job_id:
            job_id, select_update = newest, gr.update(choices=choices, value=newest)
        elif (sent_v or {}).get("choices") != hash(tuple(choices)):
            select_update = gr.update(choices=choices)
        updates, sent_v = _updates(view(studio, job_id, smooth_v, log_v), sent_v, job_id)
        sent_v["choices"] = hash(tuple(choices))
        rows = queue_rows(studio)
        queue_update = gr.skip() if sent_v.get("queue") == hash(rows.to_csv()) else rows
        sent_v["queue"] = hash(rows.to_csv())
        return [queue_update, select_update, *updates, newest, sent_v]

    def show(job_id, smooth_v, log_v):
        updates, sent_v = _updates(view(studio, job_id, smooth_v, log_v), None, job_id)
        return [*updates, sent_v]

    def follow_again(following):
        jobs = studio.queue.jobs()
        return gr.update(value=jobs[-1].id) if following and jobs else gr.skip()

    def replot(job_id, smooth_v, log_v, sent_v):
        job = _find(studio, job_id)
        if job is None:
            return gr.skip(), sent_v
        p = progress(job)
        chart = loss_plot.loss_chart(p.losses, p.validation_losses, smooth_v, log_v)
        if sent_v and sent_v.get("job") == job_id:
            sent_v["loss"] = hash(chart)
        return chart, sent_v

    def ask_cancel(job_id):
        job = _find(studio, job_id)
        if job is None or job.status not in ("queued", "running"):
            what = "Pick a run first." if job is None else f"{job.name} is {job.status}: nothing to cancel."
            return gr.update(visible=False), "", what
        p = progress(job)
        lost = (" Steps since its last checkpoint are lost (Resume continues from a checkpoint)."
                if job.status == "running" else "")
        question = (f"**Cancel {html.escape(job.name)}** ({job.status}, step {p.step}/{p.total_steps or '?'})?"
                    f"{lost}")
        return gr.update(visible=True), question, ""

    def act(action, job_id):
        if not job_id:
            return "Pick a run first."
        try:
            job = getattr(studio.queue, action)(job_id)
        except (ValueError, KeyError) as e:
            return f"⚠ {e}"
        return f"{action.capitalize()}: {getattr(job, 'name', job_id)}."

    timer = gr.Timer(1.0)
    timer.tick(tick, [select, follow, newest_seen, sent, smoothing, log_y],
               [queue_df, select] + outputs + [newest_seen, sent], show_progress="hidden")
    refresh_btn.click(lambda j, f, s, lg: tick(j, f, None, None, s, lg), [select, follow, smoothing, log_y],
                      [queue_df, select] + outputs + [newest_seen, sent])
    select.change(show, [select, smoothing, log_y], outputs + [sent], show_progress="hidden")
    select.input(lambda: False, [], [follow])  # the user's own pick: new runs no longer take the view away
    follow.input(follow_again, [follow], [select])
    for control in (smoothing, log_y):
        control.change(replot, [select, smoothing, log_y, sent], [loss_box, sent], show_progress="hidden")
    cancel_btn.click(ask_cancel, [select], [confirm_row, confirm_text, action_status])
    yes_btn.click(lambda j: (gr.update(visible=False), act("cancel", j)), [select], [confirm_row, action_status])
    no_btn.click(lambda: (gr.update(visible=False), "Not cancelled."), [], [confirm_row, action_status])
    resume_btn.click(lambda j: act("resume", j), [select], [action_status])
    studio.shared["run_intermediates"] = (intermediates_box, select, action_status)


def wire_compare_this(studio: Studio, tabs) -> None:
    """An intermediate adaptor's "Compare this one": the Compare tab opens with its file and base filled in."""
    box, select, action_status = studio.shared["run_intermediates"]
    pick, pick_outputs = studio.shared["compare_pick"]

    def compare_this(job_id, evt: gr.EventData):
        job = _find(studio, job_id)
        try:
            if job is None:
                raise ValueError("pick a run first")
            path, base, note = run_panels.pick_intermediate(job, progress(job), run_panels.run_settings(job),
                                                            getattr(evt, "_data", None))
        except ValueError as e:
            return [gr.skip()] * (1 + len(pick_outputs)) + [f"⚠ {e}"]
        return [gr.update(selected="compare"), *pick(str(path), base, note), ""]

    box.click(compare_this, [select], [tabs, *pick_outputs, action_status])
