"""The model card: what a model is, what it takes, how well it did, and the hash that proves the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CARD_SUFFIX = ".card.json"


def card_path_for(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + CARD_SUFFIX)


class CardError(Exception):
    """The card exists but cannot be used."""


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    type: Literal["integer", "number", "boolean", "categorical"]
    minimum: float | None = None
    maximum: float | None = None
    categories: list[str] | None = Field(None, min_length=1)
    description: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Feature:
        if (self.type == "categorical") != (self.categories is not None):
            raise ValueError(f"feature {self.name!r}: categories are required for, and only for, categorical")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"feature {self.name!r}: minimum > maximum")
        return self


class ModelCard(BaseModel):
    """Card fields ferry relies on; any other field is kept and published as it is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    version: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the model file")
    features: list[Feature] = Field(min_length=1)
    classes: list[str] | None = None
    example: dict[str, Any] | None = None
    performance: dict[str, Any] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_features(self) -> ModelCard:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        return self


def load_card(model_path: Path) -> ModelCard | None:
    """The card beside ``model_path``, or None when there is none."""
    path = card_path_for(model_path)
    if not path.exists():
        return None
    try:
        return ModelCard.model_validate(json.loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError) as exc:
        raise CardError(f"model card {path} is unusable: {exc}") from exc
