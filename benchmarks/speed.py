"""Speed benchmark (issue 5): label tuning at the cost of plain prefix tuning, and fast prediction.

One command (``make bench-speed``) writes ``benchmarks/results/speed.json`` (raw timings, machine, load)
and the ``## Speed`` section of ``BENCHMARKS.md``. Every figure is a ratio of two things timed in the
same process window, interleaved: each repeat runs every variant once (the order reverses every other
repeat, so drift in machine load falls on all sides alike), and a ratio is of medians over repeats. Wall
time is the headline; process CPU time (``time.process_time``) is recorded beside it, because on a
shared machine the CPU time of a single-threaded step is much less noisy than its wall time.

Training (per backbone, same texts, batch, text length and prefix length l):
    lt-prefix, prefix, lt-prompt, prompt: one optimizer step (forward, backward, AdamW, zero_grad);
    lt-prefix-reencode: lt-prefix re-running the frozen model over the paired label texts every step, as
        the official code does, instead of reading the cached label encodings;
    floor: one forward + backward of the frozen model over the same texts, gradient into its input
        embeddings only, no adapter;
    peft-prefix: HF peft 0.21.2 prefix tuning (transformers 4.57.1, its own venv) on the same token ids,
        in a worker process driven step by step from here.
Memory: peak RSS of a few training steps, each variant in a fresh process.
Prediction (argmax over K labels, batch 64): ``LTuningModel.score_texts`` against one (text, label) pair
per forward, and against transformers' zero-shot-classification pipeline on the same backbone; beside them
(issue 16) LT-prefix with the label prefix in the top ``--depth-layers`` layers only (``ours_depth``: the texts'
bottom layers run once for all K labels) and the floor (the same backbone over every text once per label, no
prefix): ratios ``pipeline_over_predict_k4_depth``, ``predict_over_floor_k4``, ``predict_depth_over_floor_k4``.
The stored speed.json predates them; benchmarks/depth.py measures the same ratios per j (results/depth/).

Usage:
    python benchmarks/speed.py                       # full run, minilm + smollm2 (~15-25 min on 2 busy cores)
    python benchmarks/speed.py --models minilm --quick
    python benchmarks/speed.py --bf16 --compile      # add bf16-autocast and torch.compile variants
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "speed.json"
# A peers venv made by the accuracy benchmarks is reused when it pins the same versions.
PEFT_PYTHONS = [ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python",
                ROOT / "benchmarks" / "speed_peft" / ".venv" / "bin" / "python"]
PEFT_WORKER = ROOT / "benchmarks" / "speed_peft" / "worker.py"
PEFT_PINS = {"transformers": "4.57.", "peft": "0.21.2"}

LABEL_NAMES = ["negative", "positive"]
LABEL_TEXTS = ["The review is negative.", "The review is positive."]
METHOD_NAMES = ["lt-prefix", "prefix", "lt-prompt", "prompt"]
#: LT-prefix as the stored results ran: without the label map that became its default on 2026-11-29
NO_MAP = {"lt-prefix": {"label_map_rank": 0}}
# K label names for the prediction benchmark (the first K are used).
MANY_LABELS = ["negative", "positive", "neutral", "mixed", "sports", "politics", "business", "science",
               "health", "travel", "food", "music", "movies", "technology", "education", "weather"]


# ---------------------------------------------------------------------------------------------- timing
def timed(fn: Callable) -> tuple[float, float]:
    """(wall, cpu) seconds of one call; a callable that returns a (wall, cpu) pair reports its own."""
    w, c = time.perf_counter(), time.process_time()
    r = fn()
    if isinstance(r, tuple) and len(r) == 2 and all(isinstance(x, float) for x in r):
        return r
    return time.perf_counter() - w, time.process_time() - c


def interleaved(fns: dict[str, Callable], repeats: int, warmup: int = 1,
                every: dict[str, int] | None = None) -> dict[str, dict]:
    """Run every fn once per repeat (order reversed on odd repeats); medians over repeats.

    every: name -> run only on every n-th repeat (slow variants)."""
    every = every or {}
    for _ in range(warmup):
        for f in fns.values():
            f()
    raw: dict[str, dict] = {k: {"wall": [], "cpu": []} for k in fns}
    for r in range(repeats):
        names = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in names:
            if r % every.get(k, 1):
                continue
            w, c = timed(fns[k])
            raw[k]["wall"].append(w)
            raw[k]["cpu"].append(c)
    for v in raw.values():
        v["wall_median"] = statistics.median(v["wall"])
        v["cpu_median"] = statistics.median(v["cpu"])
        v["wall_min"] = min(v["wall"])
    return raw


def machine_info(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = set()
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", open("/proc/cpuinfo").read(), re.M).group(1).split())
    except (OSError, AttributeError):
        pass
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "bf16_hw": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16")),
            "cuda": torch.cuda.is_available()}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- data
def demo_texts(split: str, n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    import random

    from ltuning.data import read_demo

    ds = read_demo(split)
    idx = random.Random(seed).sample(range(len(ds)), n)
    return [ds.texts[i] for i in idx], [ds.labels[i] for i in idx]


def long_texts(n: int, seed: int = 0) -> list[str]:
    """n texts of several joined demo snippets (long enough to be truncated at any length up to 256)."""
    texts, _ = demo_texts("train", 12 * n, seed)
    return [" ".join(texts[12 * i:12 * i + 12]) for i in range(n)]


# ---------------------------------------------------------------------------------------------- peft worker
def peft_python() -> Path | None:
    for py in PEFT_PYTHONS:
        if not py.exists():
            continue
        try:
            out = subprocess.run([str(py), "-c", "import json, transformers, peft, torch; print(json.dumps("
                                  "[transformers.__version__, peft.__version__, torch.__version__]))"],
                                 capture_output=True, text=True, timeout=300)
            tv, pv, _ = json.loads(out.stdout.strip().splitlines()[-1])
        except (subprocess.SubprocessError, ValueError, IndexError):
            continue
        if tv.startswith(PEFT_PINS["transformers"]) and pv == PEFT_PINS["peft"]:
            return py
    return None


class PeftWorker:
    """benchmarks/speed_peft/worker.py in the pinned venv, driven one JSON line at a time."""

    def __init__(self, python: Path) -> None:
        self.proc = subprocess.Popen([str(python), str(PEFT_WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("peft worker died (run it by hand to see why: benchmarks/speed_peft/worker.py)")
        return json.loads(line)

    def step(self) -> tuple[float, float]:
        r = self.ask({"cmd": "step"})
        return float(r["wall"]), float(r["cpu"])

    def close(self) -> None:
        try:
            self.ask_quit()
        finally:
            self.proc.wait(timeout=60)

    def ask_quit(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()


# ---------------------------------------------------------------------------------------------- training
class TrainSetup:
    """The frozen backbone, the four methods around it, one fixed batch and a step function per variant."""

    def __init__(self, name: str, batch_size: int, max_length: int, bf16: bool = False) -> None:
        from ltuning.config import LTuningConfig
        from ltuning.loading import load_backbone
        from ltuning.model import LTuningModel

        torch.manual_seed(0)
        self.name = name
        self.bb = load_backbone(name)
        self.bf16 = bf16
        self.models = {m: LTuningModel(self.bb, LTuningConfig(method=m, base_model=name, label_names=LABEL_NAMES,
                                                              label_texts=LABEL_TEXTS, max_length=max_length,
                                                              score_head="paper",  # as the stored results
                                                              **NO_MAP.get(m, {})))
                       for m in METHOD_NAMES}
        for m in self.models.values():
            m.train()
        texts, labels = demo_texts("train", batch_size)
        self.batch = self.models["lt-prefix"].tokenize(texts)
        B = len(texts)
        self.labels = torch.tensor(labels)
        # As PairSampler: the first half paired with the true label, the second half with a wrong one.
        self.label_ids = self.labels.clone()
        self.label_ids[B - B // 2:] = 1 - self.labels[B - B // 2:]
        self.targets = torch.ones(B, dtype=torch.long)
        self.targets[B - B // 2:] = 0
        self.l = self.models["lt-prefix"].config.label_length
        self.opts = {m: torch.optim.AdamW(mod.trainable_parameters(), lr=1e-3) for m, mod in self.models.items()}

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def method_step(self, method: str) -> Callable:
        model, opt = self.models[method], self.opts[method]

        def step():
            with self.autocast():
                loss = model.loss(self.batch, self.labels, self.label_ids, self.targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def reencode_step(self) -> Callable:
        """LT-prefix that runs the frozen model over each pair's label text every step (official code)."""
        model, opt = self.models["lt-prefix"], self.opts["lt-prefix"]
        B = self.batch["input_ids"].shape[0]
        rows = torch.arange(B)

        def step():
            with self.autocast():
                states, mask = self.bb.encode_labels([LABEL_TEXTS[i] for i in self.label_ids.tolist()], self.l)
                inj = model.method(states, mask)  # (B, ...) one prefix per pair
                logits = model(self.batch, rows, injection=inj)
                loss = F.binary_cross_entropy_with_logits(logits, self.targets.float())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def floor_step(self) -> Callable:
        """Frozen model forward + backward, gradient into the input embeddings only; no adapter."""
        bb = self.bb
        pooling = self.models["lt-prefix"].pooling
        ids, mask = self.batch["input_ids"], self.batch["attention_mask"]
        extra = {"token_type_ids": self.batch["token_type_ids"]} if "token_type_ids" in self.batch else {}

        def step():
            with self.autocast():
                emb = bb.embed(ids).detach().requires_grad_(True)
                out = bb.model(inputs_embeds=emb, attention_mask=mask, use_cache=False, **extra)
                pooled = bb._pool(out, out.last_hidden_state, mask, pooling)
                loss = pooled.float().pow(2).mean()
            loss.backward()

        return step

    def step(self, variant: str) -> Callable:
        if variant == "floor":
            return self.floor_step()
        if variant == "lt-prefix-reencode":
            return self.reencode_step()
        return self.method_step(variant)

    def peft_setup_msg(self, threads: int) -> dict:
        from ltuning.loading import PACKAGED_MODELS, packaged_model_path

        path = packaged_model_path(self.name) if self.name in PACKAGED_MODELS else self.name
        return {"cmd": "setup", "model_path": str(path), "batch": {k: v.tolist() for k, v in self.batch.items()},
                "labels": self.labels.tolist(), "pad_token_id": int(self.bb.tokenizer.pad_token_id),
                "num_virtual_tokens": self.l, "threads": threads, "bf16": self.bf16}


