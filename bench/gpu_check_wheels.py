"""The install-wheels stage of bench/gpu_check.sh: the carried wheels a GPU machine lacks go into a site folder.
Standard library only (and pip's vendored packaging): it runs before anything of ours is installed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.replace("_", "-").lower(), version


def installed_version(name: str) -> str | None:
    import importlib.metadata as md
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def select_wheels(folder: Path) -> list[dict]:
    """What to do with each carried wheel on this machine. A wheel this interpreter cannot install is left out
    (and said so). torch's own requirements and numpy are installed only where missing or older than ours (a
    newer copy of something torch was built against is never shadowed by an older one); any other package is
    installed unless this exact version is already here, since our stack is pinned."""
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version
    import importlib.metadata as md

    supported = set(sys_tags())
    try:
        torch_reqs = {canonicalize_name(Requirement(r).name) for r in md.requires("torch") or []}
    except md.PackageNotFoundError:
        torch_reqs = set()
    keep_newer = torch_reqs | {"numpy"}
    out = []
    for whl in sorted(folder.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(whl.name)
        name = canonicalize_name(name)
        have = installed_version(name)
        row = {"package": name, "carried": str(version), "present": have, "wheel": str(whl)}
        if not tags & supported:
            row.update(action="skip", why=f"not installable here (tags {sorted(str(t) for t in tags)[0]}..., "
                                          f"Python {sys.version_info.major}.{sys.version_info.minor})")
        elif have is None:
            row.update(action="install", why="missing here")
        elif name in keep_newer:
            newer = Version(have) < version
            row.update(action="install" if newer else "skip",
                       why=f"here {have} is older" if newer else f"here {have} (torch's or binary: newer or equal kept)")
        elif Version(have) == version:
            row.update(action="skip", why=f"here {have} already")
        else:
            row.update(action="install", why=f"here {have}, pinned {version}")
        out.append(row)
    return out


def cmd_install_wheels(args) -> int:
    folder = Path(args.dir)
    rows = select_wheels(folder) if folder.is_dir() else []
    chosen = [r["wheel"] for r in rows if r["action"] == "install"]
    for r in rows:
        print(f"  {r['action']:<8} {r['package']:<20} {r['carried']:<14} {r['why']}")
    status = "ok"
    if chosen:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", args.site]
        proc = subprocess.run(pip + chosen, timeout=600)
        if proc.returncode != 0:  # one wheel at a time, so one bad wheel costs only itself
            status = "partial"
            for r in rows:
                if r["action"] == "install":
                    ok = subprocess.run(pip + [r["wheel"]], timeout=300).returncode == 0
                    r["action"] = "installed" if ok else "FAILED"
        else:
            for r in rows:
                if r["action"] == "install":
                    r["action"] = "installed"
    print(f"install-wheels: {sum(r['action'] == 'installed' for r in rows)} installed into {args.site}, "
          f"{sum(r['action'] == 'skip' for r in rows)} not needed, {sum(r['action'] == 'FAILED' for r in rows)} failed"
          if rows else f"install-wheels: no wheels in {folder}")
    Path(args.report).write_text(json.dumps({"status": status, "site": args.site, "wheels": rows}, indent=1))
    return 0 if status == "ok" else 1
