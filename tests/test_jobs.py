"""The studio's job queue: real `accelerate launch` jobs on builtin:tiny-sd, cancelled, killed from outside,
resumed, and picked up again by a new queue as after an app restart."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from engine.config import ConfigError, load_config
from engine.events import iter_events
from engine.jobs import JobQueue, group_alive, progress

BASE = dict(resolution=64, rank=4, lora_alpha=8, learning_rate=1e-3, lr_warmup_steps=0, seed=1, report_to="none",
            cache_latents=True, train_batch_size=2)


def values(data, **kw):
    return {**BASE, "train_data_dir": str(data), **kw}


def wait_for(queue, condition, what, timeout=240, poll=True):
    """poll() (unless the queue's own thread does) until condition() holds; on timeout, fail showing every
    job's console tail."""
    end = time.time() + timeout
    while time.time() < end:
        if poll:
            queue.poll()
        if condition():
            return
        time.sleep(0.1)
    tails = "\n".join(f"--- {j.name} ({j.status}):\n{progress(j).log_tail}" for j in queue.jobs())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def test_bad_config_and_busy_run_folder_are_refused_at_submit(tmp_path, tiny_data):
    q = JobQueue(tmp_path / "runs")
    with pytest.raises(ConfigError, match="learning_rate"):
        q.submit(values(tiny_data, learning_rate=-1))
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        q.submit(values(tiny_data, learning_rat=1e-4))
    assert q.jobs() == []
    job = q.submit(values(tiny_data, adaptor_name="same"), name="first try")
    assert job.status == "queued" and job.name == "first try" and job.run_dir == tmp_path / "runs" / "same"
    cfg = load_config(job.config_path)  # the job's own config, its run folder under the queue's root
    assert job.config_path == tmp_path / "runs" / ".queue" / job.id / "config.toml"
    assert cfg.output_dir == str(tmp_path / "runs") and cfg.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="run folder of job"):
        q.submit(values(tiny_data, adaptor_name="same"))
    elsewhere = q.submit(values(tiny_data, adaptor_name="same", output_dir=str(tmp_path / "other")))
    assert elsewhere.run_dir == tmp_path / "other" / "same"
    assert [j.id for j in q.jobs()] == [job.id, elsewhere.id]
    saved = json.loads((tmp_path / "runs" / ".queue" / "jobs.json").read_text())
    assert [j["id"] for j in saved["jobs"]] == [job.id, elsewhere.id]


