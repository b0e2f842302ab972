"""Render BENCHMARKS.md's Table 1 / Figure 2 / peers blocks and the Figure 2 PNGs from the result JSON files
only (benchmarks/results/table1/*.json). Nothing is trained here.

    python benchmarks/render.py            # rewrite the generated blocks of BENCHMARKS.md, write the PNGs

Only the text between ``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` markers is replaced;
every other line of BENCHMARKS.md (other sections, hand-written analysis) is kept.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import converged  # noqa: E402  (the grids and the beyond-grid rule; no torch at import)
import prefix_dynamics  # noqa: E402  (its results folder; no torch at import)

DOC = common.ROOT / "BENCHMARKS.md"
FIG_DIR = common.RESULTS / "figures"
METHOD_ORDER = common.OURS + common.PEERS
PAPER_NAMES = {"prefix": "Prefix", "prompt": "Prompt", "lt-prefix": "LT-prefix", "lt-prompt": "LT-prompt",
               "lt-prefix-softmax": "LT-prefix (softmax pooling, paper A.5)",
               "lt-prompt-after": "LT-prompt, text first and label after (decoders)",
               "peft-prefix": "peft prefix tuning", "peft-prompt": "peft prompt tuning",
               "linear-probe": "linear probe (frozen)", "full-finetune": "full fine-tuning (ceiling)"}


def load(results_dir: Path = common.TABLE_DIR) -> list[dict]:
    out = []
    for f in sorted(results_dir.glob("*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except json.JSONDecodeError:
            print(f"skipping unreadable {f}", file=sys.stderr)
    return out


def fmt_ms(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def by_cell(runs):
    cells = defaultdict(list)
    for r in runs:
        cells[(r["backbone"], r["task"], r["method"])].append(r)
    return cells


def table1(runs) -> str:
    cells = by_cell(runs)
    lines = []
    for backbone in common.PROTOCOL:
        p = common.PROTOCOL[backbone]
        here = [r for r in runs if r["backbone"] == backbone]
        if not here:
            lines += [f"### {backbone}", "", "No results yet.", ""]
            continue
        val_rows = {}
        maj = {}
        for r in here:
            if r.get("num_validation"):
                val_rows[r["task"]] = r["num_validation"]
                maj[r["task"]] = r["majority_accuracy"]
        lines += [f"### {backbone}", "",
                  f"{p['steps']} steps, batch {p['batch_size']}, lr {p['learning_rate']:g} (every method; "
                  f"full fine-tuning {common.FULL_FINETUNE_LR:g}), validation every {p['eval_every']} steps on "
                  + ", ".join(f"{t} {val_rows.get(t, '?')} rows" for t in common.TASKS)
                  + f"; seeds {p['seeds']}. Accuracy of the best evaluation (mean ± std over seeds; n = seeds "
                  "done); CoLA also MCC.", "",
                  "| method | SST-2 acc | CoLA acc | CoLA MCC | RTE acc | trainable params (sst2 / cola / rte) "
                  "| seconds per run (mean) | seeds |",
                  "|---|---|---|---|---|---|---|---|"]
        lines.append("| majority class (same rows) | "
                     + " | ".join([f"{maj[t]:.3f}" if t in maj else "–" for t in ["sst2", "cola"]]
                                  + ["0.000", f"{maj['rte']:.3f}" if "rte" in maj else "–"]) + " | 0 | 0 | – |")
        for method in METHOD_ORDER:
            rs = {t: [r for r in cells.get((backbone, t, method), []) if r.get("accuracy") is not None]
                  for t in common.TASKS}
            errs = {t: [r for r in cells.get((backbone, t, method), []) if r.get("error")] for t in common.TASKS}
            if not any(rs.values()) and not any(errs.values()):
                continue

            def acc(t, key="accuracy", rs=rs, errs=errs):
                if errs[t] and not rs[t]:
                    return "n/a¹"
                return fmt_ms([r[key] for r in rs[t]])

            params = " / ".join(
                f"{rs[t][0]['trainable_params']:,}" if rs[t] else "–" for t in common.TASKS)
            secs = [r["seconds"] for t in common.TASKS for r in rs[t]]
            seeds = sorted({r["seed"] for t in common.TASKS for r in rs[t]})
            lines.append(f"| {method} | {acc('sst2')} | {acc('cola')} | {acc('cola', 'mcc')} | {acc('rte')} | "
                         f"{params} | {statistics.mean(secs):.0f} | {','.join(map(str, seeds))} |"
                         if secs else f"| {method} | {acc('sst2')} | {acc('cola')} | – | {acc('rte')} | – | – | – |")
        if any(r.get("error") for r in here):
            lines += ["", "¹ not runnable: " + "; ".join(sorted({f"{r['task']} {r['method']}: {r['error']}"
                                                               for r in here if r.get("error")}))]
        lines.append("")
    return "\n".join(lines)


def paired_deltas(runs) -> str:
    """LT minus classic, per backbone / task, on the seeds both have."""
    cells = by_cell(runs)
    lines = ["| backbone | task | LT-prefix − prefix (acc) | LT-prompt − prompt (acc) | seeds compared |",
             "|---|---|---|---|---|"]
    for backbone in common.PROTOCOL:
        for task in common.TASKS:
            row, seeds_used = [], set()
            for lt, base in (("lt-prefix", "prefix"), ("lt-prompt", "prompt")):
                a = {r["seed"]: r["accuracy"] for r in cells.get((backbone, task, lt), []) if r.get("accuracy") is not None}
                b = {r["seed"]: r["accuracy"] for r in cells.get((backbone, task, base), []) if r.get("accuracy") is not None}
                common_seeds = sorted(set(a) & set(b))
                seeds_used |= set(common_seeds)
                row.append(fmt_ms([a[s] - b[s] for s in common_seeds]) if common_seeds else "–")
            if any(x != "–" for x in row):
                lines.append(f"| {backbone} | {task} | {row[0]} | {row[1]} | {','.join(map(str, sorted(seeds_used)))} |")
    return "\n".join(lines)


def per_run(runs) -> str:
    lines = ["| backbone | task | method | seed | accuracy | MCC | best step | steps to 95% of best | final acc "
             "| trainable | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    key = {m: i for i, m in enumerate(METHOD_ORDER)}
    for r in sorted(runs, key=lambda r: (list(common.PROTOCOL).index(r["backbone"]), common.TASKS.index(r["task"]),
                                         key.get(r["method"], 99), r["seed"])):
        if r.get("accuracy") is None:
            lines.append(f"| {r['backbone']} | {r['task']} | {r['method']} | {r['seed']} | n/a | n/a | | | | | |")
            continue
        fin = r.get("final") or {}
        lines.append(f"| {r['backbone']} | {r['task']} | {r['method']} | {r['seed']} | {r['accuracy']:.3f} | "
                     f"{r['mcc']:.3f} | {r.get('best_step', '')} | {r.get('steps_to_95pct_best', '')} | "
                     f"{fin.get('accuracy', float('nan')):.3f} | {r['trainable_params']:,} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def missing(runs) -> str:
    done = {(r["backbone"], r["task"], r["method"], r["seed"]) for r in runs}
    want = common.cells(methods=common.OURS + common.PEERS)
    todo = [c for c in want if c not in done]
    if not todo:
        return "None: every planned cell has a result."
    groups = defaultdict(list)
    for b, t, m, s in todo:
        groups[(b, s)].append(f"{t}/{m}")
    return "\n".join(f"- {b} seed {s} ({len(v)}): " + ", ".join(v) for (b, s), v in sorted(groups.items()))


def convergence(runs) -> str:
    cells = by_cell(runs)
    lines = ["| backbone | task | method | seeds | best acc | steps to 95% of own best (per seed) | "
             "validation loss at first / last eval |", "|---|---|---|---|---|---|---|"]
    for backbone in common.PROTOCOL:
        for task in ["cola", "sst2", "rte"]:
            for method in ["prompt", "lt-prompt", "prefix", "lt-prefix"]:
                rs = [r for r in cells.get((backbone, task, method), []) if r.get("curve")]
                if not rs:
                    continue
                rs.sort(key=lambda r: r["seed"])
                stt = ", ".join(str(r.get("steps_to_95pct_best")) for r in rs)
                loss = ", ".join(f"{r['curve'][0]['loss']:.3f} / {r['curve'][-1]['loss']:.3f}" for r in rs)
                lines.append(f"| {backbone} | {task} | {method} | {','.join(str(r['seed']) for r in rs)} | "
                             f"{fmt_ms([r['accuracy'] for r in rs])} | {stt} | {loss} |")
    return "\n".join(lines)


def plots(runs) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no PNGs", file=sys.stderr)
        return []
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    cells = by_cell(runs)
    written = []
    for backbone, task in [(b, t) for t in ("cola", "sst2") for b in common.PROTOCOL]:
        pairs = [("prompt", "lt-prompt"), ("prefix", "lt-prefix")]
        if not any(cells.get((backbone, task, m)) for pr in pairs for m in pr):
            continue
        maj = next((r["majority_accuracy"] for r in runs if r["backbone"] == backbone and r["task"] == task
                    and r.get("majority_accuracy")), None)
        metrics = [("loss", "validation loss"), ("accuracy", "validation accuracy"), ("mcc", "validation MCC")]
        fig, axes = plt.subplots(3, 2, figsize=(10, 9.5), sharex=True)
        for col, pr in enumerate(pairs):
            for method, style in zip(pr, ("--", "-"), strict=True):
                for r in sorted(cells.get((backbone, task, method), []), key=lambda r: r["seed"]):
                    if not r.get("curve"):
                        continue
                    steps = [c["step"] for c in r["curve"]]
                    for row, (key, _) in enumerate(metrics):
                        axes[row][col].plot(steps, [c[key] for c in r["curve"]], style, marker="o", ms=3,
                                            label=f"{method} seed {r['seed']}")
            for row, (key, title) in enumerate(metrics):
                ax = axes[row][col]
                ax.set_title(f"{pr[0]} vs {pr[1]}: {title}", fontsize=9)
                if key == "accuracy" and maj:
                    ax.axhline(maj, color="grey", lw=0.8, ls=":", label="majority class")
                if key == "mcc":
                    ax.axhline(0, color="grey", lw=0.8, ls=":")
                ax.grid(alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7)
            axes[2][col].set_xlabel("training step")
        fig.suptitle(f"Figure 2 (reproduction): {task} validation, {backbone}. LT loss = pair BCE; classic loss = "
                     "K-way CE (different scales)", fontsize=9)
        written.append(_save(plt, fig, f"figure2-{backbone}-{task}.png"))
    return [str(p.relative_to(common.ROOT)) for p in written]


def _save(plt, fig, name: str) -> Path:
    fig.tight_layout()
    out = FIG_DIR / name
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- head start (issue 12 B)
HEADSTART_DIR = common.RESULTS / "headstart"
HEADSTART_ORDER = ["zero-shot-similarity", "lt-prefix-similarity", "lt-prefix-paper", "prefix",
                   "lt-prompt-similarity", "lt-prompt-paper", "prompt", "lt-prefix-similarity-frozen-injection"]


def headstart_runs() -> list[dict]:
    return load(HEADSTART_DIR)


def _steps_to(curve: list[dict], frac: float = 0.95):
    best = max(c["dev_accuracy"] for c in curve)
    return next(c["step"] for c in curve if c["dev_accuracy"] >= frac * best)


def headstart_table(runs) -> str:
    """Dev-split curves from step 0: one row per (task, variant), seeds averaged where there are several."""
    if not runs:
        return "No results yet: run benchmarks/headstart.py."
    cells = defaultdict(list)
    for r in runs:  # runs written with --tag (e.g. another lr) are their own rows
        cells[(r["task"], r["variant"] + ((r.get("cli") or {}).get("tag") or ""))].append(r)
    steps = sorted({c["step"] for r in runs for c in r["curve"]})
    shown = [s for s in steps if s in (0, 50, 100, 200, 300, 400)]
    head = ("| task | variant | trainable params | seeds | " + " | ".join(f"step {s}" for s in shown)
            + " | best | steps to 95% of own best | forward rows per text at prediction |")
    lines = [head, "|" + "---|" * (len(shown) + 7)]
    for task in sorted({t for t, _ in cells}):
        for variant in [v for v in HEADSTART_ORDER if (task, v) in cells] + sorted(
                v for t, v in cells if t == task and v not in HEADSTART_ORDER):
            rs = sorted(cells[(task, variant)], key=lambda r: r["seed"])
            by_step = [[next((c["dev_accuracy"] for c in r["curve"] if c["step"] == s), None) for r in rs]
                       for s in shown]
            vals = [fmt_ms([v for v in col if v is not None]) if any(v is not None for v in col) else "–"
                    for col in by_step]
            best = fmt_ms([max(c["dev_accuracy"] for c in r["curve"]) for r in rs])
            stt = ", ".join(str(_steps_to(r["curve"])) for r in rs) if rs[0]["steps"] else "–"
            K = len(rs[0].get("label_texts") or [])
            rows = ("1 (+ K label texts once)" if variant == "zero-shot-similarity"
                    else (f"K = {K}" if variant.startswith("lt-") else "1"))
            lines.append(f"| {task} | {variant} | {rs[0].get('trainable_params', 0):,} | "
                         f"{','.join(str(r['seed']) for r in rs)} | " + " | ".join(vals)
                         + f" | {best} | {stt} | {rows} |")
    return "\n".join(lines)


def headstart_plots(runs) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for task in sorted({r["task"] for r in runs}):
        rs = [r for r in runs if r["task"] == task]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, family in zip(axes, ("prefix", "prompt"), strict=True):
            for r in sorted(rs, key=lambda r: (r["variant"], r["seed"])):
                v = r["variant"]
                if v == "zero-shot-similarity":
                    ax.axhline(r["curve"][0]["dev_accuracy"], color="grey", ls=":", lw=1, label="zero-shot similarity")
                    continue
                if family not in v.split("-"):
                    continue
                style = "-" if v.startswith("lt-") and "similarity" in v else ("--" if v.startswith("lt-") else ":")
                ax.plot([c["step"] for c in r["curve"]], [c["dev_accuracy"] for c in r["curve"]], style, marker="o",
                        ms=3, label=f"{v} seed {r['seed']}")
            ax.set_title(f"{task} dev accuracy: {family} family", fontsize=9)
            ax.set_xlabel("training step (batch 16)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        written.append(_save(plt, fig, f"headstart-{task}.png"))
    return [str(p.relative_to(common.ROOT)) for p in written]


# ----------------------------------------------------------------------------- converged (issue 12 A)
CONVERGED_DIR = common.RESULTS / "converged"
CONVERGED_ORDER = ["zero-shot-similarity", "prefix", "lt-prefix", "lt-prefix-paper", "prompt", "lt-prompt",
                   "lt-prompt-paper", "linear-probe", "full-finetune", "peft-prefix", "peft-prompt", "peft-lora"]
CONVERGED_TASKS = ["sst2", "cola", "rte"]


def converged_runs() -> tuple[list[dict], list[dict]]:
    """(final runs, learning-rate search runs)."""
    return load(CONVERGED_DIR), load(CONVERGED_DIR / "lr")


def _order(methods) -> list[str]:
    return [m for m in CONVERGED_ORDER if m in methods] + sorted(set(methods) - set(CONVERGED_ORDER))


def _device(r: dict) -> str:
    """Where a converged run ran: cpu or cuda (no device index)."""
    return (r.get("machine") or {}).get("device", "?").split(":")[0]


def converged_table(runs) -> str:
    """Full GLUE validation, the dev-chosen learning rate and checkpoint: accuracy (MCC on CoLA)."""
    if not runs:
        return "No results yet: run benchmarks/converged.py."
    cells = defaultdict(list)
    for r in runs:
        cells[(r["task"], r["method"])].append(r)
    tasks = [t for t in CONVERGED_TASKS if any(t == k[0] for k in cells)]
    head = f"| method | trainable params ({' / '.join(tasks)}) | rows per text at prediction | " + " | ".join(
        f"{t} {'MCC' if t == 'cola' else 'accuracy'} | {t} lr, steps run, steps to 95% | seeds" for t in tasks) + " |"
    lines = [head, "|" + "---|" * (3 + 3 * len(tasks))]
    for m in _order({k[1] for k in cells}):
        row, params, rows = [], [], "–"
        for t in tasks:
            rs = sorted(cells.get((t, m), []), key=lambda r: r["seed"])
            if not rs:
                row += ["–", "–", "–"]
                params.append("–")
                continue
            params.append(f"{rs[0].get('trainable_params', 0):,}")
            rows = str(rs[0].get("predict_rows_per_text", 1))
            metric = common.metric_of(t)
            row.append(fmt_ms([r[metric] for r in rs]))
            if m == "zero-shot-similarity":
                row.append("no training")
            else:
                row.append(f"{rs[0]['learning_rate']:g}; " + ", ".join(str(r.get("steps_run")) for r in rs) + "; "
                           + ", ".join(str(r.get("steps_to_95pct_best")) for r in rs))
            row.append(",".join(str(r["seed"]) for r in rs))
        lines.append(f"| {m} | {' / '.join(params)} | {rows} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _runs_to_cap(runs, to_cap) -> dict:
    """(task, method, seed) -> the run to the cap: the rerun without early stopping where there is one, else
    the run itself when early stopping did not end it before the cap (:func:`common.ran_to_cap`)."""
    out = {(r["task"], r["method"], r["seed"]): r for r in runs if common.ran_to_cap(r)}
    out.update({(r["task"], r["method"], r["seed"]): r for r in to_cap})
    return out


def converged_to_cap_table(runs, to_cap) -> str:
    """Early stopping against every run to the cap, seed by seed, for the (task, method) cells that have runs in
    ``converged/to-cap/``. A run that early stopping did not end before the cap is its own to-cap run
    (:func:`common.ran_to_cap`), so it appears on both sides; the others were rerun with no early stopping, on
    the device each side names. The means are over the seeds that have both sides."""
    if not to_cap:
        return "No runs without early stopping yet: `python benchmarks/converged.py --to-cap --tasks T --rows R`."
    stopped = {(r["task"], r["method"], r["seed"]): r for r in runs}
    rerun = {(r["task"], r["method"], r["seed"]): r for r in to_cap}
    capped = _runs_to_cap(runs, to_cap)

    lines = ["| task | method | seed | early stopping: steps run, best step, metric (device) | to the cap: best "
             "step, metric (device) | to-cap run |", "|---|---|---|---|---|---|"]
    for t in [t for t in CONVERGED_TASKS if any(k[0] == t for k in rerun)]:
        for m in _order({k[1] for k in rerun if k[0] == t}):
            metric = common.metric_of(t)
            es, cap = [], []
            for seed in sorted({k[2] for k in stopped if k[:2] == (t, m)} | {k[2] for k in rerun if k[:2] == (t, m)}):
                a, b = stopped.get((t, m, seed)), capped.get((t, m, seed))
                if b is not None and b is a:
                    how = "the same run (early stopping did not end it before the cap)"
                else:
                    how = "rerun without early stopping" if b is not None else "not run yet"
                left = f"{a['steps_run']}, {a['best_step']}, {a[metric]:.3f} ({_device(a)})" if a else "–"
                right = f"{b['best_step']}, {b[metric]:.3f} ({_device(b)})" if b else "–"
                if a and b:
                    es.append(a[metric])
                    cap.append(b[metric])
                lines.append(f"| {t} | {m} | {seed} | {left} | {right} | {how} |")
            lines.append(f"| {t} | **{m}** | mean of the {len(cap)} seeds with both | **{fmt_ms(es)}** | "
                         f"**{fmt_ms(cap)}** | |")
    return "\n".join(lines)


def _grid_choices(final) -> dict:
    """(task, method) -> (chosen rate, {grid rate: dev metric}) as the final runs recorded them
    (``lr_grid_dev_metric``: the protocol's grid only, so a probe beyond it is never part of a choice)."""
    out = {}
    for r in sorted(final, key=lambda r: r["seed"]):
        if r.get("lr_grid_dev_metric") and (r["task"], r["method"]) not in out:
            out[(r["task"], r["method"])] = (r["learning_rate"],
                                             {float(k): v for k, v in r["lr_grid_dev_metric"].items()})
    return out


def converged_lr_table(lr_runs, final=()) -> str:
    """The learning-rate search on dev: best dev metric of each rate (seed 0, short runs). A rate outside the
    grid the final runs were chosen from is a probe (``converged.py --lrs``), marked and never bold."""
    if not lr_runs:
        return "No learning-rate search results yet."
    choices = _grid_choices(final)
    cells = defaultdict(dict)
    for r in lr_runs:
        cells[(r["task"], r["method"])][r["learning_rate"]] = r
    steps = sorted({r["steps"] for r in lr_runs})
    probed = False
    lines = [f"Best dev metric (accuracy; MCC on CoLA) within {', '.join(map(str, steps))} steps of batch "
             f"{lr_runs[0]['protocol']['batch_size']}, seed 0, at each learning rate (chosen: **bold**); step 0 "
             "is before any update.", "",
             "| task | method | step 0 | lr: dev metric |", "|---|---|---|---|"]
    for t in [t for t in CONVERGED_TASKS if any(k[0] == t for k in cells)]:
        for m in _order({k[1] for k in cells if k[0] == t}):
            by_lr = cells[(t, m)]
            if (t, m) in choices:
                best, grid = choices[(t, m)][0], set(choices[(t, m)][1])
                finished = True
            else:
                grid = set(converged.grid(m)) & set(by_lr)
                finished = grid == set(converged.grid(m))  # as converged.chosen_lr: every rate of the row's grid
                ranked = sorted(grid)
                best = max(ranked, key=lambda lr: (by_lr[lr]["best_dev_metric"], -ranked.index(lr)))
            parts = []
            for lr, r in sorted(by_lr.items()):
                if lr not in grid:
                    probed = True
                    parts.append(f"*{lr:g}*†: {r['best_dev_metric']:.3f}")
                elif lr == best and finished:
                    parts.append(f"**{lr:g}: {r['best_dev_metric']:.3f}**")
                else:
                    parts.append(f"{lr:g}: {r['best_dev_metric']:.3f}")
            step0 = next(iter(by_lr.values()))["curve"][0]["dev_metric"]
            devices = sorted({_device(r) for r in by_lr.values()})
            note = "" if finished else " (grid not finished: nothing is chosen from it)"
            lines.append(f"| {t} | {m} | {step0:.3f} | " + " · ".join(parts) + f"{note} ({', '.join(devices)}) |")
    if probed:
        lines += ["", "† a rate outside the grid (a probe, `converged.py --lrs`): not part of the choice (the "
                      "table below)."]
    return "\n".join(lines)


def _beyond_finals(t, m, lr, rate, beyond, final, to_cap) -> str:
    """The final runs at a probe's rate (``converged.py --beyond-grid``) against the grid rate's runs of the same
    seeds under the same stopping rule (to the cap: a rerun in ``to-cap/`` or a run that reached the cap)."""
    runs = [r for r in beyond if (r["task"], r["method"], r["learning_rate"]) == (t, m, rate)]
    if not runs:
        return "not run"
    metric = common.metric_of(t)
    stopped = [r for r in runs if r["protocol"]["patience"] != 0]
    uncapped = [r for r in runs if r["protocol"]["patience"] == 0]
    ours = {"es": {r["seed"]: r for r in stopped},
            "cap": {k[2]: r for k, r in _runs_to_cap(stopped, uncapped).items()}}
    theirs_by = {"es": {(r["task"], r["method"], r["seed"]): r for r in final}, "cap": _runs_to_cap(final, to_cap)}
    out = []
    for rule in ("cap", "es"):
        mine = [ours[rule][s] for s in sorted(ours[rule])]
        if not mine:
            continue
        seeds = [r["seed"] for r in mine]
        theirs = [theirs_by[rule][(t, m, s)][metric] for s in seeds if (t, m, s) in theirs_by[rule]]
        what = "to the cap" if rule == "cap" else "early stopping"
        grid_side = (f" against {fmt_ms(theirs)} at {lr:g}" if len(theirs) == len(seeds)
                     else f" ({lr:g}: not every seed has its run)")
        out.append(f"{what}, {rate:g}, seeds {','.join(map(str, seeds))}: {fmt_ms([r[metric] for r in mine])}"
                   + grid_side)
    return "; ".join(out)


def converged_edges_table(final, beyond=(), to_cap=()) -> str:
    """Every (task, method) whose dev-chosen rate is an end of its grid, the search runs beyond that end where
    any were run (would the choice have moved off the grid? :func:`converged.beyond_grid_lr`) and, where it
    would, the final runs at that rate against the grid rate's."""
    choices = _grid_choices(final)
    lines = ["| task | method | chosen rate: dev metric | why that end | beyond it: dev metric | the choice | "
             "final runs at the probe's rate (validation) |", "|---|---|---|---|---|---|---|"]
    for t in CONVERGED_TASKS:
        for m in _order({k[1] for k in choices if k[0] == t}):
            lr, grid = choices[(t, m)]
            if lr not in (min(grid), max(grid)):
                continue
            tie = len(set(grid.values())) == 1
            why = "every rate ties (the tie rule takes the first)" if tie else \
                ("the best is the largest rate" if lr == max(grid) else "the best is the smallest rate")
            past = converged.probes_beyond(final[0]["backbone"], t, m)
            moved = converged.beyond_grid_lr(final[0]["backbone"], t, m) if past else None
            if past:
                shown = " · ".join(f"{x:g}: {v:.3f}" for x, v in sorted(past.items()))
                verdict = (f"**would move** to {moved[0]:g}" if moved else "stands (nothing beyond beats it)")
            else:
                shown, verdict = "not run", "not checked"
            finals = _beyond_finals(t, m, lr, moved[0], beyond, final, to_cap) if moved else "–"
            lines.append(f"| {t} | {m} | {lr:g}: {grid[lr]:.3f} | {why} | {shown} | {verdict} | {finals} |")
    return "\n".join(lines) if len(lines) > 2 else "No chosen rate sits at an end of its grid."


def converged_plots(runs) -> list[str]:
    """Figure 2 from the converged runs, per task: the dev metric against training steps (top) and against
    training forward rows (bottom: ``train_rows_per_step`` x step; a listwise LT step feeds K rows per text,
    every other method one)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in CONVERGED_TASKS if any(r["task"] == t for r in runs)]
    if not tasks:
        return []
    batch = runs[0]["protocol"]["batch_size"]
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.2 * len(tasks), 7.6), squeeze=False)
    for col, t in enumerate(tasks):
        for r in sorted((r for r in runs if r["task"] == t), key=lambda r: (_order([r["method"]]), r["seed"])):
            m = r["method"]
            for row, ax in enumerate(axes[:, col]):
                if m == "zero-shot-similarity":
                    ax.axhline(r["curve"][0]["dev_metric"], color="grey", ls=":", lw=1, label="zero-shot similarity")
                    continue
                style = "-" if m.startswith("lt-") and not m.endswith("-paper") else (
                    "--" if m.startswith("lt-") else ":")
                scale = 1 if row == 0 else r.get("train_rows_per_step", batch)
                ax.plot([c["step"] * scale for c in r["curve"]], [c["dev_metric"] for c in r["curve"]], style,
                        lw=1.2, label=f"{m} (seed {r['seed']})")
        for row, ax in enumerate(axes[:, col]):
            ax.set_title(f"{t}: dev {'MCC' if t == 'cola' else 'accuracy'}", fontsize=9)
            ax.set_xlabel(f"training step (batch {batch})" if row == 0 else
                          "training forward rows (listwise: K rows per text)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    return [str(_save(plt, fig, "converged-curves.png").relative_to(common.ROOT))]


# ----------------------------------------------------------------------------- label prefix depth (issue 16)
DEPTH_DIR = common.RESULTS / "depth"


def depth_tables(results_dir: Path = DEPTH_DIR) -> str:
    """Accuracy per (method, j) from the train JSONs and texts/s per (j, K) from speed-<backbone>.json."""
    files = sorted(results_dir.glob("*.json")) if results_dir.exists() else []
    runs = [json.loads(f.read_text()) for f in files if not f.name.startswith("speed-")]
    speeds = [json.loads(f.read_text()) for f in files if f.name.startswith("speed-")]
    if not runs and not speeds:
        return "No results yet: run benchmarks/depth.py."
    lines = []
    if runs:
        r0 = runs[0]
        lines += [f"{r0['backbone']} (m = {r0['m']}), {r0['task']}: {r0['steps']} steps, batch {r0['batch_size']}, "
                  f"lr {r0['learning_rate']:g}, seed(s) {sorted({r['seed'] for r in runs})}, {r0['threads']} torch "
                  f"thread; state chosen on a {r0['dev_rows']}-row dev split carved from train (every "
                  f"{r0['eval_every']} steps); accuracy on the GLUE validation split ({r0['validation']['rows']} "
                  "rows), read once per run. j = m is every layer (the default).", "",
                  "Mean ± sd over seeds:", "",
                  "| method | j | validation acc | validation MCC | seeds |", "|---|---|---|---|---|"]
        groups = defaultdict(list)
        for r in runs:
            groups[(r["method"], r["prefix_layers"])].append(r)
        for (method, j), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            lines.append(f"| {method} | {j} | {fmt_ms([r['validation']['accuracy'] for r in rs])} | "
                         f"{fmt_ms([r['validation']['mcc'] for r in rs])} | {len(rs)} |")
        lines += ["", "Every run:", "",
                  "| method | j | seed | trainable params | validation acc | validation MCC | best dev acc (step) | "
                  "train CPU s | load at start |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(runs, key=lambda r: (r["method"], -r["prefix_layers"], r["seed"])):
            step = int(re.search(r"step (\d+)", r["selected_on"]).group(1))  # the state train() kept
            best = next((c for c in r["curve"] if c["step"] == step), None)
            load_ = r.get("load_before")
            lines.append(f"| {r['method']} | {r['prefix_layers']} | {r['seed']} | {r['trainable_params']:,} | "
                         f"{r['validation']['accuracy']:.4f} | {r['validation']['mcc']:.4f} | "
                         + (f"{best['dev_accuracy']:.3f} ({best['step']})" if best else "–")
                         + f" | {r['train_seconds']['cpu']:.0f} | "
                         + (f"{load_[0]:.2f} |" if load_ else "– |"))
        lines.append("")
    for sp in speeds:
        lines += [f"Prediction, {sp['backbone']} (m = {sp['m']}), {sp['method']}: {sp['texts']} texts "
                  f"({min(sp['text_tokens'])}-{max(sp['text_tokens'])} tokens), `score_texts` at its defaults, "
                  f"{sp['machine_info'].get('torch_threads')} torch thread, medians of {sp['repeats']} interleaved "
                  f"repeats; 1-minute load average {sp['load_before'][0]:.2f} before, {sp['load_after'][0]:.2f} after. "
                  "floor: the same backbone over every text once per label, no prefix. pipeline: transformers' "
                  "zero-shot pipeline on the same backbone. Ratios of wall (CPU) medians.", "",
                  "| K | j | layer passes / text | texts/s wall | texts/s CPU | predict / floor | pipeline / predict "
                  "| shared vs rows max abs diff |", "|---|---|---|---|---|---|---|---|"]
        for r in sorted(sp["rows"], key=lambda r: (r["K"], -r["j"])):
            pipe = r.get("pipeline_over_predict_wall")
            diff = r.get("max_abs_diff_shared_vs_rows")
            lines.append(f"| {r['K']} | {r['j']} | {r['layer_passes_per_text']} | {r['texts_per_s']:.1f} | "
                         f"{r['texts_per_cpu_s']:.1f} | {r['predict_over_floor_wall']:.2f} "
                         f"({r['predict_over_floor_cpu']:.2f}) | "
                         + ("–" if pipe is None else f"{pipe:.2f} ({r['pipeline_over_predict_cpu']:.2f})")
                         + " | " + ("– (j = m)" if diff is None else f"{diff:.1e}") + " |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- few-shot (issue 13)
FEWSHOT_DIR = common.RESULTS / "fewshot"
FEWSHOT_ORDER = ["zero-shot-similarity", "lt-prefix", "lt-prefix-label-map", "lt-prefix-cosine", "lt-prompt",
                 "prefix", "prompt",
                 "linear-probe", "setfit", "setfit-frozen-body", "lt-prefix-multitask"]
FEWSHOT_DATASETS = ["sst2", "demo", "trec", "sms-spam"]
FEWSHOT_SHOTS = [0, 8, 16, 32, 64]
FEWSHOT_SEEDS = 5


FEWSHOT_KEYS = ("dataset", "method", "shots", "accuracy")


_lr = common.lr_name


#: the tag of a row trained at ``fewshot.py --epochs E`` (after E): another number of steps than its twin's
BUDGET_TAG = "-epoch budget"


def _fs_row(r: dict) -> str:
    """A result's row: its method, with its learning rate and score head where those are not the fixed
    recipe's for the method today (``fewshot.learning_rate``, ``fewshot.score_head``; rows kept from an earlier
    recipe, e.g. ``lt-prefix (lr 1e-2)``, ``lt-prefix (similarity head)``), and with its budget where it ran at one
    that grows with the training set (``fewshot.py --epochs``: ``lt-prefix (50-epoch budget)``), and with its
    label map's rank where it is not the row's configured one (``lt-prefix (label map r=8)``)."""
    import fewshot

    recipe = r.get("recipe") or {}
    lr, head = recipe.get("learning_rate"), (recipe.get("adapter") or {}).get("score_head")
    tags = []
    if lr is not None and r["method"] not in ("setfit", "zero-shot-similarity") and lr != fewshot.learning_rate(r["method"]):
        tags.append(f"lr {_lr(lr)}")
    if head and fewshot.score_head(r["method"]) not in (None, head):
        tags.append(f"{head} head")
    rank = (recipe.get("adapter") or {}).get("label_map_rank") or None  # 0 (a build that named none): None
    if rank != fewshot.CONFIGURED.get(r["method"], (None, {}))[1].get("label_map_rank"):
        tags.append("no label map" if rank is None else f"label map r={rank}")
    if recipe.get("epochs"):  # ``fewshot.py --epochs E``: a budget that grows with the training set
        tags.append(f"{recipe['epochs']}{BUDGET_TAG}")
    return f"{r['method']} ({', '.join(tags)})" if tags else r["method"]


def _fs_method(method: str) -> str:
    """A configured row (``fewshot.CONFIGURED``) whose options are its library method's defaults today is that
    method's row (``lt-prefix-anchored`` is ``lt-prefix`` since the anchored head became its default)."""
    import fewshot

    base, options = fewshot.CONFIGURED.get(method, (method, {}))
    if base != method and set(options) <= {"score_head"} and (
            fewshot.score_head(method), fewshot.learning_rate(method)) == (
            fewshot.score_head(base), fewshot.learning_rate(base)):
        return base  # options beyond the head (lt-prefix-label-map's rank) make another recipe
    return method


