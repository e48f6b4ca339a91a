"""The one place for settings: frozen dataclasses, loaded from TOML plus "section.key=value" overrides.

Unknown keys are errors (a typo in a config must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from typing import Any, Literal

from embedlib.errors import UserError

NormKind = Literal["batch", "batch-cumulative", "group", "none"]
# Every view embedlib.views computes (its settings are ViewsConfig; what each is: embedlib/views/__init__.py)
KNOWN_VIEWS: tuple[str, ...] = ("image", "strings", "idents", "bytehist", "tokens", "token_ids")
NORM_KINDS: tuple[str, ...] = ("batch", "batch-cumulative", "group", "none")


# ---- operational constants -----------------------------------------------------------------------------------
# Not settings a user tunes per run: how the jobs behave operationally, with the reason for each value.

DUCKDB_MEMORY = "512MB"  # the planning steps (match, plan, reconcile) spill to disk beyond this: flat at any scale
TASK_RETRIES = 3  # Ray retries a task after a lost worker or an error: every task is idempotent (deterministic names)
ACTOR_ATTEMPTS = 3  # actors a chunk may lose (and deaths in a row per actor) before plain CPU tasks take over
COORDINATOR_START_S = 300.0  # Ray Train's autoscaling coordinator may take this long to start (30 s seen under load)
LEASE_SECONDS = 600.0  # a root's lease holder silent this long is taken over (its own heartbeat gives up earlier)
HEARTBEAT_SECONDS = 30.0  # how often the lease holder renews
COMPACT_TARGET_MB = 128  # compacted files aim at this size: few files per query, small enough to stream
COMPACT_ROW_GROUP_MB = 8  # DuckDB scans a Parquet file's row groups in parallel: several per file keep cores busy
COMPACT_GRACE_SECONDS = 24 * 3600  # superseded files stay readable this long: longer than any query
# Storage protocols beyond the built-in ones, for every process of a job (the driver, Ray workers, which inherit
# the environment): "name=package.module.Class,..." (embedlib.files.sources.register_protocol). Benchmarks serve a
# synthetic object store this way (bench/synthfs.py); a local path is never taken for one of these.
EXTRA_PROTOCOLS_ENV = "EMBEDLIB_EXTRA_PROTOCOLS"


@dataclass(frozen=True)
class InputConfig:
    """How files are found and read. Reads are bounded: we never hold more than `max_bytes` of one file."""

    max_bytes: int = 16 * 1024 * 1024  # bytes kept per file for the byteplot; larger files are truncated
    max_hash_bytes: int = 2 * 1024 * 1024 * 1024  # files larger than this are refused (status too_large)
    follow_symlinks: bool = False  # a symlink's target is usually listed itself; following invites loops
    shard_size: int = 256  # files per output shard: the unit of work, of output files and of resume
    digests: bool = False  # also compute TLSH and ssdeep digests per file (columns tlsh, ssdeep)


@dataclass(frozen=True)
class RasterConfig:
    """Byteplot settings. Changing any of these changes every image: it is part of the model's identity."""

    size: int = 64  # output images are size x size uint8


