"""Compare the models and their DVC experiments: a leaderboard in Markdown and HTML.

Each model declares in its metrics module (``EVALUATION``) one selection metric, the number its
experiments are ranked by and a promotion must beat, its headline metrics and its key pictures.
The selection metric is a validation figure of the run's chosen checkpoint; its test counterpart
is shown beside it, for reading only (ranking many experiments by a test figure would select on
the test split and bias the figure published). Experiments come from ``dvc exp show --json``
(``pipeline/`` runs it); a failed experiment, or one without the metric, is listed last and never
ranked above a scored one.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sightline.errors import InputError
from sightline.registry import get_evaluation, list_models
from sightline.spread import as_number, selection_spread


def selection(model: str) -> tuple[str, str]:
    """``(metric, "max" | "min")``: what the model's experiments are ranked by (its metrics
    module declares it); an unknown model is a ``ConfigError``."""
    return get_evaluation(model).selection


@dataclass
class Experiment:
    """One row of ``dvc exp show``: a commit (``baseline``) or an experiment derived from it."""

    name: str
    rev: str
    params: dict = field(default_factory=dict)  # params.yaml, nested
    metrics: dict = field(default_factory=dict)  # model name -> its metrics dict
    error: str | None = None
    baseline: bool = False


def _metrics_by_model(data: dict) -> dict[str, dict]:
    out = {}
    for path, entry in (data.get("metrics") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("data"), dict):
            out[Path(path).stem] = entry["data"]
    return out


def _params(data: dict) -> dict:
    entry = (data.get("params") or {}).get("params.yaml") or {}
    return entry.get("data") or {}


def _error(entry: dict) -> str | None:
    err = entry.get("error")
    if not err:
        return None
    if isinstance(err, dict):
        return err.get("msg") or err.get("type") or "failed"
    return str(err)


def parse_exp_show(rows: list[dict]) -> list[Experiment]:
    """Flatten ``dvc exp show --json`` (DVC 3): commits, then the experiments of each."""
    out = []
    for row in rows:
        if row.get("rev") == "workspace":
            continue
        data = row.get("data") or {}
        out.append(
            Experiment(
                row.get("name") or row["rev"][:7],
                row["rev"],
                _params(data),
                _metrics_by_model(data),
                _error(row),
                baseline=True,
            )
        )
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                d = rev.get("data") or {}
                out.append(
                    Experiment(
                        exp.get("name") or rev.get("name") or rev["rev"][:7],
                        rev["rev"],
                        _params(d),
                        _metrics_by_model(d),
                        _error(rev),
                    )
                )
    return out


def score(exp: Experiment, model: str) -> float | None:
    """The model's selection metric in ``exp``, or ``None`` (failed, missing, not a number)."""
    if exp.error:
        return None
    return as_number(exp.metrics.get(model, {}).get(selection(model)[0]))


def shown_test(exp: Experiment, model: str) -> float | None:
    """The test counterpart of the selection metric in ``exp`` (shown, never ranked)."""
    if exp.error:
        return None
    return as_number(exp.metrics.get(model, {}).get(get_evaluation(model).test))


def rank(experiments: list[Experiment], model: str) -> list[tuple[Experiment, float | None]]:
    """Best first by the model's selection metric; unscored experiments last, in input order."""
    sign = -1.0 if selection(model)[1] == "max" else 1.0
    scored = [(e, score(e, model)) for e in experiments]
    good = sorted((p for p in scored if p[1] is not None), key=lambda p: sign * p[1])
    return good + [p for p in scored if p[1] is None]


def better(model: str, a: float, b: float) -> bool:
    """Whether ``a`` beats ``b`` on the model's selection metric (strictly)."""
    return a > b if selection(model)[1] == "max" else a < b


