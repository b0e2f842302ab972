"""HF ``peft`` prefix-tuning step timer, run by ``benchmarks/speed.py`` in its own pinned environment.

peft 0.21.2 prefix tuning fails on BERT with transformers 5.24 and works with 4.57.x, so this file runs
under ``benchmarks/speed_peft/.venv`` (torch 2.13.0, transformers 4.57.1, peft 0.21.2) and never imports
ltuning. It speaks JSON lines on stdin/stdout so that the caller can interleave its steps with its own:

    {"cmd": "setup", "model_path": ..., "batch": {"input_ids": [[...]], "attention_mask": [[...]]},
     "labels": [...], "pad_token_id": 0, "num_virtual_tokens": 7, "threads": 1}  -> {"ok": true, ...}
    {"cmd": "step"}                                                -> {"wall": s, "cpu": s}
    {"cmd": "memory", "steps": 5}                                  -> {"maxrss_kb": ..., ...}
    {"cmd": "quit"}

A step is what ltuning's training step is: forward, backward, AdamW step, zero_grad, on the very token ids
ltuning's step uses (the caller tokenizes: transformers 4.57 cannot read a tokenizer saved by 5.x).
The frozen model runs in eval mode (no dropout), as ltuning's backbone does.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def rss_kb(key: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (peak), KiB; not ru_maxrss, which survives fork + exec from a large parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    import torch

    state: dict = {}
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        if cmd == "setup":
            import peft
            import transformers
            from peft import PrefixTuningConfig, TaskType, get_peft_model
            from transformers import AutoModelForSequenceClassification

            torch.set_num_threads(int(msg.get("threads", 1)))
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_pretrained(
                msg["model_path"], num_labels=2, torch_dtype=torch.float32)
            model.config.pad_token_id = int(msg["pad_token_id"])
            cfg = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=int(msg["num_virtual_tokens"]))
            model = get_peft_model(model, cfg)
            model.eval()  # no dropout in the frozen model, as in ltuning
            params = [p for p in model.parameters() if p.requires_grad]
            batch = {k: torch.tensor(v) for k, v in msg["batch"].items()}
            state.update(model=model, opt=torch.optim.AdamW(params, lr=1e-2),
                         batch=batch,
                         labels=torch.tensor(msg["labels"]), rss_loaded=rss_kb())
            n_train = sum(p.numel() for p in params)
            out.write(json.dumps({"ok": True, "torch": torch.__version__, "transformers": transformers.__version__,
                                  "peft": peft.__version__, "trainable_params": n_train,
                                  "shape": list(batch["input_ids"].shape)}) + "\n")
            out.flush()
            continue

        def step():
            m, opt = state["model"], state["opt"]
            loss = m(**state["batch"], labels=state["labels"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if cmd == "step":
            w, c = time.perf_counter(), time.process_time()
            step()
            out.write(json.dumps({"wall": time.perf_counter() - w, "cpu": time.process_time() - c}) + "\n")
        elif cmd == "memory":
            for _ in range(int(msg.get("steps", 5))):
                step()
            out.write(json.dumps({"maxrss_kb": rss_kb("VmHWM"),
                                  "rss_after_load_kb": state["rss_loaded"]}) + "\n")
        else:
            out.write(json.dumps({"error": f"unknown command {cmd!r}"}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
