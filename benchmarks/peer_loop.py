"""The in-process peers' training loop, shared by Table 1, the few-shot and the converged benchmarks:
``linear-probe`` (Linear(d, K) on the frozen pooled vector, the same pooling as our methods),
``full-finetune`` (every backbone weight + Linear(d, K)) and, where peft is installed, ``peft-prompt`` /
``peft-lora`` (peft on the backbone's standard sequence-classification model, ``peers/peft_peers.py``;
``peft-prefix`` needs transformers 4.x and runs only there). K-way cross-entropy, AdamW with linear
warmup/decay like ltuning's own ``train()``, validation every ``eval_every`` steps, the best state kept (and
optionally early stopping).

Given a ``checkpoint_dir``, a run writes its whole state there at every evaluation (one file,
``peer-step-<N>.pt``, the older one removed: trained weights, best state, optimizer, schedule, data order,
position and RNG states, the curve) and a later call with the same arguments goes on from the newest one, so a
run split over several processes is the run it would have been unbroken. A checkpoint of other arguments is
refused with its folder named.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import common

HEAD_PEERS = ("linear-probe", "full-finetune")
PEFT_PEERS = ("peft-prompt", "peft-lora")
PEER_METHODS = HEAD_PEERS + PEFT_PEERS


@dataclass
class PeerRun:
    tracker: common.RunTracker
    predict: Callable  # texts -> (N, K) logits on the CPU, the peer in its best state
    trainable: int
    build_seconds: float
    step_seconds: float
    stopped_early_at: int | None
    config: dict | None = None  # a peft peer's config record (peers/peft_peers.config_record)
    resumed_from: int = 0  # the step a checkpoint let this process go on from; 0: one unbroken process


@dataclass
class _Peer:
    """What the loop needs of a peer: its parameters, logits of a batch, its state, and train/eval mode."""
    params: list
    logits: Callable  # (texts, grad) -> (B, K) logits on the model's device
    state: Callable  # () -> a copy of what trains
    load: Callable  # (state) -> None
    train: Callable  # (bool) -> None
    predict: Callable  # texts -> (N, K) logits on the CPU
    config: dict | None = None


def pooled(bb, pooling, texts, max_length, grad):
    import torch

    enc = bb.tokenize(texts, max_length)
    enc = {k: v.to(bb.device) for k, v in enc.items()}
    with torch.set_grad_enabled(grad):
        return bb(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), pooling=pooling).float()


def peer_logits(bb, pooling, head, texts, max_length, batch=64):
    """(N, K) logits, texts scored in length order (less padding)."""
    return common.length_ordered_logits(texts, lambda b: head(pooled(bb, pooling, b, max_length, False)),
                                        head.out_features, batch)


def _head_peer(method, shared_backbone, load_private, num_labels, text_pooling, max_length, device) -> _Peer:
    import torch

    from ltuning.config import TextPooling

    full = method == "full-finetune"
    bb = load_private() if full else shared_backbone
    if full:
        bb.model.requires_grad_(True)
    if device is not None:
        bb.model.to(device)
    pooling = bb.resolve_pooling(TextPooling(text_pooling))
    head = torch.nn.Linear(bb.dims.hidden_size, num_labels).to(bb.device)
    params = list(head.parameters()) + (list(bb.model.parameters()) if full else [])

    def state():
        return copy.deepcopy(head.state_dict()), copy.deepcopy(bb.model.state_dict()) if full else None

    def load(st):
        head.load_state_dict(st[0])
        if full:
            bb.model.load_state_dict(st[1])

    return _Peer(params, lambda texts, grad: head(pooled(bb, pooling, texts, max_length, grad and full)), state, load,
                 lambda on: bb.model.train(on and full),
                 lambda texts: peer_logits(bb, pooling, head, texts, max_length))


def peers_on_path() -> None:
    """Make ``benchmarks/peers`` importable (``peft_peers``), once."""
    folder = str(Path(__file__).resolve().parent / "peers")
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _peft_peer(method, model_path, num_labels, label_texts, max_length, device) -> _Peer:
    import torch

    peers_on_path()
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"{method} needs peft in this environment: pip install peft==0.21.2") from e
    import peft_peers

    model, tok, cfg = peft_peers.build_peft(model_path, method, num_labels, label_texts)
    if device is not None:
        model.to(device)
    params = [q for q in model.parameters() if q.requires_grad]
    named = [n for n, q in model.named_parameters() if q.requires_grad]  # the state_dict's names too
    dev = next(model.parameters()).device

    def logits(texts, grad):
        enc = {k: v.to(dev) for k, v in peft_peers.encode(tok, texts, max_length).items()}
        with torch.set_grad_enabled(grad):
            return model(**enc).logits.float()

    def state():
        sd = model.state_dict()
        return {n: sd[n].detach().clone() for n in named}

    return _Peer(params, logits, state, lambda st: model.load_state_dict(st, strict=False), model.train,
                 lambda texts: common.length_ordered_logits(texts, lambda b: logits(b, False), num_labels),
                 peft_peers.config_record(model, cfg))


_CHECKPOINT = re.compile(r"peer-step-(\d+)\.pt")
#: identity keys a checkpoint written before them lacks (not compared there)
_ADDED_LATER = ("model_path", "backbone_fingerprint", "backbone_settings", "peer_config", "peft_version")


def checkpoints(folder) -> list[tuple[int, Path]]:
    """The peer checkpoints in ``folder``, oldest first, as (step, path); none when it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = ((_CHECKPOINT.fullmatch(p.name), p) for p in folder.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def _save_checkpoint(folder: Path, step: int, content: dict) -> None:
    """Write ``content`` as ``peer-step-<step>.pt`` (a temporary file renamed into place: a stop while writing
    leaves the older checkpoint whole), then remove the older ones."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"peer-step-{step:06d}.pt"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(content, tmp)
    os.replace(tmp, path)
    for s, p in checkpoints(folder):
        if s != step:
            p.unlink(missing_ok=True)


def _rng_states() -> dict:
    import torch

    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_states(st: dict) -> None:
    import torch

    torch.set_rng_state(st["cpu"])
    if st["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def train_peer(method: str, shared_backbone, load_private, train_ds, eval_ds, *, num_labels: int, lr: float,
               steps: int, batch_size: int, eval_every: int, seed: int, text_pooling: str, max_length: int,
               metric: str = "accuracy", patience: int = 0, device=None, on_eval=None,
               eval_at_start: bool = True, model_path: str | None = None,
               label_texts: list[str] | None = None, checkpoint_dir=None) -> PeerRun:
    """Train one peer; ``load_private()`` gives full-finetune its own backbone copy (its weights change); a
    peft peer is built from ``model_path`` (the backbone's folder) and needs ``label_texts`` (they set prompt
    tuning's number of virtual tokens). With ``checkpoint_dir``, checkpoint at every evaluation and go on from
    the newest checkpoint there (module docstring)."""
    import torch
    import torch.nn.functional as F

    from ltuning.backbones import same_weights
    from ltuning.train import linear_schedule, set_seed

    if method not in PEER_METHODS:
        raise ValueError(f"unknown peer {method!r}; known: {PEER_METHODS}")
    set_seed(seed)
    t0 = time.perf_counter()
    if method in HEAD_PEERS:
        peer = _head_peer(method, shared_backbone, load_private, num_labels, text_pooling, max_length, device)
    else:
        peer = _peft_peer(method, model_path, num_labels, label_texts, max_length, device)
    opt = torch.optim.AdamW(peer.params, lr=lr, weight_decay=0.0)
    warmup = int(0.06 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, steps, warmup))
    g = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(train_ds), generator=g), 0
    labels_eval = torch.as_tensor(eval_ds.labels)

    def evaluate():
        peer.train(False)
        m = common.logits_metrics(peer.predict(list(eval_ds.texts)), labels_eval, num_labels)
        peer.train(True)
        return m

    build_s = time.perf_counter() - t0
    tracker = common.RunTracker(metric=metric)
    # what a checkpoint must match to be this run's (the data by size and its first and last texts)
    identity = {"method": method, "num_labels": num_labels, "lr": lr, "steps": steps, "batch_size": batch_size,
                "eval_every": eval_every, "seed": seed, "text_pooling": text_pooling, "max_length": max_length,
                "metric": metric, "patience": patience, "eval_at_start": eval_at_start,
                "label_texts": list(label_texts or []), "train_rows": len(train_ds), "eval_rows": len(eval_ds),
                "train_ends": [str(train_ds.texts[0]), str(train_ds.texts[-1])] if len(train_ds) else [],
                "eval_ends": [str(eval_ds.texts[0]), str(eval_ds.texts[-1])] if len(eval_ds) else [],
                # the backbone (its folder, architecture and config settings; the weights sample is compared
                # within rounding below) and the peer's own config (peft's, with its version)
                "model_path": None if model_path is None else str(model_path),
                "backbone_fingerprint": getattr(shared_backbone, "fingerprint", None),
                "backbone_settings": getattr(shared_backbone, "settings", None),
                "peer_config": peer.config, "peft_version": common.versions("peft")["peft"] if method in PEFT_PEERS else None}
    sample = getattr(shared_backbone, "weights_sample", None)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    found = checkpoints(folder) if folder is not None else []
    start, resumed_from, running, step_s, stopped = 1, 0, 0.0, 0.0, None
    if found:
        at, path = found[-1]
        ck = torch.load(path, map_location="cpu", weights_only=True)
        saved = ck["identity"]
        # keys added after the first checkpoints were written (2026-11-30) are compared where a checkpoint has them
        diff = sorted(k for k in identity if saved.get(k) != identity[k] and (k in saved or k not in _ADDED_LATER))
        theirs = ck.get("backbone_weights")
        if sample is not None and theirs is not None and not same_weights(theirs, sample):
            diff.append("backbone weights")
        if diff:
            raise RuntimeError(f"{path} is the checkpoint of another run (it differs in {', '.join(diff)}); "
                               f"delete {folder} to start this run again")
        peer.load(ck["state"])
        best_state = ck["best_state"]
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["schedule"])
        g.set_state(ck["order_rng"])
        order, pos = ck["order"], ck["position"]
        running, step_s, stopped = ck["running_loss"], ck["step_seconds"], ck["stopped_early_at"]
        tracker.history, tracker.best, tracker.best_step = ck["history"], ck["best"], ck["best_step"]
        tracker._best_key = tuple(ck["best_key"])
        tracker.start -= ck["loop_seconds"]  # elapsed_seconds and the run's seconds go on counting
        build_s += ck["build_seconds"]
        _set_rng_states(ck["rng"])
        start, resumed_from = (at + 1 if stopped is None else steps + 1), at
        print(f"    resumed from step {at} ({path})", flush=True)
    else:
        if eval_at_start:  # the curve's step 0; not a state to keep (ltuning.train chooses among steps >= 1 too)
            tracker.record(0, evaluate(), None, candidate=False)
        best_state = peer.state()
    peer.train(True)
    for step in range(start, steps + 1):
        ts = time.perf_counter()
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(train_ds), generator=g), 0
        b = order[pos:pos + batch_size].tolist()
        pos += batch_size
        logits = peer.logits([train_ds.texts[i] for i in b], True)
        loss = F.cross_entropy(logits, torch.as_tensor([train_ds.labels[i] for i in b], device=logits.device))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_s += time.perf_counter() - ts
        running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
        if step % eval_every == 0 or step == steps:
            if tracker.record(step, evaluate(), running):
                best_state = peer.state()
            if on_eval is not None:
                on_eval(tracker.history[-1])
            if patience and tracker.evals_since_best() >= patience:
                stopped = step
            if folder is not None:
                _save_checkpoint(folder, step, {
                    "identity": identity, "state": peer.state(), "best_state": best_state,
                    "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "order_rng": g.get_state(),
                    "order": order, "position": pos, "running_loss": running, "step_seconds": step_s,
                    "stopped_early_at": stopped, "history": tracker.history, "best": tracker.best,
                    "best_step": tracker.best_step, "best_key": list(tracker._best_key),
                    "loop_seconds": time.perf_counter() - tracker.start, "build_seconds": build_s,
                    "rng": _rng_states(), "backbone_weights": sample})
            if stopped is not None:
                break
    peer.load(best_state)
    peer.train(False)
    trainable = sum(q.numel() for q in peer.params)
    return PeerRun(tracker, peer.predict, trainable, build_s, step_s, stopped, peer.config, resumed_from)
