"""What the app keeps per browser session, and deletes when the session ends.

All of it lives under one folder that the server creates at start and deletes at exit:
``uploads/`` (where the web framework puts uploaded files) and ``outputs/<session>/``
(the overlays, maps and scores written for downloads). When a session ends (its tab is
closed), its outputs and the files it uploaded are deleted, and a Stop it pressed is
forgotten.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path


class SessionFiles:
    """The folders and the Stop flags of the sessions.

    Args:
        root: the app's own folder (created if needed).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uploads = self.root / "uploads"
        self.outputs = self.root / "outputs"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.outputs.mkdir(parents=True, exist_ok=True)
        self._uploaded: dict[str, set[Path]] = {}
        self._stops: dict[str, threading.Event] = {}
        self._runs: dict[str, int] = {}
        self._lock = threading.Lock()

    def run_folder(self, session: str) -> Path:
        """A new, empty folder for one run's files: ``outputs/<session>/run-<n>`` (files
        a page still shows are never overwritten)."""
        with self._lock:
            number = self._runs.get(session, 0) + 1
            self._runs[session] = number
        folder = self.outputs / safe_name(session) / f"run-{number}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def remember_upload(self, session: str, path: str | Path) -> None:
        """Delete ``path`` (an uploaded file) when ``session`` ends; a file outside the
        uploads folder is never deleted."""
        path = Path(path).resolve()
        if self.uploads.resolve() not in path.parents:
            return
        with self._lock:
            self._uploaded.setdefault(session, set()).add(Path(path))

    def stop_flag(self, session: str) -> threading.Event:
        """The session's Stop flag: set by the Stop button, cleared when a run starts."""
        with self._lock:
            return self._stops.setdefault(session, threading.Event())

    def end(self, session: str) -> list[Path]:
        """Delete the session's outputs and uploaded files; returns what was deleted."""
        with self._lock:
            uploaded = self._uploaded.pop(session, set())
            self._stops.pop(session, None)
            self._runs.pop(session, None)
        deleted = []
        for path in sorted(uploaded):
            if path.is_file():
                path.unlink(missing_ok=True)
                deleted.append(path)
            remove_empty_parents(path.parent, self.uploads)
        outputs = self.outputs / safe_name(session)
        if outputs.exists():
            shutil.rmtree(outputs, ignore_errors=True)
            deleted.append(outputs)
        return deleted

    def close(self) -> None:
        """Delete the app's whole folder (at server exit)."""
        shutil.rmtree(self.root, ignore_errors=True)


def safe_name(session: str) -> str:
    """``session`` as a folder name: letters, digits, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", session) or "_"


def remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents while they are empty and inside ``stop``."""
    stop = stop.resolve()
    folder = folder.resolve()
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
