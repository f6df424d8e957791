"""The served model: verified loading and what the API knows about it before and after loading."""

from __future__ import annotations

import enum
import hashlib
import io
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np

from ferry.card import CardError, ModelCard, load_card
from ferry.features import FeatureSchema
from ferry.logging import get_logger
from ferry.settings import ModelSettings

log = get_logger("ferry.model")


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelLoadError(Exception):
    """The model must not be served. The message says why without paths or hashes (it is published by
    /readyz); ``detail`` holds those, for the log only."""

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class LoadedModel:
    estimator: Any
    sha256: str
    classes: list[str] | None  # class labels as strings, in predict_proba column order
    n_features: int | None

    @property
    def has_proba(self) -> bool:
        return self.classes is not None


class ModelHolder:
    """One model: its card (known at start) and, once verified and unpickled, the estimator."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.path = settings.path
        self.state = ModelState.LOADING
        self.reason: str | None = None
        self.loaded: LoadedModel | None = None
        self.card: ModelCard | None = None
        try:
            self.card = load_card(self.path)
        except CardError as exc:
            self._fail("the model card is unusable (see the log)", error=str(exc))
        self.name = self.card.name if self.card else (settings.name or self.path.stem)
        self.version = self.card.version if self.card else "unversioned"
        self.schema = FeatureSchema(self.card.features if self.card else None, self.card.example if self.card else None)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def _fail(self, reason: str, **detail: Any) -> None:
        """``reason`` is public (/readyz); ``detail`` (paths, hashes, exception text) goes to the log only."""
        self.state = ModelState.FAILED
        self.reason = reason
        log.error("model_load_failed", path=str(self.path), reason=reason, **detail)

    def load(self) -> None:
        """Verify the file's sha256, then unpickle. Blocking: run it off the event loop."""
        if self.state is ModelState.FAILED:
            return
        try:
            self.loaded = self._load()
        except ModelLoadError as exc:
            self._fail(str(exc), **exc.detail)
            return
        except Exception as exc:  # unpickling arbitrary files can raise anything
            self._fail(f"cannot load the model file ({type(exc).__name__})", error=f"{type(exc).__name__}: {exc}")
            return
        self.schema.set_width(self.loaded.n_features)
        self.state = ModelState.READY
        log.info(
            "model_loaded",
            model=self.name,
            version=self.version,
            sha256=self.loaded.sha256,
            verified=self.card is not None or self.settings.sha256 is not None,
        )

    def _load(self) -> LoadedModel:
        try:
            blob = self.path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read the model file ({exc.strerror})", error=str(exc)) from exc
        digest = hashlib.sha256(blob).hexdigest()
        if self.card is not None and self.card.sha256 != digest:
            raise ModelLoadError(
                "sha256 mismatch: the model file is not the one its card describes; refusing to unpickle it",
                expected_sha256=self.card.sha256,
                actual_sha256=digest,
            )
        if self.settings.sha256 is not None and self.settings.sha256 != digest:
            raise ModelLoadError(
                "sha256 mismatch: the model file is not the one FERRY_MODEL__SHA256 pins; refusing to unpickle it",
                expected_sha256=self.settings.sha256,
                actual_sha256=digest,
            )
        if self.card is None:
            if self.settings.require_card:
                raise ModelLoadError(
                    "the model has no card, and unpickling an unverified file runs whatever code it holds: "
                    "refused (FERRY_MODEL__REQUIRE_CARD=false serves a card-less file you trust)",
                    sha256=digest,
                )
            if self.settings.sha256 is None:
                log.warning(
                    "model_unverified",
                    path=str(self.path),
                    sha256=digest,
                    hint="add a model card or set FERRY_MODEL__SHA256 to verify the file before unpickling",
                )
        # Unpickle the bytes that were hashed, not the path: the file may change in between.
        estimator = joblib.load(io.BytesIO(blob))
        return self._check(estimator, digest)

    def _check(self, estimator: Any, digest: str) -> LoadedModel:
        if not callable(getattr(estimator, "predict", None)):
            raise ModelLoadError(f"the model file holds a {type(estimator).__name__}, which has no predict()")
        n_features = getattr(estimator, "n_features_in_", None)
        n_features = int(n_features) if n_features is not None else None
        if self.card is not None and n_features is not None and n_features != len(self.card.features):
            raise ModelLoadError(f"the card lists {len(self.card.features)} features, the model expects {n_features}")
        classes = None
        raw = getattr(estimator, "classes_", None)
        if raw is not None and callable(getattr(estimator, "predict_proba", None)):
            classes = [str(c.item() if isinstance(c, np.generic) else c) for c in raw]
            if self.card is not None and self.card.classes is not None and self.card.classes != classes:
                raise ModelLoadError(f"the card lists classes {self.card.classes}, the model has {classes}")
        return LoadedModel(estimator=estimator, sha256=digest, classes=classes, n_features=n_features)

    def describe(self) -> dict[str, Any]:
        """The card as published by the API (generated for a model that has none)."""
        if self.card is not None:
            return self.card.model_dump(mode="json")
        loaded = self.loaded
        width = loaded.n_features if loaded else None
        return {
            "name": self.name,
            "version": self.version,
            "sha256": loaded.sha256 if loaded else None,
            "description": "model served without a card: generic numeric schema",
            "features": [{"name": f"x{i}", "type": "number"} for i in range(width or 0)],
            "classes": loaded.classes if loaded else None,
            "performance": {},
            "args": {},
        }