def _fewshot_runs(runs) -> list[dict]:
    """The few-shot result records, each with its table row (``row``; a configured row run under its own name
    is its method's default row where the two are the same recipe, one record per cell); a foreign or
    half-written file (without the key fields) is left out."""
    out = {}
    for r in runs:
        if isinstance(r, dict) and all(k in r for k in FEWSHOT_KEYS):
            r = {**r, "method": _fs_method(r["method"])}
            r["row"] = _fs_row(r)
            out.setdefault((r["dataset"], r["row"], r["shots"], r["seed"]), r)
    return list(out.values())


def _fs_rows(runs) -> list[str]:
    """The rows present, in FEWSHOT_ORDER; a method's earlier-recipe rows right after its current one."""
    pairs = {(r["method"], r["row"]) for r in runs}
    order = {m: i for i, m in enumerate(FEWSHOT_ORDER)}
    return [row for m, row in sorted(pairs, key=lambda p: (order.get(p[0], len(order)), p[1] != p[0], p[1]))]


def _fewshot_cells(runs) -> dict:
    cells = defaultdict(list)
    for r in runs:
        cells[(r["dataset"], r["row"], r["shots"])].append(r["accuracy"])
    return cells


def _fs_cell(values: list[float]) -> str:
    if not values:
        return "–"
    text = fmt_ms(values)
    return text if len(values) >= FEWSHOT_SEEDS else f"{text} ({len(values)})"


