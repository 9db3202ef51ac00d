"""S3: two studios on one home must not both run its job queue (they ran the same queued job twice, into
the same run folder). The second is refused with a message naming the first."""
import os
import subprocess
import sys

import pytest

from engine.jobs import FolderBusy, JobQueue
from ui.testing import PROJECT_ROOT, StudioServer, free_port


def test_a_second_supervisor_of_one_queue_is_refused_until_the_first_stops(tmp_path):
    first = JobQueue(tmp_path / "runs")
    first.start(url="http://127.0.0.1:7001")
    try:
        second = JobQueue(tmp_path / "runs")
        with pytest.raises(FolderBusy, match=rf"process {os.getpid()} at http://127\.0\.0\.1:7001"):
            second.start()
        assert second._thread is None  # it never polls, so it never launches a job
    finally:
        first.stop()
    second.start()  # the lock went with the first supervisor
    second.stop()


def test_a_supervisor_that_died_leaves_no_stale_lock(tmp_path):
    code = ("import sys; from engine.jobs import JobQueue; JobQueue(sys.argv[1]).start(url='x'); "
            "import os; os._exit(0)")  # dies holding the lock, without stop()
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], cwd=PROJECT_ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=120)
    q = JobQueue(tmp_path / "runs")
    q.start()
    q.stop()


def test_a_second_studio_on_the_same_home_exits_naming_the_first(tmp_path):
    with StudioServer(tmp_path / "home") as first:
        port = free_port()
        second = subprocess.run([sys.executable, str(PROJECT_ROOT / "app.py"), "--home", str(tmp_path / "home"),
                                 "--port", str(port), "--no-browser"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"in use by process {first.proc.pid} at http://127.0.0.1:{first.port}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.proc.poll() is None  # the first studio is untouched
