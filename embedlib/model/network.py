"""The embedding network: one encoder per view (embedlib.views), fused into one L2-normalised embedding, and a
cosine classifier over the training families.

Which encoder a view gets follows from its spec (embedlib.views.view_specs): 2-D uint8 = image, 1-D uint8 =
sketch, 1-D float = histogram.

  image            conv blocks (conv -> norm -> ReLU -> 2x2 max pool) -> global average pool
  strings, idents  a hashed sketch: log(1 + count) x per-bucket IDF weight (a buffer, set from the training
                   files' document frequencies), L2-normalised (the training-free TF-IDF geometry), then
                   Linear -> norm -> ReLU
  bytehist         sqrt of the fractions -> Linear -> norm -> ReLU
  token_ids        fixed part only (TokenIdFold): each word id's IDF, the set's unit vector, folded into the
                   fixed dimensions with a random sign (a count sketch: no [ids, dims] matrix)
  fusion           concatenation -> Linear -> L2 normalisation = the embedding

The classifier scores families by cosine between the embedding and one learned direction per family, so
training shapes exactly the geometry that similarity search later uses; a margin loss (embedlib.train.loop) works on
these cosines. A plain tensor input is the image view (the byteplot-only model of earlier versions).
"""

from __future__ import annotations

from typing import Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedlib.config import ModelConfig
from embedlib.views import splitmix64

