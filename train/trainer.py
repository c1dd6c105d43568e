"""The training loop of one fold: AdamW, warm-up + cosine, gradient accumulation, bf16 autocast on
CUDA, early stopping on the validation loss or UA (``optim.select``), and an atomic checkpoint after every epoch so that
``--resume`` continues from the last finished epoch with the same data order.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from serlive.model import CheckpointError, ConfigError, SERModel

from .config import TrainConfig
from .devices import world
from .losses import combined_loss
from .resume import CHECKPOINT_FILE, fallback_advice, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite (a configuration that does not train: too high a learning rate ...);
    nothing of that step was applied or saved."""


@dataclass
class TrainState:
    """What a checkpoint holds besides model / optimiser / scheduler states."""

    epoch: int = 0
    best_loss: float = math.inf
    best_ua: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: list = field(default_factory=list)
    best_state: dict | None = None


def lr_lambda(total_steps: int, warmup_ratio: float):
    """Linear warm-up over ``warmup_ratio`` of the steps, then cosine decay to 0."""
    warm = max(1, int(round(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class Trainer:
    """Trains ``model`` on ``fold.train`` with validation on ``fold.val``; see :meth:`fit`."""

    def __init__(self, model: SERModel, cfg: TrainConfig, source, fold, fold_dir: Path,
                 device: torch.device, class_weights: torch.Tensor | None, ddp: bool = False) -> None:
        self.model, self.cfg, self.source, self.fold = model.to(device), cfg, source, fold
        self.dir, self.device, self.weights = Path(fold_dir), device, class_weights
        self.use_scl = cfg.loss.scl_lambda > 0
        self.anchors = cfg.loss.consistency > 0  # each batch also carries its clean forms (a DrawSource's anchors)
        self.ranks = world() if ddp else (0, 1)
        self.net = _wrap_ddp(model, device) if self.ranks[1] > 1 else model
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        steps_per_epoch = -(-source.n_batches(len(fold.train), self.ranks) // cfg.optim.accumulate)
        self.total_steps = max(1, steps_per_epoch * cfg.optim.epochs)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(self.total_steps, cfg.optim.warmup_ratio))
        self.autocast = device.type == "cuda" and cfg.run.bf16
        self.ema = _ema(model, cfg.optim.ema) if cfg.optim.ema > 0 else None
        self.state = TrainState()

    @property
    def eval_model(self) -> SERModel:
        """The weights that are validated, selected and saved: the moving average when ``optim.ema``."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT_FILE

    def fit(self, resume: bool = False) -> TrainState:
        """Train until ``optim.epochs`` or early stopping; leaves the best weights in the model."""
        if resume and self.checkpoint_path.is_file():
            self._load()
            log.info("fold %d: resumed after epoch %d", self.fold.index, self.state.epoch)
        # closed on an exception too, so that an error message starts on a line of its own
        with tqdm(total=self.cfg.optim.epochs, initial=self.state.epoch, desc=f"fold {self.fold.index}", unit="epoch",
                  disable=self.ranks[0] > 0) as bar:
            while self.state.epoch < self.cfg.optim.epochs and not self.state.stopped:
                self.run_epoch(self.state.epoch)
                bar.update(1)
                h = self.state.history[-1]
                bar.set_postfix(train=f"{h['train_loss']:.3f}", val=f"{h['val_loss']:.3f}", ua=f"{h['val_ua']:.3f}")
        if self.state.best_state is not None:
            self.model.load_state_dict(self.state.best_state)
        elif self.ema is not None:
            self.model.load_state_dict(self.eval_model.state_dict())
        return self.state

    def run_epoch(self, epoch: int) -> None:
        seed = (self.cfg.run.seed, self.fold.index, epoch)
        torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        train_loss = self._train_epoch(np.random.default_rng(seed))
        val_loss, val_ua = self.validate()
        st = self.state
        st.epoch = epoch + 1
        st.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_ua": val_ua,
                           "lr": self.opt.param_groups[0]["lr"]})
        log.info("fold %d epoch %d: train loss %.4f, val loss %.4f, val UA %.4f", self.fold.index, epoch + 1,
                 train_loss, val_loss, val_ua)
        if self._improved(val_loss, val_ua):
            st.best_loss, st.best_ua, st.best_epoch, st.bad_epochs = val_loss, val_ua, epoch + 1, 0
            st.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.eval_model.state_dict().items()})
        else:
            st.bad_epochs += 1
            st.stopped = st.bad_epochs >= self.cfg.optim.patience
        self._save()

    def _improved(self, val_loss: float, val_ua: float) -> bool:
        st = self.state
        if self.cfg.optim.select == "last":
            return True
        if self.cfg.optim.select == "ua":
            return val_ua > st.best_ua + 1e-9 or (abs(val_ua - st.best_ua) <= 1e-9 and val_loss < st.best_loss - 1e-6)
        return val_loss < st.best_loss - 1e-6

    def _train_epoch(self, rng: np.random.Generator) -> float:
        self.model.train()
        accumulate, losses = self.cfg.optim.accumulate, []
        n = self.source.n_batches(len(self.fold.train), self.ranks)
        self.opt.zero_grad(set_to_none=True)
        batches = (self.source.train_batches(self.fold.train, rng, self.ranks, anchors=True) if self.anchors
                   else self.source.train_batches(self.fold.train, rng, self.ranks))
        with tqdm(batches, total=n, desc="steps", leave=False, unit="batch", disable=self.ranks[0] > 0) as steps:
            for i, batch in enumerate(steps):
                parts = self._loss(batch.to(self.device))
                losses.append(float(parts.total.detach()))
                if not math.isfinite(losses[-1]):
                    raise self._diverged(losses[-1], i)
                (parts.total / accumulate).backward()
                if (i + 1) % accumulate == 0 or i + 1 == n:
                    self._step()
        return float(np.mean(losses)) if losses else math.nan

    def _diverged(self, loss: float, step: int) -> "TrainingDiverged":
        """Raised before the step is applied: the weights, and every checkpoint, stay finite."""
        kept = f"the checkpoint of epoch {self.state.epoch} is kept" if self.state.epoch else "nothing was saved"
        return TrainingDiverged(f"fold {self.fold.index}: the training loss became {loss} in epoch {self.state.epoch + 1}, "
                                f"step {step + 1}; lower optim.lr or set optim.grad_clip and train again ({kept})")

    def _step(self) -> None:
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _loss(self, batch):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.source.forward(self.net, batch)
        anchors = len(batch.labels) // (3 if self.use_scl else 2) if self.anchors else 0
        return combined_loss(out, batch.labels, batch.dims, self.cfg.loss, self.weights, self.use_scl, anchors)

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Validation total loss (same objective, augmented views drawn with a fixed seed) and UA."""
        from .metrics import classification

        model = self.eval_model
        model.eval()
        total, count, preds, labels = 0.0, 0, [], []
        bs = self.cfg.run.eval_batch_size
        for batch in self.source.eval_batches(self.fold.val, bs, views=self.use_scl, seed=self.cfg.run.seed):
            batch = batch.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                out = self.source.forward(model, batch)
            parts = combined_loss(out, batch.labels, batch.dims, self.cfg.loss, self.weights, self.use_scl)
            rows = len(batch.labels)
            total, count = total + float(parts.total) * rows, count + rows
            half = rows // 2 if self.use_scl else rows
            preds.append(out.logits[:half].argmax(1).cpu().numpy())
            labels.append(batch.labels[:half].cpu().numpy())
        ua = classification(np.concatenate(labels), np.concatenate(preds), model.config.labels)["ua"]
        return total / max(count, 1), ua

    def _save(self) -> None:
        if self.ranks[0] > 0:
            return
        st = self.state
        payload = {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "state": {k: getattr(st, k) for k in ("epoch", "best_loss", "best_ua", "best_epoch", "bad_epochs", "stopped",
                                                  "history")},
            "best_state": st.best_state,
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.checkpoint_path, payload)

    def _load(self) -> None:
        """Restore from ``checkpoint.pt`` (tensors and plain values only: see :mod:`.resume`)."""
        payload = load_checkpoint(self.checkpoint_path)
        try:
            self.model.load_state_dict(payload["model"])
            self.opt.load_state_dict(payload["optimizer"])
            self.sched.load_state_dict(payload["scheduler"])
            self.state = TrainState(**payload["state"], best_state=payload["best_state"])
            if not isinstance(self.state.epoch, int) or not isinstance(self.state.history, list):
                raise TypeError("the epoch state has the wrong types")
            if self.ema is not None and payload.get("ema") is not None:
                self.ema.load_state_dict(payload["ema"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.checkpoint_path} does not match this run's model or optimiser (written by "
                                  f"another configuration?); {fallback_advice(self.checkpoint_path)}") from exc


def _ema(model: SERModel, decay: float):
    """A moving average of ``model``'s weights (buffers copied), updated after every optimiser step."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _wrap_ddp(model: SERModel, device: torch.device):
    """DistributedDataParallel over the process group torchrun set up (see :mod:`.devices`)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
