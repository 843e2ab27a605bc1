"""Typed experiment configs: dataclasses loaded from YAML, with dotted command-line overrides.

    cfg = load_config(ExperimentConfig, "configs/demo.yaml", ["train.lr=1e-4", "model.rank=8"])

An unknown key or a value of the wrong type is a `ConfigError` that names the key and the file (or the
override) it came from. Override values are parsed as YAML scalars (`1e-4` → float, `true` → bool,
`[q_proj, v_proj]` → list).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from cora_ray.errors import ConfigError

T = TypeVar("T")
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

# ---------------------------------------------------------------------------------------------------------
# generic machinery
# ---------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to float). Raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{source}: key '{key}' must be one of {allowed}, got {value!r}")
        return value
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' expects a list, got {value!r}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' expects a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key, source): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{source}: key '{key}' expects a mapping (section {tp.__name__}), got {value!r}"
            )
        return _from_dict(tp, value, source, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' expects a bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' expects an int, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads `1e-3` (no dot) as a string; accept the scientific forms people type.
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{key}' expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}' expects a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: key '{key}' has an unsupported annotation {tp!r}")


def _from_dict(cls: type[T], data: dict, source: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (section {cls.__name__} has: {', '.join(sorted(names))})"
        )
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}", source) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if str(exc).startswith(source):
            raise
        raise ConfigError(f"{source}: {exc}") from None


def from_dict(cls: type[T], data: dict, source: str = "<dict>") -> T:
    """Build the dataclass `cls` from a nested mapping, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    return _from_dict(cls, data, source)


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts/lists (JSON- and YAML-serialisable)."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` → (["train", "lr"], 0.0001)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    # YAML reads "1e-4" as a string (YAML 1.1 wants a dot); accept the forms people type.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str], cls: type | None = None) -> dict:
    """Apply dotted overrides to a nested dict (in place). With `cls`, unknown keys are refused here."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        tp: Any = cls
        for i, part in enumerate(path):
            if tp is not None and dataclasses.is_dataclass(tp):
                hints = typing.get_type_hints(tp)
                if part not in hints:
                    raise ConfigError(
                        f"override '{text}': unknown key '{'.'.join(path[: i + 1])}' "
                        f"(section {tp.__name__} has: {', '.join(sorted(hints))})"
                    )
                tp = hints[part]
            else:
                tp = None
            if i == len(path) - 1:
                node[part] = value
            else:
                child = node.get(part)
                if child is None:
                    child = {}
                    node[part] = child
                if not isinstance(child, dict):
                    raise ConfigError(f"override '{text}': '{'.'.join(path[: i + 1])}' is not a section")
                node = child
    return data


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load `cls` from a YAML file (or defaults when `path` is None) and apply dotted overrides."""
    data = load_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    # Overrides are checked against the schema before merging so that the error names the override.
    apply_overrides(data, overrides, cls)
    if overrides:
        source = f"{source} (with overrides {' '.join(overrides)})"
    return from_dict(cls, data, source)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


# ---------------------------------------------------------------------------------------------------------
# experiment sections (docs/method.md §2–4 defaults)
# ---------------------------------------------------------------------------------------------------------

AUTHORS_TEMPLATE = (
    "#Question: A user has given high ratings to the following {domain_plural}: {history}. "
    "Leverage the information to predict whether the user would enjoy the {domain} titled {target}? "
    'Answer with "Yes" or "No". \\n#Answer:'
)
# The authors' sentences with the target title moved to the very end (their answer cue "\\n#Answer:" dropped:
# the chat template's assistant turn is the cue), so that everything after the title is a few tokens. With a
# shared-prefix scope (model.delta_scope user_prefix / suffix, docs/method.md §2.5) a candidate then costs its
# title, not the ~20-token question as well (token arithmetic in docs/method.md §2.5; chosen on validation or
# not at all: README "Prefix sharing").
TARGET_LAST_TEMPLATE = (
    "#Question: A user has given high ratings to the following {domain_plural}: {history}. "
    'Leverage the information to predict whether the user would enjoy a {domain}; answer with "Yes" or "No". '
    "The {domain} is titled {target}."
)
# `prompt.template` may name one of these instead of spelling a template out.
NAMED_TEMPLATES = {"authors": AUTHORS_TEMPLATE, "target_last": TARGET_LAST_TEMPLATE}


@dataclass
class DataConfig:
    """Where the protocol dataset lives (output of jobs/prepare_data.py)."""

    uri: str = "artifacts/ml-1m"  # local path or s3://bucket/prefix
    s3_endpoint: str | None = None  # overrides AWS_ENDPOINT_URL when set