ViewSpecs = Mapping[str, tuple[tuple[int, ...], np.dtype]]
# What the network eats: a dict of named views (tensors with a leading batch dimension); a bare tensor is
# taken as the "image" view.
Batch = Union[torch.Tensor, dict[str, torch.Tensor]]


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def make_norm(kind: str, channels: int, cfg: ModelConfig, dims: int = 2) -> nn.Module:
    """The norm layer after a conv (dims=2) or linear (dims=1) layer. 'batch-cumulative' is PyTorch's
    momentum=None: an equal-weight average of every batch seen, which converges where a 0.01 moving average
    has barely moved."""
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    if kind == "batch":
        return bn(channels, momentum=cfg.bn_momentum)
    if kind == "batch-cumulative":
        return bn(channels, momentum=None)
    if kind == "group":
        return nn.GroupNorm(min(cfg.group_norm_groups, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ImageEncoder(nn.Module):
    """uint8 byteplots [B, H, W] (or [B, 1, H, W]) -> [B, channels[-1]]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = 1
        for out_ch in cfg.channels:
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=cfg.norm == "none"),
                make_norm(cfg.norm, out_ch, cfg),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.out_dim = in_ch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x / 127.5 - 1.0
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


class SketchWeights(nn.Module):
    """The training-free part of a sketch: per-bucket IDF weights (a buffer) and the TF-IDF unit vector. Alone,
    it serves a sketch view that only feeds the fixed part of the embedding (model.learned_views)."""

    def __init__(self, buckets: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("idf", torch.ones(buckets))
        self.dropout = cfg.sketch_dropout
        self.in_features = buckets

    def weighted(self, counts: torch.Tensor, augment: bool = True, idf_power: float = 1.0) -> torch.Tensor:
        """The TF-IDF unit vector: log(1 + count) x idf ** idf_power, L2-normalised (bucket dropout in training
        if set)."""
        x = torch.log1p(counts.float()) * (self.idf if idf_power == 1.0 else self.idf ** idf_power)
        if augment and self.training and self.dropout:
            x = F.dropout(x, self.dropout)
        return F.normalize(x, dim=1)


class SketchEncoder(SketchWeights):
    """uint8 bucket counts [B, buckets] -> [B, hidden]: TF-IDF cosine geometry, then one learned layer."""

    def __init__(self, buckets: int, cfg: ModelConfig) -> None:
        super().__init__(buckets, cfg)
        self.linear = nn.Linear(buckets, cfg.hidden, bias=cfg.norm == "none")
        self.norm = make_norm(cfg.norm, cfg.hidden, cfg, dims=1)
        self.out_dim = cfg.hidden

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.linear(self.weighted(counts))))


def fold_codes(ids: int, dim: int, copies: int) -> np.ndarray:
    """int32 [ids, copies]: 2 x dimension + sign bit of each id in each block, from h = splitmix64(id x copies +
    block): dimension h % (dim / copies) + block x (dim / copies), sign bit h >> 63. Computed in slices that stay
    in the CPU's cache: every process that loads a model builds it (2^23 hashes: 0.4-0.6 s of CPU in one pass
    over whole arrays, 0.1 s in slices; the same numbers: tests/test_model.py)."""
    block = dim // copies
    total = ids * copies
    step = copies * 8192  # whole ids per slice, so a slice's i-th number is always block i % copies
    offsets = (np.arange(min(step, total), dtype=np.int64) % copies) * block
    out = np.empty(total, np.int32)
    for start in range(0, total, step):
        h = splitmix64(np.arange(start, min(start + step, total), dtype=np.uint64))
        code = (h % np.uint64(block)).astype(np.int64)
        code += offsets[: len(h)]
        code <<= 1
        code += (h >> np.uint64(63)).astype(np.int64)
        out[start:start + len(h)] = code
    return out.reshape(ids, copies)


class TokenIdFold(nn.Module):
    """uint32 id sets [B, K] (embedlib.views.token_ids; ids >= 2^bits are padding) -> [B, dim]: the set's TF-IDF unit
    vector (every id counts once, weighted by its IDF ** power) folded into `dim` dimensions by a sparse
    Johnson-Lindenstrauss map (Kane and Nelson's block construction): the dimensions are `copies` blocks, and each
    id adds weight / sqrt(copies) with a random sign to one dimension of every block. Inner products are unbiased;
    more copies lower their variance where a few rare words carry most of a file's weight (IDF squared makes that
    the common case: unseen-family MAP@R 0.765 with 1 copy, 0.820 with 8, at 2,048 dimensions), at O(K x copies)
    per file and no [2^bits, dim] matrix. Dimension and sign of id i in block c are splitmix64(i x copies + c):
    a pure function, so the fold is rebuilt identically wherever the model is loaded (only the IDF is saved)."""

    def __init__(self, bits: int, dim: int, copies: int = 8) -> None:
        super().__init__()
        if copies < 1 or dim % copies:
            raise ValueError(f"the fold's {dim} dimensions must be {copies} equal blocks")
        n = 1 << bits
        self.register_buffer("idf", torch.ones(n))
        self.register_buffer("fold_code", torch.from_numpy(fold_codes(n, dim, copies)), persistent=False)
        self.ids, self.dim, self.copies = n, dim, copies

    def fold_of(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dimension, sign) of each id (int64 [...]) in each block: int64 [..., copies] both (signs +-1)."""
        code = self.fold_code[idx].to(torch.int64)
        return code >> 1, 1 - 2 * (code & 1)

    def forward(self, ids: torch.Tensor, idf_power: float = 1.0) -> torch.Tensor:
        idx = ids.to(torch.int64)
        rows, slots = (idx < self.ids).nonzero(as_tuple=True)  # the ids, not the padding (most of a sample)
        real = idx[rows, slots]
        w = self.idf[real] ** idf_power
        norm2 = torch.zeros(len(ids), dtype=w.dtype, device=w.device).index_add_(0, rows, w * w)
        w = w / norm2.sqrt().clamp_min(1e-12)[rows] / self.copies ** 0.5
        dims, signs = self.fold_of(real)  # [n, copies]
        out = torch.zeros(len(ids) * self.dim, dtype=w.dtype, device=w.device)
        out.index_add_(0, (rows.unsqueeze(1) * self.dim + dims).flatten(), (w.unsqueeze(1) * signs).flatten())
        return out.view(len(ids), self.dim)


class HistogramEncoder(nn.Module):
    def __init__(self, dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, cfg.hidden, bias=cfg.norm == "none")
        self.norm = make_norm(cfg.norm, cfg.hidden, cfg, dims=1)
        self.out_dim = cfg.hidden

    def forward(self, fractions: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.linear(fractions.float().clamp_min(0).sqrt())))


