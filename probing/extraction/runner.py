"""Stage 1 end to end: `extract(config, workdir)` and its loop (task rows → pooled features).

`extract` builds the task table, loads the model, checks the prompts against
its context, creates (or resumes) the workdir of WORKSPACE.md
(`probing.extraction.output`), then runs the model over this rank's planned
forward batches (`probing.extraction.plan`), pooling every layer inside
forward hooks (`probing.extraction.forward`), and writes the features window
by window before marking rows durable in `arrays/written`. Restarting the same
command resumes; the windows make resumed and distributed runs bit-identical
to a single uninterrupted one. The workdir is locked for the run (one writer
per workdir, `probing.store.lock`); a second run on it stops at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np
import torch
from absl import logging

from probing.extraction import environment, output, preflight
from probing.extraction.answers import YesNoTokens, answer_tokens_for
from probing.extraction.batches import ForwardBatch, make_loader
from probing.extraction.forward import PooledForward, check_prefix_sharing_supported
from probing.extraction.inputs import input_digests
from probing.extraction.plan import WorkPlan, plan_work
from probing.extraction.pooling import validate_poolings
from probing.extraction.settings import ExtractSettings
from probing.progress import Progress
from probing.store import workdir as store
from probing.store.digests import digest_checkpoint
from probing.store.lock import LockError, WorkdirLock, check_job_member, job_id_from_env
from probing.store.remote import check_remote_reachable


def extract(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs stage 1 for one model × task × prompt; returns the manifest."""
    # Imported here so that `--help` and config errors do not pay for them.
    from probing.models import resolve_model_path

    settings = ExtractSettings.from_config(config.extract)
    # Everything that can fail in seconds fails here, before the task is built
    # (hard negatives can take minutes on real COCO) and the model loaded: a
    # local checkpoint path that does not exist, a hub id that cannot be had,
    # a bucket that does not answer, a workdir held by another run.
    model_path = resolve_model_path(config.model.name)
    preflight.check_hub_model(model_path, config.model.revision)
    # Digested now, so that a checkpoint without weights or with truncated ones
    # is one clear line before anything is built.
    checkpoint = digest_checkpoint(model_path, config.model.name, config.model.revision)
    check_remote_reachable(workdir)
    threads = torch.get_num_threads()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    rank, world = environment.rank_and_world()
    has_process_group = environment.init_process_group()
    lock = None
    try:
        lock = _lock_workdir(workdir, rank, has_process_group)
        run = _prepare(config, settings, workdir, checkpoint, rank, has_process_group)
        rejections = _run_batches(run, rank, world)
        return _finish(run, rejections, rank, has_process_group)
    finally:
        if lock is not None:
            lock.release()
        torch.set_num_threads(threads)
        if has_process_group:
            environment.close_process_group()


def _lock_workdir(workdir: str, rank: int, has_process_group: bool) -> WorkdirLock | None:
    """One writer per workdir: rank 0 holds the lock for the job, the other ranks check it.

    SLURM array tasks (ranks without a process group) start and end at
    different times, so only their rank 0 takes the lock and the others do
    not check it.
    """
    job = job_id_from_env()
    lock, error = None, None
    if rank == 0:
        try:
            lock = WorkdirLock(workdir, job_id=job).acquire()
        except LockError as e:
            error = e
    if has_process_group:
        # Every rank reaches this barrier, also when rank 0 was refused.
        environment.barrier()
        if rank != 0:
            check_job_member(workdir, job)
    if error is not None:
        raise error
    return lock


@dataclasses.dataclass
class _Run:
    """What the loop needs, once the task, the model and the workdir are ready."""

    settings: ExtractSettings
    wd: store.Workdir
    table: Any
    model: torch.nn.Module
    adapter: Any
    poolings: tuple[str, ...]
    token_counts: np.ndarray
    context: int | None  # the model's context length, if it states one
    manifest: dict[str, Any]
    answer_tokens: YesNoTokens | None  # the model's yes/no answer is recorded with these


