"""The PyTorch purchase model: a feature encoder, a DLRM-style network, and its scorer.

:class:`FeatureEncoder` turns contract rows into two tensors: integer ids (the
user, the product and each categorical column, ``0`` meaning "not seen in
training") and scaled numeric features. :class:`DotInteractionNet` embeds the
ids, projects the numeric features into the same space, and feeds every
pairwise dot product of those vectors to a small MLP, as DLRM (Naumov et al.,
2019) does. The purchase label hinges on *interactions* (the taste of a region
or a user for a category, price on a mobile phone, a plant invasive where the
shopper lives) which dot products of embeddings express directly; a two-tower
model only scores user-item affinity and could not see the context. :class:`TorchScorer` bundles the
fitted encoder and the network as a :class:`training.pyfunc.Scorer`.

>>> from infra.plantly.catalog import load_catalog
>>> from training.contract import assemble_rows
>>> catalog = load_catalog()
>>> rows = pd.DataFrame(
...     assemble_rows("u-1", "US-CA", "mobile", {}, [("ficus-lyrata-3gal", {})], catalog, 0.0)
... )
>>> encoder = FeatureEncoder().fit(rows)
>>> encoder.cardinalities
(2, 2, 2, 2, 2, 2)
>>> rows.loc[0, "user_id"] = "someone-new"
>>> ids, dense = encoder.encode(rows)
>>> ids.tolist(), tuple(dense.shape)
([[0, 1, 1, 1, 1, 1]], (1, 15))
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Final, Self, cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from training.contract import CATEGORICALS, IDS, NUMERIC, RowBatch, Rows, column_values

ID_COLUMNS: Final = (*IDS, *CATEGORICALS)
UNKNOWN_ID: Final = 0
# A column whose training values stay within [0, 1] is a flag or a ratio, already
# on a sane scale; any other (counts, money, hours) is heavy-tailed and gets log1p.
_BOUNDED_MAX: Final = 1.0
_MIN_STD: Final = 1e-6


class FeatureEncoder:
    """Vocabularies for the id columns and log/standard scaling for the numeric ones.

    Ids seen fewer than ``min_count`` times in training map to :data:`UNKNOWN_ID`,
    like ids never seen at all.
    """

    def __init__(
        self,
        id_columns: Sequence[str] = ID_COLUMNS,
        numeric_columns: Sequence[str] = NUMERIC,
        min_count: int = 1,
    ) -> None:
        self.id_columns = tuple(id_columns)
        self.numeric_columns = tuple(numeric_columns)
        self.min_count = min_count
        self.vocabularies: dict[str, dict[object, int]] = {}
        self.log_scaled = np.zeros(len(self.numeric_columns), dtype=bool)
        self.means = np.zeros(len(self.numeric_columns))
        self.stds = np.ones(len(self.numeric_columns))

    def fit(self, rows: pd.DataFrame) -> Self:
        for column in self.id_columns:
            counts = rows[column].value_counts()
            kept = sorted((v for v, n in counts.items() if n >= self.min_count), key=str)
            self.vocabularies[column] = {value: i + 1 for i, value in enumerate(kept)}
        raw = self._raw_numeric(rows)
        self.log_scaled = np.nanmax(raw, axis=0, initial=0.0) > _BOUNDED_MAX
        logged = self._log(raw)
        self.means = np.nanmean(logged, axis=0) if len(rows) else np.zeros(raw.shape[1])
        self.stds = np.maximum(np.nan_to_num(np.nanstd(logged, axis=0)), _MIN_STD)
        return self

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Embedding table sizes: each vocabulary plus the unknown id."""
        return tuple(len(self.vocabularies[c]) + 1 for c in self.id_columns)

    def encode_ids(self, rows: Rows) -> np.ndarray:
        """``[n, len(id_columns)]`` int64 ids; unseen values are :data:`UNKNOWN_ID`."""
        out = np.empty((len(rows), len(self.id_columns)), dtype=np.int64)
        for j, column in enumerate(self.id_columns):
            get = self.vocabularies[column].get
            # a dict lookup per value beats pandas map/get_indexer tenfold on serving batches
            out[:, j] = [get(value, UNKNOWN_ID) for value in column_values(rows, column)]
        return out

    def encode_dense(self, rows: Rows) -> np.ndarray:
        """``[n, len(numeric_columns)]`` float32, standardized; missing values become 0."""
        scaled = (self._log(self._raw_numeric(rows)) - self.means) / self.stds
        return np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def encode(self, rows: Rows) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.encode_ids(rows)), torch.from_numpy(self.encode_dense(rows))

    def _raw_numeric(self, rows: Rows) -> np.ndarray:
        if isinstance(rows, RowBatch):
            try:
                # one conversion for the whole block; None (a missing value) becomes NaN
                block = [rows.values(column) for column in self.numeric_columns]
                return np.array(block, dtype=np.float64).T
            except (TypeError, ValueError):
                pass  # a text value somewhere: the per-column path coerces it to NaN
        out = np.empty((len(rows), len(self.numeric_columns)), dtype=np.float64)
        for j, column in enumerate(self.numeric_columns):
            out[:, j] = _floats(rows[column])
        return out

    def _log(self, raw: np.ndarray) -> np.ndarray:
        logged = raw.copy()
        logged[:, self.log_scaled] = np.log1p(np.maximum(raw[:, self.log_scaled], 0.0))
        return logged


def _floats(column: pd.Series | np.ndarray) -> np.ndarray:
    if isinstance(column, pd.Series) and column.dtype.kind not in "biuf":
        # nullable and object columns: slower, and missing values become NaN
        return np.asarray(column.to_numpy(dtype=np.float64, na_value=np.nan))
    values = np.asarray(column)
    if values.dtype.kind in "biuf":
        return values
    return np.asarray(pd.to_numeric(values, errors="coerce"), dtype=np.float64)


