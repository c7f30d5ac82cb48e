"""Peak memory of a benchmark: this process plus every process it started (its own local Ray instance)."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants (the local Ray instance ray.init started: GCS,
    raylet, every worker) every 50 ms; other Ray instances on a shared machine are not counted."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