class EmbeddingNet(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int, views: ViewSpecs | None = None,
                 token_id_bits: int = 20) -> None:
        super().__init__()
        names = list(views) if views else ["image"]
        self.encoders = nn.ModuleDict()
        self.fixed_only = nn.ModuleDict()  # sketch views without a learned encoder (fixed part only)
        self.id_sets = nn.ModuleDict()  # id-set views (token_ids) of the fixed part, filled below
        id_views = []  # id-set views: in the fixed part only, never learned
        for name in names:
            shape, dtype = views[name] if views else ((0, 0), np.dtype(np.uint8))
            if len(shape) == 1 and np.dtype(dtype) == np.uint32:
                id_views.append(name)
            elif cfg.learned_views and name not in cfg.learned_views:
                if len(shape) != 1 or np.dtype(dtype) != np.uint8 or cfg.sketch_skip != "concat":
                    raise ValueError(f"view {name!r} is not in model.learned_views: only a sketch view can feed "
                                     "the fixed part alone (model.sketch_skip=concat)")
                self.fixed_only[name] = SketchWeights(int(shape[0]), cfg)
            elif len(shape) == 2:  # a byteplot
                self.encoders[name] = ImageEncoder(cfg)
            elif len(shape) == 1 and np.dtype(dtype) == np.uint8:  # hashed counts
                self.encoders[name] = SketchEncoder(int(shape[0]), cfg)
            elif len(shape) == 1:  # fractions
                self.encoders[name] = HistogramEncoder(int(shape[0]), cfg)
            else:
                raise ValueError(f"no encoder for view {name!r} of shape {shape}")
        width = sum(e.out_dim for e in self.encoders.values())
        sketches = [n for n in names if isinstance(self._sketch(n), SketchWeights)]
        self.concat_dim = cfg.skip_dim if cfg.sketch_skip == "concat" and (sketches or id_views) else 0
        # the fixed part's views: those named in skip_views, or every sketch view when none of them is here
        # (so a config that only changes views.names keeps a fixed part)
        self.fixed_views = [n for n in sketches + id_views if n in cfg.skip_views] or sketches or id_views
        self.id_sets.update({n: TokenIdFold(token_id_bits, self.concat_dim, cfg.skip_fold_copies) for n in id_views
                             if self.concat_dim and n in self.fixed_views})
        self.skip_idf_power = cfg.skip_idf_power
        if self.concat_dim >= cfg.embedding_dim:
            raise ValueError("model.skip_dim must be smaller than model.embedding_dim")
        self.project = nn.Linear(width, cfg.embedding_dim - self.concat_dim)
        self.skip_weight = cfg.skip_weight
        if self.concat_dim:
            # "concat": a fixed random projection (Johnson-Lindenstrauss) of the sketches' TF-IDF vectors takes
            # skip_dim of the embedding's dimensions, so the training-free geometry is part of every embedding
            # (dense sketch views; an id-set view folds itself: TokenIdFold)
            g = torch.Generator().manual_seed(12)
            n_in = sum(self._sketch(n).in_features for n in self.fixed_views if n not in self.id_sets)
            if n_in:
                self.register_buffer("concat_projection", torch.randn(n_in, self.concat_dim, generator=g)
                                     / self.concat_dim ** 0.5)
        # optional linear paths from each sketch's TF-IDF vector straight to the embedding: the training-free
        # geometry stays in the embedding ("fixed": a random projection, Johnson-Lindenstrauss)
        self.skips = nn.ModuleDict()
        if cfg.sketch_skip in ("learned", "fixed"):
            for name, enc in self.encoders.items():
                if isinstance(enc, SketchEncoder):
                    skip = nn.Linear(enc.in_features, cfg.embedding_dim, bias=False)
                    nn.init.normal_(skip.weight, std=cfg.embedding_dim ** -0.5)
                    skip.weight.requires_grad_(cfg.sketch_skip == "learned")
                    self.skips[name] = skip
        self.class_directions = nn.Parameter(torch.randn(num_classes, cfg.embedding_dim) * 0.01)
        self.logit_scale = cfg.logit_scale
        self.gate_weight = cfg.gate_weight
        if self.concat_dim and cfg.open_set_gate and num_classes >= 2:
            # (low, high) confidence of the open-set gate, set after training (calibrate_gate); low == high: none yet
            self.register_buffer("gate_range", torch.zeros(2))

    @property
    def view_names(self) -> list[str]:
        return list(self.encoders) + list(self.fixed_only) + list(self.id_sets)

    def _sketch(self, name: str) -> nn.Module | None:
        """The module holding view `name`'s IDF weights (its encoder, or its fixed-part-only weights)."""
        for group in (self.encoders, self.fixed_only, self.id_sets):
            if name in group:
                return group[name]
        return None

    def _views(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        return inputs if isinstance(inputs, Mapping) else {"image": inputs}

    def embed(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{view name: tensor [B, ...]} (or the image tensor alone) -> unit-norm embeddings [B, D]."""
        views = self._views(inputs)
        feats = [enc(views[name]) for name, enc in self.encoders.items()]
        out = self.project(torch.cat(feats, dim=1))
        for name, skip in self.skips.items():
            out = out + skip(self.encoders[name].weighted(views[name]))
        if not self.concat_dim:
            return F.normalize(out, dim=1)
        w = self.skip_weight
        return torch.cat([w**0.5 * F.normalize(out, dim=1), (1 - w) ** 0.5 * self.fixed_part(views)], dim=1)

    def fixed_part(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training-free part (model.sketch_skip=concat), unit rows [B, skip_dim]: the IDF-weighted sketches'
        random projection plus the id sets' folds. It depends on the document frequencies only, never on
        training (embedlib.train.pseudo groups files by it before training)."""
        views = self._views(inputs)
        dense = [self._sketch(n).weighted(views[n], augment=False, idf_power=self.skip_idf_power)
                 for n in self.fixed_views if n not in self.id_sets]
        folded = [fold(views[n], self.skip_idf_power) for n, fold in self.id_sets.items()]
        return F.normalize(sum(([torch.cat(dense, dim=1) @ self.concat_projection] if dense else []) + folded), dim=1)

    def confidence(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per row, the cosine to the nearest family direction: how surely the classifier claims the file."""
        return (embeddings @ F.normalize(self.class_directions, dim=1).T).amax(dim=1)

    @property
    def gated(self) -> bool:
        return hasattr(self, "gate_range") and bool(self.gate_range[1] > self.gate_range[0])

    def calibrate_gate(self, high: float, width: float) -> None:
        """Set the open-set gate: full learned share from confidence `high` (a low quantile of held-out files of
        known families), none below high - width."""
        self.gate_range.copy_(torch.tensor([high - width, high]))

    def output(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The embedding that is stored and compared: `embed`, with the open-set gate (model.open_set_gate) once
        calibrated. Per file the learned part's share is gate_weight x clip((confidence - low) / (high - low), 0, 1):
        a file the classifier claims is compared mostly by what training learned, a file of a family it never saw
        by its fixed part (its words' exact weights) alone; and such a file's neighbours among known families
        count less than its peers, which is what an analyst of a new family wants first."""
        emb = self.embed(inputs)
        if not self.gated:
            return emb
        low, high = self.gate_range
        share = self.gate_weight * ((self.confidence(emb) - low) / (high - low)).clamp(0, 1)
        split = emb.shape[1] - self.concat_dim
        learned = emb[:, :split] / self.skip_weight ** 0.5
        fixed = emb[:, split:] / (1 - self.skip_weight) ** 0.5
        return torch.cat([share.sqrt().unsqueeze(1) * learned, (1 - share).sqrt().unsqueeze(1) * fixed], dim=1)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        """logit_scale x cosine to each family's direction."""
        return self.logit_scale * embeddings @ F.normalize(self.class_directions, dim=1).T

    def forward(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(inputs)
        return emb, self.classify(emb)

    def evidence_weights(self) -> dict[str, np.ndarray]:
        """Per sketch view, the per-bucket weight this model gives a distinct item (embedlib.views.evidence): its
        IDF, raised to model.skip_idf_power for the views of the fixed part (as `embed` weighs them there; the
        words of `tokens` when their ids, token_ids, are in it).
        Empty for a model without sketch views (the byteplot alone): no evidence to keep."""
        out = {}
        for name in self.view_names:
            module = self._sketch(name)
            if isinstance(module, SketchWeights):
                idf = module.idf.detach().double().cpu().numpy()
                # the words (tokens) also feed the fixed part when their ids (token_ids) do
                fixed = name in self.fixed_views or (name == "tokens" and "token_ids" in self.id_sets)
                power = self.skip_idf_power if self.concat_dim and fixed else 1.0
                out[name] = idf ** power
        return out

    def exact_word_weights(self) -> tuple[str, np.ndarray] | None:
        """(the id-set view, float64 per-id weight IDF ** skip_idf_power) when the fixed part is that view's fold
        alone, so that its unfolded vector is the whole fixed part (embedlib.model.exact); else None."""
        if not self.concat_dim or len(self.fixed_views) != 1 or self.fixed_views[0] not in self.id_sets:
            return None
        name = self.fixed_views[0]
        return name, self.id_sets[name].idf.detach().double().cpu().numpy() ** self.skip_idf_power

    @property
    def learned_dim(self) -> int:
        """How many leading numbers of an embedding are the learned part (all of them without a fixed part)."""
        return self.project.out_features

    def set_document_frequency(self, view: str, df: np.ndarray, n_docs: int) -> None:
        """IDF weights of a sketch or id-set view from the training files: log((1 + N) / (1 + df)) + 1 (sklearn's).
        A view this model does not weigh (token_ids outside the fixed part's model.skip_views) is left alone."""
        module = self._sketch(view)
        if module is None:
            return
        idf = np.log((1.0 + n_docs) / (1.0 + np.asarray(df, dtype=np.float64))) + 1.0
        module.idf.copy_(torch.as_tensor(idf, dtype=torch.float32))


ByteplotNet = EmbeddingNet  # the name of the image-only model in earlier versions


def build_model(cfg: ModelConfig, num_classes: int, views: ViewSpecs | None = None,
                token_id_bits: int = 20) -> EmbeddingNet:
    """The network for `views` (embedlib.views.view_specs(config)); None = the byteplot image only. token_id_bits:
    views.token_id_bits, the id space of a token_ids view."""
    return EmbeddingNet(cfg, num_classes, views, token_id_bits)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (or any wrapper with .module)."""
    return getattr(model, "module", model)


def batch_norms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_stages(model: nn.Module) -> list[list[str]]:
    """The BN layers in groups that can be recalibrated in one pass: stage k holds the k-th BN layer of every
    view's encoder. Encoders read only their own view, so no layer of a stage feeds another; a layer outside
    the encoders is a stage of its own, after them (nothing is assumed about what it reads)."""
    net = unwrap(model)
    names = [n for n, _ in batch_norms(net)]
    encoders = getattr(net, "encoders", None)
    per_encoder: list[list[str]] = []
    if isinstance(encoders, nn.ModuleDict):
        per_encoder = [[n for n in names if n.startswith(f"encoders.{view}.")] for view in encoders]
    inside = {n for layers in per_encoder for n in layers}
    depth = max((len(layers) for layers in per_encoder), default=0)
    stages = [[layers[k] for layers in per_encoder if k < len(layers)] for k in range(depth)]
    return stages + [[n] for n in names if n not in inside]
