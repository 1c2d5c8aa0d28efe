"""The training loop: AdamW, warmup-then-constant lr, two EMAs, bf16 autocast, gradient
accumulation, DDP/FSDP under torchrun, torch.compile, periodic atomic checkpoints, exact resume.

One step reads top to bottom in ``train_step``: data -> semantic targets -> the objective
(noising and CFG drops -> model -> each loss term; vco.train.objective) -> backward -> optimizer
and EMAs. Randomness is a pure function of (seed, step, sample position, rank): every sample's
flip, CFG drops, t and noise come from its own stream (vco.diffusion.randomness), and the global
RNG (used by dropout) is reseeded each step per rank. So a resumed run equals an uninterrupted one
without stored RNG state, and N ranks equal one process accumulating N micro-batches.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import Config, to_dict, to_yaml
from ..data import (BatchSchedule, ClassBalancedSchedule, DataError, StepBatchSampler, build_dataset,
                    to_model_range)
from ..device import autocast, resolve_device, resolve_precision, reuse_freed_memory
from ..diffusion.randomness import SampleStreams, sample_seed
from ..models import build_model
from ..files import atomic_write_text, remove_stale_temporaries
from ..resolve import resolve_config
from . import distributed
from .checkpoint import (CheckpointError, load_optimizer_tensors, load_tensors, load_weights,
                         optimizer_tensors, read_meta, save_checkpoint, state_mismatch)
from .ema import EMA
from .loggers import check_loggers
from .lr import check_schedule, lr_at
from .metrics import MetricsLog
from .objective import build_objective
from .posthoc_ema import SNAPSHOT_DIR, PowerEMA, save_snapshot
from .progress import TrainProgress

log = logging.getLogger("vco.train")
CONFIG_HISTORY = "config_history"      # a resumed run's earlier config.yaml files, by last step


def param_groups(params: dict[str, torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Biases and 1-D tensors (norm weights) never get weight decay."""
    decay, no_decay = [], []
    for name, p in params.items():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False):
        self.cfg, self.run_dir = resolve_config(cfg), Path(run_dir)
        tc = self.cfg.train
        self.world, self.device = distributed.setup(resolve_device(tc.device))
        check_loggers(tc.loggers)                  # a missing package stops before any work
        check_schedule(tc.lr_schedule)             # so does an unknown lr schedule
        self.precision = resolve_precision(tc.precision, self.device)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormals make CPU kernels crawl
            reuse_freed_memory()            # no page faults on each step's large blocks
        torch.manual_seed(tc.seed)
        self.dataset = self._dataset()
        self.model = build_model(self.cfg.model, self.device)
        self.semantic = self._semantic_targets()
        self.objective = build_objective(self.cfg, self.model, *self._semantic_parts())
        self.sharded = self._parallel_kind() == "fsdp"
        self.fsdp_roots = []                       # what FSDP wraps: the model, trainable loss terms
        if self.sharded:                           # before the optimizer and EMAs see the parameters
            distributed.shard(self.model)
            self.fsdp_roots = [self.model] + [t for t in self.objective.terms.values()
                                              if any(p.requires_grad for p in t.parameters())]
            for term in self.fsdp_roots[1:]:
                distributed.shard_module(term)
        # The global batch is split into micro-batches of batch_size: grad_accum per rank.
        self.chunks = tc.grad_accum * self.world.size
        self.global_batch = tc.batch_size * self.chunks
        self.base_lr = tc.blr * self.global_batch / 256
        self.schedule = self._schedule()
        # What the optimizer trains: the model, plus a loss term's own head (REPA's projector),
        # stored under "aux/" like the checkpoints have always stored it.
        self.aux_params = {n.split(".", 1)[1]: p for n, p in self.objective.trainable_terms().items()}
        self.params = dict(self.model.named_parameters())
        self.params.update({f"aux.{n}": p for n, p in self.aux_params.items()})
        self.optimizer = self._optimizer()
        self.emas = [EMA(self.model, d, tc.ema_warmup) for d in tc.ema_decays]
        # post-hoc EMA: power-function EMAs whose snapshots `vco ema` recombines into any width
        self.power_emas = [PowerEMA(self.model, w) for w in tc.posthoc_ema_widths] if tc.posthoc_ema else []
        if tc.compile:                             # in place: parameter names stay unchanged
            self.model.compile(backend=tc.compile_backend)
        self.forward = self._wrapped_objective()
        self.step = 0
        self.skipped, self.bad_in_row = 0, 0       # non-finite steps: in total, consecutively
        self.grad_norm = float("nan")              # of the last step (logged)
        if resume:
            self.load()

    # ------------------------------------------------------------------ setup
    def _dataset(self):
        cfg = self.cfg
        dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
        if len(dataset.class_names) != cfg.model.num_classes:
            raise DataError(f"the data has {len(dataset.class_names)} classes but "
                            f"model.num_classes is {cfg.model.num_classes}: pass "
                            f"--set num_classes={len(dataset.class_names)}")
        return dataset

    def _semantic_targets(self):
        """A co-denoising run's semantic targets; the run's config records the RMS ratio they
        measured, so that sampling rebuilds the same calibration."""
        if not self.cfg.model.co_denoising:
            return None
        from ..semantic.stream import SemanticTargets
        targets = SemanticTargets(self.cfg, self.dataset, self.device, self.run_dir, self.world)
        if self.precision == "bf16":
            # Frozen weights are cast once here; under autocast they would be re-cast on every
            # call (autocast caches only the casts of weights that train).
            targets.encoder.to(torch.bfloat16)
        semantic = dataclasses.replace(self.cfg.semantic, scale=targets.ratio)
        self.cfg = dataclasses.replace(self.cfg, semantic=semantic)
        return targets

    def _semantic_parts(self) -> tuple:
        """(the frozen encoder the feature-space losses share, the semantic stream's clock)."""
        if self.semantic is None:
            return ()
        return self.semantic.encoder, self.semantic.stream_time

    def _parallel_kind(self) -> str:
        kind = self.cfg.train.parallel
        if kind not in ("ddp", "fsdp"):
            raise ValueError(f"train.parallel must be ddp or fsdp, got '{kind}'")
        return kind if self.world.size > 1 else "single"

    def _optimizer(self) -> torch.optim.AdamW:
        """AdamW; the fused kernel (one pass over each tensor, several times faster than the
        per-tensor loop on CPU and GPU) unless FSDP's sharded DTensors need the foreach path.
        The implementations agree to fp32 rounding."""
        tc = self.cfg.train
        kinds = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
        kind = ("foreach" if self.sharded else "fused") if tc.adamw == "auto" else tc.adamw
        if kind not in kinds:
            raise ValueError(f"train.adamw must be auto, fused, foreach or loop, got '{tc.adamw}'")
        return torch.optim.AdamW(param_groups(self.params, tc.weight_decay), lr=self.base_lr,
                                 betas=tuple(tc.betas), **kinds[kind])

    def _schedule(self):
        cfg, tc = self.cfg, self.cfg.train
        if cfg.data.classes_per_batch > 0:
            return ClassBalancedSchedule(self.dataset.labels, self.global_batch, self.chunks,
                                         cfg.data.classes_per_batch, tc.seed)
        return BatchSchedule(len(self.dataset), self.global_batch, tc.seed)

    def _wrapped_objective(self):
        """The objective as the step calls it: wrapped in DDP (all its trainable parameters, the
        loss terms' included) when replicas run, as it is otherwise."""
        if self._parallel_kind() != "ddp":
            return self.objective
        from torch.nn.parallel import DistributedDataParallel
        # a learned null token (input dropout) takes part only in steps where a sample drops
        unused = any(p.requires_grad for p in self.model.unconditional.parameters())
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.objective, device_ids=ids, find_unused_parameters=unused)

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        names = {p: n for n, p in self.params.items()}
        t = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        t.update({f"aux/{k}": v.detach() for k, v in self.aux_params.items()})
        for i, ema in enumerate(self.emas, 1):
            t.update({f"ema{i}/{k}": v for k, v in ema.state_dict().items()})
        for i, ema in enumerate(self.power_emas, 1):
            t.update({f"power_ema{i}/{k}": v for k, v in ema.state_dict().items()})
        t.update(optimizer_tensors(self.optimizer, names))
        # FSDP: every rank takes part in gathering the shards
        return {k: distributed.full_tensor(v) for k, v in t.items()}

    def save(self) -> None:
        tensors = self.state_tensors() if self.sharded or self.world.is_main else None
        if not self.world.is_main:
            return
        meta = {"step": self.step, "skipped_steps": self.skipped, "config": to_dict(self.cfg),
                "class_names": list(self.dataset.class_names),
                "ema_decays": list(self.cfg.train.ema_decays),
                "world_size": self.world.size, "global_batch": self.global_batch}
        save_checkpoint(self.run_dir, tensors, meta)

    def load(self) -> None:
        meta = read_meta(self.run_dir)
        tensors = load_tensors(self.run_dir)
        section = lambda p: {k[len(p) + 1:]: v for k, v in tensors.items() if k.startswith(p + "/")}
        own = self.model.state_dict()
        # FSDP: every full tensor is cut to this rank's shard of the tensor it replaces
        like = lambda d, refs: {k: distributed.shaped_like(v, refs[k]) if k in refs else v for k, v in d.items()}
        load_weights(self.model, like(section("model"), own), source=str(self.run_dir))
        for i, ema in enumerate(self.emas, 1):
            ema.load_state_dict(like(section(f"ema{i}"), ema.shadow))
        for i, ema in enumerate(self.power_emas, 1):
            if not section(f"power_ema{i}"):
                raise CheckpointError(f"{self.run_dir} was trained without train.posthoc_ema: its "
                                      f"power-function EMAs cannot start mid-run; resume without it")
            ema.load_state_dict(like(section(f"power_ema{i}"), ema.shadow))
        aux = section("aux")
        mismatch = state_mismatch({k: distributed.full_tensor(p) for k, p in self.aux_params.items()}, aux)
        if mismatch:
            raise CheckpointError(f"the auxiliary-loss weights of {self.run_dir} do not fit "
                                  f"semantic.aux_loss={self.cfg.semantic.aux_loss['name']} ("
                                  + "; ".join(mismatch) + "): resume with the run's own config")
        with torch.no_grad():
            for k, p in self.aux_params.items():
                p.copy_(distributed.shaped_like(aux[k], p))
        optim = {k: v if k.endswith("/step") or k.rsplit("/", 1)[0] not in self.params
                 else distributed.shaped_like(v, self.params[k.rsplit("/", 1)[0]])
                 for k, v in section("optim").items()}
        load_optimizer_tensors(self.optimizer, self.params, optim)
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped_steps", 0))
        before = meta.get("global_batch")
        if before is not None and before != self.global_batch and self.world.is_main:
            log.warning("resuming %s with a global batch of %d (%d process(es) x %d x %d accumulation) "
                        "where it trained with %d (%s process(es)): the lr follows the batch (lr = blr x "
                        "batch / 256) and the data order changes", self.run_dir, self.global_batch,
                        self.world.size, self.cfg.train.batch_size, self.cfg.train.grad_accum, before,
                        meta.get("world_size", "?"))

    # ------------------------------------------------------------------ training
    def loader(self, start: int, end: int) -> DataLoader:
        tc = self.cfg.train
        sampler = StepBatchSampler(self.schedule, start, end, tc.grad_accum, self.world.rank, self.world.size)
        # Its own generator: a DataLoader otherwise draws a seed from the global RNG, which
        # would make a resumed run diverge from an uninterrupted one.
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.data.num_workers,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator())

    def indices(self, micro: int) -> list[int]:
        """Dataset indices of this rank's micro-batch ``micro`` of the current step (the loader's order)."""
        return self.schedule.micro_batch(self.step, micro, self.cfg.train.grad_accum, self.world.rank,
                                         self.world.size)

    def streams(self, micro: int) -> SampleStreams:
        """The random streams of this rank's micro-batch: keyed by position in the global batch."""
        tc = self.cfg.train
        chunk = micro * self.world.size + self.world.rank     # the schedule's layout
        positions = range(chunk * tc.batch_size, (chunk + 1) * tc.batch_size)
        return SampleStreams(tc.seed, self.step, list(positions), self.device)

    def train_step(self, micro_batches) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns averaged loss terms."""
        tc = self.cfg.train
        self.set_lr()
        self.objective.train()
        torch.manual_seed(sample_seed(tc.seed, self.step, -1 - self.world.rank))   # dropout masks
        totals: dict[str, float] = {}
        for micro, (images, labels) in enumerate(micro_batches):
            rng = self.streams(micro)
            x, y, flipped = self.batch(images, labels, rng)                 # (B, C, H, W) in [-1, 1]
            last = micro == tc.grad_accum - 1                               # gradients sync here only
            with self.gradient_sync(last), autocast(self.precision, self.device):
                f, x_pooled = (None, None) if self.semantic is None else \
                    self.semantic.step_inputs(x, self.indices(micro), flipped)  # (B, N, C_s), (B, C')
                terms = self.forward(x, y, f, rng, x_pooled)   # noising, drops, model, each loss term
                (terms["loss"] / tc.grad_accum).backward()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / tc.grad_accum
        totals = dict(zip(totals, self.world.mean(list(totals.values()), self.device)))
        self.update(math.isfinite(totals["loss"]))
        return totals

    def set_lr(self) -> None:
        tc = self.cfg.train
        lr = lr_at(self.step, self.base_lr, tc.warmup_steps, tc.lr_schedule, tc.lr_decay_steps or tc.steps,
                   tc.lr_final_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def batch(self, images: torch.Tensor, labels: torch.Tensor, rng):
        """uint8 images and labels of a micro-batch -> (x in [-1, 1], y, which were flipped)."""
        x = to_model_range(images, self.device)          # decoding stays uint8 until here
        flip = torch.zeros(x.shape[0], dtype=torch.bool, device=self.device)
        if self.cfg.data.hflip:
            flip = rng.rand(x.shape[0]) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, labels.to(self.device), flip

    def gradient_sync(self, last: bool):
        """Replicas all-reduce (FSDP reduce-scatters) gradients on the last micro-batch only."""
        if self.sharded:
            for module in self.fsdp_roots:        # each applies it to its sharded children
                module.set_requires_gradient_sync(last)
            return nullcontext()
        return nullcontext() if last or self.forward is self.objective else self.forward.no_sync()

    def update(self, loss_finite: bool) -> None:
        """The optimizer step and both EMAs; a non-finite loss or gradient skips the update
        (weights, EMAs and optimizer state stay as they were) instead of poisoning the run."""
        grad_norm = distributed.full_tensor(
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), float("inf")))
        self.grad_norm = float(grad_norm)          # the total L2 norm before the update
        if loss_finite and bool(torch.isfinite(grad_norm)):
            self.optimizer.step()
            for ema in self.emas:
                ema.update(self.model, self.step)
            self.bad_in_row = 0
        else:
            self.skipped += 1
            self.bad_in_row += 1
            log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)",
                        self.step, self.bad_in_row)
        # every step, skipped or not (the weights then stay as they were): a power EMA's clock is
        # the step count, so that its profile stays the exact one its snapshots are solved with
        for ema in self.power_emas:
            ema.update(self.model, self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def train(self, progress: bool = True, on_step=None) -> dict:
        """Train to train.steps (or the time limit). ``on_step(trainer)`` runs after every step and
        may move the end (the demo re-plans its schedule so)."""
        tc = self.cfg.train
        main = self.world.is_main                  # rank 0 alone writes files and logs
        if main:
            self._prepare_run_dir()
        metrics = MetricsLog(self.run_dir, self.cfg, enabled=main)
        start, window = self.step, time.time()
        last_loss = float("nan")
        loader_end = tc.steps
        it = iter(self.loader(self.step, loader_end))
        shown = TrainProgress(tc.time_limit_min, tc.steps, self.step, enabled=progress and main)
        stopped_early, step_s = False, 0.0
        while self.step < tc.steps:
            began = time.time()
            terms = self.train_step([next(it) for _ in range(tc.grad_accum)])
            step_s = time.time() - began
            last_loss = terms["loss"]
            shown.advance(self.step, terms["loss"], self.optimizer.param_groups[0]["lr"])
            if on_step is not None:
                on_step(self)
                if tc.steps > loader_end:          # the end moved past the loader's last batch
                    loader_end = tc.steps
                    it = iter(self.loader(self.step, loader_end))
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                now = time.time()
                rate = tc.log_every * self.global_batch / max(now - window, 1e-9)
                window = now
                metrics.write(self.step, {"skipped_steps": self.skipped,
                                          **{k: round(v, 6) for k, v in terms.items()},
                                          "lr": self.optimizer.param_groups[0]["lr"],
                                          "grad_norm": round(self.grad_norm, 6),
                                          "img_per_s": round(rate, 2), "elapsed_s": round(shown.elapsed(), 2)})
            if self.bad_in_row >= tc.max_bad_steps:
                raise FloatingPointError(
                    f"{self.bad_in_row} consecutive steps had a non-finite loss or gradient "
                    f"(last at step {self.step}); stopped. The last good checkpoint in "
                    f"{self.run_dir} is intact: lower the lr or check the data, then --resume")
            # post-hoc EMA snapshots (a resumed run rewrites a crashed one's later ones identically)
            if self.power_emas and self.step % tc.posthoc_ema_every == 0:
                save_snapshot(self.run_dir, self.step, self.power_emas, distributed.full_tensor, self.world.is_main)
            if self.step % tc.ckpt_every == 0 and self.bad_in_row == 0:
                self.save()                        # never checkpoint in the middle of a bad streak
            if self.out_of_time(shown, step_s):
                stopped_early = self.step < tc.steps
                break
        shown.close()
        self.save()
        metrics.close()
        return {"steps": self.step - start, "final_step": self.step, "seconds": shown.elapsed(),
                "stopped_by_time_limit": stopped_early, "last_loss": last_loss}

    def _prepare_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create the run folder {self.run_dir}: {e.strerror}; "
                                  f"choose another --out") from None
        remove_stale_temporaries(self.run_dir)
        if (self.run_dir / SNAPSHOT_DIR).is_dir():
            remove_stale_temporaries(self.run_dir / SNAPSHOT_DIR)
        self.record_config()

    def record_config(self) -> None:
        """Write the config to config.yaml; a run whose config changed (resumed with other
        settings, or re-planned mid-run) keeps the one it trained with until now beside it."""
        path, new = self.run_dir / "config.yaml", to_yaml(self.cfg)
        if path.is_file() and path.read_text() != new:
            atomic_write_text(self.run_dir / CONFIG_HISTORY / f"until-step-{self.step:07d}.yaml", path.read_text())
        atomic_write_text(path, new)

    def out_of_time(self, shown: TrainProgress, step_s: float) -> bool:
        """Another step would end past train.time_limit_min (so a time-limited run ends inside its
        limit); decided on every rank alike, so that all stop at the same step."""
        return shown.limit > 0 and self.world.mean([float(shown.late(step_s))], self.device)[0] > 0
