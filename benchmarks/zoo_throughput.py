"""Zoo training throughput: the batched cohort trainer against a plain per-model PyTorch loop.

For each family the same models (same seeds, behaviors, learning rates and data, from
``zoo.config.plan_zoo`` and ``zoo.data.make_cohort_data``) are trained

  (a) one at a time as ordinary ``nn.Module``s with ``torch.optim.Adam`` (a subset of
      ``--baseline-models`` models, extrapolated to models/s), and
  (b) all together with ``zoo.train.train_cohort`` (a cohort of ``--cohort`` models).

It prints models/s for both (wall clock, and per CPU-second, which is steadier on a shared
machine), their ratio, peak memory, and the held-out accuracy distributions of both; the
models trained both ways are compared one to one. It also places both on a roofline: the
FLOPs of one model's training (counted with ``torch.utils.flop_counter`` on the per-model
module), the GFLOP/s each path reaches, and the most models/s this process could train at
the dense-matmul rate it measures on the same core. The last line is one JSON object.

    .venv/bin/python benchmarks/zoo_throughput.py --families mlp,gru,attention --cohort 256
    .venv/bin/python benchmarks/zoo_throughput.py --quick      # < 60 s (5 epochs: speeds, not accuracies)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.arch import ArchSpec  # noqa: E402
from zoo.config import ArchChoice, ZooConfig, plan_zoo  # noqa: E402
from zoo.data import make_cohort_data  # noqa: E402
from zoo.families import get_family  # noqa: E402
from zoo.families.attention import MLP_RATIO  # noqa: E402
from zoo.train import accuracy_report, batch_orders, predict, train_cohort  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

# the standard cohort: embedding + MLP 2 x 32, vocab 7, length 7; GRU and attention at comparable size
ARCHS = {
    "mlp": ArchChoice(family="mlp", depth=2, width=32, embed_dim=8),
    "gru": ArchChoice(family="gru", depth=1, width=32, embed_dim=8),
    "attention": ArchChoice(family="attention", depth=1, width=32, n_heads=2),
}


# --- plain per-model references (each loads model m of a batched parameter dict) -------------


class MLPRef(nn.Module):
    def __init__(self, spec: ArchSpec, p: dict[str, torch.Tensor], m: int):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(p["embed"][m].clone(), freeze=False)
        self.hidden = nn.ModuleList(_linear(p[f"w{i}"][m], p[f"b{i}"][m]) for i in range(spec.depth))
        self.out = _linear(p["w_out"][m], p["b_out"][m])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(1)
        for lin in self.hidden:
            h = torch.relu(lin(h))
        return self.out(h).squeeze(-1)


class GRURef(nn.Module):
    def __init__(self, spec: ArchSpec, p: dict[str, torch.Tensor], m: int):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(p["embed"][m].clone(), freeze=False)
        self.gru = nn.GRU(spec.embed_dim, spec.width, num_layers=spec.depth, batch_first=True)
        with torch.no_grad():
            for i in range(spec.depth):
                for ours, theirs in (("w_ih", "weight_ih"), ("w_hh", "weight_hh")):
                    getattr(self.gru, f"{theirs}_l{i}").copy_(p[f"{ours}{i}"][m].T)
                for ours, theirs in (("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
                    getattr(self.gru, f"{theirs}_l{i}").copy_(p[f"{ours}{i}"][m])
        self.out = _linear(p["w_out"][m], p["b_out"][m])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gru(self.embed(x))[0][:, -1]).squeeze(-1)


class AttentionRef(nn.Module):
    def __init__(self, spec: ArchSpec, p: dict[str, torch.Tensor], m: int):
        super().__init__()
        d = spec.width
        self.embed = nn.Embedding.from_pretrained(p["embed"][m].clone(), freeze=False)
        self.pos = nn.Parameter(p["pos"][m].clone())
        self.blocks = nn.ModuleList()
        for i in range(spec.depth):
            blk = nn.ModuleDict({
                "ln1": _layer_norm(p[f"ln1_w{i}"][m], p[f"ln1_b{i}"][m]),
                "attn": nn.MultiheadAttention(d, spec.n_heads, batch_first=True),
                "ln2": _layer_norm(p[f"ln2_w{i}"][m], p[f"ln2_b{i}"][m]),
                "fc": _linear(p[f"w_fc{i}"][m], p[f"b_fc{i}"][m]),
                "proj": _linear(p[f"w_proj{i}"][m], p[f"b_proj{i}"][m]),
            })
            with torch.no_grad():
                blk["attn"].in_proj_weight.copy_(p[f"w_qkv{i}"][m].T)
                blk["attn"].in_proj_bias.copy_(p[f"b_qkv{i}"][m])
                blk["attn"].out_proj.weight.copy_(p[f"w_o{i}"][m].T)
                blk["attn"].out_proj.bias.copy_(p[f"b_o{i}"][m])
            self.blocks.append(blk)
        assert blk["fc"].out_features == MLP_RATIO * d
        self.ln_f = _layer_norm(p["ln_f_w"][m], p["ln_f_b"][m])
        self.out = _linear(p["w_out"][m], p["b_out"][m])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        for blk in self.blocks:
            a = blk["ln1"](h)
            h = h + blk["attn"](a, a, a, need_weights=False)[0]
            h = h + blk["proj"](torch.relu(blk["fc"](blk["ln2"](h))))
        return self.out(self.ln_f(h).mean(dim=1)).squeeze(-1)


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        lin.weight.copy_(w.T)
        lin.bias.copy_(b)
    return lin


def _layer_norm(w: torch.Tensor, b: torch.Tensor) -> nn.LayerNorm:
    ln = nn.LayerNorm(w.shape[0])
    with torch.no_grad():
        ln.weight.copy_(w)
        ln.bias.copy_(b)
    return ln


REFERENCES = {"mlp": MLPRef, "gru": GRURef, "attention": AttentionRef}


# --- the benchmark --------------------------------------------------------------------------


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantiles(acc: np.ndarray) -> dict[str, float]:
    q = np.quantile(acc, [0.1, 0.5, 0.9])
    return {"mean": float(acc.mean()), "q10": float(q[0]), "q50": float(q[1]), "q90": float(q[2])}


def matmul_peak_gflops(size: int = 512, seconds: float = 1.0) -> float:
    """Dense FP32 matmul rate of this process (square ``torch.mm``), the roofline's ceiling."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - t0) / 1e9


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step (forward and backward) of one per-model module on one batch."""
    with FlopCounterMode(display=False) as counter:
        F.binary_cross_entropy_with_logits(model(x), y).backward()
    model.zero_grad()
    return counter.get_total_flops()


def _warm_up(spec: ArchSpec, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor,
             seeds: list[int], batch_size: int) -> None:
    """Run both paths once on throwaway copies, so one-off start-up costs (kernels, allocator) are not timed."""
    model = REFERENCES[spec.family](spec, params, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        F.binary_cross_entropy_with_logits(model(x[0, :batch_size]), y[0, :batch_size]).backward()
        opt.step()
    few = {k: v[:2].clone() for k, v in params.items()}
    train_cohort(spec, few, x[:2, : 2 * batch_size], y[:2, : 2 * batch_size], lr[:2], 1, batch_size, seeds[:2])


def bench_family(arch: ArchChoice, cohort: int, n_baseline: int, epochs: int, n_train: int, n_test: int,
                 batch_size: int) -> dict[str, Any]:
    """Train one family's cohort both ways; return speeds, memory and accuracy distributions."""
    family = arch.family
    cfg = ZooConfig(n_models=cohort, cohort_size=cohort, architectures=[arch], n_train=n_train,
                    n_test=n_test, epochs=epochs, batch_size=batch_size)
    plan = plan_zoo(cfg)[0]
    spec, seeds = plan.spec, [mp.seed for mp in plan.models]
    data = make_cohort_data([mp.behaviors for mp in plan.models], cfg.vocab, cfg.length, n_train, n_test, seeds,
                            hard_negative_frac=cfg.hard_negative_frac)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    lr = torch.tensor([mp.lr for mp in plan.models])
    params = get_family(spec).init(spec, seeds)
    k = min(n_baseline, cohort)
    _warm_up(spec, params, x, y, lr, seeds, batch_size)
    steps = epochs * -(-n_train // batch_size)
    flops_per_model = steps * step_flops(REFERENCES[family](spec, params, 0), x[0, :batch_size], y[0, :batch_size])

    # (a) plain per-model loop over the first k models, from the same initial weights
    base_acc = []
    t0, c0 = time.perf_counter(), time.process_time()
    for m in range(k):
        model = REFERENCES[family](spec, params, m)
        opt = torch.optim.Adam(model.parameters(), lr=float(lr[m]))
        orders = batch_orders([seeds[m]], n_train, epochs)
        for e in range(epochs):
            for s in range(0, n_train, batch_size):
                idx = orders[e, 0, s : s + batch_size]
                loss = F.binary_cross_entropy_with_logits(model(x[m, idx]), y[m, idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            base_acc.append(float(((model(x_test[m]) > 0) == (y_test[m] > 0.5)).float().mean()))
    base_wall, base_cpu = time.perf_counter() - t0, time.process_time() - c0
    base_rss = rss_mb()

    # (b) the batched trainer over the whole cohort
    t0, c0 = time.perf_counter(), time.process_time()
    train_cohort(spec, params, x, y, lr, epochs, batch_size, seeds)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = accuracy_report(predict(spec, params, x_test), y_test, data["match_test"])["acc"]
    base_acc_arr = np.array(base_acc)
    peak = matmul_peak_gflops()
    return {
        "arch": spec.key(),
        "cohort": cohort,
        "baseline_models": k,
        "models_per_s": cohort / wall,
        "baseline_models_per_s": k / base_wall,
        "speedup": (cohort / wall) / (k / base_wall),
        "models_per_cpu_s": cohort / cpu,
        "baseline_models_per_cpu_s": k / base_cpu,
        "cpu_speedup": (cohort / cpu) / (k / base_cpu),
        # roofline: useful FLOPs (the per-model module's) per second, against this process's dense-matmul rate
        "train_gflop_per_model": flops_per_model / 1e9,
        "gflops": cohort * flops_per_model / wall / 1e9,
        "baseline_gflops": k * flops_per_model / base_wall / 1e9,
        "matmul_peak_gflops": peak,
        "ceiling_models_per_s": peak * 1e9 / flops_per_model,
        "ceiling_speedup": (peak * 1e9 / flops_per_model) / (k / base_wall),
        "peak_rss_mb_after_baseline": base_rss,
        "peak_rss_mb_after_batched": rss_mb(),
        "test_acc": quantiles(acc),
        "baseline_test_acc": quantiles(base_acc_arr),
        # the first k models were trained both ways from the same weights, data and batch order
        "same_models_max_abs_acc_diff": float(np.abs(acc[:k] - base_acc_arr).max()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default="mlp,gru,attention")
    ap.add_argument("--cohort", type=int, default=256, help="models in the batched cohort")
    ap.add_argument("--baseline-models", type=int, default=12, help="models trained one at a time")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: steadiest; on a shared 2-core machine more threads can be far slower)")
    ap.add_argument("--width", type=int, default=None,
                    help="hidden width of the GRU and attention models (default 32; the zoo configs use 16-32)")
    ap.add_argument("--quick", action="store_true", help="cohort 64, 2 per-model runs, 5 epochs (< 60 s)")
    ap.add_argument("--processes", type=int, default=1,
                    help="run this many copies at once (one per core, as the zoo build's actors do) and add up models/s")
    args = ap.parse_args(argv)
    if args.quick:
        args.cohort, args.baseline_models, args.epochs = min(args.cohort, 64), min(args.baseline_models, 2), 5
    torch.set_num_threads(args.threads)
    if args.width is not None:
        for family in ("gru", "attention"):
            ARCHS[family] = ARCHS[family].model_copy(update={"width": args.width})
    results = {}
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        bench_args = (ARCHS[family], args.cohort, args.baseline_models, args.epochs, args.n_train, 200, args.batch_size)
        if args.processes > 1:
            r = _aggregate([*_in_processes(bench_args, args.processes, args.threads)])
        else:
            r = bench_family(*bench_args)
        results[family] = r
        print(f"{family:9s} {r['arch']}: batched {r['models_per_s']:7.1f} models/s ({r['models_per_cpu_s']:.1f}/cpu-s, "
              f"M={r['cohort']})  per-model {r['baseline_models_per_s']:6.2f} models/s "
              f"({r['baseline_models_per_cpu_s']:.2f}/cpu-s, {r['baseline_models']} models)  "
              f"speedup {r['speedup']:5.1f}x (cpu {r['cpu_speedup']:.1f}x)  peak RSS {r['peak_rss_mb_after_batched']:.0f} MiB")
        ta, ba = r["test_acc"], r["baseline_test_acc"]
        print(f"{'':9s} test acc batched mean {ta['mean']:.3f} q10/50/90 {ta['q10']:.3f}/{ta['q50']:.3f}/{ta['q90']:.3f}"
              f"  per-model mean {ba['mean']:.3f} q10/50/90 {ba['q10']:.3f}/{ba['q50']:.3f}/{ba['q90']:.3f}"
              f"  same models max |diff| {r['same_models_max_abs_acc_diff']:.3f}")
        print(f"{'':9s} roofline: {r['train_gflop_per_model']:.3f} GFLOP per model; batched {r['gflops']:.1f} GFLOP/s, "
              f"per-model {r['baseline_gflops']:.1f} GFLOP/s, dense matmul {r['matmul_peak_gflops']:.1f} GFLOP/s "
              f"-> at most {r['ceiling_models_per_s']:.1f} models/s = {r['ceiling_speedup']:.1f}x the per-model loop",
              flush=True)
    print(json.dumps(results))
    return results


def _run_one(bench_args: tuple, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return bench_family(*bench_args)


def _in_processes(bench_args: tuple, processes: int, threads: int) -> list[dict[str, Any]]:
    """The same benchmark in several processes started together (both phases overlap across processes)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(processes) as pool:
        return pool.starmap(_run_one, [(bench_args, threads)] * processes)


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum throughput over concurrent processes; keep the first process's accuracy figures."""
    out = dict(runs[0])
    for key in ("models_per_s", "baseline_models_per_s", "gflops", "baseline_gflops", "matmul_peak_gflops",
                "ceiling_models_per_s"):
        out[key] = sum(r[key] for r in runs)
    out["speedup"] = out["models_per_s"] / out["baseline_models_per_s"]
    out["ceiling_speedup"] = out["ceiling_models_per_s"] / out["baseline_models_per_s"]
    out["processes"] = len(runs)
    return out


if __name__ == "__main__":
    main()