@dataclass(frozen=True)
class ViewsConfig:
    """Which fixed-shape views of a file the model sees (embedlib.views) and their settings. Like the raster
    settings, these change every input: they are part of the model's identity."""

    # the measured recipe (studies/retrieval/RETRIEVAL.md): printable strings, identifier names and the words inside both;
    # "image" is the byteplot
    names: tuple[str, ...] = ("strings", "idents", "tokens", "token_ids")
    buckets: int = 4096  # hash buckets of the strings and idents sketches (a power of two)
    strings_min_len: int = 6  # printable runs shorter than this are not strings (GNU strings uses 4)
    idents_min_len: int = 4  # NUL-delimited identifier-like runs shorter than this are ignored
    tokens_min_len: int = 3  # words (inside strings and idents) shorter than this are not tokens
    token_id_bits: int = 20  # token_ids: a word's id is the top bits of its hash (2^20 ids; tokens keeps 12 bits)
    token_ids: int = 2048  # token_ids: the smallest this many distinct ids of a file are kept (its words' sample)


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 2176  # the learned part (embedding_dim - skip_dim) + the fixed part (skip_dim)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    norm: NormKind = "batch"
    bn_momentum: float = 0.1  # PyTorch convention: weight of the new batch (Keras 0.99 == PyTorch 0.01)
    group_norm_groups: int = 8
    logit_scale: float = 16.0  # cosine classifier temperature: keeps embeddings the thing being classified
    hidden: int = 512  # width of each sketch / histogram encoder's layer
    # none | learned | fixed: a linear path from each TF-IDF sketch added to the embedding; concat: a fixed
    # random projection of the TF-IDF vectors of the skip_views fills skip_dim of the embedding_dim dimensions (a
    # token_ids view: each word id's own IDF, folded by a count sketch; a dense sketch: a Gaussian projection)
    sketch_skip: str = "concat"
    skip_dim: int = 2048  # the fold of 2^20 ids keeps unseen MAP@R 0.820 of the exact 0.873 (4,096 buckets x 512: 0.646)
    skip_weight: float = 0.4  # concat: squared-norm share of the learned part (the fixed part has the rest)
    skip_fold_copies: int = 8  # concat, token_ids: dimensions each word id adds to (TokenIdFold); divides skip_dim
    sketch_dropout: float = 0.0  # training only: drop this fraction of a sketch's buckets (augmentation)
    # concat: the views in the fixed part (when none of them is in views.names: every sketch view)
    skip_views: tuple[str, ...] = ("token_ids",)
    skip_idf_power: float = 2.0  # concat: the fixed part weighs a bucket by idf ** this (rarer words count more)
    # concat, >= 2 families: the stored embedding's learned share follows the classifier's confidence (max cosine to
    # a family direction): gate_weight for a file at least as confident as 95% of held-out files, falling to 0 (the
    # fixed part alone) gate_width below that, so a file of a family never trained on is compared by its words
    # (45,191 Debian files, 86 unseen families, every query; width 0.15 vs 0.2: unseen MAP@R 0.832 vs 0.828, their
    # other programs P@1 0.952 vs 0.949, known unchanged 0.995 / 0.988; 14,087 files: within 0.001. A narrower gate
    # trades known for unseen: 0.75 / 0.1 gave unseen 0.844, their other programs 0.960, known P@1 0.994)
    open_set_gate: bool = True
    gate_weight: float = 0.6
    gate_width: float = 0.15
    # views with a learned encoder (empty = every view); a sketch view left out only feeds the fixed part
    learned_views: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # per worker: the global batch is num_workers x batch_size (128 by default)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    seed: int = 0
    min_family_size: int = 2  # families with fewer training files are not classes (still embedded)
    holdout_fraction: float = 0.2  # by sha256 hash: deterministic held-out split (embedlib.train.split)
    max_failures: int = 3  # Ray Train restarts from the last checkpoint this many times
    precise_bn: bool = True  # recompute BN statistics over the corpus before saving
    precise_bn_max_samples: int = 50_000  # a uniform sample (by sha256 hash) of the training files
    probe_samples: int = 1024  # training files used for the BN health report (by hash, ~this many)
    shuffle_buffer: int = 50_000  # rows each worker shuffles at once (full shuffle when its share fits)
    loss: str = "cosface"  # softmax | cosface | supcon | cosface+supcon (embedlib.train.loop.retrieval_loss)
    margin: float = 0.2  # CosFace additive cosine margin
    supcon_temperature: float = 0.1
    supcon_weight: float = 1.0  # weight of the supcon term in cosface+supcon
    sampler: str = "shuffle"  # shuffle (i.i.d. batches) | pk (train.pk_families x train.pk_files per batch)
    pk_families: int = 32
    pk_files: int = 4
    schedule: str = "onecycle"  # learning rate: onecycle (warm up, then anneal to 0) | constant
    unseen_family_fraction: float = 0.0  # families (by name hash, embedlib.train.split) kept out of training
    # every file trains, labelled or not (embedlib.train.loop.self_supervised_loss): InfoNCE between two random
    # sub-samples of each file's sketch items (train.ssl_keep of them), plus train.loss on the labelled rows. It is
    # what lets the learned part rank families it has no label for (studies/unseen_families: unseen MAP@R 0.777 ->
    # 0.825 beside the default fixed part) and what trains a corpus without labels at all. true | false (labelled
    # rows only, the recipe before issue 22; about half the training CPU) | auto (on when most corpus rows have no
    # family or there are fewer than 2 families)
    self_supervised: str = "true"
    ssl_weight: float = 1.0  # weight of the InfoNCE term (the supervised term weighs 1)
    ssl_keep: float = 0.5  # probability that a sketch bucket stays in a sub-sample
    ssl_temperature: float = 0.1
    # files without a family train as pseudo-families (embedlib.train.pseudo): groups of files that the fixed part
    # (IDF^2 words, before training) calls near, two files linked when each is among the other's
    # pseudo_neighbours nearest at cosine >= pseudo_min_cosine; a group with labelled files takes their family.
    # 14,087 Debian files, 24 families never trained on, no label at all, re-scored MAP@R: unseen 0.898 (InfoNCE
    # alone 0.752; the best training-free method 0.896), known 0.734 (InfoNCE alone 0.600; labelled 0.991).
    # auto (on when most rows have no family or there are fewer than 2 families) | true | false. The grouping is
    # brute force over at most pseudo_max_files files (a sample by sha256; the others train unlabelled)
    pseudo_families: str = "auto"
    pseudo_neighbours: int = 10
    pseudo_min_cosine: float = 0.4
    pseudo_max_files: int = 100_000
    # a pseudo-family is a group of near files, not a family: the open-set gate gives the learned part this share
    # at most in a model trained on them (model.gate_weight stays for labelled models). 0.6 ranked known families
    # at 0.567 and unseen at 0.924, 0.15 at 0.744 and 0.898 (5 one-way neighbours at cosine 0.2, the same files)
    pseudo_gate_weight: float = 0.15


