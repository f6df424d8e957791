"""Test-only estimators. Importable by the server through PYTHONPATH so joblib can unpickle them."""

from __future__ import annotations

import time

import numpy as np


class SlowModel:
    """predict_proba sleeps ``delay_s`` (releasing the GIL, like native code), then answers."""

    def __init__(self, delay_s: float, n_features: int = 3) -> None:
        self.delay_s = delay_s
        self.n_features_in_ = n_features
        self.classes_ = np.array(["a", "b"])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        p = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float).sum(axis=1)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]


class ExplodingModel(SlowModel):
    """Fails on every call, as a broken model would."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")


class PickyModel(SlowModel):
    """Fails on any call that contains the poison value 13.0 in its first column."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if (np.asarray(x, dtype=float)[:, 0] == 13.0).any():
            raise ValueError("poison row")
        return super().predict_proba(x)


class HangingModel(SlowModel):
    """Never returns from a call that contains the value 666.0 in its first column (a hung native call)."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if (np.asarray(x, dtype=float)[:, 0] == 666.0).any():
            while True:
                time.sleep(1)
        return super().predict_proba(x)


# The models above are plain pickles without a card. ferry refuses to unpickle a card-less file unless
# told the file is trusted; the tests that serve one say so with this environment.
TRUSTED_CARDLESS = {"FERRY_MODEL__REQUIRE_CARD": "false"}
