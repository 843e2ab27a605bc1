"""docs/deploy.md: every `ray …` / `serve …` command in its code blocks parses with the installed CLI, and
the files, job scripts and job flags it names are the repository's. Also the headline numbers of its cost
estimate follow from the arithmetic it states.

The commands are parsed with the real click commands of ray and Ray Serve (`make_context`, which checks
options and arguments without running anything), so a renamed flag or a missing argument fails here.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNBOOK = REPO / "docs" / "deploy.md"
OWN_FILES = ("cluster.yaml", "runtime_env.yaml")  # shipped with the runbook itself


def _shell_lines(markdown: str) -> list[str]:
    """Logical shell lines of the ```bash blocks: continuations joined, heredoc bodies dropped."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        text = block.replace("\\\n", " ")
        heredoc_end = None
        for line in text.splitlines():
            if heredoc_end is not None:
                if line.strip() == heredoc_end:
                    heredoc_end = None
                continue
            m = re.search(r"<<-?\s*'?(\w+)'?", line)
            if m:
                heredoc_end = m.group(1)
            if line.strip():
                lines.append(line)
    return lines


def _commands(line: str) -> list[list[str]]:
    """Simple commands of a line, split at && || ; |, leading VAR=value assignments removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out, current = [], []
    for tok in lexer:
        if tok and set(tok) <= set(";&|"):
            out.append(current)
            current = []
        else:
            current.append(tok)
    out.append(current)
    result = []
    for cmd in out:
        while cmd and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            result.append(cmd)
    return result


@dataclass
class Runbook:
    checked: list[str] = field(default_factory=list)  # "ray up", "serve deploy", ...
    errors: list[str] = field(default_factory=list)
    files: set[str] = field(default_factory=set)  # repository paths the commands name
    job_flags: dict[str, set[str]] = field(default_factory=dict)  # jobs/x.py -> --flags used


def _analyse(cmd: list[str], book: Runbook, clis: dict) -> None:
    import click

    if cmd[0] == "bash" and len(cmd) >= 3 and cmd[1] == "-c":
        for inner in _commands(cmd[2]):
            _analyse(inner, book, clis)
        return
    if cmd[0] == "python" and len(cmd) >= 2 and cmd[1].endswith(".py"):
        script, args = cmd[1], cmd[2:]
        book.files.add(script)
        book.job_flags.setdefault(script, set()).update(a for a in args if a.startswith("--"))
        for flag, value in zip(args, args[1:], strict=False):
            if flag == "--config":
                book.files.add(value)
        return
    if cmd[0] not in clis:
        return
    node, path, rest = clis[cmd[0]], [cmd[0]], cmd[1:]
    while isinstance(node, click.Group) and rest and rest[0] in node.commands:
        node, path, rest = node.commands[rest[0]], [*path, rest[0]], rest[1:]
    name = " ".join(path)
    if isinstance(node, click.Group):
        book.errors.append(f"`{' '.join(cmd)}`: '{name}' has no subcommand {rest[:1]}")
        return
    try:
        ctx = node.make_context(name, list(rest))
    except click.ClickException as exc:
        book.errors.append(f"`{' '.join(cmd)}`: {exc.format_message()}")
        return
    book.checked.append(name)
    params = ctx.params
    for key in ("cluster_config_file", "runtime_env", "config_or_import_path"):
        value = params.get(key)
        if isinstance(value, str) and not value.startswith("$") and ":" not in value:
            book.files.add(value)
    # what runs elsewhere: a job's entrypoint, a command `ray exec` runs on the head
    inner_line = " ".join(shlex.quote(t) for t in params.get("entrypoint") or ())
    if name == "ray exec":
        inner_line = params["cmd"]
    for inner in _commands(inner_line):
        _analyse(inner, book, clis)


@pytest.fixture(scope="module")
def runbook() -> Runbook:
    from ray.scripts.scripts import cli as ray_cli
    from ray.serve.scripts import cli as serve_cli

    book = Runbook()
    for line in _shell_lines(RUNBOOK.read_text()):
        for cmd in _commands(line):
            _analyse(cmd, book, {"ray": ray_cli, "serve": serve_cli})
    return book


def test_every_ray_and_serve_command_of_the_runbook_parses_with_the_installed_cli(runbook):
    assert not runbook.errors, "\n".join(runbook.errors)
    wanted = {
        "ray up",
        "ray down",
        "ray dashboard",
        "ray job submit",
        "ray job logs",
        "ray get-auth-token",
        "ray exec",
        "ray status",
        "ray metrics launch-prometheus",
        "serve deploy",
        "serve status",
        "serve shutdown",
    }
    missing = wanted - set(runbook.checked)
    assert not missing, f"the runbook lacks these steps: {sorted(missing)}"


def test_the_runbooks_own_files_exist_and_its_commands_use_them(runbook):
    for name in OWN_FILES:
        assert (REPO / name).is_file(), f"{name} is missing"
        assert name in runbook.files, f"no command of the runbook uses {name}"
    assert "jobs/train.py" in runbook.files and "serve.config" in runbook.files


def test_files_named_by_the_runbook_exist_in_the_repository(runbook):
    missing = sorted(f for f in runbook.files if not (REPO / f).exists())
    own = [f for f in missing if f in OWN_FILES]
    assert not own, f"missing: {own}"
    if missing:  # job scripts and configs other work streams add
        pytest.skip(f"not in the repository yet: {', '.join(missing)}")


def test_job_flags_used_by_the_runbook_exist_in_the_job_scripts(runbook):
    unknown, absent = [], []
    for script, flags in sorted(runbook.job_flags.items()):
        path = REPO / script
        if not path.is_file():
            absent.append(script)
            continue
        source = path.read_text()
        unknown += [f"{script} {flag}" for flag in sorted(flags) if f'"{flag}"' not in source]
    assert not unknown, f"flags the scripts do not define: {unknown}"
    if absent:
        pytest.skip(f"not in the repository yet: {', '.join(absent)}")


def test_the_serve_config_the_runbook_deploys_is_accepted_by_serve():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = REPO / "serve.config"
    if not path.is_file():
        pytest.skip("serve.config is not in the repository yet")
    # what `serve deploy` / `serve run` check first; e.g. a local working_dir ("." ) is refused here
    ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def test_the_cost_estimates_headline_numbers_follow_from_its_arithmetic():
    """The per-row numbers; the per-run tables are recomputed from configs/ below."""
    text = RUNBOOK.read_text()
    matmul_params = 32 * (4 * 4096**2 + 3 * 4096 * 11008)  # Vicuna-7B without embeddings / LM head
    forward = 2 * matmul_params * 190
    smol = 30 * (576 * (576 + 192 + 192 + 576) + 3 * 576 * 1536)
    expect = {
        "6.476e9": matmul_params / 1e9,
        "2.46e12": forward / 1e12,
        "4.92e12": 2 * forward / 1e12,
        "1.062e8": smol / 1e8,
        "92 GFLOP/s": 2 * smol * 190 / 0.44 / 1e9,
    }
    for written, value in expect.items():
        assert written in text, f"the runbook no longer states {written}"
        number = float(re.match(r"[\d.]+", written).group())
        assert abs(number - value) / value < 0.01 or abs(number - value) <= 0.05, f"{written} != {value:.4g}"


# --- §8: the cost and time table is computed from the shipped configs -------------------------------------

SPLITS = {"ml1m": ("ML-1M", 33_891, 7_331), "book": ("Amazon-Book", 727_463, 25_747)}  # train / test rows
GPU_PRICE = {"A100": 32.77 / 8, "H100": 98.32 / 8, "A10G": 5.67 / 4}  # $ per GPU-hour (docs/deploy.md §8)
TIME_ROWS = [  # (row label, GPU, MFU, cost of a training row in forwards)
    ("A100, MFU 35 % (109 TFLOP/s)", "A100", 0.35, 2),
    ("A100, MFU 20 %", "A100", 0.20, 2),
    ("H100, MFU 35 %", "H100", 0.35, 2),
    ("A10G with gradient checkpointing (3F), MFU 35 %", "A10G", 0.35, 3),
]


def _plans() -> dict:
    """The plan of every shipped GPU config (one GPU), by dataset; each dataset's configs must agree."""
    from cora_ray.config import ExperimentConfig, load_config
    from cora_ray.train.plan import build_plan

    by_dataset: dict = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        prefix = path.name.split("_")[0]
        if prefix not in SPLITS:
            continue
        plan = build_plan(load_config(ExperimentConfig, path, ["train.num_workers=1"]))
        key = (plan.training_rows, plan.validation_rows, plan.eval_every, plan.tokens_per_row)
        by_dataset.setdefault(prefix, {})[path.name] = (key, plan)
    return by_dataset


def _sci(x: float, digits: int = 3) -> str:
    """4.92e17, as the runbook writes FLOP counts."""
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _hours_and_cost(h: float, price: float) -> str:
    cost = h * price
    hours = f"{h:.2f}" if h < 1 else f"{h:.1f}"
    return f"{hours} h, ${cost:.1f}" if cost < 20 else f"{hours} h, ${cost:.0f}"


def expected_cost_table() -> list[str]:
    """The rows of §8's two tables, as the runbook must write them."""
    from cora_ray.train.plan import PEAK_FLOPS

    rows, times = [], {}
    plans = _plans()
    for prefix in SPLITS:
        configs = plans[prefix]
        label, train_split, test_rows = SPLITS[prefix]
        (_, p), *_ = configs.values()
        f = p.flop_per_forward_row
        total = p.training_flop + p.validation_flop + test_rows * f
        rows.append(
            f"| {label}, batch {p.global_batch_size} | {p.max_steps:,} steps × {p.global_batch_size} = "
            f"{p.training_rows:,} rows ({p.training_rows / train_split:.2f} epochs) → {_sci(p.training_flop)} | "
            f"every {p.eval_every:,} steps: {p.validations} × {p.validation_rows_per_validation:,} = "
            f"{p.validation_rows:,} rows → {_sci(p.validation_flop)} ({100 * p.validation_compute_share:.1f} % of "
            f"training + validation) | {test_rows:,} rows → {_sci(test_rows * f, 2)} | **{_sci(total, 2)}** |"
        )
        for name, gpu, mfu, k in TIME_ROWS:
            flop = k * p.training_rows * f + p.validation_rows * f + test_rows * f
            h = flop / (PEAK_FLOPS[gpu] * mfu) / 3600
            times.setdefault(name, []).append(_hours_and_cost(h, GPU_PRICE[gpu]))
    rows += [f"| {name} | {' | '.join(cells)} |" for name, cells in times.items()]
    return rows


def test_every_config_of_a_dataset_has_the_budget_the_cost_table_assumes():
    for prefix, configs in _plans().items():
        keys = {name: key for name, (key, _) in configs.items()}
        assert len(set(keys.values())) == 1, f"{prefix} configs differ in steps / validation: {keys}"


def test_the_cost_table_is_computed_from_the_shipped_configs():
    text = RUNBOOK.read_text()
    missing = [row for row in expected_cost_table() if row not in text]
    assert not missing, "docs/deploy.md §8 disagrees with configs/; expected rows:\n" + "\n".join(missing)