TRAIN_VARIANTS = ["lt-prefix", "prefix", "lt-prompt", "prompt", "lt-prefix-reencode", "floor"]


def bench_train(name: str, args, peft_py: Path | None) -> dict:
    log(f"[train] {name}: loading")
    s = TrainSetup(name, args.batch_size, args.max_length)
    fns = {v: s.step(v) for v in TRAIN_VARIANTS}
    info: dict = {"batch_size": s.batch["input_ids"].shape[0], "text_tokens": s.batch["input_ids"].shape[1],
                  "prefix_length": s.l, "label_texts": LABEL_TEXTS,
                  "trainable_params": {m: mod.num_trainable_parameters() for m, mod in s.models.items()}}
    worker = None
    if peft_py is not None:
        try:
            worker = PeftWorker(peft_py)
            info["peft"] = worker.ask(s.peft_setup_msg(args.threads))
            fns["peft-prefix"] = worker.step
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            info["peft_error"] = f"{type(e).__name__}: {e}"
            worker = None
    if args.bf16:
        sb = s  # same models, autocast around the same steps
        bf = TrainSetup.__new__(TrainSetup)
        bf.__dict__.update(sb.__dict__)
        bf.bf16 = True
        fns["lt-prefix-bf16"] = bf.step("lt-prefix")
        fns["floor-bf16"] = bf.step("floor")
    info["load_before"] = loadavg()
    log(f"[train] {name}: {len(fns)} variants x {args.repeats} repeats, n={info['text_tokens']}, l={s.l}")
    try:
        info["timings"] = interleaved(fns, args.repeats, warmup=2)
    finally:
        if worker is not None:
            worker.close()
    info["load_after"] = loadavg()
    for k, v in info["timings"].items():
        log(f"  {k:>20}: wall {v['wall_median']:.4f}s  cpu {v['cpu_median']:.4f}s")
    return info


