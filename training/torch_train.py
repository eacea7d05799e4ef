"""Batch training of the PyTorch purchase model, on a GPU when there is one.

:func:`fit_torch` fits a :class:`~training.torch_model.FeatureEncoder` on the
training rows, trains a :class:`~training.torch_model.DotInteractionNet` with
binary cross-entropy on logits, measures validation AUC after every epoch, and
stops after ``patience`` epochs without improvement, keeping the best epoch's
weights. It returns a CPU :class:`~training.torch_model.TorchScorer`.

- On CUDA the data is copied to the GPU once (from pinned memory) and batches
  run in mixed precision: bfloat16 where the GPU supports it, else float16 with
  a gradient scaler.
- On the CPU a run is reproducible: the same rows, config and seed give the
  same scores (deterministic algorithms, one seeded generator for shuffling).

The loss is not re-weighted for the ~3% positives: AUC does not depend on
class weights, and an unweighted loss keeps the scores calibrated purchase
probabilities, which the log-loss gate and the ranking read as such. The output
bias starts at the base rate's logit instead, so no epoch is spent learning it.

>>> resolve_device("cpu")
device(type='cpu')
>>> TorchConfig(device="cpu").batch_size
2048
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from infra.errors import ConfigError, InvalidInputError
from training.contract import COLUMNS
from training.metrics import log_loss, roc_auc
from training.torch_model import DotInteractionNet, FeatureEncoder, TorchScorer

DeviceChoice = Literal["auto", "cpu", "cuda"]
LABEL: Final = "label"
_EVAL_BATCH: Final = 65_536


class TorchConfig(BaseModel):
    """Network size and optimisation of one training run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    embedding_dim: int = Field(16, ge=2, le=256)
    bottom_hidden: tuple[int, ...] = (64,)
    top_hidden: tuple[int, ...] = (64, 32)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)
    seed: int = 0
    device: DeviceChoice = "auto"
    cpu_threads: int | None = Field(None, ge=1)
    """Intra-op threads while training; None keeps torch's (one per core). A small
    model on a shared machine trains far faster on 1 than on oversubscribed cores."""


@dataclass(frozen=True, slots=True)
class EpochResult:
    """One epoch. ``seconds`` covers training and validation; the rate, training only."""

    epoch: int
    train_loss: float
    valid_loss: float
    valid_auc: float
    seconds: float
    examples_per_s: float


@dataclass
class TorchFitResult:
    """The best epoch's scorer and how training went (epochs count from 1)."""

    scorer: TorchScorer
    best_epoch: int
    valid_auc: float
    valid_log_loss: float
    device: str
    amp: bool
    history: list[EpochResult] = field(default_factory=list)

    @property
    def stopped_early(self) -> bool:
        return self.best_epoch < len(self.history)


def resolve_device(choice: DeviceChoice) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without a GPU is a config error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but torch sees no CUDA GPU; use auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on this device; None means full precision."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class _Tensors:
    ids: Tensor
    dense: Tensor
    labels: Tensor

    @classmethod
    def of(cls, encoder: FeatureEncoder, rows: pd.DataFrame, device: torch.device) -> _Tensors:
        ids, dense = encoder.encode(rows)
        labels = torch.from_numpy(rows[LABEL].to_numpy(dtype=np.float32))
        if device.type == "cuda":
            return cls(
                *(t.pin_memory().to(device, non_blocking=True) for t in (ids, dense, labels))
            )
        return cls(ids, dense, labels)

    def __len__(self) -> int:
        return len(self.labels)


