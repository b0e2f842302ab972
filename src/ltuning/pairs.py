"""Training batches of NLI pairs (A.3): half true pairs, half false pairs with a random wrong label."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PairBatch:
    """indices (B,) into the dataset; label_ids (B,) the label each text is paired with; targets (B,)
    1 for a true pair, 0 for a false one; labels (B,) the texts' true classes."""

    indices: torch.Tensor
    label_ids: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor


class PairSampler:
    """Draws batches of B distinct texts in a seeded epoch-wise shuffle.

    The first ``B - B // 2`` texts are paired with their true label, the other ``B // 2`` with a label
    drawn uniformly from the K - 1 wrong ones. The state (epoch, position) is two integers, so a run can
    resume at the same place.
    """

    def __init__(self, labels: list[int], num_labels: int, batch_size: int, seed: int = 0) -> None:
        if num_labels < 2:
            raise ValueError(f"need at least 2 labels, got {num_labels}")
        if batch_size < 2:
            raise ValueError(f"batch size must be >= 2 (half true, half false pairs), got {batch_size}")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.num_labels = num_labels
        self.batch_size = min(batch_size, len(labels)) if len(labels) >= 2 else batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.labels), generator=g)

    def _generator(self) -> torch.Generator:
        # Negatives depend only on (seed, epoch, position): reproducible and resumable.
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + self.position)

    def next(self) -> PairBatch:
        B = self.batch_size
        if self.position + B > len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._shuffle(self.epoch)
        g = self._generator()
        idx = self._order[self.position:self.position + B]
        self.position += B
        y = self.labels[idx]
        n_neg = B // 2
        label_ids = y.clone()
        offset = torch.randint(1, self.num_labels, (n_neg,), generator=g)  # never 0: never the true label
        label_ids[B - n_neg:] = (y[B - n_neg:] + offset) % self.num_labels
        targets = torch.ones(B, dtype=torch.long)
        targets[B - n_neg:] = 0
        return PairBatch(idx, label_ids, targets, y)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._shuffle(self.epoch)


class TaskSampler:
    """Multi-task batches: every global batch comes from one task, so its listwise softmax runs over that
    task's K labels. The task of draw n is drawn with probability proportional to the tasks' training sizes by
    a generator seeded with (seed, n): the state is the number of draws plus each task's
    :class:`PairSampler` state, so a run resumes at the same place. Task i's PairSampler is seeded with
    ``seed + i``: with one task, the batches are a single-task run's."""

    def __init__(self, task_labels: list[list[int]], num_labels: list[int], batch_size: int, seed: int = 0) -> None:
        self.samplers = [PairSampler(labels, k, batch_size, seed=seed + i)
                         for i, (labels, k) in enumerate(zip(task_labels, num_labels, strict=True))]
        sizes = torch.tensor([len(labels) for labels in task_labels], dtype=torch.float64)
        self.weights = sizes / sizes.sum()
        self.seed = seed
        self.draws = 0

    def task_of(self, draw: int) -> int:
        """The task of the ``draw``-th batch (0-based)."""
        if len(self.samplers) == 1:
            return 0
        g = torch.Generator().manual_seed(self.seed * 1_000_037 + draw)
        return int(torch.multinomial(self.weights, 1, generator=g))

    def next(self) -> tuple[int, PairBatch]:
        task = self.task_of(self.draws)
        self.draws += 1
        return task, self.samplers[task].next()

    def state_dict(self) -> dict:
        return {"seed": self.seed, "draws": self.draws, "tasks": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["tasks"]) != len(self.samplers):
            raise ValueError(f"the checkpoint's sampler has {len(state['tasks'])} tasks, this run {len(self.samplers)}")
        self.seed, self.draws = state["seed"], state["draws"]
        for sampler, s in zip(self.samplers, state["tasks"], strict=True):
            sampler.load_state_dict(s)
