"""A sweep's summary (`sweep.summary`) as fixed-width tables for the console: trials, groups
over seeds, and groups against each other."""

from __future__ import annotations

from tdmpc_ray.evaluate.report import interval
from tdmpc_ray.evaluate.stats import Interval


def format_table(summary: dict) -> str:
    """The trials as a fixed-width table, best first: the last evaluation's score with its 95%
    interval, and A - scratch with its interval and P(A > scratch) where there is a scratch
    trial."""
    columns = [
        "trial",
        *summary["space"],
        "status",
        "step",
        "score [95% interval]",
        "episodes",
        "vs scratch [95% interval]",
        "P(> scratch)",
        "updates_per_s",
    ]
    rows = [
        {
            **t,
            "score [95% interval]": _score_cell(t),
            "episodes": t.get("eval_episodes"),
            **_scratch_cells(t.get("vs_scratch"), t.get("scratch")),
        }
        for t in summary["trials"]
    ]
    return _fixed_width(columns, rows)


def format_groups(summary: dict) -> str:
    """Scores pooled over seeds (`group_over_seeds`) as a fixed-width table."""
    columns = [k for k in summary["space"] if k != "seed"] + [
        "n",
        "mean",
        "std",
        "min",
        "max",
        "pooled score [95% interval]",
        "vs scratch [95% interval]",
        "P(> scratch)",
    ]
    rows = [
        {
            **g,
            "pooled score [95% interval]": _score_cell(g.get("pooled")),
            **_scratch_cells(g.get("vs_scratch"), False),
        }
        for g in summary["groups"]
    ]
    return _fixed_width(columns, rows)


def format_pairs(summary: dict) -> str:
    """Every two groups over seeds against each other (`scratch.between_groups`) as a
    fixed-width table: A - B pooled over their common seeds, P(A > B), the verdict."""
    keys = [k for k in summary["space"] if k != "seed"]
    columns = ["A", "B", "seeds", "A - B [95% interval]", "P(A > B)", "verdict"]
    rows = []
    for pair in summary.get("pairs", []):
        row = {
            "A": "/".join(str(pair["a"][k]) for k in keys),
            "B": "/".join(str(pair["b"][k]) for k in keys),
            "seeds": len(pair["seeds"]),
        }
        if "error" in pair:
            row["verdict"] = "error: " + pair["error"]
        else:
            row.update(
                {
                    "A - B [95% interval]": Interval(**pair["difference"]).format(),
                    "P(A > B)": Interval(**pair["probability_of_improvement"]).format(),
                    "verdict": pair["verdict"],
                }
            )
        rows.append(row)
    return _fixed_width(columns, rows)


def _score_cell(scores: dict | None) -> str | None:
    if not scores or scores.get("normalized_score") is None:
        return None
    return interval(scores, "normalized_score").format()


def _scratch_cells(comparison: dict | None, scratch: bool | None) -> dict:
    """The `vs scratch` and `P(> scratch)` cells: the difference and P(improvement) with their
    intervals, `(scratch)` for the scratch trial itself, the reason when it failed."""
    if scratch:
        return {"vs scratch [95% interval]": "(scratch)"}
    if not comparison:
        return {}
    if "error" in comparison:
        return {"vs scratch [95% interval]": "error: " + comparison["error"]}
    return {
        "vs scratch [95% interval]": Interval(**comparison["difference"]).format(),
        "P(> scratch)": Interval(**comparison["probability_of_improvement"]).format(),
    }


def _fixed_width(columns: list[str], records: list[dict]) -> str:
    rows = [[_cell(r.get(c)) for c in columns] for r in records]
    widths = (
        [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        if rows
        else [len(c) for c in columns]
    )
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