def fit_torch(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    config: TorchConfig,
    *,
    progress: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TorchFitResult:
    """Train on ``train``, early-stop on ``valid`` AUC; both need the contract columns + label."""
    _check_rows(train, "training")
    _check_rows(valid, "validation")
    device = resolve_device(config.device)
    encoder = FeatureEncoder().fit(train)
    with _reproducible(device, config):
        module = DotInteractionNet(
            encoder.cardinalities,
            len(encoder.numeric_columns),
            config.embedding_dim,
            config.bottom_hidden,
            config.top_hidden,
        )
        module.set_prior(float(train[LABEL].mean()))
        module.to(device)
        loop = _Loop(module, config, device, _Tensors.of(encoder, train, device))
        best = loop.run(_Tensors.of(encoder, valid, device), progress, on_epoch)
    module.load_state_dict(best.state)
    return TorchFitResult(
        scorer=TorchScorer(encoder, module),
        best_epoch=best.epoch,
        valid_auc=best.auc,
        valid_log_loss=best.log_loss,
        device=device.type,
        amp=amp_dtype(device) is not None,
        history=loop.history,
    )


def _check_rows(rows: pd.DataFrame, what: str) -> None:
    missing = [name for name in (*COLUMNS, LABEL) if name not in rows.columns]
    if missing:
        raise InvalidInputError(f"the {what} rows lack columns: {', '.join(missing)}")
    positives = int(rows[LABEL].sum())
    if positives == 0 or positives == len(rows):
        raise InvalidInputError(
            f"the {what} rows need both labels; they have {positives} positives in {len(rows)}"
        )


@contextmanager
def _reproducible(device: torch.device, config: TorchConfig) -> Iterator[None]:
    """Seeded, without touching the caller's RNG; deterministic kernels and threads on CPU."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        # the CPU generator alone: the module is initialised there, before it moves
        torch.default_generator.manual_seed(config.seed)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        if config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)


@dataclass
class _Best:
    epoch: int = 0
    auc: float = -math.inf
    log_loss: float = math.nan
    state: dict[str, Tensor] = field(default_factory=dict)


class _Loop:
    """The epochs of one run: shuffle, step, validate, keep the best weights."""

    def __init__(
        self,
        module: DotInteractionNet,
        config: TorchConfig,
        device: torch.device,
        train: _Tensors,
    ) -> None:
        self.module = module
        self.config = config
        self.device = device
        self.train = train
        self.optimizer = torch.optim.AdamW(
            module.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=device.type == "cuda",
        )
        self.dtype = amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[EpochResult] = []

    def run(
        self,
        valid: _Tensors,
        progress: bool,
        on_epoch: Callable[[EpochResult], None] | None,
    ) -> _Best:
        best = _Best()
        batches = math.ceil(len(self.train) / self.config.batch_size)
        labels = valid.labels.cpu().numpy()
        with _progress_bar(progress) as bar:
            epochs = bar.add_task("epochs", total=self.config.max_epochs)
            steps = bar.add_task("batches", total=batches)
            for epoch in range(1, self.config.max_epochs + 1):
                bar.reset(steps)
                started = time.perf_counter()
                train_loss = self._epoch(lambda: bar.advance(steps))
                train_s = time.perf_counter() - started
                probabilities = self._predict(valid)
                result = EpochResult(
                    epoch=epoch,
                    train_loss=train_loss,
                    valid_loss=log_loss(labels, probabilities),
                    valid_auc=roc_auc(labels, probabilities),
                    seconds=time.perf_counter() - started,
                    examples_per_s=len(self.train) / train_s,
                )
                self.history.append(result)
                if on_epoch is not None:
                    on_epoch(result)
                bar.update(
                    epochs, advance=1, description=f"epoch {epoch} auc {result.valid_auc:.4f}"
                )
                if result.valid_auc > best.auc:
                    state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
                    best = _Best(epoch, result.valid_auc, result.valid_loss, state)
                elif epoch - best.epoch >= self.config.patience:
                    break
        return best

    def _epoch(self, advance: Callable[[], None]) -> float:
        self.module.train()
        order = torch.randperm(len(self.train), generator=self.generator).to(self.device)
        total = torch.zeros((), device=self.device)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            ids, dense, labels = (
                t[batch] for t in (self.train.ids, self.train.dense, self.train.labels)
            )
            with self._autocast():
                logits = self.module(ids, dense)
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(self.scaler.scale(loss))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # summed on the device: one synchronisation per epoch, not per batch
            total += loss.detach() * len(batch)
            advance()
        return float(total.item()) / len(self.train)

    def _predict(self, rows: _Tensors) -> np.ndarray:
        self.module.eval()
        chunks = []
        # full precision, as the CPU scorer will run: the AUC reported is the one it gets
        with torch.inference_mode():
            for start in range(0, len(rows), _EVAL_BATCH):
                stop = start + _EVAL_BATCH
                logits = self.module(rows.ids[start:stop], rows.dense[start:stop])
                chunks.append(torch.sigmoid(logits).to(torch.float64).cpu())
        return torch.cat(chunks).numpy()

    def _autocast(self) -> torch.autocast | nullcontext[None]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    with bar:
        yield bar
