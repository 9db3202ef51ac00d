"""Can a Hugging Face Hub id be had right now? In the local cache, or from the Hub if it answers.

Without this, an uncached hub id on a machine without network spends minutes in huggingface_hub's retries
(five per file, backing off to 8 s) before it fails. `availability` answers in at most PROBE_TIMEOUT_S:
HF_HUB_OFFLINE, the cache folder, then one TCP connection to the Hub's endpoint (HF_ENDPOINT).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path

PROBE_TIMEOUT_S = 3.0
_PROBE_TTL_S = 30.0  # a Check per keystroke must not probe each time; a cable plugged in shows within this
_probe: dict[str, tuple[float, str | None]] = {}


class HubUnavailable(ValueError):
    """The id is neither cached nor downloadable now; the message names it and what to do instead."""


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def cache_folder(repo_id: str, repo_type: str = "model") -> Path | None:
    """The newest snapshot of repo_id in the local Hugging Face cache, or None when it holds none."""
    from huggingface_hub import constants
    snapshots = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    found = [p for p in snapshots.iterdir() if p.is_dir() and any(p.iterdir())]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def unreachable_reason() -> str | None:
    """Why the Hub cannot be reached now (None: it answers a TCP connection), remembered for a short while."""
    if _offline_env():
        return "HF_HUB_OFFLINE is set"
    url = endpoint()
    now = time.monotonic()
    seen = _probe.get(url)
    if seen and now - seen[0] < _PROBE_TTL_S:
        return seen[1]
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = [f"no answer from {host} within {PROBE_TIMEOUT_S:g} s"]

    def connect():  # name lookup can hang past any socket timeout, so the whole probe runs in a thread
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            result[0] = None
        except OSError as e:
            result[0] = f"cannot reach {host} ({e.strerror or e})"

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(PROBE_TIMEOUT_S + 0.5)
    _probe[url] = (now, result[0])
    return result[0]


def availability(repo_id: str, repo_type: str = "model", local: str = "a local folder") -> str:
    """"cached" or "download"; HubUnavailable when it is not cached and the Hub cannot be reached (the
    message offers `local` instead)."""
    if cache_folder(repo_id, repo_type) is not None:
        return "cached"
    why = unreachable_reason()
    if why:
        what = "hub id" if repo_type == "model" else f"hub {repo_type} id"
        raise HubUnavailable(f"{repo_id!r} is a {what} not in the local Hugging Face cache, and the Hub cannot be "
                             f"reached now ({why}); download it once while online, or give {local} instead")
    return "download"


def offline() -> bool:
    """Whether loaders should use only the cache (they would otherwise retry the network for minutes)."""
    return unreachable_reason() is not None
