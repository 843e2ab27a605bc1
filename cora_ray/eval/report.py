"""Reports: the docs/method.md §7 table with measured values beside the paper's, and a grouped-bar PNG.

Pure functions over plain dicts (what `metrics.json` holds), so that reports can be rebuilt from stored
results without a model, and importable without Ray or torch. matplotlib is imported (Agg backend) only
inside `plot_comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# docs/method.md §7: (AUC, UAUC) on the test split, Vicuna-7B on GPUs.
PAPER_RESULTS: dict[str, dict[str, tuple[float, float]]] = {
    "MF": {"amazon-book": (0.7105, 0.5543), "ml-1m": (0.6486, 0.6396)},
    "LightGCN": {"amazon-book": (0.7026, 0.5619), "ml-1m": (0.5858, 0.6512)},
    "SASRec": {"amazon-book": (0.6675, 0.5614), "ml-1m": (0.7005, 0.6734)},
    "ICL": {"amazon-book": (0.5180, 0.5043), "ml-1m": (0.5119, 0.5178)},
    "TALLRec": {"amazon-book": (0.6583, 0.4971), "ml-1m": (0.7044, 0.6741)},
    "CoLLM-MF": {"amazon-book": (0.8021, 0.5782), "ml-1m": (0.7028, 0.6714)},
    "BinLLM": {"amazon-book": (0.8157, 0.5724), "ml-1m": (0.7132, 0.6815)},
    "CoRA-MF": {"amazon-book": (0.8179, 0.6262), "ml-1m": (0.7361, 0.6884)},
    "CoRA-LightGCN": {"amazon-book": (0.7886, 0.5689), "ml-1m": (0.7128, 0.6966)},
    "CoRA-SASRec": {"amazon-book": (0.7677, 0.5961), "ml-1m": (0.7019, 0.6517)},
}
PAPER_LABELS = {
    "ICL": "ICL (zero-shot LLM)",
    "TALLRec": "TALLRec (LoRA, text only)",
    "CoLLM-MF": "CoLLM-MF (CF embeddings as prompt tokens)",
}
# Names people write in configs → the paper's row.
PAPER_ALIASES = {
    "zero-shot": "ICL",
    "zero_shot": "ICL",
    "zeroshot": "ICL",
    "icl": "ICL",
    "collm": "CoLLM-MF",
    "cora": "CoRA-MF",
}
DATASET_LABELS = {"ml-1m": "ML-1M", "amazon-book": "Amazon-Book"}


def paper_row(name: str | None) -> str | None:
    """The docs/method.md §7 row a method name refers to (case-insensitive; aliases like 'zero-shot' → 'ICL')."""
    if not name:
        return None
    for key in PAPER_RESULTS:
        if key.lower() == name.lower():
            return key
    return PAPER_ALIASES.get(name.lower())


def paper_values(name: str | None, dataset: str) -> tuple[float, float] | None:
    row = paper_row(name)
    return PAPER_RESULTS.get(row, {}).get(dataset) if row else None


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


@dataclass
class ComparisonRow:
    """One method's line: its measured split metrics (a `metrics.json` split entry) and its paper row."""

    name: str
    metrics: dict | None  # {"auc", "uauc", "rows", "users_skipped", ...} or None when not run
    paper: str | None = None  # docs/method.md §7 row name; None → looked up from `name`
    note: str = ""
    # several training seeds: {"n": seeds evaluated, "of": seeds configured}; metrics then hold the mean
    # over the seeds and "auc_std" / "uauc_std" (sample standard deviation, None for one seed)
    spread: dict | None = None

    @property
    def paper_key(self) -> str | None:
        return paper_row(self.paper or self.name)

    def cell(self, key: str) -> str:
        """The table cell of `key` ("auc" | "uauc"): the value, or mean ± std (n=…) over training seeds."""
        m = self.metrics or {}
        text = _fmt(m.get(key))
        if self.spread is None or m.get(key) is None:
            return text
        std = m.get(f"{key}_std")
        return (f"{text} ± {_fmt(std)}" if std is not None else text) + f" (n={self.spread.get('n')})"


