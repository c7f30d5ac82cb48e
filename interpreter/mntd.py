"""MNTD (Meta Neural Trojan Detection, Xu et al., IEEE S&P 2021) as a backdoor-detection baseline.

MNTD reads a model only through its outputs on a *learned* query set: ``n_queries`` inputs are optimized
jointly with a meta-classifier (an MLP over the concatenated outputs) on a zoo of clean and backdoored
models ("query tuning"; with labelled shadow models, its jumbo-learning setting). Here the zoo's training
side is the shadow set.

Our inputs are tokens, so a query is a relaxed sequence: at each position a softmax over the vocabulary
(``softmax(q / temperature)``). A subject model reads it through its own embedding table as the expected
embedding ``p @ embed``; every family embeds through ``params["embed"]`` and a gather, so the relaxed
input goes through each family's own batched forward unchanged: the table is replaced by the queries'
expected embeddings ([M, n_queries * L, D]) and the "tokens" index them. Subject weights stay frozen;
gradients reach the queries through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from zoo.arch import ArchSpec, Params
from zoo.families import get_family
from zoo.store import ZooStore


class MNTDConfig(BaseModel):
    """The MNTD baseline's knobs (defaults after the paper: 10 queries, a 2-layer meta-classifier)."""

    model_config = ConfigDict(extra="forbid")

    n_queries: int = Field(10, ge=1, description="learned query sequences")
    hidden: int = Field(20, ge=1, description="width of the meta-classifier's hidden layer")
    epochs: int = Field(300, ge=1, description="full passes over the training zoo")
    batch_size: int = Field(128, ge=1, description="subject models per step")
    lr: float = Field(1e-2, gt=0.0, description="Adam learning rate of queries and meta-classifier")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature of the relaxed query tokens")
    seed: int = 0


@dataclass
class Group:
    """Subject models of one architecture, stacked: their spec, weights and labels (NaN where unknown)."""

    spec: ArchSpec
    params: Params
    rows: np.ndarray  # positions of these models in the caller's id list


def load_groups(store: ZooStore, model_ids: Sequence[str]) -> list[Group]:
    """The models ``model_ids`` read from the zoo, stacked per cohort (one architecture each)."""
    manifest = store.read_manifest(columns=["model_id", "cohort_id", "index"])
    where = manifest.set_index("model_id").loc[list(model_ids)]
    where["row"] = np.arange(len(model_ids))
    groups = []
    for cohort_id, part in where.groupby("cohort_id", sort=True):
        spec, params, _ = store.load_cohort(str(cohort_id), verify=False)
        idx = torch.from_numpy(part["index"].to_numpy(np.int64).copy())
        groups.append(Group(spec, {k: v[idx].float() for k, v in params.items()}, part["row"].to_numpy()))
    return groups


def query_outputs(group: Group, queries: torch.Tensor, temperature: float, models: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [m, n_queries] of the group's models (or the rows ``models`` of it) on the relaxed queries [Q, L, V]."""
    params = group.params if models is None else {k: v[models] for k, v in group.params.items()}
    n_q, length, vocab = queries.shape
    soft = torch.softmax(queries / temperature, dim=-1).reshape(n_q * length, vocab)
    params = dict(params)
    params["embed"] = torch.matmul(soft, params["embed"])  # [m, Q*L, D]: each query position's expected embedding
    tokens = torch.arange(n_q * length).view(n_q, length)
    return get_family(group.spec).forward(group.spec, params, tokens)


class MNTD(nn.Module):
    """Learned relaxed queries and the meta-classifier over a model's outputs on them."""

    def __init__(self, cfg: MNTDConfig, vocab: int, length: int):
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.cfg = cfg
        self.queries = nn.Parameter(torch.randn(cfg.n_queries, length, vocab, generator=gen))
        self.meta = nn.Sequential(nn.Linear(cfg.n_queries, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))

    def forward(self, group: Group, models: torch.Tensor | None = None) -> torch.Tensor:
        """Backdoor logit per model of the group (or its rows ``models``)."""
        return self.meta(query_outputs(group, self.queries, self.cfg.temperature, models)).squeeze(-1)


def train_mntd(groups: list[Group], labels: np.ndarray, cfg: MNTDConfig, vocab: int, length: int) -> MNTD:
    """Fit queries and meta-classifier jointly (BCE) on the training models; ``labels`` [n] in the groups' rows."""
    torch.manual_seed(cfg.seed)
    model = MNTD(cfg, vocab, length)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    items = [(g, i) for g, group in enumerate(groups) for i in range(len(group.rows))]
    y = torch.as_tensor(labels, dtype=torch.float32)
    for _ in range(cfg.epochs):
        order = rng.permutation(len(items))
        for start in range(0, len(order), cfg.batch_size):
            batch = [items[k] for k in order[start: start + cfg.batch_size]]
            loss = torch.zeros(())
            for g, group in enumerate(groups):  # one batched forward per architecture in the batch
                idx = [i for gg, i in batch if gg == g]
                if idx:
                    rows = torch.as_tensor(idx)
                    logit = model(group, rows)
                    target = y[torch.as_tensor(group.rows[idx])]
                    loss = loss + nn.functional.binary_cross_entropy_with_logits(logit, target, reduction="sum")
            opt.zero_grad()
            (loss / len(batch)).backward()
            opt.step()
    return model


@torch.no_grad()
def mntd_scores(model: MNTD, groups: list[Group], n: int) -> np.ndarray:
    """Backdoor probability [n] of every model in the groups, in the caller's order."""
    out = np.zeros(n, dtype=np.float32)
    for group in groups:
        out[group.rows] = torch.sigmoid(model(group)).numpy()
    return out


def mntd_baseline(zoo_dir: str, train_ids: Sequence[str], train_labels: np.ndarray, test_ids: Sequence[str],
                  cfg: MNTDConfig, vocab: int, length: int) -> np.ndarray:
    """Train MNTD on the training models' backdoor labels; backdoor probabilities [n_test] of the test models."""
    store = ZooStore(zoo_dir)
    model = train_mntd(load_groups(store, train_ids), np.asarray(train_labels, dtype=np.float32), cfg, vocab, length)
    return mntd_scores(model, load_groups(store, test_ids), len(test_ids))