def _mlp(sizes: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return layers


class DotInteractionNet(nn.Module):
    """DLRM-style: embeddings and a dense projection, their pairwise dots, a top MLP.

    Outputs one logit per row. Row 0 of every embedding table is the unknown id:
    it stays zero, so an unseen user or product adds no interaction at all.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        dense_features: int,
        embedding_dim: int = 16,
        bottom_hidden: Sequence[int] = (64,),
        top_hidden: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        self.cardinalities = tuple(cardinalities)
        self.dense_features = dense_features
        self.embedding_dim = embedding_dim
        tables = [nn.Embedding(n, embedding_dim, padding_idx=UNKNOWN_ID) for n in cardinalities]
        self.embeddings = nn.ModuleList(tables)
        self.bottom = nn.Sequential(*_mlp((dense_features, *bottom_hidden, embedding_dim)))
        vectors = len(self.cardinalities) + 1
        upper = torch.triu_indices(vectors, vectors, offset=1)
        self.register_buffer("pairs", upper[0] * vectors + upper[1], persistent=False)
        top_in = embedding_dim + upper.shape[1]
        self.top = nn.Sequential(*_mlp((top_in, *top_hidden)))
        self.output = nn.Linear(top_hidden[-1] if top_hidden else top_in, 1)
        self._init_embeddings(tables)

    def _init_embeddings(self, tables: Sequence[nn.Embedding]) -> None:
        # N(0, 1) rows would give dot products of variance embedding_dim: start near 1
        std = self.embedding_dim**-0.5
        with torch.no_grad():
            for table in tables:
                nn.init.normal_(table.weight, std=std)
                table.weight[UNKNOWN_ID].zero_()

    def set_prior(self, positive_rate: float) -> None:
        """Start the output at the base rate's logit, so early epochs learn ranking, not it."""
        rate = min(max(positive_rate, 1e-6), 1 - 1e-6)
        with torch.no_grad():
            self.output.bias.fill_(float(np.log(rate / (1 - rate))))

    def forward(self, ids: Tensor, dense: Tensor) -> Tensor:
        projected = self.bottom(dense)
        vectors = torch.stack(
            [projected, *(table(ids[:, j]) for j, table in enumerate(self.embeddings))], dim=1
        )
        dots = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)
        interactions = dots.index_select(1, self.get_buffer("pairs"))
        logits: Tensor = self.output(self.top(torch.cat([projected, interactions], dim=1)))
        return logits.squeeze(1)


class _NumpyForward:
    """The eval-mode network's arithmetic in numpy.

    For the 50-100 rows of a request, torch's per-op dispatch costs more than
    the arithmetic: this does the same float32 computation in about half the
    time. Training and validation still run the torch module.
    """

    def __init__(self, module: DotInteractionNet) -> None:
        def weights(layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
            assert isinstance(layer, nn.Linear)
            return layer.weight.detach().cpu().numpy().T.copy(), layer.bias.detach().cpu().numpy()

        with torch.no_grad():
            self.tables = [
                cast(nn.Embedding, t).weight.detach().cpu().numpy() for t in module.embeddings
            ]
            self.bottom = [weights(m) for m in module.bottom if isinstance(m, nn.Linear)]
            self.top = [weights(m) for m in module.top if isinstance(m, nn.Linear)]
            self.output = weights(module.output)
            self.pairs = module.get_buffer("pairs").cpu().numpy()

    def logits(self, ids: np.ndarray, dense: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros(0, dtype=np.float32)
        projected = _relu_stack(dense, self.bottom)
        vectors = np.stack(
            [projected, *(table[ids[:, j]] for j, table in enumerate(self.tables))], axis=1
        )
        dots = np.matmul(vectors, vectors.transpose(0, 2, 1)).reshape(len(ids), -1)
        hidden = _relu_stack(np.concatenate([projected, dots[:, self.pairs]], axis=1), self.top)
        weight, bias = self.output
        out: np.ndarray = (hidden @ weight + bias)[:, 0]
        return out


def _relu_stack(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    for weight, bias in layers:
        x = np.maximum(x @ weight + bias, 0.0)
    return x


class TorchScorer:
    """A fitted encoder and network, scoring contract rows on the CPU.

    Pickles with the standard pickler and cloudpickle; the network is moved to
    the CPU and put in eval mode on construction, so a model trained on a GPU
    loads and scores on a machine without one. Scoring runs the network's
    arithmetic in numpy (:class:`_NumpyForward`), read from the module once.
    """

    kind = "torch"

    def __init__(self, encoder: FeatureEncoder, module: nn.Module) -> None:
        self.encoder = encoder
        self.module = module.to("cpu").eval()
        self._forward: _NumpyForward | None = None

    def score(self, rows: Rows) -> np.ndarray:
        forward = getattr(self, "_forward", None)
        if forward is None:
            assert isinstance(self.module, DotInteractionNet)
            forward = self._forward = _NumpyForward(self.module)
        logits = forward.logits(self.encoder.encode_ids(rows), self.encoder.encode_dense(rows))
        # clipped so exp never overflows; a logit beyond ±500 is 0 or 1 in float64 anyway
        return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -500.0, 500.0)))

    def score_with_torch(self, rows: Rows) -> np.ndarray:
        """The reference path through the torch module (tests compare the two)."""
        ids, dense = self.encoder.encode(rows)
        module: nn.Module = self.module
        with torch.inference_mode():
            logits = module(ids, dense)
        return torch.sigmoid(logits).to(torch.float64).numpy()
