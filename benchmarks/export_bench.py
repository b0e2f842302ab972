"""ONNX export: texts/s of onnxruntime against PyTorch (``score_texts``) on the packaged minilm, side by side in
one run, and the largest score difference between them.

    python benchmarks/export_bench.py                     # lt-prefix, 256 demo validation texts, 3 rounds
    python benchmarks/export_bench.py --methods lt-prefix lt-prompt prefix --texts 512 --rounds 5

Per method: an untrained adapter on minilm (speed does not depend on the weights; the adapter's Z / G /
heads start at zero or small values, so its scores are those of the zero-shot similarity start), exported
with :func:`ltuning.export.export_onnx` to a temporary file. A round scores the same texts both ways, in
alternating order: PyTorch ``model.score_texts(texts, batch_size)`` (float32, the library's own batching:
texts sorted by length, at most ``cpu_max_tokens`` rows x tokens per forward); onnxruntime on the same
texts sorted by length, tokenized ``--ort-batch-sizes`` at a time (64 and 16 by default, each its own column) by the model's tokenizer, one session run per
batch. Tokenization is timed in both. Threads: torch.set_num_threads(N) and onnxruntime intra-op N.
Writes benchmarks/results/export.json (config, per-round numbers, medians, the ratio, max |diff|,
versions, git commit, load average before and after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

OUT = common.RESULTS / "export.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["lt-prefix"])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ort-batch-sizes", type=int, nargs="+", default=[64, 16],
                    help="texts per onnxruntime run (each is its own column; the ratio uses the first)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=OUT)
    args = ap.parse_args()

    import torch

    from ltuning.config import LTuningConfig
    from ltuning.data import read_demo
    from ltuning.export import export_onnx, onnx_scores, onnx_session
    from ltuning.loading import load_backbone
    from ltuning.model import LTuningModel

    torch.set_num_threads(args.threads)
    load_start = common.machine()
    texts = list(read_demo("validation").texts[:args.texts])
    backbone = load_backbone("minilm")
    results = {}
    for method in args.methods:
        model = LTuningModel(backbone, LTuningConfig(method=method, base_model="minilm",
                                                     label_names=["negative", "positive"],
                                                     **common.label_map(method))).eval()  # as stored
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            t0 = time.perf_counter()
            info = export_onnx(model, path)
            export_s = time.perf_counter() - t0
            size = path.stat().st_size
            session = onnx_session(path, threads=args.threads)
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))

            def run_torch(model=model):
                return model.score_texts(texts, args.batch_size)

            def run_ort(batch_size, model=model, order=order, session=session):
                out = torch.empty(len(texts), model.num_labels)
                for s in range(0, len(order), batch_size):
                    idx = order[s:s + batch_size]
                    out[idx] = onnx_scores(session, model, [texts[i] for i in idx])
                return out

            ort_names = [f"onnxruntime_b{b}" for b in args.ort_batch_sizes]
            want = run_torch()  # warm-up, and the scores compared
            diff, same_argmax = 0.0, 1.0
            for b in args.ort_batch_sizes:
                got = run_ort(b)
                diff = max(diff, float((want - got).abs().max()))
                same_argmax = min(same_argmax, float((want.argmax(-1) == got.argmax(-1)).float().mean()))
            rounds = {"pytorch": [], **{n: [] for n in ort_names}}
            for r in range(args.rounds):
                pairs = [("pytorch", run_torch)] + [(n, lambda b=b: run_ort(b))
                                                    for n, b in zip(ort_names, args.ort_batch_sizes, strict=True)]
                for name, fn in (pairs if r % 2 == 0 else pairs[::-1]):
                    t0 = time.perf_counter()
                    fn()
                    seconds = time.perf_counter() - t0
                    rounds[name].append({"seconds": seconds, "texts_per_s": len(texts) / seconds})
                    print(f"{method} round {r} {name}: {len(texts) / seconds:.1f} texts/s", flush=True)
        median = {k: statistics.median(x["texts_per_s"] for x in v) for k, v in rounds.items()}
        results[method] = {"export_seconds": export_s, "onnx_bytes": size, "opset": info["opset"],
                           "inputs": info["inputs"], "max_abs_diff": diff, "same_argmax_fraction": same_argmax,
                           "rounds": rounds, "median_texts_per_s": median,
                           "speedup_onnxruntime_over_pytorch": {n: median[n] / median["pytorch"] for n in ort_names}}
        print(f"{method}: PyTorch {median['pytorch']:.1f} texts/s; " + ", ".join(
            f"{n} {median[n]:.1f} (x{median[n] / median['pytorch']:.2f})" for n in ort_names)
            + f"; max |diff| {diff:.1e}", flush=True)
    payload = {
        "benchmark": "export: onnxruntime vs PyTorch scoring",
        "config": {"backbone": "minilm", "methods": args.methods, "adapter": "untrained (speed only)", "labels": 2,
                   "texts": f"packaged demo validation, first {len(texts)}", "batch_size": args.batch_size,
                   "ort_batch_sizes": args.ort_batch_sizes,
                   "threads": args.threads, "rounds": args.rounds, "order": "alternating per round",
                   "dtype": "float32", "tokenization": "timed in both"},
        "results": results,
        "versions": common.versions("torch", "transformers", "onnx", "onnxscript", "onnxruntime"),
        "git": common.git_commit(),
        "machine": {**load_start, "loadavg_at_end": os.getloadavg()},
        "date": common.now(),
    }
    common.write_result(args.output, payload)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
