"""Judging generated digits: a classifier trained on real ones, and a Frechet distance.

The judge is a small MLP (scikit-learn) trained on the training split of the digits. It gives
  - label accuracy: does a sample of label y look like a y to it;
  - confident share: how often its top class has probability >= 0.9;
  - features: its hidden layer, where the Frechet distance (Heusel et al. 2017, the "FID" with
    this network in place of Inception) compares generated and held-out real digits:
        FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).
The distance of two finite samples of the *same* distribution is not 0, so each report puts
the real-versus-real distance (a training subset of the generated set's size against the same
held-out set) beside it as the floor a perfect model would reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .extras import missing_sklearn

CONFIDENT = 0.9


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets (rows are samples), in float64.

    tr((S_1 S_2)^(1/2)) is computed as the sum of square roots of the eigenvalues of
    S_1^(1/2) S_2 S_1^(1/2), which is symmetric, so no general matrix square root is needed.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    cross = np.linalg.eigvalsh(root @ s2 @ root)
    trace_root = np.sqrt(np.clip(cross, 0.0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trace_root)
    return max(value, 0.0)


def to_levels(images_u8: np.ndarray, levels: int) -> np.ndarray:
    """Sampler output (N, H, W, C) uint8 0..255 back onto the data's ``levels`` (N, H*W*C) ints,
    the same quantisation the bound's discretized decoder assumes (Ho et al. 2020, eq. 13)."""
    x = images_u8.reshape(len(images_u8), -1).astype(np.float64) / 255.0
    return np.rint(x * (levels - 1)).astype(np.int64)


class DigitsJudge:
    """An MLP classifier on real digits (pixels / (levels - 1)), and its hidden layer as features."""

    def __init__(self, x_levels: np.ndarray, labels: np.ndarray, levels: int = 17, seed: int = 0) -> None:
        try:
            from sklearn.neural_network import MLPClassifier
        except ImportError:
            raise missing_sklearn("the digits quality check") from None

        self.levels = levels
        self.clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-4, max_iter=1000, random_state=seed)
        self.clf.fit(self._scale(x_levels), labels)

    def _scale(self, x_levels: np.ndarray) -> np.ndarray:
        return np.asarray(x_levels, np.float64).reshape(len(x_levels), -1) / (self.levels - 1)

    def proba(self, x_levels: np.ndarray) -> np.ndarray:
        return np.asarray(self.clf.predict_proba(self._scale(x_levels)))

    def features(self, x_levels: np.ndarray) -> np.ndarray:
        h = self._scale(x_levels) @ self.clf.coefs_[0] + self.clf.intercepts_[0]
        return np.maximum(h, 0.0)


@dataclass
class Judgement:
    fd: float
    accuracy: float | None
    confident: float


class DigitsReferee:
    """The judge plus the real data it compares against: training split and held-out split."""

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, held_x: np.ndarray, held_y: np.ndarray,
                 levels: int = 17, seed: int = 0) -> None:
        self.judge = DigitsJudge(train_x, train_y, levels, seed)
        self.train_x, self.train_y = train_x, train_y
        self.held_x, self.held_y = held_x, held_y
        self.held_features = self.judge.features(held_x)
        self._floors: dict[int, tuple[float, float]] = {}

    def judge_samples(self, x_levels: np.ndarray, asked: np.ndarray | None) -> Judgement:
        """FD to the held-out digits; accuracy against ``asked`` labels (None: unconditional)."""
        p = self.judge.proba(x_levels)
        accuracy = None if asked is None else float((p.argmax(1) == asked).mean())
        return Judgement(frechet_distance(self.judge.features(x_levels), self.held_features), accuracy,
                         float((p.max(1) >= CONFIDENT).mean()))

    def floor(self, n: int, repeats: int = 5, seed: int = 0) -> tuple[float, float]:
        """(mean, std) FD of real training subsets of size ``n`` (class-balanced, like the
        generated sets) against the held-out digits: what a model that reproduces the data scores."""
        if n not in self._floors:
            rng = np.random.default_rng(seed)
            values = []
            for _ in range(repeats):
                idx = balanced_subset(self.train_y, n, rng)
                values.append(frechet_distance(self.judge.features(self.train_x[idx]), self.held_features))
            self._floors[n] = (float(np.mean(values)), float(np.std(values)))
        return self._floors[n]

    def real_heldout(self) -> Judgement:
        """The judge on the held-out real digits themselves: its own accuracy and confidence."""
        p = self.judge.proba(self.held_x)
        return Judgement(0.0, float((p.argmax(1) == self.held_y).mean()), float((p.max(1) >= CONFIDENT).mean()))


def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    """0, 1, ..., num_classes-1, 0, 1, ...: the labels asked for n generated images."""
    return np.arange(n) % num_classes


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices whose labels follow ``balanced_labels(n, ...)``, drawn without replacement."""
    classes = np.unique(labels)
    want = balanced_labels(n, len(classes))
    out = []
    for i, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        k = int((want == i).sum())
        out.append(rng.choice(pool, size=min(k, len(pool)), replace=False))
    return np.concatenate(out)