def choose(
    experiments: list[Experiment], model: str, name: str | None = None
) -> tuple[Experiment, float]:
    """The experiment to promote for ``model``: the one called ``name`` (or whose rev starts with
    it), else the best-ranked one. ``InputError`` (one line) for an unknown model or experiment,
    or one without the selection metric."""
    if model not in list_models():
        raise InputError(f"unknown model {model!r} (known: {', '.join(list_models())})")
    key = selection(model)[0]
    if name is not None:
        found = [
            e for e in experiments if e.name == name or (len(name) >= 7 and e.rev.startswith(name))
        ]
        if not found:
            known = ", ".join(e.name for e in experiments if not e.baseline) or "none"
            raise InputError(f"unknown experiment {name!r} (experiments: {known})")
        value = score(found[0], model)
        if value is None:
            why = f"failed: {found[0].error}" if found[0].error else f"has no {key}"
            raise InputError(f"experiment {name!r} {why}; nothing to promote")
        return found[0], value
    ranked = [(e, v) for e, v in rank(experiments, model) if v is not None]
    if not ranked:
        raise InputError(f"no experiment has {model}'s {key}; run `dvc exp run` first")
    return ranked[0]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def changed_params(section: dict, defaults: dict) -> dict[str, Any]:
    """Keys of a model's params section whose value differs from the schema's default
    (``upstream``, the stage wiring, is not a hyperparameter and is left out)."""
    flat, base = flatten(section), flatten(defaults)
    return {k: v for k, v in flat.items() if k in base and base[k] != v and k != "upstream"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "—" if value is None else str(value)


def spread_note(model: str, spreads: dict[str, dict] | None) -> str:
    """`` ± 0.0012 (3 seeds)`` from the model's ``make spread`` file, or ``""``; the file's
    ``differs`` (keys of today's params it was not measured with) are named after it."""
    spread = (spreads or {}).get(model)
    std = selection_spread(model, spread)
    if std is None:
        return ""
    differs = spread.get("differs") or []
    shown = ", ".join(differs[:3]) + (", ..." if len(differs) > 3 else "")
    other = f"; measured with other params: {shown}" if differs else ""
    return f" ± {_fmt(std)} ({len(spread.get('seeds', []))} seeds{other})"


def model_rows(
    metrics: dict[str, dict], changed: dict[str, dict], spreads: dict[str, dict] | None = None
) -> list[list[str]]:
    """One row per model: name, selection metric (± its seed spread), headline metrics, time,
    params, changes."""
    rows = []
    for model in sorted(metrics):
        m = metrics[model]
        key, mode = selection(model)
        heads = ", ".join(f"{k} {_fmt(m.get(k))}" for k in get_evaluation(model).headline)
        diff = (
            ", ".join(f"{k}={v}" for k, v in sorted(changed.get(model, {}).items())) or "defaults"
        )
        rows.append(
            [
                model,
                f"{key} ({mode}) **{_fmt(m.get(key))}**{spread_note(model, spreads)}",
                heads,
                _fmt(m.get("train_time_s")),
                _fmt(m.get("params")),
                diff,
            ]
        )
    return rows


def experiment_rows(experiments: list[Experiment], model: str) -> list[list[str]]:
    """Ranked rows; the last column is what each experiment changed in the model's params
    section relative to the commit it was run from."""
    base_of, base = {}, {}
    for exp in experiments:  # parse_exp_show order: a commit, then its experiments
        if exp.baseline:
            base = flatten(exp.params.get("models", {}).get(model, {}))
        base_of[exp.rev] = base
    rows = []
    for i, (exp, value) in enumerate(rank(experiments, model), 1):
        status = "failed" if exp.error else ("no metric" if value is None else "")
        section = flatten(exp.params.get("models", {}).get(model, {}))
        diff = (
            ""
            if exp.baseline
            else ", ".join(
                f"{k}={v}" for k, v in sorted(section.items()) if base_of[exp.rev].get(k) != v
            )
        )
        rows.append(
            [
                str(i) if value is not None else "—",
                exp.name + (" (commit)" if exp.baseline else ""),
                exp.rev[:7],
                _fmt(value),
                _fmt(shown_test(exp, model)),
                status,
                diff or "—",
            ]
        )
    return rows if rows else [["—", "no experiments", "", "", "", "", ""]]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(esc(c) for c in r) + " |" for r in rows),
    ]


