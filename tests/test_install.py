"""The install: requirements.lock pins every dependency exactly, agrees with pyproject.toml, is what this
environment has installed, and `./launch.sh upgrade` rewrites it only when the suite passes."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# launch.sh names the lock it installed from (upgrade tests a new one before it replaces requirements.lock)
LOCK = Path(os.environ.get("ADAPTOR_STUDIO_LOCK") or ROOT / "requirements.lock")
TORCH_PARTS = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")  # as launch.sh's TORCH_PARTS


def lock_pins(path: Path = LOCK) -> dict[str, Version]:
    """name -> pinned version, for the lines whose markers hold on this interpreter."""
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"{line!r} is not an exact pin"
        if req.marker is None or req.marker.evaluate():
            name = canonicalize_name(req.name)
            assert name not in pins, f"{name} is pinned twice for this interpreter"
            pins[name] = Version(spec[0].version)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_the_lock_is_made_by_the_repo_command_and_pins_every_requirement_of_pyproject():
    assert LOCK.read_text().splitlines()[1].strip() == "#    ./launch.sh lock"
    pins = lock_pins()
    for req in project_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is in pyproject.toml but not in requirements.lock: run ./launch.sh lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {req}: run ./launch.sh lock")


def test_launch_sh_lock_reproduces_the_committed_lock(tmp_path):
    """pyproject.toml changed without ./launch.sh lock, or the lock was edited by hand: this differs."""
    copy = tmp_path / "requirements.lock"
    shutil.copy2(ROOT / "requirements.lock", copy)
    env = {**os.environ, "ADAPTOR_STUDIO_VENV": sys.prefix, "ADAPTOR_STUDIO_LOCK": str(copy)}
    proc = subprocess.run(["./launch.sh", "lock"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert copy.read_text() == (ROOT / "requirements.lock").read_text()


def test_no_environment_is_tracked():
    """A venv (or a link to one) committed by mistake replaces a checkout's own venv when merged."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    assert not [p for p in tracked.split("\0") if p.split("/")[0] in (".venv", ".venv-upgrade")]
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", ".venv"], cwd=ROOT)
    assert ignored.returncode == 0, ".gitignore must ignore .venv whether it is a folder or a link"


def test_the_known_good_set_and_its_known_break_are_encoded():
    pins = lock_pins()
    assert pins["transformers"] == Version("5.23.0") and pins["peft"] == Version("0.21.2")
    transformers = next(r for r in project_requirements() if r.name == "transformers")
    # transformers 5.24 refuses peft < 0.22 (none exists yet): pyproject must not allow it
    assert not transformers.specifier.contains("5.24.0")


def test_this_environment_has_exactly_the_locked_versions():
    wrong = []
    for name, version in lock_pins().items():
        if TORCH_PARTS.match(name):
            continue  # torch is installed first (the machine's build) or is the user's own
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (lock {version})")
            continue
        if have != version:
            wrong.append(f"{name}: {have} installed, lock {version}")
    assert not wrong, "the install does not match requirements.lock:\n" + "\n".join(wrong)
    torch_pin = lock_pins()["torch"]
    if os.environ.get("CI"):  # a fresh machine gets the lock's torch (a user's own torch is kept instead)
        assert Version(metadata.version("torch")).base_version == str(torch_pin)


def _project_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in ["launch.sh", "requirements.lock", "pyproject.toml", "tests/test_install.py"]:  # even uncommitted
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.mark.slow
def test_upgrade_rewrites_the_lock_only_when_the_suite_passes(tmp_path):
    """A copy of the project whose lock holds an old tomli-w: upgrade resolves the newest, tests it in a
    fresh venv, and keeps the old lock when the tests fail, rewriting it when they pass."""
    project = _project_copy(tmp_path / "project")
    lock = project / "requirements.lock"
    old = (ROOT / "requirements.lock").read_text()
    assert "tomli-w==1.2.0" in old
    lock.write_text(old.replace("tomli-w==1.2.0", "tomli-w==1.1.0"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTOR_STUDIO_") and k != "VIRTUAL_ENV"}
    env["ADAPTOR_STUDIO_VENV"] = sys.prefix  # resolve with this suite's uv (the trial venv is made afresh)

    def upgrade(*pytest_args):
        return subprocess.run(["./launch.sh", "upgrade", *pytest_args], cwd=project, env=env, capture_output=True,
                              text=True, timeout=900)

    failing = upgrade("tests/test_install.py", "-k", "no_test_has_this_name")  # pytest exits 5: not a pass
    assert failing.returncode != 0, failing.stderr[-3000:]
    assert "requirements.lock is unchanged" in failing.stderr
    assert "tomli-w==1.1.0" in lock.read_text()

    passing = upgrade("tests/test_install.py", "-k", "pins_every_requirement or exactly_the_locked")
    assert passing.returncode == 0, passing.stdout[-3000:] + passing.stderr[-3000:]
    assert "requirements.lock rewritten" in passing.stderr
    assert "tomli-w==1.2.0" in lock.read_text() and not (project / ".venv-upgrade").exists()