@dataclass
class PromptConfig:
    """docs/method.md §3 prompt. `{history}` and `{target}` are filled with quoted titles."""

    template: str = AUTHORS_TEMPLATE  # a template, or a name in NAMED_TEMPLATES ("authors", "target_last")
    domain: str = "movie"  # "book" for Amazon-Book
    domain_plural: str = "movies"
    empty_history: str = "unkow"  # the authors' literal placeholder
    max_history: int = 10
    max_prompt_tokens: int = 256  # history titles are dropped (oldest first) to fit; the target never is
    chat_template: bool = False  # wrap the question in the tokenizer's chat template (instruct models)

    def __post_init__(self) -> None:
        self.template = NAMED_TEMPLATES.get(self.template, self.template)
        _check(self.max_history >= 0, f"prompt.max_history must be >= 0, got {self.max_history}")
        _check(
            self.max_prompt_tokens > 16,
            f"prompt.max_prompt_tokens must be > 16, got {self.max_prompt_tokens}",
        )
        for name in ("{history}", "{target}"):
            _check(name in self.template, f"prompt.template must contain {name}")


@dataclass
class LLMConfig:
    """The frozen base LLM."""

    name_or_path: str = "bundled:smollm2-135m"  # HF dir, hub id, s3:// prefix or bundled:smollm2-135m
    answer_token: str = " Yes"
    negative_token: str | None = None  # set (" No") to score logit(Yes) - logit(No)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on GPU
    trust_remote_code: bool = False
    cache_dir: str | None = None  # where converted / downloaded models live (default: user cache dir)
    # matmul weights of the base LLM (no embeddings / LM head), used only by `jobs/train.py --plan`'s FLOP
    # estimate when the model is neither a local directory with a config.json nor in cora_ray/train/plan.py's table
    num_parameters: float | None = None


@dataclass
class GeneratorConfig:
    """docs/method.md §2.2 collaborative query generator."""

    num_queries: int = 4  # k
    num_layers: int = 8  # N
    hidden_size: int = 512  # d (= 2 x CF dim in the paper)
    num_heads: int = 8
    ffn_size: int = 3072
    dropout: float = 0.1
    # A LayerNorm on e_u and one on e_i before they form the memory token (as BLIP-2 normalises the image
    # features its Q-Former reads): G's dependence on the row no longer hangs on the CF backbone's vector scale.
    # Off = the paper's generator; for backbones whose vectors barely move G at initialisation (docs/method.md
    # §2.2, `python jobs/generator_input.py`)
    memory_norm: bool = False

    def __post_init__(self) -> None:
        for name in ("num_queries", "num_layers", "hidden_size", "num_heads", "ffn_size"):
            _check(getattr(self, name) > 0, f"model.generator.{name} must be > 0, got {getattr(self, name)}")
        _check(
            self.hidden_size % self.num_heads == 0,
            f"model.generator.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})",
        )
        _check(0.0 <= self.dropout < 1.0, f"model.generator.dropout must be in [0, 1), got {self.dropout}")


DELTA_SCOPES = ("all", "user_prefix", "suffix")


