"""The Run tab: the job queue, and the selected run live (progress and ETA, loss and LR curves, speed and
memory, the log tail, validation images as they appear, errors with their hint). A one-second timer
refreshes it from the run folders; the jobs themselves run as `accelerate launch` subprocesses.

elem_ids: run-queue, run-select, run-refresh, run-cancel, run-resume, run-action-status, run-progress,
run-stats, run-loss-plot, run-lr-plot, run-samples, run-log, run-error.
"""
from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from engine.events import format_duration
from engine.jobs import progress
from ui.studio import Studio

QUEUE_COLUMNS = ["id", "name", "status", "progress", "elapsed"]


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


def curve(points, y: str) -> pd.DataFrame:
    return pd.DataFrame(points or [], columns=["step", y])


def error_text(job, p) -> str:
    if p.error:
        return f"**Error:** {p.error}" + (f"\n\n**Hint:** {p.hint}" if p.hint else "")
    if job.status == "interrupted":
        return (f"**Interrupted:** {job.reason or 'the process ended before finishing'}. Press Resume to continue "
                "from its last checkpoint.")
    if job.status == "cancelled":
        return "Cancelled."
    return ""


def view(studio: Studio, job_id: str | None, p=None):
    """Everything the selected run shows, in the order of the outputs wired in build() (`p`: its progress,
    when the caller has read it already)."""
    job = studio.queue.get(job_id) if job_id else None
    if job is None:
        empty = pd.DataFrame([], columns=["step", "loss"])
        return ("<div id='run-progress-box' data-status='none'>No run selected.</div>", "", empty,
                pd.DataFrame([], columns=["step", "lr"]), [], "", "")
    p = p or progress(job)
    return (progress_html(job, p), stats_text(job, p), curve(p.losses, "loss"), curve(p.lrs, "lr"),
            [str(s) for s in p.samples], p.log_tail, error_text(job, p))


def _signature(studio: Studio, job_id: str | None):
    """(What the tab shows, in short: the queue's statuses and the selected run's step, files and log size;
    the selected run's progress, or None)."""
    jobs = studio.queue.jobs()
    parts = [f"{j.id}:{j.status}:{int(j.elapsed) if j.started and j.status == 'running' else ''}" for j in jobs]
    job = next((j for j in jobs if j.id == job_id), None)
    p = progress(job) if job is not None else None
    if p is not None:
        parts.append(f"{job_id}|{p.step}|{len(p.samples)}|{len(p.log_tail)}|{p.error}")
    return ";".join(parts), p


def build(studio: Studio) -> None:
    with gr.Row():
        queue_df = gr.Dataframe(queue_rows(studio), headers=QUEUE_COLUMNS, interactive=False, label="Queue",
                                elem_id="run-queue")
    with gr.Row():
        select = gr.Dropdown(_job_choices(studio), value=None, label="Run",
                             elem_id="run-select", scale=3)
        refresh_btn = gr.Button("Refresh", elem_id="run-refresh", scale=1)
        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="run-cancel", scale=1)
        resume_btn = gr.Button("Resume", elem_id="run-resume", scale=1)
    action_status = gr.Markdown("", elem_id="run-action-status")
    progress_box = gr.HTML(elem_id="run-progress")
    stats = gr.Markdown(elem_id="run-stats")
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", title="Loss", elem_id="run-loss-plot", height=260)
        lr_plot = gr.LinePlot(x="step", y="lr", title="Learning rate", elem_id="run-lr-plot", height=260)
    samples = gr.Gallery(label="Validation images", columns=8, height=200, elem_id="run-samples")
    error_md = gr.Markdown(elem_id="run-error")
    log_box = gr.Textbox(label="Log", lines=12, max_lines=12, autoscroll=True, elem_id="run-log")
    outputs = [progress_box, stats, loss_plot, lr_plot, samples, log_box, error_md]

    def tick(job_id, last_seen):
        """Follow a run as soon as it is queued (from the Training tab, in any browser tab); otherwise keep the
        user's pick. Nothing is sent when nothing changed: a finished run's gallery and plots are not re-sent
        (and re-hashed) every second."""
        jobs = studio.queue.jobs()
        newest = jobs[-1].id if jobs else None
        seen_sig, seen_newest = last_seen or (None, None)
        wanted = newest if newest != seen_newest else (job_id or newest)
        sig, p = _signature(studio, wanted)
        if sig == seen_sig and wanted == job_id:
            return (gr.skip(),) * (2 + len(outputs)) + ((sig, newest),)
        return (queue_rows(studio), gr.update(choices=_job_choices(studio), value=wanted),
                *view(studio, wanted, p), (sig, newest))

    def refresh(job_id):
        jobs = studio.queue.jobs()
        return tick(job_id, (None, jobs[-1].id if jobs else None))[:-1]

    def act(action, job_id):
        if not job_id:
            return "Pick a run first."
        try:
            job = getattr(studio.queue, action)(job_id)
        except (ValueError, KeyError) as e:
            return f"⚠ {e}"
        return f"{action.capitalize()}: {getattr(job, 'name', job_id)}."

    last_seen = gr.State(None)
    timer = gr.Timer(1.0)
    timer.tick(tick, [select, last_seen], [queue_df, select] + outputs + [last_seen], show_progress="hidden")
    refresh_btn.click(refresh, [select], [queue_df, select] + outputs)
    select.change(lambda j: view(studio, j), [select], outputs, show_progress="hidden")
    cancel_btn.click(lambda j: act("cancel", j), [select], [action_status])
    resume_btn.click(lambda j: act("resume", j), [select], [action_status])