# ---------------------------------------------------------------------------------------------- memory
def memory_worker(name: str, variant: str, steps: int, batch_size: int, max_length: int, threads: int) -> None:
    """Entry point of a fresh process: peak RSS over ``steps`` training steps of one variant."""
    torch.set_num_threads(threads)
    s = TrainSetup(name, batch_size, max_length)
    fn = s.step(variant)
    rss_loaded = _rss_kb()
    for _ in range(steps):
        fn()
    print(json.dumps({"maxrss_kb": _rss_kb("VmHWM"), "rss_after_load_kb": rss_loaded}))


def _rss_kb(key: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in KiB. Not getrusage's ru_maxrss: on Linux it
    survives fork + exec, so a child started by a large parent reports the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bench_memory(name: str, args, peft_py: Path | None) -> dict:
    out: dict = {}
    for variant in ["floor", "lt-prefix", "prefix", "lt-prompt", "prompt"]:
        log(f"[memory] {name} {variant}")
        r = subprocess.run([sys.executable, __file__, "--memory-worker", name, variant, "--batch-size",
                            str(args.batch_size), "--max-length", str(args.max_length), "--threads",
                            str(args.threads)], capture_output=True, text=True)
        try:
            out[variant] = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out[variant] = {"error": r.stderr.strip().splitlines()[-1:] or ["no output"]}
    if peft_py is not None:
        log(f"[memory] {name} peft-prefix")
        try:
            w = PeftWorker(peft_py)
            s_msg = TrainSetup(name, args.batch_size, args.max_length).peft_setup_msg(args.threads)
            w.ask(s_msg)
            out["peft-prefix"] = w.ask({"cmd": "memory", "steps": 5})
            w.close()
        except (RuntimeError, OSError, ValueError) as e:
            out["peft-prefix"] = {"error": str(e)}
    return out


# ---------------------------------------------------------------------------------------------- prediction
def nli_pipeline(bb):
    """transformers' zero-shot-classification pipeline on the backbone's weights with a random 3-way NLI head."""
    from transformers import AutoModelForSequenceClassification, pipeline

    from ltuning.loading import packaged_model_path

    id2label = {0: "entailment", 1: "neutral", 2: "contradiction"}
    m = AutoModelForSequenceClassification.from_pretrained(
        packaged_model_path(bb.name), num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    m.eval()
    return pipeline("zero-shot-classification", model=m, tokenizer=bb.tokenizer, device=-1)


def bench_predict(name: str, args) -> dict:
    from ltuning.config import LTuningConfig
    from ltuning.loading import load_backbone
    from ltuning.model import LTuningModel

    torch.manual_seed(0)
    bb = load_backbone(name)
    texts, _ = demo_texts("validation", args.predict_texts, seed=1)
    naive_texts = texts[:args.naive_texts]
    pipe = nli_pipeline(bb) if bb.kind == "encoder" else None
    res: dict = {"texts": len(texts), "naive_texts": len(naive_texts), "batch_size": 64, "by_k": {},
                 "load_before": loadavg()}
    fns: dict[str, Callable] = {}
    models = {}
    for K in args.ks:
        names = MANY_LABELS[:K]
        model = LTuningModel(bb, LTuningConfig(method="lt-prefix", base_model=name, label_names=names,
                                               max_length=args.max_length, score_head="paper",
                                               **NO_MAP["lt-prefix"]))
        model.eval()
        models[K] = model
        fns[f"ours_k{K}"] = (lambda m=model: m.score_texts(texts, batch_size=64))

        def naive(m=model, K=K):
            with torch.inference_mode():
                for t in naive_texts:
                    enc = m.tokenize([t])
                    for k in range(K):  # one (text, label) pair per forward, injection recomputed each time
                        m(enc, torch.tensor([k]), injection=m.method(m.label_states, m.label_mask))

        fns[f"naive_k{K}"] = naive
        if pipe is not None:
            fns[f"pipeline_k{K}"] = (lambda names=names: pipe(texts, candidate_labels=names, batch_size=64))
        depth = getattr(args, "depth_layers", 0)
        if depth and bb.splits_layers and depth < bb.dims.num_layers:
            # the label prefix in the top `depth` layers only (issue 16): the texts' bottom layers run once
            dm = LTuningModel(bb, LTuningConfig(method="lt-prefix", base_model=name, label_names=names,
                                                max_length=args.max_length, score_head="paper",
                                                prefix_layers=depth, **NO_MAP["lt-prefix"]))
            dm.eval()
            fns[f"ours_depth_k{K}"] = (lambda m=dm: m.score_texts(texts, batch_size=64))
        fns[f"floor_k{K}"] = (lambda K=K: floor_rows(bb, texts, K, args.max_length))
        if args.bf16:  # the same scorers under bf16 autocast, so each ratio compares one dtype with itself
            def under_bf16(fn):
                def run():
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return fn()
                return run
            for kind in ("ours", "ours_depth", "pipeline", "floor"):
                if f"{kind}_k{K}" in fns:
                    fns[f"{kind}_bf16_k{K}"] = under_bf16(fns[f"{kind}_k{K}"])
    log(f"[predict] {name}: {len(fns)} variants x {args.predict_repeats} repeats, {len(texts)} texts")
    every = {k: 2 for k in fns if k.startswith("naive")}
    t = interleaved(fns, args.predict_repeats, warmup=1, every=every)
    for K in args.ks:
        row = {}
        for kind, n in (("ours", len(texts)), ("naive", len(naive_texts)), ("pipeline", len(texts)),
                        ("ours_bf16", len(texts)), ("ours_depth", len(texts)), ("floor", len(texts)),
                        ("ours_depth_bf16", len(texts)), ("pipeline_bf16", len(texts)), ("floor_bf16", len(texts))):
            v = t.get(f"{kind}_k{K}")
            if v is not None:
                row[kind] = {"wall_median": v["wall_median"], "cpu_median": v["cpu_median"], "texts": n,
                             "texts_per_s": n / v["wall_median"], "wall": v["wall"], "cpu": v["cpu"]}
        res["by_k"][K] = row
        log(f"  K={K}: " + ", ".join(f"{k} {r['texts_per_s']:.1f} texts/s" for k, r in row.items()))
    # Time against text length (K = 4): every text is long and truncated at L tokens.
    lt = long_texts(args.predict_texts)
    model = models[4] if 4 in models else models[args.ks[0]]
    lfns = {}
    for L in args.lengths:
        def at_len(L=L):
            old = model.config.max_length
            model.config.max_length = L
            try:
                model.score_texts(lt, batch_size=64)
            finally:
                model.config.max_length = old
        lfns[f"len{L}"] = at_len
    lt_t = interleaved(lfns, max(3, args.predict_repeats // 2), warmup=1)
    res["by_length_k"] = model.num_labels
    res["by_length"] = {L: {"wall_median": lt_t[f"len{L}"]["wall_median"], "cpu_median": lt_t[f"len{L}"]["cpu_median"],
                            "texts_per_s": len(lt) / lt_t[f"len{L}"]["wall_median"]} for L in args.lengths}
    res["load_after"] = loadavg()
    log("  by length: " + ", ".join(f"L={L}: {r['texts_per_s']:.1f}/s" for L, r in res["by_length"].items()))
    return res


# ---------------------------------------------------------------------------------------------- report
def ratio(t: dict, a: str, b: str, key: str = "wall_median") -> float | None:
    if a in t and b in t:
        return t[a][key] / t[b][key]
    return None


def compute_ratios(results: dict, model: str = "minilm", key: str = "wall_median") -> dict:
    out: dict = {}
    tr = results.get("train", {}).get(model, {}).get("timings", {})
    out["lt_prefix_over_prefix"] = ratio(tr, "lt-prefix", "prefix", key)
    out["lt_prompt_over_prompt"] = ratio(tr, "lt-prompt", "prompt", key)
    out["lt_prefix_over_floor"] = ratio(tr, "lt-prefix", "floor", key)
    out["lt_prefix_over_peft_prefix"] = ratio(tr, "lt-prefix", "peft-prefix", key)
    out["reencode_over_lt_prefix"] = ratio(tr, "lt-prefix-reencode", "lt-prefix", key)
    pr = results.get("predict", {}).get(model, {}).get("by_k", {})
    k4 = pr.get(4) or pr.get("4") or {}
    out["pipeline_over_predict_k4"] = (k4["pipeline"][key] / k4["ours"][key]
                                       if "pipeline" in k4 and "ours" in k4 else None)
    # issue 16: the label prefix in the top --depth-layers layers; the floor runs each text once per label, no prefix
    out["pipeline_over_predict_k4_depth"] = (k4["pipeline"][key] / k4["ours_depth"][key]
                                             if "pipeline" in k4 and "ours_depth" in k4 else None)
    out["predict_over_floor_k4"] = k4["ours"][key] / k4["floor"][key] if "ours" in k4 and "floor" in k4 else None
    out["predict_depth_over_floor_k4"] = (k4["ours_depth"][key] / k4["floor"][key]
                                          if "ours_depth" in k4 and "floor" in k4 else None)
    # the same ratios with every side under bf16 autocast (--bf16; None without it)
    for name, a, b in (("pipeline_over_predict_k4_bf16", "pipeline_bf16", "ours_bf16"),
                       ("pipeline_over_predict_k4_depth_bf16", "pipeline_bf16", "ours_depth_bf16"),
                       ("predict_over_floor_k4_bf16", "ours_bf16", "floor_bf16")):
        out[name] = k4[a][key] / k4[b][key] if a in k4 and b in k4 else None
    return out


def floor_rows(bb, texts: list[str], K: int, max_length: int, batch_size: int = 64) -> None:
    """The floor of scoring K labels: the frozen backbone over every text once per label (K rows per text), no
    prefix, batched as ``LTuningModel.score_texts`` batches on CPU (texts sorted by length, ``batch_size`` at a
    time, greedy chunks of at most ``cpu_max_tokens`` rows x padded tokens, all-padding columns dropped), so the
    only difference from scoring is the label's prefix."""
    from ltuning.model import LTuningModel

    budget = LTuningModel.cpu_max_tokens
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = bb.tokenize([texts[i] for i in order[s:s + batch_size]], max_length)
            lengths = enc["attention_mask"].sum(-1)
            by_len = lengths.argsort(stable=True).tolist()
            i = 0
            while i < len(by_len):
                j = i + 1
                while j < len(by_len) and K * (j + 1 - i) * int(lengths[by_len[j]]) <= budget:
                    j += 1
                idx = torch.tensor(by_len[i:j])
                n = int(lengths[idx].max())
                rows = {k: v.index_select(0, idx)[:, :n].repeat_interleave(K, 0) for k, v in enc.items()}
                bb(rows["input_ids"], rows["attention_mask"], rows.get("token_type_ids"))
                i = j


def fmt(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def markdown(results: dict) -> str:
    m = results["machine"]
    cmd = results["command"]
    lines = ["## Speed", "",
             f"Command: `{cmd}` (issue 5; `make bench-speed`). Raw timings: `benchmarks/results/speed.json`.",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (CPU), transformers {m['transformers']}, "
             f"{m['torch_threads']} torch thread(s); load average {results['load_start']} at the start and "
             f"{results['load_end']} at the end: the machine was shared with other jobs, so absolute times are "
             "inflated and noisy. Every ratio compares two variants timed interleaved in the same run (medians "
             "over repeats, order reversed every other repeat); the CPU-time ratio beside it (process CPU time "
             "of the same calls) is less sensitive to the other jobs.", ""]
    for u in results.get("updates", []):
        lines[-1:-1] = [f"Sections re-run later with `{u['command']}` (load average {u['load']}).", ""]
    r, rc = results["ratios"], results["ratios_cpu"]
    goals = {"lt_prefix_over_prefix": "<= 1.05", "lt_prompt_over_prompt": "<= 1.05", "lt_prefix_over_floor": "<= 1.15",
             "lt_prefix_over_peft_prefix": "<= 1.0", "pipeline_over_predict_k4": ">= 3",
             "reencode_over_lt_prefix": "(cost of not caching)"}
    for k, g in (("pipeline_over_predict_k4_depth", ">= 3 (label prefix in the top --depth-layers layers)"),
                 ("predict_over_floor_k4", "(1 = the floor: each text once per label, no prefix)"),
                 ("predict_depth_over_floor_k4", "(the same, top --depth-layers layers)"),
                 ("pipeline_over_predict_k4_bf16", "(both sides under bf16 autocast)"),
                 ("pipeline_over_predict_k4_depth_bf16", ">= 3 (top --depth-layers layers, both sides bf16)"),
                 ("predict_over_floor_k4_bf16", "(both sides bf16)")):
        if r.get(k) is not None:  # results written before issue 16 have none
            goals[k] = g
    lines += ["| ratio (minilm) | wall | CPU time | goal |", "|---|---|---|---|"]
    for k, g in goals.items():
        lines.append(f"| `{k}` | {fmt(r.get(k))} | {fmt(rc.get(k))} | {g} |")
    lines.append("")
    for name, tr in results.get("train", {}).items():
        t = tr["timings"]
        lines += [f"Training step, {name}: batch {tr['batch_size']}, {tr['text_tokens']} text tokens (padded), "
                  f"prefix/prompt length l = {tr['prefix_length']} (label texts {tr['label_texts']}); "
                  "one step = forward, backward, AdamW, zero_grad (floor: forward + backward only). LT rows train "
                  "the pairwise objective (A.3: one (text, label) row per text); the listwise default feeds K rows "
                  "per text, about K times this step.", "",
                  "| variant | wall median (s) | CPU median (s) | wall / floor | CPU / floor |",
                  "|---|---|---|---|---|"]
        for k, v in t.items():
            lines.append(f"| {k} | {v['wall_median']:.4f} | {v['cpu_median']:.4f} | "
                         f"{fmt(ratio(t, k, 'floor'), '.2f')} | {fmt(ratio(t, k, 'floor', 'cpu_median'), '.2f')} |")
        if "peft_error" in tr:
            lines.append(f"\npeft-prefix did not run: {tr['peft_error']}")
        if "peft" in tr:
            p = tr["peft"]
            lines.append(f"\npeft-prefix: peft {p.get('peft')}, transformers {p.get('transformers')}, "
                         f"{p.get('trainable_params')} trainable parameters (prefix + classifier head).")
        lines.append("")
    for name, mem in results.get("memory", {}).items():
        fl = mem.get("floor", {}).get("maxrss_kb")
        fd = (mem["floor"]["maxrss_kb"] - mem["floor"]["rss_after_load_kb"]) if fl else None
        lines += [f"Peak RSS of 5 training steps, {name}, each variant in a fresh process (peft-prefix: in its "
                  "own venv's process, which loads less before training, so compare its growth over the RSS "
                  "after loading):", "",
                  "| variant | peak RSS (MiB) | / floor | RSS after loading (MiB) | growth (MiB) | growth / floor's |",
                  "|---|---|---|---|---|---|"]
        for k, v in mem.items():
            if "maxrss_kb" in v:
                g = v["maxrss_kb"] - v["rss_after_load_kb"]
                lines.append(f"| {k} | {v['maxrss_kb'] / 1024:.0f} | {fmt(v['maxrss_kb'] / fl if fl else None, '.2f')} "
                             f"| {v['rss_after_load_kb'] / 1024:.0f} | {g / 1024:.0f} | "
                             f"{fmt(g / fd if fd else None, '.2f')} |")
        lines.append("")
    for name, pr in results.get("predict", {}).items():
        lines += [f"Prediction, {name}, LT-prefix, argmax over K labels, {pr['texts']} validation texts, batch 64 "
                  f"(naive: {pr['naive_texts']} texts, one (text, label) pair per forward). Texts per second "
                  "(wall):", "",
                  "| K | ours | naive | pipeline | ours / naive | ours / pipeline | ours, bf16 autocast | bf16 / pipeline |",
                  "|---|---|---|---|---|---|---|---|"]
        for K, row in pr["by_k"].items():
            o = row.get("ours", {}).get("texts_per_s")
            nv = row.get("naive", {}).get("texts_per_s")
            pp = row.get("pipeline", {}).get("texts_per_s")
            ob = row.get("ours_bf16", {}).get("texts_per_s")
            lines.append(f"| {K} | {fmt(o, '.1f')} | {fmt(nv, '.1f')} | {fmt(pp, '.1f')} | "
                         f"{fmt(o / nv if o and nv else None, '.1f')} | {fmt(o / pp if o and pp else None, '.2f')} | "
                         f"{fmt(ob, '.1f')} | {fmt(ob / pp if ob and pp else None, '.2f')} |")
        lines += ["", f"Against text length (K = {pr['by_length_k']}, texts truncated at L tokens): " + ", ".join(
            f"L={L}: {v['texts_per_s']:.1f} texts/s" for L, v in pr["by_length"].items()), ""]
    notes = Path(__file__).with_name("speed_notes.md")
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(path: Path, section: str) -> None:
    """Replace the ``## Speed`` section of path (up to the next ``## `` heading), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pat = re.compile(r"^## Speed\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine two OpenMP threads spin at barriers)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--predict-repeats", type=int, default=5)
    ap.add_argument("--predict-texts", type=int, default=128)
    ap.add_argument("--naive-texts", type=int, default=8)
    ap.add_argument("--ks", default="2,4,8,16")
    ap.add_argument("--lengths", default="16,32,64,128")
    ap.add_argument("--predict-models", default="minilm")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: train,memory,predict")
    ap.add_argument("--bf16", action="store_true", help="add bf16-autocast variants")
    ap.add_argument("--depth-layers", type=int, default=2, metavar="J",
                    help="add an LT-prefix variant with the label prefix in the top J layers (0: none)")
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md",
                    help="file whose '## Speed' section is replaced ('' to skip)")
    ap.add_argument("--update", action="store_true",
                    help="keep the sections of an existing --out file that this run skips")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only rewrite the markdown section from a results file (no timing)")
    ap.add_argument("--memory-worker", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(*args.memory_worker, steps=5, batch_size=args.batch_size, max_length=args.max_length,
                      threads=args.threads)
        return
    if args.render:
        write_markdown(args.markdown, markdown(json.loads(args.render.read_text())))
        return
    if args.quick:
        args.repeats, args.predict_repeats, args.predict_texts = 3, 2, 64
    args.ks = [int(k) for k in args.ks.split(",")]
    args.lengths = [int(x) for x in args.lengths.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    command = ("python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    results: dict = {"command": command, "machine": machine_info(args.threads), "load_start": loadavg(),
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.update and args.out.exists():
        old = json.loads(args.out.read_text())
        for key in ("train", "memory", "predict"):
            if key in skip and key in old:
                results[key] = old[key]
        results["command"] = old.get("command", command)
        results["load_start"] = old.get("load_start")
        results["updates"] = old.get("updates", []) + [{"command": command, "load": loadavg()}]
    peft_py = peft_python()
    results["peft_python"] = str(peft_py) if peft_py else None
    if peft_py is None:
        log("peft venv not found: `make bench-speed` creates benchmarks/speed_peft/.venv (peft rows skipped)")
    models = [m for m in args.models.split(",") if m]
    if "train" not in skip:
        results["train"] = {m: bench_train(m, args, peft_py) for m in models}
    if "memory" not in skip:
        results["memory"] = {m: bench_memory(m, args, peft_py) for m in models}
    if "predict" not in skip:
        results["predict"] = {m: bench_predict(m, args) for m in args.predict_models.split(",") if m}
    results["load_end"] = loadavg()
    results["ratios"] = compute_ratios(results)
    results["ratios_cpu"] = compute_ratios(results, key="cpu_median")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(json.dumps({"ratios": results["ratios"], "ratios_cpu": results["ratios_cpu"]}, indent=1))
    if str(args.markdown) not in ("", "."):  # --markdown '' arrives as Path(".")
        write_markdown(args.markdown, markdown(results))


if __name__ == "__main__":
    main()
