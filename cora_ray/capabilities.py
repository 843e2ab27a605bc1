"""What each `model.method` needs, answered without importing torch, transformers or Ray.

`cora_ray.model.build.model_class(method)` answers the same questions from the model classes' attributes
(`needs_cf`, `needs_placeholders`, `uses_collab_weights`, `trainable`: cora_ray/model/base.py), but it
imports the models, hence torch. Code that must stay light — a job's `--plan`, the missing-input hints of
cora_ray/bootstrap.py — asks this table instead:

    capabilities(cfg.model.method).needs_cf        # True for cora and collm

tests/test_capabilities.py checks that the table lists exactly the methods of `ModelConfig.method` and of
`MODEL_CLASSES`, and that each class attribute equals the table's value, so the two cannot drift apart.
What depends on more than the method (`shares_prefix`: the config's `model.delta_scope`) is not here: the
config (`ModelConfig.shares_prefix`) or the built model answers it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from cora_ray.errors import ModelError


@dataclass(frozen=True)
class MethodCapabilities:
    """One method's answers. The first five mirror the RecModel class attributes of the same name."""

    needs_cf: bool
    needs_placeholders: bool
    uses_collab_weights: bool
    trainable: bool
    prefix_per_user: bool
    # the CF backbone the method's paper pairs it with: what a hint suggests when nothing else names one
    # (CoLLM: MF); None when the method is used with every backbone (CoRA: MF, LightGCN and SASRec)
    paper_cf_backbone: str | None = None


CAPABILITIES: dict[str, MethodCapabilities] = {
    "cora": MethodCapabilities(
        needs_cf=True,
        needs_placeholders=False,
        uses_collab_weights=True,
        trainable=True,
        prefix_per_user=False,
    ),
    "tallrec": MethodCapabilities(
        needs_cf=False,
        needs_placeholders=False,
        uses_collab_weights=False,
        trainable=True,
        prefix_per_user=True,
    ),
    "collm": MethodCapabilities(
        needs_cf=True,
        needs_placeholders=True,
        uses_collab_weights=False,
        trainable=True,
        prefix_per_user=True,
        paper_cf_backbone="mf",
    ),
    "zero_shot": MethodCapabilities(
        needs_cf=False,
        needs_placeholders=False,
        uses_collab_weights=False,
        trainable=False,
        prefix_per_user=True,
    ),
}

# the fields that are also RecModel class attributes (tests/test_capabilities.py compares them)
CLASS_ATTRIBUTES = tuple(f.name for f in fields(MethodCapabilities) if f.name != "paper_cf_backbone")


def capabilities(method: str) -> MethodCapabilities:
    """`model.method` → its capabilities (ModelError naming the known methods for any other name)."""
    try:
        return CAPABILITIES[method]
    except KeyError:
        raise ModelError(
            f"unknown model.method {method!r}; expected one of {', '.join(CAPABILITIES)}"
        ) from None