MODEL_HEADER = [
    "model",
    "selection metric (validation)",
    "headline (test)",
    "train s",
    "parameters",
    "params changed from defaults",
]
EXP_HEADER = [
    "rank",
    "experiment",
    "rev",
    "validation score",
    "test (read only)",
    "status",
    "params changed from its commit",
]


def markdown(
    metrics: dict[str, dict],
    changed: dict[str, dict],
    experiments: list[Experiment],
    spreads: dict[str, dict] | None = None,
) -> str:
    """The leaderboard in Markdown; ``spreads``: ``make spread`` files by model."""
    lines = [
        "# Leaderboard",
        "",
        "Workspace models (`metrics/*.json`):",
        "",
        *_md_table(MODEL_HEADER, model_rows(metrics, changed, spreads)),
        "",
    ]
    for model in sorted(
        set(metrics) | {m for e in experiments for m in e.metrics} & set(list_models())
    ):
        key, mode = selection(model)
        lines += [
            f"## {model}: experiments by `{key}` ({mode}){spread_note(model, spreads)}",
            "",
            *_md_table(EXP_HEADER, experiment_rows(experiments, model)),
            "",
        ]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c).replace('**', '')}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(
    metrics: dict[str, dict],
    changed: dict[str, dict],
    experiments: list[Experiment],
    reports: Path,
    page_dir: Path,
    spreads: dict[str, dict] | None = None,
) -> str:
    """The same tables plus each model's key pictures (linked relative to ``page_dir``)."""
    import os

    parts = [
        "<!doctype html><meta charset='utf-8'><title>sightline leaderboard</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-height:320px;margin:4px;border:1px solid #eee}</style>",
        "<h1>Leaderboard</h1>",
        _html_table(MODEL_HEADER, model_rows(metrics, changed, spreads)),
    ]
    for model in sorted(
        set(metrics) | {m for e in experiments for m in e.metrics} & set(list_models())
    ):
        key, mode = selection(model)
        parts += [
            f"<h2>{html.escape(model)}: experiments by {html.escape(key)} ({mode}){html.escape(spread_note(model, spreads))}</h2>",
            _html_table(EXP_HEADER, experiment_rows(experiments, model)),
        ]
        for pic in get_evaluation(model).pictures:
            path = reports / model / pic
            if path.is_file():
                rel = os.path.relpath(path, page_dir)
                parts.append(
                    f"<a href='{html.escape(rel)}'><img src='{html.escape(rel)}' alt='{html.escape(model)} {html.escape(pic)}'></a>"
                )
    return "\n".join(parts) + "\n"


# --- tables of results for the documentation --------------------------------------------------


def results_table(model: str, metrics: dict) -> str:
    """A model's selection and headline metrics (and its training time) as a markdown table,
    from its metrics file: what the docs pages and the README show, so they cannot drift."""
    key, mode = selection(model)
    evaluation = get_evaluation(model)
    keys = [
        key,
        evaluation.test,
        *(k for k in evaluation.headline if k not in (key, evaluation.test)),
    ]
    rows = [
        [f"`{k}`" + (f" (selection, {mode})" if k == key else ""), _fmt(metrics.get(k))]
        for k in keys
    ]
    rows.append(["`train_time_s`", _fmt(metrics.get("train_time_s"))])
    return "\n".join(_md_table(["metric", "value"], rows))


def summary_table(metrics: dict[str, dict]) -> str:
    """One row per model: its dataset, its selection metric and the test counterpart, as a
    markdown table."""
    rows = []
    for model in sorted(metrics):
        key, mode = selection(model)
        test = get_evaluation(model).test
        m = metrics[model]
        rows.append(
            [
                f"`{model}`",
                str(m.get("dataset", "—")),
                f"`{key}` ({mode})",
                _fmt(m.get(key)),
                f"`{test}` {_fmt(m.get(test))}",
            ]
        )
    header = ["model", "data", "selection metric (validation)", "value", "test"]
    return "\n".join(_md_table(header, rows))