def _prepare(
    config,
    settings: ExtractSettings,
    workdir: str,
    checkpoint: dict[str, Any],
    rank: int,
    has_process_group: bool,
) -> _Run:
    """Task, model and checks (all before any work), then a fresh or resumable workdir."""
    from probing.models import load_model
    from probing.tasks import build_task

    started = environment.utc_now()
    table = build_task(config.data, config.task, config.seed)
    poolings = validate_poolings(settings.poolings, with_image=table.with_image)
    model, processor, adapter = load_model(config.model)
    if settings.prefix_sharing:
        check_prefix_sharing_supported(adapter)
    token_counts = preflight.prompt_token_counts(adapter, table.examples, table.with_image)
    context = preflight.context_length(model)
    preflight.check_context(adapter, table, token_counts, context)
    wd = store.Workdir(workdir)
    digests = input_digests(table, checkpoint, model)
    answers = answer_tokens_for(table.task, processor.tokenizer)
    manifest = output.build_manifest(
        config, settings, poolings, table, adapter, processor, started, digests, answers
    )
    output.prepare_workdir(wd, config, settings, manifest, table, rank, has_process_group)
    return _Run(
        settings, wd, table, model, adapter, poolings, token_counts, context, manifest, answers
    )


def _run_batches(run: _Run, rank: int, world: int) -> list[dict[str, Any]]:
    """Computes and writes every unfinished window of this rank; returns the rejected rows."""
    num_rows = len(run.table.examples)
    done = output.done_rows(run.wd)
    plan = plan_work(num_rows, run.settings, rank, world, done, run.token_counts)
    _log_plan(run, plan, int(done.sum()), rank, world)
    device = next(run.model.parameters()).device
    loader = make_loader(plan.batches, run.table, run.adapter, run.settings, device)
    writer = output.WindowWriter(run.wd, run.manifest, plan.windows)
    progress = Progress("extract", plan.num_rows, unit="ex", every_s=run.settings.log_every_s)
    rejections: list[dict[str, Any]] = []
    topk = run.settings.first_token_topk
    engine = PooledForward(
        run.model, run.adapter, run.poolings, run.table.with_image, topk, run.answer_tokens
    )
    with engine:
        for batch in loader:
            rejections.extend(batch.rejected)
            result = _forward(run, engine, batch, device) if len(batch.rows) else None
            writer.add(batch.window, batch.rows, result, len(batch.rejected))
            tokens = result.tokens if result is not None else 0
            progress.update(len(batch.rows) + len(batch.rejected), tokens=tokens)
    progress.close()
    return rejections


def _forward(run: _Run, engine: PooledForward, batch: ForwardBatch, device: torch.device):
    """One forward batch through the model (prefix-shared if configured)."""
    preflight.check_batch_length(batch.inputs, batch.rows, run.context)
    inputs = run.adapter.to_model(batch.inputs)
    spans = batch.prompt_spans.to(device)
    if run.settings.prefix_sharing:
        prefix_inputs = run.adapter.to_model(batch.prefix_inputs)
        return engine.run_shared(inputs, prefix_inputs, batch.prefix_groups.to(device), spans)
    return engine.run(inputs, spans)


def _log_plan(run: _Run, plan: WorkPlan, already: int, rank: int, world: int) -> None:
    logging.info(
        "Extracting %d of %d rows (%d already written) in %d batches (%d windows), "
        "%d layers x %d dims, poolings %s -> %s (rank %d/%d)",
        plan.num_rows,
        len(run.table.examples),
        already,
        len(plan.batches),
        len(plan.windows),
        run.manifest["num_layers"],
        run.manifest["hidden_size"],
        ",".join(run.poolings),
        run.wd.location,
        rank,
        world,
    )


def _finish(run: _Run, rejections: list[dict[str, Any]], rank: int, has_process_group: bool):
    """Records rejections, then (one rank) marks the store complete if every row is done."""
    if rejections:
        logging.warning(
            "Rank %d: skipped %d rejected row(s) (config.extract.skip_rejected_images), e.g. "
            "row %d: %s",
            rank,
            len(rejections),
            rejections[0]["row"],
            rejections[0]["reason"],
        )
        output.append_rejections(run.wd, rank, rejections)
    if has_process_group:
        environment.barrier()
    # With a process group rank 0 finalises after everyone; without one
    # (SLURM arrays), whichever rank finds every row done does.
    if rank == 0 or not has_process_group:
        output.finalize(run.wd, run.manifest, run.adapter.tokenizer)
    complete = run.manifest["complete"]
    logging.info("Extraction %s: %s", "complete" if complete else "partial", run.wd.location)
    return run.manifest
