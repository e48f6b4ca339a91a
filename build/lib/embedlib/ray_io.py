"""The only module that builds Ray pipelines and trainers.

Files job (rasterize or embed):
  driver: input list -> shards -> one Arrow block per shard
  stage 1 (CPU tasks): read + hash + sniff + rasterize each file (rows.process_batch)
  stage 2 (actor pool, GPU when there is one; embed job only): Embedder on batches of images
  driver: gathers rows per shard; a complete shard is deduped and written (shards.ShardedOutput)
Writing from the driver keeps file names deterministic (a rerun resumes, never duplicates); the rows that
reach it are small (no file bytes; images or embeddings only).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from embedlib import rows, schema, shards
from embedlib.config import Config
from embedlib.sources import InputFile, iter_shards

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS / `address` when given, else start a local Ray (no dashboard: faster).

    A local Ray advertises at least 4 logical CPUs: on a 2-core machine, 2 training workers would otherwise
    hold every CPU and the Ray Data tasks that feed them could never be scheduled (a silent hang)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, 4), include_dashboard=False, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours (per file) says more; Ray's per-operator bars flood CI logs
    ctx.print_on_execution_start = False


def gpus_available() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


@dataclass
class JobSummary:
    files: int = 0
    shards_total: int = 0
    shards_skipped: int = 0  # already done by an earlier run
    written: int = 0  # rows in the primary table from this run
    bytes_read: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(self.statuses.values())

    def describe(self, what: str) -> str:
        mb = self.bytes_read / 1e6
        rate = self.files / self.seconds if self.seconds else 0.0
        statuses = ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items())) or "none"
        return (f"{what}: {self.files} files ({self.shards_skipped}/{self.shards_total} shards already done), "
                f"{self.written} {what} rows written, {mb:.1f} MB read in {self.seconds:.1f} s "
                f"({rate:.1f} files/s, {mb / self.seconds if self.seconds else 0:.1f} MB/s); not embedded: {statuses}")


class EmbedStage:
    """Actor: work rows (Arrow) -> rows with `embedding` (FixedSizeList) and `model_version`, no image."""

    def __init__(self, model_uri: str) -> None:
        from embedlib.embedder import Embedder

        self.embedder = Embedder(model_uri)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pc.equal(batch.column("status"), rows.OK).to_numpy(zero_copy_only=False)
        vectors = np.zeros((batch.num_rows, self.embedder.dim), dtype=np.float32)
        if ok.any():
            from embedlib.embedder import decode_images

            images = decode_images(batch.column("image").filter(pa.array(ok)).to_pylist(), self.embedder.size)
            vectors[ok] = self.embedder.embed_images(images)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.embedder.dim)
        out = batch.drop_columns(["image"])
        out = out.append_column("embedding", emb)
        return out.append_column("model_version", pa.array([self.embedder.version] * batch.num_rows, pa.string()))


def run_files_job(files: list[InputFile], output: str, cfg: Config, table: str, run_info: dict[str, Any],
                  model_uri: str | None = None, embedding_dim: int | None = None,
                  progress: bool = True) -> JobSummary:
    """Process `files` into `output`/<table>/ (+ errors/), resuming whatever an earlier run finished.

    table: "samples" (rasterize only) or "embeddings" (rasterize + embed with `model_uri`).
    """
    import ray

    out = shards.ShardedOutput(output, primary=table)
    files = out.start(run_info, files)
    done = out.done_shards()
    all_shards = list(iter_shards(files, cfg.input.shard_size))
    todo = [(sid, fs) for sid, fs in all_shards if sid not in done]
    summary = JobSummary(files=len(files), shards_total=len(all_shards), shards_skipped=len(all_shards) - len(todo))
    if not todo:
        return summary
    seen = out.written_sha256()
    expected = {sid: len(fs) for sid, fs in todo}
    target = schema.SAMPLES if table == "samples" else schema.embeddings_schema(embedding_dim or 0)

    blocks = [pa.table({"shard": [sid] * len(fs), "path": [f.path for f in fs], "family": [f.family for f in fs]},
                       schema=pa.schema([("shard", pa.int64()), ("path", pa.string()), ("family", pa.string())]))
              for sid, fs in todo]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(rows.process_batch, fn_kwargs={"cfg": cfg}, batch_size=16, batch_format="numpy",
                        num_cpus=1)
    if table == "embeddings":
        use_gpu = cfg.embed.use_gpu == "true" or (cfg.embed.use_gpu == "auto" and gpus_available() > 0)
        ds = ds.map_batches(EmbedStage, fn_constructor_kwargs={"model_uri": model_uri},
                            batch_size=cfg.embed.batch_size, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=cfg.embed.num_actors),
                            num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1)

    pending: dict[int, list[pa.Table]] = defaultdict(list)
    counts: dict[int, int] = defaultdict(int)
    started = time.perf_counter()
    bar = tqdm(total=sum(expected.values()), unit="file", desc=table, disable=not progress, mininterval=2)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for sid in pc.unique(batch.column("shard")).to_pylist():
            part = batch.filter(pc.equal(batch.column("shard"), sid))
            pending[sid].append(part)
            counts[sid] += part.num_rows
            bar.update(part.num_rows)
            if counts[sid] == expected[sid]:
                _finish_shard(out, sid, pa.concat_tables(pending.pop(sid), promote_options="default"), seen,
                              target, summary)
    bar.close()
    summary.seconds = time.perf_counter() - started
    missing = set(expected) - set(counts) | {s for s in counts if counts[s] != expected[s]}
    if missing:
        raise RuntimeError(f"shards {sorted(missing)[:10]} did not complete; run the job again to resume")
    return summary


def _finish_shard(out: shards.ShardedOutput, sid: int, work: pa.Table, seen: dict[str, str], target: pa.Schema,
                  summary: JobSummary) -> None:
    ok, failed = rows.split_rows(work)
    ok = ok.sort_by("path")
    firsts, dups = shards.dedupe(ok, seen)
    errors = pa.concat_tables([shards.errors_table(failed), dups]).sort_by("path")
    summary.bytes_read += int(pc.sum(ok.column("size_bytes")).as_py() or 0)
    summary.written += firsts.num_rows
    for status, n in shards.count_by_status(errors).items():
        summary.statuses[status] = summary.statuses.get(status, 0) + n
    out.write_shard(sid, {out.primary: schema.conform(firsts, target), "errors": errors})


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------

def read_samples(samples_root: str, columns: list[str] | None = None) -> pa.Table:
    """The whole samples table (for small metadata columns; images stream through Ray Data instead)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(samples_root.rstrip("/") + "/samples")
    return pq.read_table(path, filesystem=fs, columns=columns)


