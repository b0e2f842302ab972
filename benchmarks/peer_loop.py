"""The in-process peers' training loop, shared by Table 1 and the converged benchmark: ``linear-probe``
(Linear(d, K) on the frozen pooled vector, the same pooling as our methods) and ``full-finetune`` (every
backbone weight + Linear(d, K)), K-way cross-entropy, AdamW with linear warmup/decay like ltuning's own
``train()``, validation every ``eval_every`` steps, the best state kept (and optionally early stopping).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import common

PEER_METHODS = ("linear-probe", "full-finetune")


@dataclass
class PeerRun:
    tracker: common.RunTracker
    head: object  # torch.nn.Linear in its best state
    backbone: object  # the Backbone the peer ran on (a private copy for full-finetune), in its best state
    pooling: object
    trainable: int
    build_seconds: float
    step_seconds: float
    stopped_early_at: int | None


def pooled(bb, pooling, texts, max_length, grad):
    import torch

    enc = bb.tokenize(texts, max_length)
    enc = {k: v.to(bb.device) for k, v in enc.items()}
    with torch.set_grad_enabled(grad):
        return bb(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), pooling=pooling).float()


def peer_logits(bb, pooling, head, texts, max_length, batch=64):
    """(N, K) logits, texts scored in length order (less padding)."""
    import torch

    idx = sorted(range(len(texts)), key=lambda i: len(str(texts[i])))
    out = torch.empty(len(texts), head.out_features)
    with torch.no_grad():
        for s in range(0, len(texts), batch):
            b = idx[s:s + batch]
            out[b] = head(pooled(bb, pooling, [texts[i] for i in b], max_length, False)).float().cpu()
    return out


def train_peer(method: str, shared_backbone, load_private, train_ds, eval_ds, *, num_labels: int, lr: float,
               steps: int, batch_size: int, eval_every: int, seed: int, text_pooling: str, max_length: int,
               metric: str = "accuracy", patience: int = 0, device=None, on_eval=None,
               eval_at_start: bool = True) -> PeerRun:
    """Train one peer; ``load_private()`` gives full-finetune its own backbone copy (its weights change)."""
    import torch
    import torch.nn.functional as F

    from ltuning.config import TextPooling
    from ltuning.train import linear_schedule, set_seed

    if method not in PEER_METHODS:
        raise ValueError(f"unknown peer {method!r}; known: {PEER_METHODS}")
    set_seed(seed)
    t0 = time.perf_counter()
    full = method == "full-finetune"
    bb = load_private() if full else shared_backbone
    if full:
        bb.model.requires_grad_(True)
    if device is not None:
        bb.model.to(device)
    pooling = bb.resolve_pooling(TextPooling(text_pooling))
    head = torch.nn.Linear(bb.dims.hidden_size, num_labels).to(bb.device)
    params = list(head.parameters()) + (list(bb.model.parameters()) if full else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = int(0.06 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, steps, warmup))
    g = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(train_ds), generator=g), 0
    labels_eval = torch.as_tensor(eval_ds.labels)

    def evaluate():
        bb.model.eval()
        m = common.logits_metrics(peer_logits(bb, pooling, head, list(eval_ds.texts), max_length), labels_eval,
                                  num_labels)
        bb.model.train(full)
        return m

    build_s = time.perf_counter() - t0
    tracker = common.RunTracker(metric=metric)
    if eval_at_start:
        tracker.record(0, evaluate(), None)
    best_state = (copy.deepcopy(head.state_dict()), copy.deepcopy(bb.model.state_dict()) if full else None)
    running, step_s, stopped = 0.0, 0.0, None
    bb.model.train(full)
    for step in range(1, steps + 1):
        ts = time.perf_counter()
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(train_ds), generator=g), 0
        b = order[pos:pos + batch_size].tolist()
        pos += batch_size
        logits = head(pooled(bb, pooling, [train_ds.texts[i] for i in b], max_length, full))
        loss = F.cross_entropy(logits, torch.as_tensor([train_ds.labels[i] for i in b], device=logits.device))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_s += time.perf_counter() - ts
        running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
        if step % eval_every == 0 or step == steps:
            if tracker.record(step, evaluate(), running):
                best_state = (copy.deepcopy(head.state_dict()),
                              copy.deepcopy(bb.model.state_dict()) if full else None)
            if on_eval is not None:
                on_eval(tracker.history[-1])
            if patience and tracker.evals_since_best() >= patience:
                stopped = step
                break
    head.load_state_dict(best_state[0])
    if full:
        bb.model.load_state_dict(best_state[1])
    bb.model.eval()
    trainable = sum(q.numel() for q in params)
    return PeerRun(tracker, head, bb, pooling, trainable, build_s, step_s, stopped)