def fewshot_tables(runs) -> str:
    """Per dataset: mean ± std accuracy over seeds, methods x shots; the seed count in brackets where under 5
    (the zero-shot row has no seeds: one deterministic run)."""
    runs = _fewshot_runs(runs)
    if not runs:
        return "No few-shot results yet (`python benchmarks/fewshot.py`)."
    cells = _fewshot_cells(runs)
    datasets = [d for d in FEWSHOT_DATASETS if any(k[0] == d for k in cells)]
    methods = _fs_rows(runs)
    head = "| method | " + " | ".join(f"{k}-shot" for k in FEWSHOT_SHOTS) + " |"
    rule = "|---|" + "---|" * len(FEWSHOT_SHOTS)
    out = []
    for d in datasets:
        rows = next((r["validation_rows"] for r in runs if r.get("dataset") == d and "validation_rows" in r), "?")
        out += [f"**{d}** (accuracy on {rows} validation rows)", "", head, rule]
        for m in methods:
            vals = [cells.get((d, m, k), []) for k in FEWSHOT_SHOTS]
            if not any(vals):
                continue
            # a 0-shot cell is one deterministic run (no sample to draw)
            shown = ["–" if not v else (f"{v[0]:.3f}" if k == 0 else _fs_cell(v)) for k, v in zip(FEWSHOT_SHOTS, vals,
                                                                                                 strict=True)]
            out.append(f"| {m} | " + " | ".join(shown) + " |")
        out.append("")
    # the mean over datasets: only where every dataset has the cell (a mean over fewer would mislead)
    datasets = FEWSHOT_DATASETS
    out += ["**Mean over the datasets** (of each dataset's mean over seeds; a cell only where all "
            f"{len(datasets)} datasets have it), and mean CPU seconds per run over every dataset and shot count: "
            "training, and prediction of the 500 validation rows (the LT methods score K rows per text). "
            f"`lt-prefix-label-map` is LT-prefix as the library trains it by default (the anchored head and a "
            f"rank-{common.LABEL_MAP_RANK} label map); the `lt-prefix` row is the same without the map, every "
            "benchmark build of it naming none (`common.label_map`). CPU seconds depend on the load a cell ran "
            "under (two runs shared 2 cores, sometimes beside the tests).", "",
            head[:-2] + " | train CPU s | predict CPU s |", rule + "---|---|"]
    for m in methods:
        shown = []
        for k in FEWSHOT_SHOTS:
            means = [statistics.mean(cells[(d, m, k)]) for d in datasets if cells.get((d, m, k))]
            shown.append(f"{statistics.mean(means):.3f}" if len(means) == len(datasets) else "–")
        secs = [r["train_seconds"]["cpu"] for r in runs if r["row"] == m and r.get("train_seconds")]
        pred = [r["predict_seconds"]["cpu"] for r in runs if r["row"] == m and r.get("predict_seconds")]
        out.append(f"| {m} | " + " | ".join(shown) + f" | {statistics.mean(secs) if secs else 0:.0f} | "
                   f"{statistics.mean(pred) if pred else 0:.1f} |")
    out += ["", *fewshot_paired(runs)]
    sources = {}  # lt-prefix-multitask: the adapter each dataset's cells start from, trained once
    for r in runs:
        src = (r.get("recipe") or {}).get("init_from")
        if isinstance(src, dict) and "tasks" in src:
            sources[r["dataset"]] = src
    if sources:
        said = "; ".join(f"{d}: {' + '.join(src['tasks'])}, {src['steps']} steps, "
                         f"{(src.get('train_seconds') or {}).get('cpu', 0):.0f} CPU s"
                         for d, src in sorted(sources.items(), key=lambda kv: FEWSHOT_DATASETS.index(kv[0])
                                              if kv[0] in FEWSHOT_DATASETS else 99))
        out += ["", "lt-prefix-multitask starts from one multi-task LT-prefix adapter per dataset, trained on the "
                f"other datasets' labelled training rows (not in its train CPU s above): {said}."]
    total = sum((r.get("train_seconds") or {}).get("wall", 0) + (r.get("predict_seconds") or {}).get("wall", 0)
                for r in runs)
    versions = sorted({", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items())) for r in runs})
    out += ["", f"{len(runs)} result files, {total / 3600:.2f} h of wall time in all (training + prediction, one "
            "torch thread per run). Versions: " + "; ".join(versions) + "."]
    return "\n".join(out)


def source_parts_table(runs) -> str:
    """``fewshot.py source-parts``: each target's multi-task source adapter, 0-shot on the target's labels, with
    learned parts reset to their initial values; the frozen model's similarity beside it."""
    runs = [r for r in runs if isinstance(r, dict) and "variants" in r and "dataset" in r]
    if not runs:
        return "No source-parts results yet (`python benchmarks/fewshot.py source-parts`)."
    runs.sort(key=lambda r: FEWSHOT_DATASETS.index(r["dataset"]) if r["dataset"] in FEWSHOT_DATASETS else 99)
    zero = {r["dataset"]: r["accuracy"] for r in _fewshot_runs(load(FEWSHOT_DIR))
            if r["method"] == "zero-shot-similarity"}
    names = sorted(runs[0]["variants"], key=lambda n: (len(runs[0]["variants"][n]["reset"]), n))  # fewer resets first
    out = ["| target (source tasks) | " + " | ".join(names) + " | zero-shot-similarity | s, b |",
           "|---|" + "---|" * (len(names) + 2)]
    for r in runs:
        cells = [f"{r['variants'][n]['accuracy']:.3f}" if n in r["variants"] else "–" for n in names]
        z = zero.get(r["dataset"])
        out.append(f"| {r['dataset']} ({' + '.join(r['source']['tasks'])}) | " + " | ".join(cells)
                   + f" | {'–' if z is None else f'{z:.3f}'} | {r['scale_s']:.1f}, {r['bias_b']:.2f} |")
    out += ["", f"Accuracy on the same {runs[0]['validation_rows']} validation rows as the few-shot table; "
            "reset: C_zeta (the paper's head) and Z (LT-prefix's label-to-prefix map) to 0, W (the similarity "
            "head's text map) to the identity; s, b: the learned similarity scale and bias, kept in every column."]
    return "\n".join(out)


FEWSHOT_PAIRS = [("lt-prefix", "setfit"), ("lt-prefix", "prefix"), ("lt-prompt", "prompt"), ("lt-prefix", "linear-probe"),
                 ("lt-prefix-cosine", "setfit"), ("lt-prefix-cosine", "prefix"), ("lt-prefix-cosine", "lt-prefix"),
                 ("lt-prefix-label-map", "setfit"), ("lt-prefix-label-map", "prefix"),
                 ("lt-prefix-label-map", "lt-prefix")]


def fewshot_paired(runs) -> list[str]:
    """The LT methods against their twins and SetFit, paired by seed (each seed is one sample that every method
    trained on): mean ± std of the per-seed difference and how many seeds LT won, per dataset and shot count."""
    acc = {(r["dataset"], r["row"], r["shots"], r["seed"]): r["accuracy"] for r in runs}
    datasets = [d for d in FEWSHOT_DATASETS if any(k[0] == d for k in acc)]
    seeds = sorted({key[3] for key in acc})
    # the same comparisons within an earlier recipe (its rows carry a tag such as " (lr 1e-2)"; a method that
    # has no row with the tag, e.g. setfit, is its one row), then each method against its earlier-recipe rows:
    # what the recipe change bought, sample by sample
    present = {r["row"] for r in runs}
    tags = sorted({r["row"][len(r["method"]):] for r in runs if r["row"] != r["method"]})
    pairs = list(FEWSHOT_PAIRS)
    for tag in tags:
        # a budget tag is another number of steps: only SetFit (its own recipe, never an ltuning budget) stands
        # in untagged; an ltuning twin without the tagged row is no comparison at that budget
        budget = BUDGET_TAG in tag
        pairs += [(a + tag, b + tag if b + tag in present else b) for a, b in FEWSHOT_PAIRS
                  if a + tag in present and (b + tag in present or not budget or b == "setfit")]
    pairs += sorted({(r["method"], r["row"]) for r in runs if r["row"] != r["method"]})
    rows = []
    for k in [k for k in FEWSHOT_SHOTS if k]:
        for a, b in pairs:
            cells = []
            for d in datasets:
                diffs = [acc[(d, a, k, s)] - acc[(d, b, k, s)] for s in seeds
                         if (d, a, k, s) in acc and (d, b, k, s) in acc]
                cells.append(f"{statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs):.3f}, "
                             f"{sum(x > 0 for x in diffs)}/{len(diffs)}"
                             if len(diffs) >= 2 else "–")
            if any(c != "–" for c in cells):
                rows.append(f"| {k} | {a} − {b} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["**Paired by seed** (the same sample per seed for every method): mean ± std over seeds of the accuracy "
            "difference, and the seeds the first method won. A row name without a tag is the method at its own "
            "default learning rate, as a user gets it (so lt-prefix − prefix compares 3e-3 with 3e-2); a tag such "
            "as (lr 1e-2) marks the earlier recipe, every method at that rate; (50-epoch budget) marks rows trained "
            "for max(100 steps, 50 epochs), compared with their twins at that budget and with SetFit", "",
            "| shots | difference | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets), *rows]


def fewshot_ablation_table(runs) -> str:
    """``fewshot.py ablate``: recipe variants scored on dev rows carved from each dataset's training split (never
    the reported rows); mean dev accuracy over seeds, the seed count in brackets, per shot count."""
    runs = [r for r in runs if isinstance(r, dict) and r.get("variant") and all(k in r for k in FEWSHOT_KEYS)]
    if not runs:
        return "No ablation results yet (`python benchmarks/fewshot.py ablate`)."
    cells = defaultdict(list)
    for r in runs:  # a variant that sets no learning rate ran at the recipe's rate for the method then: said
        lr = (r.get("recipe") or {}).get("learning_rate")
        named = lr is None or r["variant"].startswith("lr-") or f"-lr-{_lr(lr)}" in r["variant"]
        v = r["variant"] if named else f"{r['variant']} (lr {_lr(lr)})"
        cells[(r["shots"], r["method"], v, r["dataset"])].append(r["accuracy"])
    datasets = [d for d in FEWSHOT_DATASETS if any(k[3] == d for k in cells)]
    variants = sorted({k[2] for k in cells}, key=lambda v: (not v.startswith("default"), v))
    zero_shot = {c[2] for c in cells if c[:2] == (0, "zero-shot-similarity")}  # default; each label template
    zero_variants = [v for v in variants if v in zero_shot]
    out = []
    for k in sorted({k[0] for k in cells if k[0]}):
        seeds = sorted({r["seed"] for r in runs if r["shots"] == k})
        out += [f"**{k} examples per class** (dev accuracy, mean over seeds; the seed count in brackets)", "",
                "| method | variant | " + " | ".join(datasets) + " | mean |", "|---|---|" + "---|" * (len(datasets) + 1)]
        for v in zero_variants:
            zero = [cells.get((0, "zero-shot-similarity", v, d), []) for d in datasets]  # default; a label template
            mean = f"{statistics.mean(x[0] for x in zero):.3f}" if all(zero) else "–"
            out.append(f"| zero-shot-similarity | {'no training' if v == 'default' else v + ' (no training)'} | "
                       + " | ".join(f"{x[0]:.3f}" if x else "–" for x in zero) + f" | {mean} |")
        for m in [m for m in FEWSHOT_ORDER if any(c[1] == m and c[0] == k for c in cells)]:
            for v in [v for v in variants if any(c[:3] == (k, m, v) for c in cells)]:
                vals = [cells.get((k, m, v, d), []) for d in datasets]
                shown = [f"{statistics.mean(x):.3f}" + (f" ({len(x)})" if len(x) != len(seeds) else "")
                         if x else "–" for x in vals]
                mean = (f"{statistics.mean(statistics.mean(x) for x in vals):.3f}"
                        if all(vals) and len({len(x) for x in vals}) == 1 else "–")
                out.append(f"| {m} | {v} | " + " | ".join(shown) + f" | {mean} |")
        out += ["", f"Seeds {', '.join(map(str, seeds))}; a bracket gives a cell's seed count where it has fewer, "
                "and the mean is shown only where every dataset has the same seeds.", ""]
    return "\n".join(out)


#: The configurations a method's default is chosen among: (method, score head) -> (the few-shot dev ablation
#: variants that ran it, the converged learning-rate search's row that ran it). The LT rows train listwise. A
#: few-shot ``default`` / ``lr-X`` cell of lt-prefix / lt-prompt runs the similarity head (``fewshot.ABLATION_HEAD``); ``prefix-only-lr-X`` (LT-prefix with that head
#: frozen at its start: W the identity, C_zeta zero, s = 20, b = -4) is exactly the cosine head, and
#: ``head-prior-10-lr-X`` (a prior of weight 10 / n on W - I and C_zeta) the anchored head. A classic method
#: has one head (the paper's K-way head; None here). A configuration with more than a head is (head, label map
#: rank): LT-prefix's label map of that rank (``head-prior-10-lr-X-label-map-r8``; ``{lr}`` marks where a
#: variant's rate stands when something follows it).
DEFAULT_CONFIGS = {
    ("lt-prefix", "similarity"): (("default", "lr-"), "lt-prefix-listwise"),
    ("lt-prefix", "cosine"): (("prefix-only-lr-",), "lt-prefix-cosine-listwise"),
    ("lt-prefix", "anchored"): (("head-prior-10-lr-",), "lt-prefix-anchored-listwise"),
    ("lt-prefix", ("anchored", 8)): (("head-prior-10-lr-{lr}-label-map-r8",), "lt-prefix-label-map-anchored-listwise"),
    ("lt-prompt", "similarity"): (("default", "lr-"), "lt-prompt-listwise"),
    ("prefix", None): (("default", "lr-"), "prefix"),
    ("prompt", None): (("default", "lr-"), "prompt"),
}


def _is_variant(variant: str, kinds) -> bool:
    """Whether ``variant`` is ``default`` or one of ``kinds`` with a learning rate at its ``{lr}`` (its end where
    it has none) and nothing else (``head-prior-10-lr-3e-3``, not ``head-prior-10-lr-3e-3-steps-300``)."""
    rate = r"[0-9.]+(e-?[0-9]+)?"

    def pattern(k: str) -> str:
        before, _, after = (k if "{lr}" in k else k + "{lr}").partition("{lr}")
        return re.escape(before) + rate + re.escape(after)

    return any(variant == k if k == "default" else re.fullmatch(pattern(k), variant) for k in kinds)


def _config_options(config) -> tuple[str | None, int | None]:
    """(score head, label map rank) of a ``DEFAULT_CONFIGS`` configuration: a head, None, or (head, rank)."""
    return tuple(config) if isinstance(config, tuple) else (config, None)


def _config_name(config) -> str:
    head, rank = _config_options(config)
    return "–" if head is None else head + (f" + label map r={rank}" if rank is not None else "")


def default_lr_regimes(lr_search, ablation) -> dict:
    """(method, configuration) -> [(regime, {lr: dev metric})] (a configuration: a score head, or (head, label map
    rank); ``DEFAULT_CONFIGS``): the few-shot dev mean (16 examples per class; the mean
    over the four datasets of each one's mean over seeds, only where every dataset has the same seeds) and each
    task of the converged learning-rate search (best dev metric within its 500 steps)."""
    out = {}
    for (m, head), (variants, conv) in DEFAULT_CONFIGS.items():
        cells = defaultdict(dict)
        for r in sorted(ablation, key=lambda r: str(r.get("variant"))):
            lr = (r.get("recipe") or {}).get("learning_rate")
            if r.get("method") == m and r.get("shots") == 16 and lr is not None and _is_variant(
                    str(r.get("variant", "")), variants):
                cells[(lr, r["dataset"])].setdefault(r["seed"], r["accuracy"])  # default and lr-X alike: once
        few = {}
        for lr in sorted({lr for lr, _ in cells}):
            per = [sorted(cells.get((lr, d), {}).items()) for d in FEWSHOT_DATASETS]
            if all(per) and len({tuple(sorted(s for s, _ in x)) for x in per}) == 1:
                few[lr] = statistics.mean(statistics.mean(a for _, a in x) for x in per)
        regimes = [("few-shot dev", few)]
        for t in CONVERGED_TASKS:
            regimes.append((f"{t} dev", {r["learning_rate"]: r["best_dev_metric"] for r in lr_search
                                         if r.get("method") == conv and r.get("task") == t}))
        out[(m, head)] = regimes
    return out


def default_choices(regimes) -> dict:
    """method -> ((configuration, lr) chosen, {(configuration, lr): worst shortfall}) by the rule: among the
    (configuration, rate) pairs measured in every regime, the one whose worst shortfall from the regime's best
    (over every pair of the method measured everywhere) is smallest; ties go to the lower rate, then the
    configuration listed first in DEFAULT_CONFIGS. A configuration: a score head, or (head, label map rank)."""
    out = {}
    for m in dict.fromkeys(k[0] for k in regimes):
        heads = [h for mm, h in regimes if mm == m]
        everywhere = [(h, lr) for h in heads for lr in sorted(set.intersection(*(set(v) for _, v in regimes[(m, h)])))]
        if not everywhere:
            out[m] = (None, {})
            continue
        by_head = {h: dict(regimes[(m, h)]) for h in heads}  # head -> {regime: {lr: dev metric}}
        names = list(by_head[heads[0]])
        best = [max(by_head[h][name][lr] for h, lr in everywhere) for name in names]
        short = {(h, lr): max(b - by_head[h][name][lr] for b, name in zip(best, names, strict=True))
                 for h, lr in everywhere}
        out[m] = (min(short, key=lambda k: (short[k], k[1], heads.index(k[0]))), short)
    return out


def default_lr_table(lr_search, ablation) -> str:
    """Each method's default (score head and learning rate) by the rule of :func:`default_choices`; beside it,
    the library's default today."""
    from ltuning.methods import METHODS

    regimes = default_lr_regimes(lr_search, ablation)
    choices = default_choices(regimes)
    names = [name for name, _ in next(iter(regimes.values()))]
    out = ["| method | score head (and options) | lr | " + " | ".join(names) + " | worst shortfall | |",
           "|---|---|---|" + "---|" * (len(names) + 2)]
    for (m, config), regs in regimes.items():
        chosen, short = choices[m]
        head, rank = _config_options(config)
        # the library's default configuration: its default head and label map (lt-prefix: r = 8; others none)
        default_head = METHODS[m].default_score_head.value if METHODS[m].label_conditioned else None
        default = METHODS[m].learning_rate_for(head) if head else METHODS[m].default_learning_rate
        library_config = head == default_head and rank == METHODS[m].label_map_rank_for(None)
        for lr in sorted(set().union(*(set(v) for _, v in regs))):
            vals = [f"{v[lr]:.3f}" if lr in v else "–" for _, v in regs]
            said = (("chosen" if (config, lr) == chosen else "")
                    + (", library default" if lr == default and library_config else "")
                    + (", its default rate" if lr == default and not library_config else ""))
            out.append(f"| {m} | {_config_name(config)} | {_lr(lr)} | " + " | ".join(vals) + " | "
                       + (f"{short[(config, lr)]:.3f}" if (config, lr) in short else "not measured everywhere")
                       + f" | {said.strip(', ')} |")
    seeds = sorted({r["seed"] for r in ablation if r.get("shots") == 16 and r.get("method") in choices})
    out += ["", "Dev metric: accuracy (MCC on CoLA). Few-shot dev: 16 examples per class, seeds "
            f"{', '.join(map(str, seeds))}, 500 dev rows "
            "carved from each dataset's training split, mean over sst2, demo, trec and sms-spam (the ablation table "
            "of the few-shot section; the cosine head's cells are its `prefix-only-lr-X` rows, the anchored head's its `head-prior-10-lr-X` rows, with the label map its `head-prior-10-lr-X-label-map-r8` rows). sst2 / cola / rte "
            "dev: the converged protocol's learning-rate search (seed 0, 500 steps of batch 32, best dev metric), "
            "LT rows listwise. Shortfall: the regime's best over the configurations of the method measured "
            "everywhere, minus this one's value. `its default rate`: the rate the library uses with that head."]
    return "\n".join(out)


def fewshot_plot(runs) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    runs = _fewshot_runs(runs)
    if not runs:
        return []
    cells = _fewshot_cells(runs)
    datasets = [d for d in FEWSHOT_DATASETS if any(k[0] == d for k in cells)]
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.6), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        for m in _fs_rows(runs):
            if m == "zero-shot-similarity":
                if cells.get((d, m, 0)):
                    ax.axhline(cells[(d, m, 0)][0], color="grey", ls=":", lw=1, label="zero-shot similarity")
                continue
            ks = [k for k in FEWSHOT_SHOTS if cells.get((d, m, k))]
            if not ks:
                continue
            mean = [statistics.mean(cells[(d, m, k)]) for k in ks]
            sd = [statistics.stdev(cells[(d, m, k)]) if len(cells[(d, m, k)]) > 1 else 0.0 for k in ks]
            earlier = "(lr " in m  # a row kept from an earlier recipe: thin, no band
            line = ax.plot(ks, mean, "-" if m.startswith("lt-") else "--", marker="o", ms=2 if earlier else 3,
                           lw=0.8 if earlier else 1.5, alpha=0.5 if earlier else 1.0, label=m)[0]
            if earlier:
                continue
            ax.fill_between(ks, [a - b for a, b in zip(mean, sd, strict=True)],
                            [a + b for a, b in zip(mean, sd, strict=True)], color=line.get_color(), alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_xticks([8, 16, 32, 64], ["8", "16", "32", "64"])
        ax.set_title(d, fontsize=10)
        ax.set_xlabel("examples per class")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (mean ± sd over seeds)")
    axes[0][-1].legend(fontsize=7)
    png = _save(plt, fig, "fewshot.png")
    return [str(png.relative_to(common.ROOT) if png.is_relative_to(common.ROOT) else png)]


MULTITASK_DIR = common.RESULTS / "multitask"


def _multitask_runs(runs) -> list[dict]:
    """benchmarks/multitask.py's records (a smoke run's, tagged in its file name, carry steps < 10: left out)."""
    keys = ("tasks", "held_out", "seed", "multitask", "per_task", "held_out_task")
    return [r for r in runs if isinstance(r, dict) and all(k in r for k in keys) and r.get("steps", 0) >= 10]


def _mt_row(runs, tasks, name: str, get) -> list[str]:
    """A table row: ``get(run, task)`` per task over the runs (mean ± std), then the mean over tasks; no row
    where a run lacks a value."""
    vals = [[get(r, t) for r in runs] for t in tasks]
    if any(v is None for vs in vals for v in vs):
        return []
    means = [statistics.mean(v) for v in vals]
    return [f"| {name} | " + " | ".join(fmt_ms(v) for v in vals) + f" | {statistics.mean(means):.3f} |"]


def multitask_tables(runs) -> str:
    """One LT-prefix adapter on several tasks against per-task adapters on each task, and on a held-back task:
    accuracy, mean ± std over seeds (seed count in brackets)."""
    runs = _multitask_runs(runs)
    if not runs:
        return "No multi-task results yet (`python benchmarks/multitask.py`)."
    out = []
    groups = defaultdict(list)
    for r in runs:
        # files without the keys ran with the similarity head, before lt-prefix's default left 1e-2
        groups[(r["backbone"], tuple(r["tasks"]), r["held_out"], r["steps"], r["fewshot_steps"],
                r.get("score_head", "similarity"), r.get("label_map_rank") or 0, r.get("learning_rate", 1e-2),
                r.get("per_task_steps", r["steps"]))].append(r)
    for (backbone, tasks, held, steps, fsteps, head, rank, lr, own), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][:5], kv[0][5] != "similarity", kv[0][5:])):
        seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
        val_rows = rs[0]["val_rows"]
        out += [f"**{backbone}: one adapter on {' + '.join(tasks)} ({steps} steps of batch {rs[0]['batch_size']}, "
                f"the {head} head" + (f" and label map r={rank}" if rank else "") + f", lr {_lr(lr)}), "
                f"held-back task {held}** (seeds {seeds}; accuracy on "
                + ", ".join(f"{val_rows[t]} {t}" for t in tasks) + f" and {rs[0]['held_out_task']['rows']} {held} "
                "validation rows)", "",
                "| model | " + " | ".join(tasks) + " | mean |", "|---|" + "---|" * (len(tasks) + 1)]
        out += _mt_row(rs, tasks, "multi-task adapter", lambda r, t: r["multitask"]["validation"][t]["accuracy"])
        own_what = f"its own adapter, {own} steps" + (
            " (together, the multi-task run's steps)" if own != steps and own * len(tasks) == steps else "")
        for kind, what in ((rs[0].get("per_task_kind", "same-budget"), own_what),  # stored runs: same-budget
                           ("same-task-steps", "its own adapter, the batches the multi-task run drew from it")):
            out += _mt_row(rs, tasks, what, lambda r, t, kind=kind: (r["per_task"].get(f"{t}/{kind}") or {}).get(
                "validation", {}).get("accuracy"))
        out += ["", f"Held-back task `{held}` (labels " + " / ".join(f"`{x}`" for x in rs[0]["held_out_task"][
            "label_texts"]) + f"; continued training: {fsteps} steps, final state):", "",
                "| model | accuracy |", "|---|---|"]
        held_rec = rs[0]["held_out_task"]
        keys = [k for k in held_rec if isinstance(held_rec[k], dict) and "accuracy" in held_rec[k]]
        for k in keys:
            vals = [r["held_out_task"][k]["accuracy"] for r in rs if k in r["held_out_task"]]
            out.append(f"| {k} | {fmt_ms(vals)} |")
        secs = statistics.mean(r["seconds"] for r in rs)
        out += ["", f"{len(rs)} run(s), {secs / 60:.0f} min each (one torch thread); versions "
                + ", ".join(f"{k} {v}" for k, v in sorted(rs[0].get("versions", {}).items())) + ".", ""]
    return "\n".join(out)


