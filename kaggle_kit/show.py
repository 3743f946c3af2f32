"""Human-readable lines for command results. Library functions return dicts; `kit` (cli.py) and
`kit demo` print these lines, so both say the same thing the same way. No I/O here."""

from __future__ import annotations

from pathlib import Path

from kaggle_kit import honest


def run_lines(summary: dict, runs_dir: Path, estimates: list[dict] | None = None) -> str:
    """A finished training run in a few lines: CV (with its spread over >= 2 folds) and what it
    is a score of (honest.py), the held-out `estimates` of the same recipe (kit estimate) when
    there are any, per fold, the hardest classes, what makes it partial, where its test
    predictions come from, what to do next."""
    cv, metric, nan = summary.get("cv") or {}, summary.get("metric") or "accuracy", float("nan")
    est = honest.estimate_label(estimates or [], metric)
    scaled = honest.scaled_label(summary, estimates or [], metric)
    est += f"\n  {scaled}" if scaled else ""
    if not cv and summary.get("cv_note"):  # a refit-only run has no OOF rows, hence no CV
        run = runs_dir / summary.get("run", "?")
        return (f"run {run}: {summary['cv_note']}" + (f"\n  {est}" if est else "")
                + f"\n  test predictions from: {summary.get('test_from')}; next: kit submit {run}")
    per_fold = summary.get("per_fold", [])
    folds = "  ".join(f"fold{f['fold']} {f.get(metric, nan):.4f}" for f in per_fold)
    scored = {c: a for c, a in summary.get("per_class", {}).items() if a is not None}  # None: no OOF image
    worst = sorted(scored.items(), key=lambda kv: kv[1])[:4]
    total = summary.get("timings", {}).get("total_s")
    spread = (f" +- {cv[f'{metric}_std']:.4f}"
              if len(per_fold) > 1 and cv.get(f"{metric}_std") is not None else "")
    others = "".join(f"  {m.replace('_', ' ')} {cv.get(m, nan):.4f}"  # the competition metric first
                     for m in ("accuracy", "log_loss") if m != metric)
    run = runs_dir / summary.get("run", "?")
    lines = [f"run {run}: CV {metric} {cv.get(metric, nan):.4f}{spread}{others}"
             + (f"  ({total / 60:.1f} min)" if total else ""),
             f"  CV is: {honest.cv_label(summary, bool(est))}" + (f"\n  {est}" if est else ""),
             f"  per fold: {folds}",
             "  hardest classes: " + ", ".join(f"{c} {a:.3f}" for c, a in worst)]
    if summary.get("partial"):
        lines.append(f"  partial run: {', '.join(summary['partial'])} -- a quick look, "
                     "not the recipe's CV")
    lines.append(f"  test predictions from: {summary.get('test_from', 'folds')}; "
                 f"next: kit report {run}")
    lines += [f"  warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def estimate_lines(r: dict, runs_dir: Path) -> str:
    """`kit estimate`'s result (estimate.json's dict): the held-out scores of test.csv, what that
    test.csv was, and the CV the same run shows, labelled."""
    scores = "  ".join(f"{m} {v:.4f}" for m, v in r["holdout"].items())
    cv = r.get("cv_shown") or {}
    shown = "  ".join(f"{m} {v:.4f}" for m, v in cv.items()
                      if isinstance(v, float) and not m.endswith("_std"))
    return "\n".join([
        f"estimate of {r['recipe']}: {scores} on {r['n_holdout']} held-out images of fold "
        f"{r['holdout_fold']}; trained on {r['trained_on']} (the full run sees all: expect it "
        "a little higher)",
        f"  scored: test.csv = {r.get('test_is') or r.get('test_from')}",
        f"  the same run's CV: {shown or 'none'} ({r.get('cv_label') or 'OOF of its fold models'})",
        f"  run folder: {runs_dir / r['run']} (estimate.json); kit train, kit submit and kit "
        "submissions show it next to the CV of runs of the same recipe + overrides"])


def fetch_lines(result: dict) -> str:
    """`kit fetch`'s result: "<path>: fetched" and the counts line; after a refold or a rebuilt
    cache, the counts line; after a verified no-op, nothing (fetch printed its status itself)."""
    status = result.get("status", "")
    if status.startswith("no-op") and not result.get("decode_s"):
        return ""  # fetch itself printed "<path>: no-op: already fetched and verified"
    lines = [f"{result['path']}: {status}"] if status == "fetched" else []
    sizes = ", ".join(f"{k}: {v}" for k, v in result.get("image_sizes", {}).items())
    decoded = f", decoded in {result['decode_s']} s" if result.get("decode_s") else ""
    lines.append(f"  {result['classes']} classes, {result['n_train']} train, {result['n_test']} "
                 f"test images ({sizes}); {result['folds']['k']} folds (seed "
                 f"{result['folds']['seed']}); cache {result['cache_mb']} MB{decoded}")
    sub = result.get("submission")
    if sub and status == "fetched":
        what = {"label": "one label per row", "labels": f"{sub.get('k', 'a set of')} labels per row",
                "prob": "one probability column per class",
                "prob_positive": f"P({sub.get('positive')}) per row"}[sub["kind"]]
        lines.append(f"  task {result['task']}, metric {result['metric']} (--metric to change), "
                     f"submission: {what}")
    return "\n".join(lines)  # warnings: fetch printed them as it found them
