"""Finding and replacing the linear layers an adapter targets, by module-name suffix.

`q_proj` matches `model.layers.3.self_attn.q_proj` (a whole dotted component, never `xq_proj`). Both the
collaborative layers (CoRA) and the shared LoRA (TALLRec) are injected through here, so a wrong target is
reported the same way for every method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cora_ray.errors import ModelError


def matches_target(name: str, targets: Sequence[str]) -> bool:
    """True when the dotted module name ends with one of `targets` as a whole component."""
    return any(name == t or name.endswith("." + t) for t in targets)


def find_targets(
    model: nn.Module, targets: Sequence[str], in_features: int | None = None
) -> list[tuple[str, nn.Linear]]:
    """The (name, module) pairs of `model` whose name ends with a target suffix, checked to be adaptable.

    Every match must be a plain `nn.Linear` (with `in_features` inputs when given); every target must match
    at least once. Anything else is a ModelError that names the module, so a config typo or an FFN target
    of the wrong width (down_proj takes the intermediate size, not d_model) fails at build time.
    """
    found: list[tuple[str, nn.Linear]] = []
    for name, module in model.named_modules():
        if not matches_target(name, targets):
            continue
        if type(module) is not nn.Linear:
            raise ModelError(
                f"target module '{name}' is a {type(module).__name__}, not a plain torch.nn.Linear "
                "(already wrapped by another adapter, or a target suffix that names a block, not a projection)"
            )
        if in_features is not None and module.in_features != in_features:
            raise ModelError(
                f"target module '{name}' takes {module.in_features} inputs, but a collaborative layer needs "
                f"d_model = {in_features} inputs (G is d_model x r); drop it from model.targets "
                "(e.g. down_proj takes the FFN width)"
            )
        found.append((name, module))
    for target in targets:
        if not any(matches_target(name, [target]) for name, _ in found):
            linears = sorted(
                {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
            )
            raise ModelError(
                f"target '{target}' matches no module of the LLM; its linear layers end with: {linears}"
            )
    return found


def replace_targets(
    model: nn.Module,
    targets: Sequence[str],
    wrap: Callable[[str, nn.Linear], nn.Module],
    in_features: int | None = None,
) -> dict[str, nn.Module]:
    """Replace every target linear layer by `wrap(name, layer)` in place; return {name: new module}."""
    replaced: dict[str, nn.Module] = {}
    for name, module in find_targets(model, targets, in_features):
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = wrap(name, module)
        setattr(parent, child_name, new)
        replaced[name] = new
    return replaced
