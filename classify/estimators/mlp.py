"""MLP probe in the HEAR / EVAR style: one hidden layer, dropout, early stopping.

Early stopping watches a patient-disjoint hold-out carved from the training data (groups), so
the val split stays free for choosing hyper-parameters, as for the other probes. All randomness
(initial weights, dropout masks, batch order) comes from one local generator seeded with
`random_state`: fitting never reads or changes torch's global seed.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GroupShuffleSplit
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight

from classify.estimators.linear import scaler_from_state
from classify.estimators.state_checks import class_indices, field


class _Dropout(torch.nn.Module):
    """Dropout whose masks come from a given generator."""

    def __init__(self, p: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator) >= self.p
        return x * keep / (1 - self.p)


def _init_linear(layer: torch.nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default Linear initialisation, drawn from `generator`."""
    torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(layer.in_features)
    torch.nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class MLPProbe(ClassifierMixin, BaseEstimator):
    def __init__(self, hidden: int = 256, dropout: float = 0.3, lr: float = 1e-3, weight_decay: float = 1e-4,
                 max_epochs: int = 100, patience: int = 10, batch_size: int = 256, holdout: float = 0.1,
                 random_state: int = 0) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.holdout = holdout
        self.random_state = random_state

    def _net(self, n_in: int, n_out: int, generator: torch.Generator | None = None) -> torch.nn.Module:
        skip_init = torch.nn.utils.skip_init  # weights come from `generator` or a saved state
        net = torch.nn.Sequential(
            skip_init(torch.nn.Linear, n_in, self.hidden), torch.nn.ReLU(), _Dropout(self.dropout, generator),
            skip_init(torch.nn.Linear, self.hidden, n_out))
        if generator is not None:
            with torch.no_grad():
                _init_linear(net[0], generator)
                _init_linear(net[3], generator)
        return net

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> "MLPProbe":
        gen = torch.Generator().manual_seed(self.random_state)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X).astype(np.float32)
        groups = np.arange(len(y)) if groups is None else groups
        fit_idx, stop_idx = next(GroupShuffleSplit(1, test_size=self.holdout, random_state=self.random_state)
                                 .split(Xs, y_idx, groups))
        weights = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(self.classes_)), y=y_idx),
                               dtype=torch.float32)
        loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
        net = self._net(X.shape[1], len(self.classes_), gen)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        xt, yt = torch.from_numpy(Xs[fit_idx]), torch.from_numpy(y_idx[fit_idx])
        xv, yv = torch.from_numpy(Xs[stop_idx]), torch.from_numpy(y_idx[stop_idx])
        best, best_state, waited = np.inf, None, 0
        for _ in range(self.max_epochs):
            net.train()
            for batch in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                opt.zero_grad()
                loss_fn(net(xt[batch]), yt[batch]).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(net(xv), yv))
            if val_loss < best - 1e-4:
                best, waited = val_loss, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = self.net_(torch.from_numpy(self.scaler_.transform(X).astype(np.float32)))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def describe(self) -> str:
        return f"mlp={self.hidden},dropout={self.dropout:g}"

    def state(self) -> dict[str, np.ndarray]:
        """Scaler statistics and the network's weights as arrays."""
        return {"classes": self.classes_, "mean": self.scaler_.mean_, "scale": self.scaler_.scale_,
                "var": self.scaler_.var_,
                **{f"net:{k}": v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}}

    @classmethod
    def from_state(cls, params: dict, state: dict[str, np.ndarray]) -> "MLPProbe":
        probe = cls(**params)
        class_indices(state, None)
        # finite weights; their shapes are checked by load_state_dict against the network
        weights = {k[4:]: torch.from_numpy(np.array(field(state, k))) for k in state if k.startswith("net:")}
        probe.classes_, probe.scaler_ = state["classes"], scaler_from_state(state)
        probe.net_ = probe._net(len(state["mean"]), len(state["classes"]))
        probe.net_.load_state_dict(weights)  # tensors only: nothing but numbers is read
        probe.net_.eval()
        probe.n_features_in_ = len(state["mean"])
        return probe
