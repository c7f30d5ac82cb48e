"""Peak memory of a benchmark: this process plus every process it started (its own local Ray instance)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import psutil


def _label(proc: psutil.Process, me: psutil.Process) -> str:
    """What a process is, for the breakdown: 'driver', a Ray worker's title (ray::CohortTrainer), or its name."""
    if proc.pid == me.pid:
        return "driver"
    title = proc.cmdline()[:1]
    return title[0].split(".")[0].split(" ")[0] if title and title[0].startswith("ray::") else proc.name()


INTERVAL_S = 0.25  # RSS (/proc/PID/statm: counters, no page walk); the peaks looked for last seconds
PSS_INTERVAL_S = 2.0  # PSS walks every page table (/proc/PID/smaps_rollup) under the process's mmap lock, which
# the processes measured also take to allocate: read 8x less often than RSS to keep the sampler light (beside two
# cohort trainers, the zoo build's time with either sampler or none was within its run-to-run noise of +-5%)


class PeakRSS:
    """Samples the memory of this process and all its descendants (the local Ray instance ray.init started: GCS,
    raylet, every worker); other Ray instances on a shared machine are not counted.

    ``peak``: the largest summed RSS, sampled every INTERVAL_S. A page shared by several processes (Ray's object
    store is shared memory every worker maps, as are the libraries) counts once per process there, so the sum grows
    with how many processes touch the object store, not only with what they hold. ``peak_pss``: the largest summed
    PSS (each shared page split among the processes mapping it), which counts every resident page once: the memory
    these processes use; sampled every PSS_INTERVAL_S, since reading it slows the processes read. ``at_peak``: the
    PSS by kind of process (``_label``) at that peak, to tell which part grows.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_pss = 0
        self.at_peak: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, me: psutil.Process, with_pss: bool) -> None:
        """Add one sample of every process's RSS (and PSS when ``with_pss``) to the peaks."""
        rss, pss = 0, Counter()
        for proc in [me, *me.children(recursive=True)]:
            try:
                if with_pss:
                    info = proc.memory_full_info()
                    pss[_label(proc, me)] += getattr(info, "pss", info.rss)  # read again: a Ray worker retitles itself
                else:
                    info = proc.memory_info()
                rss += info.rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        self.peak = max(self.peak, rss)
        if sum(pss.values()) > self.peak_pss:
            self.peak_pss, self.at_peak = sum(pss.values()), pss

    def _run(self) -> None:
        me = psutil.Process()
        next_pss = 0.0
        while not self._stop.is_set():
            with_pss = time.monotonic() >= next_pss
            if with_pss:
                next_pss = time.monotonic() + PSS_INTERVAL_S
            self._sample(me, with_pss)
            self._stop.wait(INTERVAL_S)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(psutil.Process(), with_pss=True)  # the end state too: a stage shorter than one PSS interval
