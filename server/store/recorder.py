"""Trajectory recording: every served step appended to JSON Lines files the trainer reads directly.

The hot path only builds a dict and puts it on a bounded queue; a writer
thread serialises, appends and flushes in batches, and rotates files at
``max_bytes``.  If the writer falls behind and the queue fills, records are
dropped and counted (``glider_records_dropped_total``) rather than slowing
the agent down.

Files: ``<dir>/episodes-<UTC start>-<pid>-<n>.jsonl``; a file being written
ends in ``.jsonl.open`` and is renamed to ``.jsonl`` when rotated or closed,
so a reader that takes only ``*.jsonl`` never sees a partial line.

One record per answered step (schema version 1):

    {"v": 1, "time": 1764097000.1, "episode_id": "...", "task": "...", "mode": "separate",
     "step": 3, "observation": "...", "reward": 0.0, "done": false, "score": 0.03,
     "action": "open door to kitchen", "subgoal": "go to the kitchen", "new_subgoal": false,
     "subgoal_done": false, "subgoal_index": 0, "total_reward": 0.03, "fallback": false,
     "adapter_versions": {"planner": "v0002", "executor": "v0003"}, "latency_ms": 41.2,
     "sampling": {"temperature": 0.7, "seed": 42}}

``observation`` is what the environment showed at ``step``, ``reward`` what the
previous action earned, ``score`` the environment's own score if the client sent it (else null), ``action`` the agent's answer (null on the closing
``done`` record), ``sampling`` the episode's own sampling settings (null: the server's).  A transition (o_t, a_t, r_t, o_{t+1}) is record t's
observation and action with record t+1's reward and observation.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


class TrajectoryRecorder:
    def __init__(self, directory: Path, *, max_bytes: int = 64 << 20, queue_size: int = 100_000,
                 on_drop=None):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._on_drop = on_drop
        self._thread: threading.Thread | None = None
        self._file = None
        self._path: Path | None = None
        self._index = 0
        self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="trajectory-writer", daemon=True)
        self._thread.start()

    def record(self, record: dict) -> None:
        """Queue one record (never blocks the caller)."""
        record["v"] = SCHEMA_VERSION
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            if self._on_drop is not None:
                self._on_drop()

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is on disk (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    # -- writer thread ----------------------------------------------------------------
    def _open(self) -> None:
        self._index += 1
        name = f"episodes-{self._stamp}-{os.getpid()}-{self._index:04d}.jsonl.open"
        self._path = self.directory / name
        self._file = self._path.open("a", encoding="utf-8")

    def _seal(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        assert self._path is not None
        os.replace(self._path, self._path.with_suffix(""))  # .jsonl.open -> .jsonl
        self._file = None

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:  # drain what is there: one write and flush per batch
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = []
            events = []
            for item in batch:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    events.append(item)
                else:
                    lines.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
            try:
                if lines:
                    if self._file is None:
                        self._open()
                    self._file.write("\n".join(lines) + "\n")
                    self._file.flush()
                    if self._file.tell() >= self.max_bytes:
                        self._seal()
            except OSError:
                log.exception("trajectory recording failed; %d records lost", len(lines))
                if self._on_drop is not None:
                    for _ in lines:
                        self._on_drop()
            for event in events:
                event.set()
        try:
            self._seal()
        except OSError:
            log.exception("could not close the trajectory file")