@dataclass
class ModelConfig:
    """Which method, and its trainable parts."""

    method: Literal["cora", "tallrec", "collm", "zero_shot"] = "cora"
    cf_artifact: str | None = None  # URI of a jobs/pretrain_cf.py artifact (cora, collm)
    rank: int = 16  # r
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    # false (default, as the authors' code does): every row gets a G generated from its CF vectors, also
    # rows whose user has no train interactions (an untrained vector). true: such rows get G = 0, the plain
    # LLM. Training never shows the model a zero G (every train user is known). Decided on validation rows:
    # on 800 ML-1M valid rows (269 with a cold user) a 64-step demo checkpoint scored AUC 0.721 with false and
    # 0.689 with true (+0.032, paired bootstrap 95% interval [+0.011, +0.054];
    # results/cf_signal/demo64_valid/cf_signal.md, docs/decisions.md §2).
    zero_delta_for_cold_users: bool = False
    # Where in the prompt the collaborative delta applies (docs/method.md §2.5):
    #   all          every position (the paper's method);
    #   user_prefix  the prompt before the target title (instruction + history) sees a user-only G_u (the
    #                generator fed the user's CF vector and a learned "no item" vector), the target title and
    #                the answer cue see G(u, i): the prefix depends on the user alone, so its keys/values
    #                are computed once per user and shared by all of that user's candidates;
    #   suffix       only the target title and the answer cue see G(u, i); the prefix is the plain LLM.
    delta_scope: Literal["all", "user_prefix", "suffix"] = "all"
    # TALLRec: one shared LoRA
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # CoLLM (docs/method.md §8): an MLP maps the CF vectors to the token embeddings at the prompt's user and
    # item placeholders.
    #   faithful      the authors' recipe: a TALLRec LoRA (lora_rank / lora_alpha / lora_targets / dropout
    #                 above) trained first on text-only prompts (stage 1, model.method=tallrec), then the MLP
    #                 D -> 10·D -> d_model trained with that LoRA loaded from model.init_from and, by default,
    #                 frozen (stage 2);
    #   mapping_only  no LoRA, MLP D -> collm_hidden -> d_model trained on the frozen LLM: an ablation, and what
    #                 method collm was before the faithful recipe existed (the default, so that checkpoints
    #                 written then, whose config has no collm_variant, still load as what they are).
    collm_variant: Literal["faithful", "mapping_only"] = "mapping_only"
    collm_hidden: int | None = None  # the MLP's hidden width; None: faithful 10 x CF dim, mapping_only 1024
    collm_freeze_lora: bool = True  # faithful: the stage-1 LoRA stays as loaded (false: trained with the MLP)
    # A checkpoint whose trained LoRA starts this run (CoLLM stage 2: the stage-1 TALLRec checkpoint, e.g.
    # runs/<run>/best); its base LLM, dataset, answer tokens and LoRA shape must be this run's. Read when
    # training starts from scratch only (a resumed run has the LoRA in its own checkpoint).
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check(self.rank > 0, f"model.rank must be > 0, got {self.rank}")
        _check(self.lora_rank > 0, f"model.lora_rank must be > 0, got {self.lora_rank}")
        _check(self.alpha > 0, f"model.alpha must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(len(self.targets) > 0, "model.targets must name at least one module suffix")
        self._check_collm()
        _check(
            self.delta_scope in DELTA_SCOPES,
            f"model.delta_scope must be one of {', '.join(DELTA_SCOPES)}, got {self.delta_scope!r}",
        )
        _check(
            self.delta_scope == "all" or self.method == "cora",
            f"model.delta_scope={self.delta_scope} needs a collaborative delta: only model.method=cora has one "
            f"(got method {self.method!r})",
        )

    def _check_collm(self) -> None:
        _check(
            self.collm_hidden is None or self.collm_hidden > 0,
            f"model.collm_hidden must be > 0 (or null), got {self.collm_hidden}",
        )
        _check(
            self.init_from is None or self.collm_uses_lora,
            f"model.init_from loads a stage-1 LoRA: only model.method=collm with model.collm_variant=faithful "
            f"takes one (got method {self.method!r}, collm_variant {self.collm_variant!r})",
        )
        _check(
            not (self.collm_uses_lora and self.collm_freeze_lora and not self.init_from),
            "model.collm_variant=faithful with model.collm_freeze_lora=true (the authors' stage 2) needs "
            "model.init_from: the stage-1 TALLRec checkpoint whose LoRA it keeps (e.g. runs/<run>/best); "
            "set model.collm_freeze_lora=false to train a fresh LoRA together with the mapping",
        )

    @property
    def collm_uses_lora(self) -> bool:
        """CoLLM as its authors train it: a TALLRec LoRA on the LLM under the CF token mapping."""
        return self.method == "collm" and self.collm_variant == "faithful"

    @property
    def shares_prefix(self) -> bool:
        """The prompt's prefix (before the target title) does not depend on the item: it can be computed
        once per (user, history) and shared by all of that user's rows."""
        return self.delta_scope != "all"


@dataclass
class TrainConfig:
    """docs/method.md §4 optimisation + the Ray Train / DeepSpeed run."""

    lr: float = 1e-3
    warmup_steps: int = 200
    warmup_start_lr: float = 1e-5
    min_lr: float = 8e-5
    weight_decay: float = 1e-3
    # The global batch (rows per optimizer step) is the configured quantity; micro-batch and accumulation
    # are derived from it for any num_workers (cora_ray/train/batch.py). Unset: micro_batch_size (default 8)
    # x num_workers x grad_accum_steps (default 1), the legacy way. After construction all four are set.
    global_batch_size: int | None = None
    micro_batch_size: int | None = None  # rows per worker per forward (None: derived)
    grad_accum_steps: int | None = None  # micro-batches per optimizer step (None: derived)
    max_micro_batch_size: int | None = None  # cap when deriving the micro-batch (None: no cap)
    grad_clip: float = 1.0
    max_steps: int = 1000
    eval_every: int = 100
    eval_limit: int | None = None  # score at most this many valid_small rows per validation (None: all)
    patience: int = 20
    seed: int = 42
    # the seed of the fixed validation sample (eval_limit rows of valid_small): the same rows for every
    # train.seed, so that runs over several training seeds are validated on one set (42: the sample that
    # seed-42 runs used before this key existed)
    eval_seed: int = 42
    zero_stage: int = 2
    num_workers: int = 1
    use_gpu: bool = False
    gradient_checkpointing: bool = False
    storage_path: str = "runs"
    run_name: str | None = None
    checkpoints_to_keep: int = 2
    max_failures: int = 0
    # --- added for the Ray Train / Ray Data run (cora_ray/train) ---
    eval_batch_size: int | None = None  # validation batch size (None: micro_batch_size)
    log_every: int = 10  # console line every N optimizer steps (the JSONL gets every step)
    # global: Ray Data random_shuffle of the id rows; local: the stored order's blocks shuffled; prefix_groups:
    # rows sharing (user, history) kept adjacent, groups in a seeded random order, no local buffer (they would
    # be scattered again) — what lets a user_prefix / suffix model compute each prefix once per micro-batch.
    # An ablation: on ML-1M at the demo budget it did not learn (validation AUC 0.52 vs 0.72 shuffled;
    # results/delta_scope_grouping/README.md) — a micro-batch then holds one or two users' correlated labels
    shuffle: Literal["global", "local", "prefix_groups"] = "global"
    shuffle_buffer_rows: int = 1024  # per-worker local shuffle buffer of encoded rows (0: none)
    cpu_threads_per_worker: int | None = None  # torch threads per worker on CPU (None: cores / num_workers)
    save_optimizer_state: bool = True  # AdamW moments per rank in each checkpoint (exact resume)
    tensorboard: bool = (
        False  # TensorBoard event files on rank 0; needs `pip install 'cora_ray[tensorboard]'`
    )
    accelerator_type: str | None = (
        None  # GPU runs: ScalingConfig(accelerator_type=...), e.g. "A100" (cluster.yaml)
    )

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.min_lr >= 0, f"train.min_lr must be >= 0, got {self.min_lr}")
        _check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("global_batch_size", "micro_batch_size", "grad_accum_steps", "max_micro_batch_size"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"train.{name} must be > 0 (or null), got {value}")
        _check(self.max_steps > 0, f"train.max_steps must be > 0, got {self.max_steps}")
        _check(self.eval_every > 0, f"train.eval_every must be > 0, got {self.eval_every}")
        _check(
            self.zero_stage in (0, 1, 2, 3), f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}"
        )
        _check(self.num_workers > 0, f"train.num_workers must be > 0, got {self.num_workers}")
        _check(
            self.checkpoints_to_keep > 0,
            f"train.checkpoints_to_keep must be > 0, got {self.checkpoints_to_keep}",
        )
        _check(self.patience > 0, f"train.patience must be > 0, got {self.patience}")
        _check(self.grad_clip >= 0, f"train.grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_start_lr >= 0, f"train.warmup_start_lr must be >= 0, got {self.warmup_start_lr}")
        _check(
            self.max_failures >= -1,
            f"train.max_failures must be >= -1 (-1: unlimited), got {self.max_failures}",
        )
        _check(self.log_every > 0, f"train.log_every must be > 0, got {self.log_every}")
        _check(
            self.shuffle_buffer_rows >= 0,
            f"train.shuffle_buffer_rows must be >= 0, got {self.shuffle_buffer_rows}",
        )
        for name in ("eval_limit", "eval_batch_size", "cpu_threads_per_worker"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"train.{name} must be > 0 (or null), got {value}")
        from cora_ray.train.batch import resolve_batch  # the one place the batch split is decided

        split = resolve_batch(
            global_batch_size=self.global_batch_size,
            micro_batch_size=self.micro_batch_size,
            grad_accum_steps=self.grad_accum_steps,
            num_workers=self.num_workers,
            max_micro_batch_size=self.max_micro_batch_size,
        )
        self.global_batch_size = split.global_batch_size
        self.micro_batch_size = split.micro_batch_size
        self.grad_accum_steps = split.grad_accum_steps

    def effective_zero_stage(self, world_size: int) -> int:
        """The ZeRO stage DeepSpeed runs: `zero_stage`, except 1 and 2 on a single worker, which run as 0.

        ZeRO-1 and ZeRO-2 partition the optimizer state (and gradients) over data-parallel ranks; with one rank
        there is nothing to partition, and what remains is their bookkeeping: every gradient copied into a flat
        buffer in backward, flattened again into the fp32 partition, the updated partition copied back into the
        module — ~10% of a 1-worker CPU step of configs/demo.yaml (docs/training.md, "ZeRO stage"). ZeRO-3 is
        kept as asked: it also changes how parameters are held and gathered."""
        if world_size == 1 and self.zero_stage in (1, 2):
            return 0
        return self.zero_stage


@dataclass
class ExperimentConfig:
    """One experiment = one YAML file in configs/ (one row of the paper's table)."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