PARTS_COLUMNS = {"trained": "as trained", "head-at-start": "score head at start", "W-at-start": "W at start",
                 "prefix-at-start": "label prefix at start", "both-at-start": "all at start"}


def multitask_parts_table(runs) -> str:
    """``multitask.py``'s held-back zero-shot with parts of the multi-task adapter at their start (the ``parts``
    record of its full runs and of its ``--zero-shot-only`` runs): one row per run, then the mean."""
    runs = [r for r in runs if isinstance(r, dict) and r.get("held_out_task", {}).get("parts")
            and r.get("steps", 0) >= 10]
    if not runs:
        return "No held-back parts yet (`python benchmarks/multitask.py --zero-shot-only`)."
    out = []
    groups = defaultdict(dict)
    for r in runs:  # a seed's full run and its --zero-shot-only run train the same adapter: one row
        groups[(r["backbone"], tuple(r["tasks"]), r["held_out"], r["steps"], r.get("score_head"),
                r.get("label_map_rank") or 0, r.get("learning_rate"), r["batch_size"])].setdefault(r["seed"], r)
    if len(groups) > 1:  # one line per held-back task: the frozen model, the trained head, the option
        out += ["Every held-back task, mean of its seeds (validation rows; the dev rows of its training split in "
                "brackets). `unseen_label_head=\"cosine\"` is the score head at start; paired: seeds where it beats "
                "the frozen cosine (validation, dev).", "",
                "| trained on | held back | seeds | zero-shot-cosine | as trained | `unseen_label_head=\"cosine\"` "
                "| paired wins |", "|---|---|---|---|---|---|---|"]
        for (_backbone, tasks, held, steps, *_), by_seed in sorted(groups.items(), key=lambda kv: str(kv[0])):
            hs = [by_seed[s]["held_out_task"] for s in sorted(by_seed)]
            if not all("head-at-start" in h["parts"] for h in hs):
                continue

            devs = [h["dev"] for h in hs if "head-at-start" in h.get("dev", {}).get("parts", {})]

            def cell(part=None, hs=hs, devs=devs):
                val = [h["zero-shot-cosine"]["accuracy"] if part is None else h["parts"][part] for h in hs]
                dev = [d["zero-shot-cosine"] if part is None else d["parts"][part] for d in devs]
                return f"{statistics.mean(val):.3f}" + (f" ({statistics.mean(dev):.3f})" if dev else "")

            wins = sum(h["parts"]["head-at-start"] > h["zero-shot-cosine"]["accuracy"] for h in hs)
            dev_wins = sum(d["parts"]["head-at-start"] > d["zero-shot-cosine"] for d in devs)
            out.append(f"| {' + '.join(tasks)}, {steps} steps | {held} | {', '.join(str(s) for s in sorted(by_seed))} "
                       f"| {cell()} | {cell('trained')} | {cell('head-at-start')} | {wins} of {len(hs)}, "
                       + (f"{dev_wins} of {len(devs)} |" if devs else "no dev rows |"))
        out.append("")
    for (backbone, tasks, held, steps, head, rank, lr, batch), by_seed in sorted(groups.items(),
                                                                                key=lambda kv: str(kv[0])):
        rs = [by_seed[s] for s in sorted(by_seed)]
        cols = [c for c in PARTS_COLUMNS if all(c in r["held_out_task"]["parts"] for r in rs)]
        out += [f"**{backbone}: the adapter on {' + '.join(tasks)} ({steps} steps of batch {batch}, the {head} head"
                + (f" and label map r={rank}" if rank else "") + f", lr {_lr(lr)}), zero-shot on `{held}`** "
                f"({rs[0]['held_out_task']['rows']} validation rows)", "",
                "| seed | zero-shot-cosine | " + " | ".join(PARTS_COLUMNS[c] for c in cols) + " |",
                "|---|---|" + "---|" * len(cols)]
        for r in rs:
            h = r["held_out_task"]
            out.append(f"| {r['seed']} | {h['zero-shot-cosine']['accuracy']:.3f} | "
                       + " | ".join(f"{h['parts'][c]:.3f}" for c in cols) + " |")
        out.append("| mean | " + f"{statistics.mean(r['held_out_task']['zero-shot-cosine']['accuracy'] for r in rs):.3f}"
                   + " | " + " | ".join(f"{statistics.mean(r['held_out_task']['parts'][c] for r in rs):.3f}"
                                        for c in cols) + " |")
        out.append("")
        dev = [r for r in rs if "dev" in r["held_out_task"]]
        if dev:  # the same on rows of the held-back task's training split
            d0 = dev[0]["held_out_task"]["dev"]
            out += [f"The same on {d0['rows']} rows of `{held}`'s training split (a dev set, seeds "
                    + ", ".join(str(r["seed"]) for r in dev) + "):", "",
                    "| seed | zero-shot-cosine | " + " | ".join(PARTS_COLUMNS[c] for c in cols) + " |",
                    "|---|---|" + "---|" * len(cols)]
            for r in dev:
                d = r["held_out_task"]["dev"]
                out.append(f"| {r['seed']} | {d['zero-shot-cosine']:.3f} | "
                           + " | ".join(f"{d['parts'][c]:.3f}" for c in cols) + " |")
            out += ["| mean | " + f"{statistics.mean(r['held_out_task']['dev']['zero-shot-cosine'] for r in dev):.3f} | "
                    + " | ".join(f"{statistics.mean(r['held_out_task']['dev']['parts'][c] for r in dev):.3f}"
                                 for c in cols) + " |", ""]
        rew = [r for r in rs if r.get("rewordings")]
        if rew:  # its own tasks under other label wordings: the trained head against the frozen similarity
            out += ["Its own tasks with other label wordings (validation rows as above, seeds "
                    + ", ".join(str(r["seed"]) for r in rew) + "; mean ± std):", "",
                    "| task | label texts | trained head | frozen similarity (`unseen_label_head=\"cosine\"`) |",
                    "|---|---|---|---|"]
            cells = defaultdict(lambda: {"trained": [], "cosine": []})  # (task, wording) over the runs
            for r in rew:
                for task, rows in r["rewordings"].items():
                    for row in rows:
                        for h in ("trained", "cosine"):
                            cells[(task, tuple(row["label_texts"]))][h].append(row[h])
            for (task, texts), vals in cells.items():
                out.append(f"| {task} | " + " / ".join(texts) + f" | {fmt_ms(vals['trained'])} | "
                           f"{fmt_ms(vals['cosine'])} |")
            out.append("")
    out.append("At start: the score head's W the identity, C_zeta 0, s and b their initial values; the label prefix's "
               "Z and the label map's U 0 (the prefix is then zero). All at start is the frozen text-label "
               "similarity up to the zero prefix's small share of attention, so it is near zero-shot-cosine.")
    return "\n".join(out)


