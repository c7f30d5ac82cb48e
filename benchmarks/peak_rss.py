"""Peak memory of a benchmark: this process plus every process it started (its own local Ray instance)."""

from __future__ import annotations

import threading
from collections import Counter

import psutil


def _label(proc: psutil.Process, me: psutil.Process) -> str:
    """What a process is, for the breakdown: 'driver', a Ray worker's title (ray::CohortTrainer), or its name."""
    if proc.pid == me.pid:
        return "driver"
    title = proc.cmdline()[:1]
    return title[0].split(".")[0].split(" ")[0] if title and title[0].startswith("ray::") else proc.name()


INTERVAL_S = 0.25  # at 50 ms the sampler took 16% of a core beside 9 idle Ray processes (5% at 0.25 s), and more
# beside a stage's 20 larger ones: on 2 cores it slowed what it timed; the peaks it looks for last seconds


class PeakRSS:
    """Samples the memory of this process and all its descendants (the local Ray instance ray.init started: GCS,
    raylet, every worker) every INTERVAL_S; other Ray instances on a shared machine are not counted.

    ``peak``: the largest summed RSS. A page shared by several processes (Ray's object store is shared memory every
    worker maps, as are the libraries) counts once per process there, so the sum grows with how many processes
    touch the object store, not only with what they hold. ``peak_pss``: the largest summed PSS (each shared page
    split among the processes mapping it), which counts every resident page once: the memory these processes use.
    ``at_peak``: the PSS by kind of process (``_label``) at that peak, to tell which part grows.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_pss = 0
        self.at_peak: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss, pss = 0, Counter()
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()  # Linux: /proc/PID/smaps_rollup, about 0.1 ms
                    rss += info.rss
                    pss[_label(proc, me)] += getattr(info, "pss", info.rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            self.peak = max(self.peak, rss)
            if sum(pss.values()) > self.peak_pss:
                self.peak_pss, self.at_peak = sum(pss.values()), pss
            self._stop.wait(INTERVAL_S)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