def comparison_markdown(
    rows: Sequence[ComparisonRow],
    dataset: str,
    split: str = "test",
    title: str | None = None,
    notes: str = "",
) -> str:
    """The docs/method.md §7 layout for one dataset: each measured AUC / UAUC beside the paper's value.

    The best measured AUC and UAUC are in bold, as in the paper."""
    label = dataset_label(dataset)
    measured_auc = [r.metrics.get("auc") for r in rows if r.metrics]
    measured_uauc = [r.metrics.get("uauc") for r in rows if r.metrics]
    best_auc = max((v for v in measured_auc if _finite(v)), default=None)
    best_uauc = max((v for v in measured_uauc if _finite(v)), default=None)
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines += [
        f"Split: `{split}`. Measured values beside the paper's (docs/method.md §7, Vicuna-7B); **bold** = best measured"
        + (" (by the mean over seeds)." if any(r.spread for r in rows) else "."),
        "",
        f"| Method | {label} AUC | {label} AUC (paper) | {label} UAUC | {label} UAUC (paper) | Rows | Users in UAUC | Users skipped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r.metrics or {}
        pv = paper_values(r.paper_key, dataset)
        auc_s = r.cell("auc")
        uauc_s = r.cell("uauc")
        if best_auc is not None and m.get("auc") == best_auc:
            auc_s = f"**{auc_s}**"
        if best_uauc is not None and m.get("uauc") == best_uauc:
            uauc_s = f"**{uauc_s}**"
        name = r.name + (f" ({r.note})" if r.note else "")
        lines.append(
            f"| {name} | {auc_s} | {_fmt(pv[0] if pv else None)} | {uauc_s} | {_fmt(pv[1] if pv else None)} "
            f"| {m.get('rows', '—')} | {m.get('users_used', '—')} | {m.get('users_skipped', '—')} |"
        )
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def _signed(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}"


def _interval_cells(d: dict | None) -> list[str]:
    if not d or d.get("ci") is None:
        return [_signed((d or {}).get("observed")), "—", "—"]
    lo, hi = d["ci"]
    return [_signed(d["observed"]), f"[{_signed(lo)}, {_signed(hi)}]", "yes" if d["zero_in_ci"] else "**no**"]


def differences_markdown(diffs: Sequence[dict], split: str, resamples: int, seed: int) -> str:
    """The "Differences" section: paired bootstrap intervals of AUC(A) − AUC(B) and UAUC(A) − UAUC(B)
    (entries of cora_ray/eval/bootstrap.paired_bootstrap, with a/b labels; "skipped" when a side is missing)."""
    lines = [
        "### Differences",
        "",
        f"Paired bootstrap on the `{split}` rows both methods scored: {resamples} resamples (seed {seed}); "
        "95% interval = 2.5 / 97.5 percentiles of the resampled difference. AUC: rows drawn with replacement; "
        "UAUC: users drawn with replacement (a user's rows together, each drawn user counting its own AUC). "
        "A method with several training seeds counts as the mean over its seeds on each resample; two methods "
        "with seeds are compared on the seeds both have (listed). The interval covers the sampling of test rows, "
        "not the spread between training seeds. **no** = 0 is outside the interval.",
        "",
        "| A − B | seeds A / B | AUC diff | 95% CI | 0 in CI | UAUC diff | 95% CI | 0 in CI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in diffs:
        name = f"{d.get('a_label', d['a'])} − {d.get('b_label', d['b'])}"
        if d.get("skipped"):
            lines.append(f"| {name} | — | — | — | — | — | — | — ({d['skipped']}) |")
            continue
        seeds = d.get("seeds", {})
        paired = d.get("paired_seeds")
        count = f"{seeds.get(d['a'], '?')} / {seeds.get(d['b'], '?')}"
        lines.append(
            f"| {name} | {count}"
            + (f" (seeds {', '.join(map(str, paired))})" if paired else "")
            + " | "
            + " | ".join(_interval_cells(d.get("auc")) + _interval_cells(d.get("uauc")))
            + " |"
        )
    return "\n".join(lines) + "\n"


def paper_table_markdown() -> str:
    """docs/method.md §7 as published (both datasets), for reference."""
    lines = [
        "| Method | Amazon-Book AUC | Book UAUC | ML-1M AUC | ML-1M UAUC |",
        "|---|---|---|---|---|",
    ]
    for key, values in PAPER_RESULTS.items():
        b, m = values["amazon-book"], values["ml-1m"]
        lines.append(f"| {PAPER_LABELS.get(key, key)} | {b[0]:.4f} | {b[1]:.4f} | {m[0]:.4f} | {m[1]:.4f} |")
    return "\n".join(lines) + "\n"


def evaluation_markdown(doc: dict) -> str:
    """`report.md` of one evaluation run (`doc` = the metrics.json content)."""
    dataset = doc.get("data", {}).get("dataset") or ""
    name = doc.get("name") or doc.get("method") or "model"
    pv = paper_values(doc.get("paper") or name, dataset) if dataset else None
    lines = [f"# Evaluation: {name}", ""]
    src = doc.get("source", {})
    lines.append(
        f"- source: `{src.get('kind')}` {('`' + src['uri'] + '`') if src.get('uri') else ''}".rstrip()
    )
    if doc.get("base_llm"):
        lines.append(f"- base LLM: `{doc['base_llm'].get('identity')}`")
    data = doc.get("data", {})
    lines.append(
        f"- data: `{data.get('uri')}` ({dataset or 'unknown dataset'}, hash `{str(data.get('hash'))[:12]}`)"
    )
    if doc.get("limit"):
        lines.append(f"- sample: at most {doc['limit']} rows per split, seed {doc.get('seed')} (stable)")
    if doc.get("wall_s") is not None:
        lines.append(
            f"- wall time: {doc['wall_s']:.1f} s for {doc.get('rows_scored', '?')} scored rows "
            f"({doc.get('rows_per_s', float('nan')):.2f} rows/s, {doc.get('num_actors', '?')} actor(s))"
        )
    lines += [
        "",
        "| Split | Rows | AUC | UAUC | Users in UAUC | Users skipped | Positive rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, m in doc.get("splits", {}).items():
        rows = f"{m.get('rows')}" + (
            f" of {m['population']}" if m.get("population", m.get("rows")) != m.get("rows") else ""
        )
        lines.append(
            f"| {split} | {rows} | {_fmt(m.get('auc'))} | {_fmt(m.get('uauc'))} | {m.get('users_used', '—')} "
            f"| {m.get('users_skipped', '—')} | {_fmt(m.get('positive_rate'), 3)} |"
        )
    for split, m in doc.get("splits", {}).items():
        if m.get("note"):
            lines.append(f"\n{split}: {m['note']}")
    if pv:
        lines += [
            "",
            f"Paper ({dataset_label(dataset)}, test, Vicuna-7B): AUC {pv[0]:.4f}, UAUC {pv[1]:.4f}.",
        ]
    return "\n".join(lines) + "\n"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_comparison(
    rows: Sequence[ComparisonRow], dataset: str, path: str | Path, split: str = "test"
) -> Path:
    """Grouped bars: measured AUC and UAUC per method; the paper's values as black ticks over each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    names = [r.name for r in rows]
    auc_vals = [(r.metrics or {}).get("auc") for r in rows]
    uauc_vals = [(r.metrics or {}).get("uauc") for r in rows]
    paper = [paper_values(r.paper_key, dataset) for r in rows]
    x = np.arange(len(rows))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    for offset, values, color, label, idx in (
        (-width / 2, auc_vals, "#3b75af", "AUC", 0),
        (width / 2, uauc_vals, "#ef8636", "UAUC", 1),
    ):
        heights = [v if _finite(v) else 0.0 for v in values]
        errors = [
            (r.metrics or {}).get(f"{label.lower()}_std") if r.spread else None for r in rows
        ]  # std over training seeds
        bars = ax.bar(
            x + offset,
            heights,
            width,
            label=f"{label} (measured)",
            color=color,
            yerr=[e if _finite(e) else np.nan for e in errors] if any(_finite(e) for e in errors) else None,
            capsize=3,
        )
        for bar, v, e in zip(bars, values, errors, strict=True):
            text = f"{v:.3f}" if _finite(v) else "n/a"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height() + (e if _finite(e) else 0.0)),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
        px = [x[i] + offset for i, p in enumerate(paper) if p]
        py = [p[idx] for p in paper if p]
        if px:
            ax.scatter(
                px,
                py,
                marker="_",
                s=500,
                color="black",
                linewidths=2,
                label="paper (Vicuna-7B)" if idx == 0 else None,
                zorder=3,
            )
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right")
    finite = [v for v in auc_vals + uauc_vals if _finite(v)] + [v for p in paper if p for v in p]
    low = min(finite + [0.5]) if finite else 0.4
    ax.set_ylim(max(0.0, low - 0.08), min(1.0, max(finite + [0.5]) + 0.08) if finite else 1.0)
    y_low = ax.get_ylim()[0]
    for i, r in enumerate(rows):
        if not r.metrics:
            ax.text(x[i], y_low + 0.01, "not run", ha="center", va="bottom", fontsize=8, color="grey")
    ax.set_ylabel("score")
    ax.set_title(f"{dataset_label(dataset)} ({split}): measured vs paper")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
