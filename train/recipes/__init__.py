"""The official ImageNet-1k training recipes as presets for ``vithub train --recipe NAME``: one small module per
recipe, each value with its source (repository, file, commit) beside it. A recipe sets options; options given
explicitly (flags, or arguments of :class:`~vithub.train.TrainConfig` that differ from their defaults) win."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, fields, replace
from typing import Any, Collection, Dict, Optional

from ..config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """A published training recipe: the :class:`TrainConfig` values it sets and where each comes from."""

    name: str
    description: str
    values: Dict[str, Any]
    sources: Dict[str, str]  # option name (or "*" for all the rest) -> repository, file and commit
    notes: str = ""
    # options the user must give (a fine-tuning recipe's starting weights) -> what to give
    requires: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "description": self.description, "values": dict(self.values),
                "sources": dict(self.sources), "notes": self.notes, "requires": dict(self.requires)}

    def check(self, config: TrainConfig) -> None:
        """Raise ``ValueError`` naming each option this recipe needs that ``config`` leaves unset."""
        for name, what in self.requires.items():
            if not getattr(config, name):
                raise ValueError(f"recipe {self.name} needs --{name.replace('_', '-')}: {what}")


def _load() -> Dict[str, Recipe]:
    recipes = {}
    for module in pkgutil.iter_modules(__path__):
        recipe = importlib.import_module(f"{__name__}.{module.name}").RECIPE
        recipes[recipe.name] = recipe
    return recipes


RECIPES: Dict[str, Recipe] = _load()


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))} (vithub recipes)")
    return RECIPES[name]


def apply_recipe(config: TrainConfig, explicit: Optional[Collection[str]] = None) -> TrainConfig:
    """``config`` with its recipe's values for every option not given explicitly (``explicit``: the options set on
    the command line; ``None``: those that differ from their defaults). The recipe's name moves to
    ``recipe_applied``, so applying again changes nothing."""
    if not config.recipe:
        return config
    recipe = get_recipe(config.recipe)
    if explicit is None:
        defaults = TrainConfig()
        explicit = {field.name for field in fields(TrainConfig) if getattr(config, field.name) !=
                    getattr(defaults, field.name)}
    values = {name: value for name, value in recipe.values.items() if name not in explicit}
    return replace(config, **values, recipe=None, recipe_applied=recipe.name)
