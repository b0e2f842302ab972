"""Data-parallel training: ``accelerate launch`` with 2 CPU processes (gloo) runs the unchanged
``ltuning train`` and ends where one process with the same global batch ends (losses and adapter weights
equal up to float summation order). Gradient accumulation and bf16 in both modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import TRAIN, VALID, save_tiny_bert, write_csv

from ltuning.adapter import WEIGHTS_NAME
from ltuning.cli import main
from ltuning.pairs import PairSampler
from ltuning.train import shard

ROOT = Path(__file__).resolve().parents[1]


def test_shards_partition_the_global_batch():
    sampler = PairSampler([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], 3, 7, seed=1)
    pb = sampler.next()
    for world in (1, 2, 3):
        parts = [shard(pb, r, world) for r in range(world)]
        assert sorted(i for p in parts for i in p.indices.tolist()) == sorted(pb.indices.tolist())
        pairs = sorted((i, l, t) for p in parts for i, l, t in
                       zip(p.indices.tolist(), p.label_ids.tolist(), p.targets.tolist(), strict=False))
        assert pairs == sorted(zip(pb.indices.tolist(), pb.label_ids.tolist(), pb.targets.tolist(), strict=False))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return {"model": str(save_tiny_bert(root / "tiny-bert")),
            "train": str(write_csv(root / "train.csv", TRAIN)),
            "valid": str(write_csv(root / "valid.csv", VALID))}


def args_for(setup, out, *extra):
    # the paper head: what is compared here is the distribution, and its logits stay small on a tiny random
    # model (the similarity head's s = 20 times cosines near 1 between any two of its pooled vectors gives
    # logits of ~14, where the last bits of a reduction order show more)
    return ["train", "--score-head", "paper", "--model", setup["model"], "--train-file", setup["train"], "--validation-file", setup["valid"],
            "--text-column", "text", "--label-column", "label", "--method", "lt-prompt", "--learning-rate", "0.05",
            "--max-steps", "6", "--batch-size", "4", "--eval-every", "3", "--output-dir", str(out), "--quiet", *extra]


def launch_2_processes(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    # --multi_gpu on a machine without GPUs is accelerate's multi-CPU mode (torch.distributed, gloo)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"),
           "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "ltuning", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def compare(one: Path, two: Path, atol: float, weights: bool = True, weights_atol: float = 1e-4) -> None:
    a, b = json.loads((one / "train_results.json").read_text()), json.loads((two / "train_results.json").read_text())
    assert len(a["train_log"]) == len(b["train_log"])
    for ra, rb in zip(a["train_log"], b["train_log"], strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=atol)
    wa, wb = load_file(str(one / WEIGHTS_NAME)), load_file(str(two / WEIGHTS_NAME))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.isfinite(wb[k]).all()
        if weights:
            # Adam divides by sqrt(v): a gradient that differs in its last bits (another summation order
            # across processes) moves a weight by a few 1e-5 more or less after a few steps at lr 0.05
            torch.testing.assert_close(wa[k], wb[k], atol=max(atol, weights_atol), rtol=0)
    # the runs trained: the last checkpoint's weights differ from the first's
    first, last = (load_file(str(two / "checkpoints" / s / WEIGHTS_NAME)) for s in ("step-3", "step-6"))
    moved = any(not torch.equal(first[k], last[k]) for k in first)
    assert moved


@pytest.mark.parametrize("accumulate, objective", [("1", "pairwise"), ("2", "pairwise"), ("2", "listwise")])
def test_two_processes_match_one(setup, tmp_path, accumulate, objective):
    extra = ["--gradient-accumulation-steps", accumulate, "--checkpoint-every", "3", "--objective", objective]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(args_for(setup, one, *extra)) == 0
    p = launch_2_processes(args_for(setup, two, *extra), tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # only the main process prints and writes the shared files; each process saves its own RNG state
    assert p.stdout.count("ltuning train:") == 1 and p.stdout.count("adapter saved") == 1
    assert {f.name for f in (two / "checkpoints" / "step-6").glob("rng_state_*.pt")} == \
        {"rng_state_0.pt", "rng_state_1.pt"}
    # the losses agree to 1e-5 either way; listwise scores K rows per text, each process padding its own
    # share, so its weights drift by up to ~2e-4 through Adam (measured 1.5e-4 after 6 steps at lr 0.05);
    # a wrong share of the mean (a factor of 2) shows in the losses, which the first check compares
    compare(one, two, atol=1e-5, weights_atol=1e-4 if objective == "pairwise" else 5e-4)
    results = json.loads((two / "train_results.json").read_text())
    assert [r["step"] for r in results["history"]] == [3, 6]


@pytest.mark.slow
def test_two_processes_bf16(setup, tmp_path):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no bf16 on this CPU")
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ["--bf16", "--gradient-accumulation-steps", "2", "--checkpoint-every", "3"]
    assert main(args_for(setup, one, *extra)) == 0
    p = launch_2_processes(args_for(setup, two, *extra), tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    compare(one, two, atol=2e-2)  # bf16 rounds per process batch: looser


def test_bf16_and_accumulation_one_process(setup, tmp_path):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no bf16 on this CPU")
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    assert main(args_for(setup, fp32, "--gradient-accumulation-steps", "2", "--checkpoint-every", "3")) == 0
    assert main(args_for(setup, bf16, "--gradient-accumulation-steps", "2", "--checkpoint-every", "3",
                         "--bf16")) == 0
    compare(fp32, bf16, atol=5e-2, weights=False)  # Adam amplifies bf16 rounding in the weights
    # accumulation: every optimizer step drew 2 batches of 4 texts
    ts = json.loads((bf16 / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert ts["n_texts"] == 6 * 2 * 4
