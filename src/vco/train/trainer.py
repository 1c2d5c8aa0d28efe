"""The training loop: AdamW, warmup-then-constant lr, two EMAs, bf16 autocast, gradient
accumulation, DDP under torchrun, torch.compile, periodic atomic checkpoints, exact resume,
JSONL + TensorBoard metrics.

Randomness is a pure function of (seed, step, sample position, rank): every sample's flip, CFG
drops, t and noise come from its own stream (vco.diffusion.randomness), and the global RNG (used
by dropout) is reseeded each step per rank. So a resumed run equals an uninterrupted one without
stored RNG state, and N ranks equal one process accumulating N micro-batches.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import Config, from_dict, save_config, to_dict
from ..data import BatchSchedule, ClassBalancedSchedule, DataError, StepBatchSampler, build_dataset
from ..diffusion import training_loss
from ..diffusion.randomness import SampleStreams, sample_seed
from ..models import build_model
from . import distributed
from .checkpoint import (CheckpointError, load_optimizer_tensors, load_tensors, load_weights,
                         optimizer_tensors, read_meta, remove_stale_temporaries, save_checkpoint)
from .ema import EMA

log = logging.getLogger("vco.train")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); without it bf16 is emulated and
    far slower than fp32 (measured 50x on an AVX2-only EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, got '{precision}'")
    if precision == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    return precision


def lr_at(step: int, base_lr: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then constant (JiT uses no decay)."""
    return base_lr * min(1.0, (step + 1) / warmup) if warmup > 0 else base_lr