@dataclass(frozen=True)
class HealthConfig:
    """When a checkpoint's eval mode is said to betray training (embedlib.train.health.verdict): running statistics
    far from the training data's, or eval mode materially worse than train mode on training files."""

    max_mean_shift_std: float = 0.5  # running mean vs the training data's, in the data's standard deviations
    max_abs_log_var_ratio: float = 0.7  # |log(running var / data var)|: 0.7 is a factor of 2
    max_accuracy_drop: float = 0.05  # eval-mode accuracy may be this much below train-mode accuracy ...
    accuracy_drop_z: float = 3.0  # ... or this many standard errors of the probe, whichever is larger


@dataclass(frozen=True)
class EmbedConfig:
    batch_size: int = 256
    # embedding actors fed by CPU tasks: 0 = automatic (one per GPU on a GPU cluster; on CPUs none, every core
    # reads, computes views and embeds its own chunks); n > 0 = n actors (one GPU each when they use GPUs)
    num_actors: int = 0
    # "auto": GPU actors if the cluster has GPUs when the job starts; "true": always ask for a GPU per actor
    # (an autoscaler then starts GPU nodes, even from zero); "false": CPU actors.
    use_gpu: str = "auto"
    gpu_wait_seconds: float = 600.0  # how long GPU actors may wait to be placed (an autoscaler adding GPU nodes)
    allow_unhealthy_model: bool = False  # refuse checkpoints whose BN health check failed unless set
    # evidence kept with each embedding (schema.EVIDENCE): the file's most distinctive strings, names and words
    # by the model's TF-IDF weight; 0 keeps none. 64 items cost about 540 bytes per row in Parquet (zstd; README).
    evidence_items: int = 64
    evidence_chars: int = 64  # an item's text is cut at this many characters (strings can be long)
    # the fixed part before its fold kept with each embedding (schema.WORDS): its word ids and weights, what a query
    # re-scores its nearest candidates with (embedlib.model.exact); 0 keeps none. The default keeps every id of the
    # default views.token_ids (527 a file on average on Debian files, about 4 KB a row); fewer keep a file's
    # heaviest only, which cost: 256 ranked unseen families 0.004 MAP@R below every id with a gated model (45,191
    # files), and below no re-scoring at all with an ungated or label-free one (14,087 files: 0.809 vs 0.813)
    exact_words: int = 2048


@dataclass(frozen=True)
class ServeConfig:
    """The analysts' page (`embedlib serve`, embedlib.query.serve): what it reads and renders per request. Not a
    section of Config (the page is not a job): its command-line options fill it."""

    host: str = "127.0.0.1"  # the address it binds unless --host: this machine only
    port: int = 8765
    max_upload_bytes: int = 32 * 1024 * 1024  # an uploaded file larger than this is refused (413), never stored
    neighbors: int = 10  # rows of a file's neighbours table
    shared_items: int = 8  # shared evidence items shown per neighbour
    family_files: int = 200  # files listed on a family's page
    errors: int = 200  # error rows listed on the errors page
    byteplot_size: int = 64  # byteplots are byteplot_size x byteplot_size pixels (shown enlarged)
    byteplot_max_bytes: int = 16 * 1024 * 1024  # a byteplot reads at most this much of a file


