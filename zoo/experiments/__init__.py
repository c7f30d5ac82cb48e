"""Runnable analyses and experiments: each is a plain function of a typed recipe that returns a :class:`Result`.

- :mod:`zoo.experiments.result`: the :class:`Result` object, its one writer and ``markdown_table``.
- :mod:`zoo.experiments.antitraining`: the five antitraining experiments (width, accuracy, erasure, pruning, memorization).
- :mod:`zoo.experiments.llc`: LLC validation against closed forms, and the LLC across a cohort's training.
- :mod:`zoo.experiments.grokking`: modular-addition grokking with progress measures and lottery tickets.
- :mod:`zoo.experiments.zoo_analysis`: per-cohort dictionaries, LLC and Shapley patching, and their reports.

No Ray, no MLflow: ``cluster/`` decides where they run and records what they return.
"""