def param_groups(params: dict[str, torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Biases and 1-D tensors (norm weights) never get weight decay."""
    decay, no_decay = [], []
    for name, p in params.items():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1] on the device (decoding stays uint8 until here)."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        tc = cfg.train
        self.world, self.device = distributed.setup(resolve_device(tc.device))
        self.precision = resolve_precision(tc.precision, self.device)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # denormals make CPU kernels crawl
        torch.manual_seed(tc.seed)
        self.dataset = build_dataset(cfg.data, cfg.model.image_size, cfg.model.num_classes)
        if len(self.dataset.class_names) != cfg.model.num_classes:
            raise DataError(f"the data has {len(self.dataset.class_names)} classes but "
                            f"model.num_classes is {cfg.model.num_classes}: pass "
                            f"--set num_classes={len(self.dataset.class_names)}")
        self.model = build_model(cfg.model, self.device)
        if tc.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"train.parallel must be ddp or fsdp, got '{tc.parallel}'")
        self.sharded = tc.parallel == "fsdp" and self.world.size > 1
        if self.sharded:
            distributed.shard(self.model)          # before the optimizer and EMAs see the parameters
        # The global batch is split into micro-batches of batch_size: grad_accum per rank.
        self.chunks = tc.grad_accum * self.world.size
        self.global_batch = tc.batch_size * self.chunks
        self.base_lr = tc.blr * self.global_batch / 256
        if cfg.data.classes_per_batch > 0:
            self.schedule = ClassBalancedSchedule(self.dataset.labels, self.global_batch, self.chunks,
                                                  cfg.data.classes_per_batch, tc.seed)
        else:
            self.schedule = BatchSchedule(len(self.dataset), self.global_batch, tc.seed)
        self.semantic = None
        if len(self.model.stream_shapes(1)) > 1:     # a co-denoising model: semantic targets
            from ..semantic.stream import SemanticStream
            self.semantic = SemanticStream(cfg, self.dataset, self.device, self.run_dir, self.world)
        # What the optimizer trains: the model, plus an auxiliary loss's own head (REPA's projector).
        aux = self.semantic.aux if self.semantic is not None else None
        self.aux_params = {n: p for n, p in aux.named_parameters() if p.requires_grad} if aux is not None else {}
        self.params = dict(self.model.named_parameters())
        self.params.update({f"aux.{n}": p for n, p in self.aux_params.items()})
        self.optimizer = torch.optim.AdamW(param_groups(self.params, tc.weight_decay), lr=self.base_lr,
                                           betas=tuple(tc.betas))
        self.emas = [EMA(self.model, d) for d in tc.ema_decays]
        if tc.compile:
            self.model.compile()                   # in place: parameter names stay unchanged
        self.net = self.model
        if self.world.size > 1 and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel
            # a learned null token is unused in steps where no sample drops its semantics
            unused = any(n.startswith("unconditional.") for n in dict(self.model.named_parameters()))
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                               else None, find_unused_parameters=unused)
        self.step = 0
        self.skipped, self.bad_in_row = 0, 0       # non-finite steps: in total, consecutively
        if resume:
            self.load()

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        names = {p: n for n, p in self.params.items()}
        t = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        t.update({f"aux/{k}": v.detach() for k, v in self.aux_params.items()})
        for i, ema in enumerate(self.emas, 1):
            t.update({f"ema{i}/{k}": v for k, v in ema.state_dict().items()})
        t.update(optimizer_tensors(self.optimizer, names))
        # FSDP: every rank takes part in gathering the shards
        return {k: distributed.full_tensor(v) for k, v in t.items()}

    def save(self) -> None:
        tensors = self.state_tensors() if self.sharded or self.world.is_main else None
        if not self.world.is_main:
            return
        meta = {"step": self.step, "skipped_steps": self.skipped, "config": to_dict(self.cfg),
                "class_names": list(self.dataset.class_names),
                "ema_decays": list(self.cfg.train.ema_decays)}
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
        aux = section("aux")
        if set(aux) != set(self.aux_params):
            raise CheckpointError(f"{self.run_dir} holds auxiliary-loss weights {sorted(aux) or 'none'} but "
                                  f"semantic.aux_loss={self.cfg.semantic.aux_loss} needs "
                                  f"{sorted(self.aux_params) or 'none'}: resume with the run's own config")
        with torch.no_grad():
            for k, p in self.aux_params.items():
                p.copy_(aux[k])
        optim = {k: v if k.endswith("/step") or k.rsplit("/", 1)[0] not in self.params
                 else distributed.shaped_like(v, self.params[k.rsplit("/", 1)[0]])
                 for k, v in section("optim").items()}
        load_optimizer_tensors(self.optimizer, self.params, optim)
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped_steps", 0))

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
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.base_lr, tc.warmup_steps)
        self.model.train()
        torch.manual_seed(sample_seed(tc.seed, self.step, -1 - self.world.rank))   # dropout masks
        totals: dict[str, float] = {}
        for micro, (images, labels) in enumerate(micro_batches):
            x = to_model_input(images, self.device)
            y = labels.to(self.device)
            rng = self.streams(micro)
            flip = torch.zeros(x.shape[0], dtype=torch.bool, device=self.device)
            if self.cfg.data.hflip:
                flip = rng.rand(x.shape[0]) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            # DDP all-reduces the gradients on the last micro-batch only
            last = micro == tc.grad_accum - 1
            if self.sharded:
                self.model.set_requires_gradient_sync(last)
            sync = nullcontext() if last or self.net is self.model else self.net.no_sync()
            with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                co = {} if self.semantic is None else self.semantic.loss_inputs(x, self.indices(micro), flip)
                terms = training_loss(self.net, x, y, self.cfg.diffusion, self.cfg.model.num_classes,
                                      rng, **co)
                (terms["loss"] / tc.grad_accum).backward()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / tc.grad_accum
        if self.world.size > 1:
            for p in self.aux_params.values():          # outside DDP: average by hand
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world.size
            totals = dict(zip(totals, self.world.mean(list(totals.values()), self.device)))
        # A non-finite loss or gradient skips the update (weights, EMAs and optimizer state stay
        # as they were) instead of poisoning the run; the data and RNG move on as usual.
        grad_norm = distributed.full_tensor(
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), float("inf")))
        finite = math.isfinite(totals["loss"]) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            for ema in self.emas:
                ema.update(self.model)
            self.bad_in_row = 0
        else:
            self.skipped += 1
            self.bad_in_row += 1
            log.warning("step %d: non-finite loss or gradient (loss %s); update skipped (%d in a row)",
                        self.step, totals["loss"], self.bad_in_row)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return totals

    def train(self, progress: bool = True) -> dict:
        tc = self.cfg.train
        main = self.world.is_main                  # rank 0 alone writes files and logs
        if main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CheckpointError(f"cannot create the run folder {self.run_dir}: {e.strerror}; "
                                      f"choose another --out") from None
            remove_stale_temporaries(self.run_dir)
            save_config(self.cfg, self.run_dir / "config.yaml")
        writer = _tensorboard(self.run_dir / "tb") if main else None
        start, t0, window = self.step, time.time(), time.time()
        losses: list[float] = []
        it = iter(self.loader(self.step, tc.steps))
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", disable=not (progress and main),
                   dynamic_ncols=True)
        stopped_early = False
        with open(self.run_dir / "metrics.jsonl" if main else os.devnull, "a") as metrics_file:
            while self.step < tc.steps:
                terms = self.train_step([next(it) for _ in range(tc.grad_accum)])
                losses.append(terms["loss"])
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    now = time.time()
                    rate = tc.log_every * self.global_batch / max(now - window, 1e-9)
                    window = now
                    record = {"step": self.step, "skipped_steps": self.skipped,
                              **{k: round(v, 6) if math.isfinite(v) else None for k, v in terms.items()},
                              "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": round(rate, 2),
                              "elapsed_s": round(now - t0, 2)}
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    if writer is not None:
                        for k, v in record.items():
                            if k != "step" and v is not None:
                                writer.add_scalar(f"train/{k}", v, self.step)
                    bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                    img_s=f"{rate:.0f}")
                if self.bad_in_row >= tc.max_bad_steps:
                    raise FloatingPointError(
                        f"{self.bad_in_row} consecutive steps had a non-finite loss or gradient "
                        f"(last at step {self.step}); stopped. The last good checkpoint in "
                        f"{self.run_dir} is intact: lower the lr or check the data, then --resume")
                if self.step % tc.ckpt_every == 0 and self.bad_in_row == 0:
                    self.save()                    # never checkpoint in the middle of a bad streak
                if tc.time_limit_min > 0 and self.world.mean(
                        [float(time.time() - t0 > tc.time_limit_min * 60)], self.device)[0] > 0:
                    stopped_early = self.step < tc.steps   # every rank stops at the same step
                    break
        bar.close()
        self.save()
        if writer is not None:
            writer.close()
        return {"steps": self.step - start, "final_step": self.step, "seconds": time.time() - t0,
                "stopped_by_time_limit": stopped_early,
                "last_loss": losses[-1] if losses else float("nan")}


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is absent
        log.warning("tensorboard is not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(path))


def load_run_model(run: str | Path, weights: str = "ema1", device="cpu"):
    """(model in eval mode, config, meta) of a run folder, with the chosen weights
    ('ema1' for sampling, 'ema2', or 'model' for the raw weights)."""
    meta = read_meta(run)
    cfg = from_dict(meta["config"])
    model = build_model(cfg.model, device)
    state = dict(model.state_dict())
    state.update(load_tensors(run, "model"))
    if weights != "model":
        ema = load_tensors(run, weights)
        if not ema:
            raise CheckpointError(f"{run} holds no '{weights}' weights (choose ema1, ema2 or model)")
        state.update(ema)
    load_weights(model, state, source=str(run))
    return model.eval(), cfg, meta
