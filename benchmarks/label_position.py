"""Prediction speed of LT-prompt's label position on a decoder (issue 5, "text first, label after").

``before`` (the paper): K rows [label prompt k][text] per text, K*(n + l) positions.
``after``: rows [text][label prompt k]; prediction runs the text once, repeats its cache K times and runs only
the K*l prompt positions: n + K*l positions per text.
``after-full``: the same "after" model scored through its K full rows (what the cache saves, order aside).

Every variant scores the same texts, each truncated to the same length, with ``LTuningModel.score_texts`` at
its defaults (its CPU token budget included), interleaved in one process (speed.interleaved: order reversed
every other repeat); medians over repeats. Writes benchmarks/results/label_position.json and prints a
markdown table.

    python benchmarks/label_position.py                   # smollm2, K = 2, 4, 8, 16, 16 texts of 40 tokens
    python benchmarks/label_position.py --ks 2 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402

OUT = speed.ROOT / "benchmarks" / "results" / "label_position.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ks", nargs="+", type=int, default=[2, 4, 8, 16])
    ap.add_argument("--texts", type=int, default=16, help="texts per score_texts call (one batch)")
    ap.add_argument("--length", type=int, default=40, help="every text is truncated to this many tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-full", action="store_true", help="skip the after-full variant")
    ap.add_argument("--output", type=Path, default=OUT)
    a = ap.parse_args(argv)

    from ltuning.config import LTuningConfig
    from ltuning.loading import load_backbone
    from ltuning.model import LTuningModel

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    started, load_before = time.strftime("%Y-%m-%dT%H:%M:%S%z"), speed.loadavg()
    bb = load_backbone(a.model)
    texts = speed.long_texts(a.texts)  # long demo texts: every one is cut at --length tokens
    fns, info = {}, {}
    for K in a.ks:
        names = speed.MANY_LABELS[:K]
        models = {}
        for pos in ("before", "after"):
            m = LTuningModel(bb, LTuningConfig(method="lt-prompt", base_model=a.model, label_names=names,
                                               max_length=a.length, label_position=pos,
                                               score_head="paper"))  # as the stored results
            with torch.no_grad():
                for p in m.method.parameters():
                    p.add_(torch.randn_like(p) * 0.01)
            models[pos] = m.eval()
        full = LTuningModel(bb, models["after"].config)
        full.method.load_state_dict(models["after"].method.state_dict())
        full.eval()
        full.shares_text = lambda: False  # the "after" model through its K full rows per text
        # the shared path gives the full rows' scores (checked here too, on 4 of the benchmark's texts)
        diff = (models["after"].score_texts(texts[:4]) - full.score_texts(texts[:4])).abs().max().item()
        info[K] = {"label_length": models["after"].config.label_length, "max_abs_diff_after_vs_full": diff}
        fns[f"before_k{K}"] = lambda m=models["before"]: m.score_texts(texts)
        fns[f"after_k{K}"] = lambda m=models["after"]: m.score_texts(texts)
        if not a.no_full:
            fns[f"after-full_k{K}"] = lambda m=full: m.score_texts(texts)
    tok_lens = bb.tokenize(texts, a.length)["attention_mask"].sum(-1).tolist()
    speed.log(f"{len(fns)} variants x {a.repeats} repeats, {len(texts)} texts of {min(tok_lens)}-{max(tok_lens)} tokens")
    t = speed.interleaved(fns, a.repeats, warmup=1)
    rows = {}
    for K in a.ks:
        r = {}
        for v in ("before", "after", "after-full"):
            x = t.get(f"{v}_k{K}")
            if x is not None:
                r[v] = {"wall_median": x["wall_median"], "cpu_median": x["cpu_median"], "wall": x["wall"],
                        "cpu": x["cpu"], "texts_per_s": len(texts) / x["wall_median"]}
        l, n = info[K]["label_length"], a.length
        r["positions_per_text"] = {"before": K * (n + l), "after": n + K * l}
        r["speedup_wall"] = r["before"]["wall_median"] / r["after"]["wall_median"]
        r["speedup_cpu"] = r["before"]["cpu_median"] / r["after"]["cpu_median"]
        rows[K] = {**r, **info[K]}
    payload = {"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": a.model,
               "texts": len(texts), "text_tokens": tok_lens, "repeats": a.repeats,
               "max_tokens": LTuningModel.cpu_max_tokens, "label_names": speed.MANY_LABELS[:max(a.ks)],
               "machine": speed.machine_info(a.threads), "load_before": load_before, "load_after": speed.loadavg(),
               "command": "python benchmarks/label_position.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "by_k": rows}
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"{a.model}, {len(texts)} texts of {a.length} tokens, 1 batch, {a.threads} thread(s); medians of "
          f"{a.repeats} repeats; load {load_before} -> {payload['load_after']}\n")
    print("| K | l | positions/text before / after | before s (texts/s) | after s (texts/s) | after, full rows s "
          "| before / after (wall) | before / after (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for K, r in rows.items():
        full_s = f"{r['after-full']['wall_median']:.2f}" if "after-full" in r else "–"
        print(f"| {K} | {r['label_length']} | {r['positions_per_text']['before']} / {r['positions_per_text']['after']} "
              f"| {r['before']['wall_median']:.2f} ({r['before']['texts_per_s']:.1f}) "
              f"| {r['after']['wall_median']:.2f} ({r['after']['texts_per_s']:.1f}) | {full_s} "
              f"| {r['speedup_wall']:.2f}x | {r['speedup_cpu']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