def samples_dataset(samples_root: str, sha_to_label: dict[str, int]):
    """Ray dataset of {image, label} for the given sha256s (those not in the map are dropped)."""
    import ray

    def label(batch: pa.Table) -> pa.Table:
        labels = [sha_to_label.get(s, -1) for s in batch.column("sha256").to_pylist()]
        batch = batch.append_column("label", pa.array(labels, pa.int64()))
        return batch.filter(pc.greater_equal(batch.column("label"), 0)).select(["image", "label"])

    ds = ray.data.read_parquet(samples_root.rstrip("/") + "/samples").select_columns(["sha256", "image"])
    return ds.map_batches(label, batch_format="pyarrow", batch_size=4096)


def _uneven_data_config():
    """A DataConfig that shards with equal=False: no row is silently dropped to even the split (Ray's default
    streaming_split(equal=True) drops the remainder every epoch); DDP join absorbs the uneven tail."""
    from ray.train import DataConfig

    class UnevenDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                if name == "train":
                    for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                        output[i][name] = split
                else:
                    for i in range(world_size):
                        output[i][name] = ds.iterator()
            return output

    return UnevenDataConfig()


def train_with_ray(cfg: Config, samples_root: str, train_labels: dict[str, int], probe_labels: dict[str, int],
                   families: list[str], storage: str, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run Ray Train; returns (final model state dict, per-epoch metrics of rank 0). Resumes `name` under
    `storage` when a previous run of the same name left checkpoints."""
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    from embedlib.train_loop import ray_worker

    # Shuffled every epoch (BN needs mixed-family batches), then cut into enough blocks that the uneven
    # streaming split hands every worker a share (whole blocks go to whichever worker asks next).
    train_ds = (samples_dataset(samples_root, train_labels).random_shuffle(seed=None)
                .repartition(max(8, cfg.train.num_workers * 8)))
    # The probe is shuffled too: family-sorted batches make train-mode (batch-statistics) accuracy meaningless.
    probe_ds = samples_dataset(samples_root, probe_labels).random_shuffle(seed=0)
    trainer = TorchTrainer(
        train_loop_per_worker=ray_worker,
        train_loop_config={"config": cfg.to_dict(), "families": families},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                              resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": train_ds, "probe": probe_ds},
        dataset_config=_uneven_data_config(),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
    return state["model"], state["history"]
