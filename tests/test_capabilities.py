"""Methods and CF backbones declare what they need; nobody outside build/config compares their names.

The AST scan below fails when a method name (cora_ray.model.build.MODEL_CLASSES) or a CF backbone name
(cora_ray.cf.models.BACKBONE_CLASSES) is compared as a string (==, !=, in, not in, match) anywhere in
cora_ray/, serve/ or jobs/ outside the files that define the names. Comparisons against a source's `kind`
(cora_ray/infer/source.py: checkpoint / cf / zero_shot) are not method names and are not flagged.

Code that must not import torch (cora_ray/bootstrap.py, behind `jobs/train.py --plan`) asks the torch-free
table of cora_ray/capabilities.py; the tests below hold it equal to the model classes' attributes.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from cora_ray.capabilities import CAPABILITIES, CLASS_ATTRIBUTES, capabilities
from cora_ray.cf.models import BACKBONE_CLASSES, SASRec, backbone_class
from cora_ray.config import ModelConfig
from cora_ray.errors import ModelError
from cora_ray.model.base import RecModel
from cora_ray.model.build import MODEL_CLASSES, model_class

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("cora_ray", "serve", "jobs")
# where the names are defined and turned into classes
ALLOWED = {"cora_ray/config.py", "cora_ray/cf/config.py", "cora_ray/model/build.py"}
NAMES = {n.lower() for n in (*MODEL_CLASSES, *BACKBONE_CLASSES)}


def _is_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.lower() in NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_name(e) for e in node.elts)
    return False


def _is_kind(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "kind") or (
        isinstance(node, ast.Name) and node.id == "kind"
    )


def name_comparisons(source: str) -> list[int]:
    """Line numbers where a method/backbone name is compared as a string."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_name(o) for o in operands) and not any(_is_kind(o) for o in operands):
                lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and _is_name(node.value):
            lines.append(node.lineno)
    return lines


def _offences() -> dict[str, list[int]]:
    out = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found = name_comparisons(path.read_text())
            if found:
                out[rel] = found
    return out


def test_the_scan_finds_what_it_looks_for() -> None:
    assert name_comparisons('if cfg.model.method == "collm":\n    pass\n') == [1]
    assert name_comparisons('x = m in ("cora", "tallrec")\n') == [1]
    assert name_comparisons('x = (b or "").lower() == "SASRec"\n') == [1]
    assert name_comparisons('match m:\n    case "zero_shot":\n        pass\n') == [2]
    assert name_comparisons('x = source.kind == "zero_shot"\ny = {"cora": 1}\nz = m == "other"\n') == []


def test_no_method_or_backbone_name_compared_outside_build_and_config() -> None:
    offences = {f: lines for f, lines in _offences().items() if f not in ALLOWED}
    assert not offences, f"ask the model/backbone class (needs_cf, uses_history, ...) instead: {offences}"


def test_capabilities_are_answered_by_the_class_without_building_a_model() -> None:
    cora, collm, tallrec, zero = (model_class(m) for m in ("cora", "collm", "tallrec", "zero_shot"))
    assert issubclass(cora, RecModel) and cora.needs_cf and cora.uses_collab_weights
    assert not cora.needs_placeholders and cora.trainable
    assert collm.needs_cf and collm.needs_placeholders and not collm.uses_collab_weights
    assert not tallrec.needs_cf and not tallrec.needs_placeholders and tallrec.trainable
    assert not zero.trainable and not zero.needs_cf and not zero.uses_collab_weights
    # every registered method is the class of that name
    assert all(cls.method == name for name, cls in MODEL_CLASSES.items())
    with pytest.raises(ModelError, match="unknown model.method"):
        model_class("lora")


def test_backbones_answer_their_own_questions() -> None:
    assert [n for n, c in BACKBONE_CLASSES.items() if c.uses_history] == ["sasrec"]
    assert backbone_class("sasrec") is SASRec
    assert all(cls.name == name for name, cls in BACKBONE_CLASSES.items())
    with pytest.raises(ModelError, match="unknown CF backbone"):
        backbone_class("bpr")


# ---- the torch-free table (cora_ray/capabilities.py) ---------------------------------------------------


def test_the_table_lists_exactly_the_configurable_and_built_methods() -> None:
    configurable = set(typing.get_args(typing.get_type_hints(ModelConfig)["method"]))
    assert set(CAPABILITIES) == configurable == set(MODEL_CLASSES)


@pytest.mark.parametrize("method", sorted(MODEL_CLASSES))
def test_the_table_answers_what_the_model_class_answers(method: str) -> None:
    cls, table = model_class(method), capabilities(method)
    assert CLASS_ATTRIBUTES  # the comparison below is over something
    for name in CLASS_ATTRIBUTES:
        assert getattr(cls, name) == getattr(table, name), (method, name)
    # each is a capability the base class declares (shares_prefix, also declared there, depends on the
    # config's model.delta_scope and not on the method alone: the model instance answers it, not the table)
    declared = {n for n, v in vars(RecModel).items() if isinstance(v, bool) and not n.startswith("_")}
    assert set(CLASS_ATTRIBUTES) <= declared


def test_the_paper_backbone_is_a_real_backbone_and_unknown_methods_are_refused() -> None:
    named = {c.paper_cf_backbone for c in CAPABILITIES.values()} - {None}
    assert named and named <= set(BACKBONE_CLASSES)
    assert all(c.needs_cf for c in CAPABILITIES.values() if c.paper_cf_backbone)
    assert {f.name for f in dataclasses.fields(capabilities("cora"))} - set(CLASS_ATTRIBUTES) == {
        "paper_cf_backbone"
    }
    with pytest.raises(ModelError, match="unknown model.method 'lora'; expected one of cora"):
        capabilities("lora")


def test_bootstrap_and_the_table_import_without_torch_or_ray() -> None:
    code = (
        "import sys, cora_ray.bootstrap, cora_ray.capabilities\n"
        "print(sorted(m for m in ('ray', 'torch', 'transformers', 'deepspeed') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