@dataclass(frozen=True)
class Config:
    input: InputConfig = field(default_factory=InputConfig)
    raster: RasterConfig = field(default_factory=RasterConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(UserError, ValueError):
    """A config file or override names an unknown key or a value of the wrong type."""


def _coerce(value: Any, like: Any, key: str) -> Any:
    if isinstance(like, bool):
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ConfigError(f"{key}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(like, tuple):
        items = json.loads(value) if isinstance(value, str) else value
        return tuple(type(like[0])(v) for v in items) if like else tuple(items)
    if isinstance(like, (int, float)) and isinstance(value, str):
        try:
            return type(like)(float(value)) if isinstance(like, int) and "e" in value.lower() else type(like)(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: expected {type(like).__name__}, got {value!r}") from exc
    if isinstance(like, (int, float)):
        return type(like)(value)
    if isinstance(like, str) and isinstance(value, bool):  # TOML `use_gpu = true` for a string setting
        return str(value).lower()
    return value


def _section_with(section: Any, updates: dict[str, Any], prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(section)}
    unknown = set(updates) - names
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(f'{prefix}.{k}' for k in unknown)}; known: {sorted(names)}")
    coerced = {k: _coerce(v, getattr(section, k), f"{prefix}.{k}") for k, v in updates.items()}
    return dataclasses.replace(section, **coerced)


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from nested {section: {key: value}}, validating every key."""
    cfg = base or Config()
    sections = {f.name for f in dataclasses.fields(Config)}
    unknown = set(data) - sections
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
    replaced = {name: _section_with(getattr(cfg, name), values, name) for name, values in data.items()}
    cfg = dataclasses.replace(cfg, **replaced)
    validate(cfg)
    return cfg


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, str]]:
    """["train.lr=1e-3", "model.norm=group"] -> {"train": {"lr": "1e-3"}, "model": {"norm": "group"}}."""
    nested: dict[str, dict[str, str]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        nested.setdefault(section, {})[name] = value.strip()
    return nested


def load(path: str | None = None, overrides: list[str] | None = None, base: Config | None = None) -> Config:
    """Config from an optional TOML file, then command-line overrides (which win)."""
    cfg = base or Config()
    if path:
        with open(path, "rb") as fh:
            cfg = from_dict(tomllib.load(fh), cfg)
    if overrides:
        cfg = from_dict(parse_overrides(overrides), cfg)
    return cfg


def validate(cfg: Config) -> None:
    if cfg.model.norm not in NORM_KINDS:
        raise ConfigError(f"model.norm must be one of {NORM_KINDS}, got {cfg.model.norm!r}")
    if cfg.raster.size < 16 or cfg.raster.size % 16:
        raise ConfigError(f"raster.size must be a multiple of 16 (four 2x poolings), got {cfg.raster.size}")
    if cfg.input.max_bytes <= 0 or cfg.input.max_hash_bytes < cfg.input.max_bytes:
        raise ConfigError("input.max_bytes must be positive and not above input.max_hash_bytes")
    unknown_views = set(cfg.views.names) - set(KNOWN_VIEWS)
    if unknown_views or not cfg.views.names or len(set(cfg.views.names)) != len(cfg.views.names):
        raise ConfigError(f"views.names must be distinct names from {KNOWN_VIEWS}, got {cfg.views.names!r}")
    b = cfg.views.buckets
    if b < 2 or b & (b - 1):
        raise ConfigError(f"views.buckets must be a power of two >= 2, got {b}")
    if not 8 <= cfg.views.token_id_bits <= 24 or cfg.views.token_ids < 1:
        raise ConfigError("views.token_id_bits must be in [8, 24] and views.token_ids >= 1")
    if cfg.views.strings_min_len < 1 or cfg.views.idents_min_len < 1 or cfg.views.tokens_min_len < 1:
        raise ConfigError("views.strings_min_len, views.idents_min_len and views.tokens_min_len must be >= 1")
    extra = set(cfg.model.learned_views) - set(cfg.views.names)
    if extra:
        raise ConfigError(f"model.learned_views names views not in views.names: {sorted(extra)}")
    if not 0 <= cfg.embed.evidence_items <= 1024 or not 8 <= cfg.embed.evidence_chars <= 1024:
        raise ConfigError("embed.evidence_items must be in [0, 1024] and embed.evidence_chars in [8, 1024]")
    if not 0 <= cfg.embed.exact_words <= 65536:
        raise ConfigError(f"embed.exact_words must be in [0, 65536], got {cfg.embed.exact_words}")
    if not 0 < cfg.model.skip_weight < 1 or not 0 <= cfg.model.gate_weight < 1 or cfg.model.gate_width <= 0:
        raise ConfigError("model.skip_weight must be in (0, 1), model.gate_weight in [0, 1) and model.gate_width > 0")
    if cfg.embed.use_gpu not in ("auto", "true", "false"):
        raise ConfigError(f"embed.use_gpu must be auto, true or false, got {cfg.embed.use_gpu!r}")
    if cfg.model.sketch_skip not in ("none", "learned", "fixed", "concat"):
        raise ConfigError(f"model.sketch_skip must be none, learned, fixed or concat, got {cfg.model.sketch_skip!r}")
    sketches = {"strings", "idents"} & set(cfg.views.names)
    if cfg.model.sketch_skip == "concat" and sketches and not 0 < cfg.model.skip_dim < cfg.model.embedding_dim:
        raise ConfigError(f"model.sketch_skip=concat needs 0 < model.skip_dim < model.embedding_dim (got "
                          f"{cfg.model.skip_dim} and {cfg.model.embedding_dim}): the fixed part of the embedding "
                          "is skip_dim of its embedding_dim dimensions")
    m = cfg.model
    if "token_ids" in cfg.views.names and (m.skip_fold_copies < 1 or m.skip_dim % m.skip_fold_copies):
        raise ConfigError(f"model.skip_fold_copies must divide model.skip_dim (got {m.skip_fold_copies} and "
                          f"{m.skip_dim})")
    if cfg.train.loss not in ("softmax", "cosface", "supcon", "cosface+supcon"):
        raise ConfigError(f"train.loss must be softmax, cosface, supcon or cosface+supcon, got {cfg.train.loss!r}")
    if cfg.train.sampler not in ("shuffle", "pk"):
        raise ConfigError(f"train.sampler must be shuffle or pk, got {cfg.train.sampler!r}")
    if not 0.0 <= cfg.train.unseen_family_fraction < 1.0:
        raise ConfigError("train.unseen_family_fraction must be in [0, 1)")
    if not 0.0 <= cfg.train.holdout_fraction < 1.0:
        raise ConfigError("train.holdout_fraction must be in [0, 1)")
    if cfg.train.self_supervised not in ("auto", "true", "false"):
        raise ConfigError(f"train.self_supervised must be auto, true or false, got {cfg.train.self_supervised!r}")
    if cfg.train.pseudo_families not in ("auto", "true", "false"):
        raise ConfigError(f"train.pseudo_families must be auto, true or false, got {cfg.train.pseudo_families!r}")
    if cfg.train.pseudo_neighbours < 1 or cfg.train.pseudo_max_files < 2 or not 0 <= cfg.train.pseudo_gate_weight < 1:
        raise ConfigError("train.pseudo_neighbours must be >= 1, train.pseudo_max_files >= 2 and "
                          "train.pseudo_gate_weight in [0, 1)")
    if not 0.0 < cfg.train.ssl_keep < 1.0 or cfg.train.ssl_temperature <= 0 or cfg.train.ssl_weight <= 0:
        raise ConfigError("train.ssl_keep must be in (0, 1), train.ssl_temperature and train.ssl_weight above 0")


# Settings that older releases wrote into checkpoints and that no longer exist: ignored when loading one.
RETIRED_KEYS = {"health": {"min_top1_agreement", "min_mean_cosine"}}


def config_from_json(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with to_dict() (e.g. from a checkpoint's meta.json)."""
    cleaned = {section: {k: v for k, v in values.items() if k not in RETIRED_KEYS.get(section, ())}
               for section, values in data.items()}
    return from_dict(cleaned)
