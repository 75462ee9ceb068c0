"""Ensembles of whole recipes at patient level: the mean of their patient probabilities, the members
chosen by forward selection on out-of-fold patient probabilities of the fit groups only (each
recipe's inner CV), then one decision rule fit on the chosen members' mean out-of-fold probabilities.
Nothing here takes a test patient: the test probabilities are only averaged and decided.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from classify.evaluation.rules import DecisionRule, GroupTable

Key = Callable[[np.ndarray, np.ndarray], tuple]


def aligned(ids: np.ndarray, by_member: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each member's probabilities with rows in `ids` order; members must cover every id."""
    out = {}
    for name, (member_ids, proba) in by_member.items():
        index = {p: i for i, p in enumerate(member_ids)}
        missing = [p for p in ids if p not in index]
        if missing:
            raise ValueError(f"ensemble member {name} has no probabilities for {len(missing)} patients "
                             f"(e.g. {missing[:3]})")
        out[name] = proba[[index[p] for p in ids]]
    return out


def _fit_rule(make_rule: Callable[[], DecisionRule], ids, proba, y, key: Key) -> tuple[DecisionRule, tuple]:
    table = GroupTable.from_patients(ids, proba)
    rule = make_rule().fit(table, y, key)
    return rule, tuple(key(y, rule.predict(table)))


def forward_select(oof: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, int],
                   make_rule: Callable[[], DecisionRule], key: Key) -> tuple[list[str], DecisionRule, tuple]:
    """Members (names of `oof`: member -> (fit patient ids, out-of-fold probabilities)) chosen
    greedily: the best single one by `key`, then while adding a member raises the key of the mean
    of the chosen ones, the member that raises it most (ties: the first in `oof` order). Returns
    the chosen members, the rule fit on their mean and its key."""
    ids = np.array(sorted(set.intersection(*(set(i) for i, _ in oof.values()))))
    probas = aligned(ids, oof)
    y = np.array([labels[p] for p in ids])
    chosen: list[str] = []
    best_rule, best_key = None, None
    while True:
        step = None
        for name in probas:
            if name in chosen:
                continue
            rule, value = _fit_rule(make_rule, ids, np.mean([probas[m] for m in chosen + [name]], axis=0), y, key)
            if step is None or value > step[2]:
                step = (name, rule, value)
        if step is None or (best_key is not None and not step[2] > best_key):
            return chosen, best_rule, best_key
        chosen.append(step[0])
        best_rule, best_key = step[1], step[2]


def ensemble_predict(members: list[str], rule: DecisionRule, test: dict[str, tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test patient ids, calls, mean probabilities) of the chosen members."""
    ids = np.array(sorted(test[members[0]][0]))
    probas = aligned(ids, {m: test[m] for m in members})
    proba = np.mean([probas[m] for m in members], axis=0)
    return ids, rule.predict(GroupTable.from_patients(ids, proba)), proba