def test_restart_judges_jobs_whose_process_is_gone_and_spares_reused_pids(tmp_path, tiny_data):
    root = tmp_path / "runs"
    q = JobQueue(root)
    gone, finished, reused = (q.submit(values(tiny_data, adaptor_name=n)) for n in ("gone", "finished", "reused"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        now = time.time()
        state = json.loads(q.state_file.read_text())
        for entry in state["jobs"]:
            entry.update(status="running", started=now - 3600, attempts=1,
                         pid=other.pid if entry["id"] == reused.id else dead.pid)
        q.state_file.write_text(json.dumps(state))
        finished.run_dir.mkdir(parents=True)  # its events say it finished before the app died
        (finished.run_dir / "events.jsonl").write_text(
            json.dumps({"type": "done", "time": now + 1, "outputs": {"run_dir": str(finished.run_dir)}}) + "\n")

        restarted = JobQueue(root)
        assert restarted.get(gone.id).status == "interrupted"
        assert restarted.get(finished.id).status == "done"
        assert restarted.get(reused.id).status == "interrupted"  # that pid is another program now
        # run time ends at the job's last output, not when the restarted app looked
        assert restarted.get(gone.id).elapsed == 0 and 3500 < restarted.get(finished.id).elapsed < 3700
        assert other.poll() is None, "the unrelated process was signalled"
        assert "killed" in progress(restarted.get(gone.id)).error
        assert json.loads(q.state_file.read_text())["jobs"][0]["status"] == "interrupted"
        with pytest.raises(ConfigError, match="only interrupted, failed, cancelled"):
            restarted.resume(finished.id)
        resumed = restarted.resume(gone.id)
        assert resumed.status == "queued" and load_config(resumed.config_path).resume_from_checkpoint == "latest"
    finally:
        other.kill()
        other.wait()


def test_cancel_kills_an_adopted_job_that_ignores_sigterm(tmp_path, tiny_data):
    root = tmp_path / "runs"
    job = JobQueue(root).submit(values(tiny_data, adaptor_name="stubborn"))
    # a stand-in for a training process left by a dead app: same command-line marks, deaf to SIGTERM
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('deaf', flush=True); "
            "time.sleep(60)")
    stubborn = subprocess.Popen([sys.executable, "-c", code, "-m", "engine.train", str(job.config_path)],
                                start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline() == "deaf\n"
        state = json.loads((root / ".queue" / "jobs.json").read_text())
        state["jobs"][0].update(status="running", started=time.time(), attempts=1, pid=stubborn.pid)
        (root / ".queue" / "jobs.json").write_text(json.dumps(state))
        q = JobQueue(root)
        adopted = q.get(job.id)
        assert adopted.status == "running"
        t0 = time.time()
        q.cancel(job.id, grace=0.5)
        assert adopted.status == "cancelled" and time.time() - t0 < 5
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.communicate()


@pytest.mark.slow
def test_two_jobs_run_one_after_the_other(tmp_path, tiny_data):
    root = tmp_path / "runs"
    q = JobQueue(root)
    a = q.submit(values(tiny_data, adaptor_name="a", max_train_steps=4))
    b = q.submit(values(tiny_data, adaptor_name="b", max_train_steps=4, validation_prompt="a red square",
                        num_validation_images=1, num_inference_steps=2))
    seen = set()

    def both_done():
        seen.add((a.status, b.status))
        return a.status == b.status == "done"

    q.start(interval=0.2)
    try:
        wait_for(q, both_done, "both jobs to finish", poll=False)
    finally:
        q.stop()
    assert ("running", "queued") in seen and not any(s == ("running", "running") for s in seen)
    assert a.ended <= b.started and a.returncode == b.returncode == 0 and a.attempts == b.attempts == 1
    for job in (a, b):
        p = progress(job)
        assert p.step == p.total_steps == 4 and [s for s, _ in p.losses] == [1, 2, 3, 4]
        assert len(p.lrs) == 4 and p.it_per_s > 0 and p.peak_memory_mb > 0 and p.eta_s == 0.0
        assert p.error is None and job.elapsed > 0
        assert (job.run_dir / f"{job.name}.safetensors").is_file()
        assert all(os.path.exists(v) for v in p.outputs.values()) and "model_card" in p.outputs
        assert "done in" in p.log_tail
    # 4 images, batch 2: 2 steps an epoch, a validation image after each
    assert [s.name for s in progress(b).samples] == ["epoch001-step000002-0.png", "epoch002-step000004-0.png"]

    assert [j.status for j in JobQueue(root).jobs()] == ["done", "done"]  # the queue survives a restart
    with pytest.raises(ConfigError, match="already exists"):  # a fresh run never replaces a finished one
        q.submit(values(tiny_data, adaptor_name="a", max_train_steps=4))


def _runs(pid: str, config_path) -> bool:
    try:
        return str(config_path) in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
    except OSError:
        return False


@pytest.mark.slow
def test_cancel_queued_and_running(tmp_path, tiny_data):
    """The long job trains data-parallel (num_processes = 2, GPU ids unset: gloo on a CPU); cancel ends both."""
    q = JobQueue(tmp_path / "runs")
    long = q.submit(values(tiny_data, adaptor_name="long", max_train_steps=5000, num_processes=2))
    waiting = q.submit(values(tiny_data, adaptor_name="waiting", max_train_steps=2))
    wait_for(q, lambda: progress(long).step >= 1, "the first training step")
    assert waiting.status == "queued"
    assert "--multi_gpu --num_processes 2 --num_machines 1" in long.console_log.read_text().splitlines()[0]
    start = next(e for e in iter_events(long.run_dir / "events.jsonl") if e["type"] == "start")
    assert start["num_processes"] == 2
    q.cancel(waiting.id)
    assert waiting.status == "cancelled" and waiting.attempts == 0 and waiting.pid is None

    pgid = long.pid
    assert group_alive(pgid)
    t0 = time.time()
    q.cancel(long.id)
    assert long.status == "cancelled" and not group_alive(pgid)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _runs(p, long.config_path)], "a worker outlived it"
    assert time.time() - t0 < 5, "SIGTERM should stop it without waiting for SIGKILL"
    q.poll()
    assert waiting.status == "cancelled" and waiting.started is None, "a cancelled job must never start"
    assert progress(long).step < 5000


@pytest.mark.slow
def test_adopted_after_restart_killed_from_outside_then_resumed(tmp_path, tiny_data):
    root = tmp_path / "runs"
    first_app = JobQueue(root)
    job = first_app.submit(values(tiny_data, adaptor_name="k", max_train_steps=60, checkpointing_steps=4))
    wait_for(first_app, lambda: progress(job).checkpoints, "a checkpoint")

    app = JobQueue(root)  # the first app died; its job goes on and the new one adopts it
    adopted = app.get(job.id)
    assert adopted.status == "running" and adopted.pid == job.pid
    app.poll()
    assert adopted.status == "running"
    os.killpg(adopted.pid, signal.SIGKILL)  # e.g. the OOM killer
    wait_for(app, lambda: adopted.status != "running", "the killed job to be noticed")
    assert adopted.status == "interrupted"
    wait_for(app, lambda: not group_alive(adopted.pid), "the killed processes to exit", timeout=10)
    p = progress(adopted)
    assert p.error and p.checkpoints and p.step < 60
    resume_step = int(p.checkpoints[-1].name.split("-")[1])

    app.resume(job.id)
    wait_for(app, lambda: adopted.status in ("done", "failed"), "the resumed job")
    assert adopted.status == "done" and adopted.attempts == 2
    starts = [e for e in iter_events(adopted.run_dir / "events.jsonl") if e["type"] == "start"]
    assert [e["first_step"] for e in starts] == [0, resume_step]
    assert f"at step {resume_step}" in (adopted.run_dir / "train.log").read_text()
    p = progress(adopted)
    assert [s for s, _ in p.losses] == list(range(1, 61)), "the curve must run on across the resume"
    assert p.resumed_from == resume_step and p.step == 60 and p.error is None
    assert (adopted.run_dir / "k.safetensors").is_file()


@pytest.mark.slow
def test_failed_run_shows_the_error_and_hint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    q = JobQueue(tmp_path / "runs")
    job = q.submit(values(empty, adaptor_name="nothing", max_train_steps=2))
    wait_for(q, lambda: job.status not in ("queued", "running"), "the job to fail")
    assert job.status == "failed" and job.returncode == 1
    p = progress(job)
    assert str(empty) in p.error and p.hint == "fix the setting named above and start again"
    assert job.reason == p.error
