"""Reports: the docs/method.md §7 layout with the paper's numbers beside measured ones, and the PNG."""

from __future__ import annotations

from cora_ray.eval.report import (
    PAPER_RESULTS,
    ComparisonRow,
    comparison_markdown,
    evaluation_markdown,
    paper_row,
    paper_table_markdown,
    paper_values,
    plot_comparison,
)


def test_paper_rows_resolve_aliases_and_case():
    assert paper_row("cora-mf") == "CoRA-MF"
    assert paper_row("Zero-shot") == "ICL"
    assert paper_row("CoLLM") == "CoLLM-MF"
    assert paper_row("something else") is None
    assert paper_values("MF", "ml-1m") == (0.6486, 0.6396)
    assert paper_values("CoRA-MF", "amazon-book") == (0.8179, 0.6262)


def test_comparison_table_puts_paper_values_beside_measured_and_bolds_the_best():
    rows = [
        ComparisonRow(
            "MF", {"auc": 0.62, "uauc": 0.61, "rows": 7331, "users_used": 500, "users_skipped": 39}
        ),
        ComparisonRow(
            "CoRA-MF", {"auc": 0.70, "uauc": 0.60, "rows": 7331, "users_used": 500, "users_skipped": 39}
        ),
        ComparisonRow("SASRec", None, note="not run"),
    ]
    md = comparison_markdown(rows, "ml-1m", "test", title="t")
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| Method | ML-1M AUC | ML-1M AUC (paper) | ML-1M UAUC | ML-1M UAUC (paper)")
    mf = next(line for line in lines if line.startswith("| MF "))
    assert "0.6200" in mf and "0.6486" in mf and "**0.6100**" in mf
    cora = next(line for line in lines if line.startswith("| CoRA-MF "))
    assert "**0.7000**" in cora and "0.7361" in cora
    sasrec = next(line for line in lines if line.startswith("| SASRec (not run)"))
    assert "—" in sasrec and "0.7005" in sasrec


def test_paper_table_has_every_row_of_spec_7():
    md = paper_table_markdown()
    assert md.count("\n") == len(PAPER_RESULTS) + 2
    assert "| **CoRA-MF**" not in md and "| CoRA-MF | 0.8179 | 0.6262 | 0.7361 | 0.6884 |" in md


def test_evaluation_report_lists_every_split():
    doc = {
        "name": "CoRA-MF",
        "source": {"kind": "checkpoint", "uri": "runs/x"},
        "data": {"uri": "d", "dataset": "ml-1m", "hash": "abc"},
        "splits": {
            "test": {
                "rows": 10,
                "population": 100,
                "auc": 0.7,
                "uauc": 0.6,
                "users_used": 3,
                "users_skipped": 1,
                "positive_rate": 0.5,
            },
            "test_cold": {
                "rows": 1,
                "population": 1,
                "auc": None,
                "uauc": None,
                "note": "auc: needs both labels",
            },
        },
        "limit": 10,
        "seed": 42,
    }
    md = evaluation_markdown(doc)
    assert "| test | 10 of 100 | 0.7000 | 0.6000 | 3 | 1 | 0.500 |" in md
    assert "| test_cold | 1 | — | — |" in md
    assert "Paper (ML-1M" in md and "0.7361" in md


def test_plot_writes_a_png(tmp_path):
    rows = [ComparisonRow("MF", {"auc": 0.62, "uauc": 0.61}), ComparisonRow("Zero-shot", None)]
    path = plot_comparison(rows, "ml-1m", tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