def dynamics_table(runs) -> str:
    """``prefix_dynamics.py``: per run, at each logged step, the prefix's norm, the norm of the two labels'
    prefix difference (LT-prefix), LT-prefix's largest |score| and the dev accuracy."""
    if not runs:
        return "No prefix-dynamics results yet (`python benchmarks/prefix_dynamics.py`)."
    out = ["| run | step | prefix norm | label difference norm | max abs score | dev accuracy |",
           "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["steps"], r["row"], r["learning_rate"])):
        name = f"{r['row']} {_lr(r['learning_rate'])}, {r['steps']} steps"
        for c in r["curve"]:
            diff = c.get("label_difference_norm")
            scores = c.get("scores")
            top = max(abs(x) for row in scores for x in row) if scores else None
            out.append(f"| {name} | {c['step']} | {c['prefix_norm']:.1f} | "
                       + ("–" if diff is None else f"{diff:.1f}") + " | "
                       + ("–" if top is None else f"{top:.2f}") + f" | {c['dev_accuracy']:.3f} |")
    first = runs[0]
    ranks = sorted({r["label_map_rank"] for r in runs if r.get("label_map_rank")})
    out += ["", f"SST-2, batch {first['batch_size']}, {first['objective']} objective for LT-prefix, the anchored "
            "head, and no label map"
            + (f" but in the `lt-prefix-label-map` rows (rank {', '.join(map(str, ranks))})" if ranks else "")
            + f"; dev accuracy on the first "
            f"{first['dev_rows']} rows of the converged protocol's dev split; seed {first['seed']}."]
    return "\n".join(out)


def fewshot_timing_table(runs) -> str:
    """``fewshot_timing.py``: the default LT-prefix's and SetFit's training and prediction CPU seconds, timed as
    pairs under the same load (one cell of each, back to back, alternating which goes first)."""
    if not runs:
        return "No timing pairs yet (`python benchmarks/fewshot_timing.py`)."
    import fewshot
    import fewshot_timing

    ours = fewshot_timing.OURS
    out = ["| shots | dataset | pairs | LT-prefix train CPU s | SetFit train CPU s | LT-prefix / SetFit | "
           "LT-prefix predict CPU s | SetFit predict CPU s |", "|---|---|---|---|---|---|---|---|"]
    groups = defaultdict(list)
    for r in runs:
        groups[(r["shots"], r["dataset"])].append(r)

    def row(label, dataset, rs):
        train = {m: [r["cells"][m]["train_seconds"]["cpu"] for r in rs] for m in (ours, "setfit")}
        pred = {m: [r["cells"][m]["predict_seconds"]["cpu"] for r in rs] for m in (ours, "setfit")}
        ratios = [a / b for a, b in zip(train[ours], train["setfit"], strict=True)]
        return (f"| {label} | {dataset} | {len(rs)} | {statistics.mean(train[ours]):.0f} | "
                f"{statistics.mean(train['setfit']):.0f} | {statistics.mean(ratios):.2f}x "
                f"({min(ratios):.2f}-{max(ratios):.2f}) | {statistics.mean(pred[ours]):.1f} | "
                f"{statistics.mean(pred['setfit']):.1f} |")

    for shots in sorted({k for k, _ in groups}):
        for d in fewshot.DATASETS:
            if (shots, d) in groups:
                out.append(row(shots, d, groups[(shots, d)]))
        out.append(row(f"**{shots}**", "**all**", [r for (k, _), rs in groups.items() if k == shots for r in rs]))
    loads = [x for r in runs for c in r["cells"].values() for x in (c["load_before"][0], c["load_after"][0])]
    first = sum(r["order"][0] == ours for r in runs)
    same = sum(c["accuracy"] == c["stored_accuracy"] for r in runs for c in r["cells"].values())
    cells = sum(len(r["cells"]) for r in runs)
    out += ["", f"LT-prefix: the library's default (`{ours}` in the few-shot table). Ratios: per pair, mean (range). "
            f"One torch thread per cell, each cell a fresh process, LT-prefix first in {first} of {len(runs)} pairs; "
            "1-minute load average around the cells "
            f"{min(loads):.1f}-{max(loads):.1f}. {same} of {cells} timed cells scored exactly the accuracy of the "
            "stored few-shot cell they repeat."]
    return "\n".join(out)


def splice(doc: str, name: str, body: str) -> str:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pat.search(doc):
        return pat.sub(lambda _: block, doc)
    return doc.rstrip() + "\n\n" + block + "\n"


SKELETON = """# Benchmarks

Every number here is produced by a command below and read from a JSON file under `benchmarks/results/`;
`python benchmarks/render.py` (or `make bench-render`) rewrites the generated blocks from those files.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", type=Path, default=DOC)
    a = ap.parse_args(argv)
    runs = load()
    pngs = plots(runs)
    total = sum(r.get("seconds") or 0 for r in runs)
    versions = sorted({f"torch {r['versions'].get('torch')}, transformers {r['versions'].get('transformers')}"
                       + (f", peft {r['versions']['peft']}" if r['versions'].get('peft') else "")
                       for r in runs if r.get("versions")})
    loads = [r["machine"]["loadavg_at_start"][0] for r in runs if r.get("machine", {}).get("loadavg_at_start")]
    summary = (f"{len(runs)} result files; total CPU wall time of the runs: {total:,.0f} s ({total / 3600:.2f} h), "
               f"1 torch thread per run on a shared 2-core CPU (1-minute load average at run start "
               f"{min(loads):.1f}-{max(loads):.1f}, so seconds are inflated and only roughly comparable). "
               if loads else f"{len(runs)} result files. ") + "Package versions: " + "; ".join(versions) + "."
    doc = a.doc.read_text() if a.doc.exists() else SKELETON
    doc = splice(doc, "table1", "\n".join([summary, "", table1(runs)]))
    doc = splice(doc, "table1-deltas", paired_deltas(runs))
    doc = splice(doc, "table1-missing", missing(runs))
    doc = splice(doc, "figure2", "\n".join(
        [*(f"![{Path(p).stem}]({p})" for p in pngs), "", convergence(runs)]))
    doc = splice(doc, "table1-runs", per_run(runs))
    hs = headstart_runs()
    doc = splice(doc, "headstart", "\n".join([*(f"![{Path(p).stem}]({p})" for p in headstart_plots(hs)), "",
                                             headstart_table(hs)]))
    final, lr_search = converged_runs()
    doc = splice(doc, "converged", "\n".join([*(f"![{Path(p).stem}]({p})" for p in converged_plots(final)), "",
                                              converged_table(final)]))
    doc = splice(doc, "converged-lr", converged_lr_table(lr_search, final))
    doc = splice(doc, "converged-edges", converged_edges_table(
        final, load(CONVERGED_DIR / "beyond-grid") + load(CONVERGED_DIR / "to-cap" / "beyond-grid"),
        load(CONVERGED_DIR / "to-cap")))
    doc = splice(doc, "converged-to-cap", converged_to_cap_table(final, load(CONVERGED_DIR / "to-cap")))
    doc = splice(doc, "depth", depth_tables())
    fs = load(FEWSHOT_DIR)
    doc = splice(doc, "fewshot", "\n".join([*(f"![{Path(p).stem}]({p})" for p in fewshot_plot(fs)), "",
                                            fewshot_tables(fs)]))
    doc = splice(doc, "fewshot-timing", fewshot_timing_table(load(FEWSHOT_DIR / "timing")))
    doc = splice(doc, "fewshot-source-parts", source_parts_table(load(FEWSHOT_DIR / "source-parts")))
    doc = splice(doc, "fewshot-ablation", fewshot_ablation_table(load(FEWSHOT_DIR / "ablation")))
    doc = splice(doc, "default-lr", default_lr_table(lr_search, load(FEWSHOT_DIR / "ablation")))
    doc = splice(doc, "multitask", multitask_tables(load(MULTITASK_DIR)))
    doc = splice(doc, "multitask-parts", multitask_parts_table(load(MULTITASK_DIR / "zero-shot-parts")
                                                               + load(MULTITASK_DIR)))
    doc = splice(doc, "dynamics", dynamics_table(load(prefix_dynamics.OUT)))
    a.doc.write_text(doc)
    print(f"wrote {a.doc} ({len(runs)} runs) and {len(pngs)} PNG(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
