"""The training loop shared by every stage: length-bucketed batches, accelerate, checkpoints, TensorBoard.

*Bucketing instead of naive batching.*  Sequences are sorted by length and cut
into batches under a token budget (``batch_tokens`` counts padded tokens), so a
batch holds sequences of similar length and CPU time is not spent on padding;
the batch order is shuffled per epoch from the seed.  Packing several
sequences into one row would need a block-diagonal attention mask to keep
them apart; bucketing gets the padding share to a few percent without it
(``padding_share`` in the metrics says how much).

*accelerate* places the model and shards the batches, so the same command runs
on one CPU, one GPU or ``accelerate launch`` over several.  Checkpoints are
``accelerator.save_state`` directories plus a ``progress.json``; a run
restarted with the same output directory resumes from the latest one,
skipping the batches it had done.

*Early stopping.*  Given held-out sequences (variations the training data does
not have), the loop measures their loss every ``eval_every`` steps (TensorBoard
``val_loss``, ``val_curve.json`` and ``val_curve.png`` beside the checkpoints),
keeps the best trainable weights, stops after ``patience`` measurements
without a better one, and ends on the best.  The curve and the best weights
are checkpointed, so a resumed run carries on with them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from glider.trainer.sequences import IGNORE, TokenSequence

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    lr: float = 1e-3
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_tokens: int = 8192  # padded tokens per micro-batch
    grad_accum: int = 1
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of lr
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200  # optimizer steps
    # ... or this many minutes since the last checkpoint, whichever comes first: 200 steps of a pretrained
    # backbone on a CPU are 45 minutes, all lost to a stop between two step-count checkpoints
    checkpoint_minutes: float | None = 10.0
    log_every: int = 10
    max_minutes: float | None = None  # stop early (checkpointed) after this much training, resumed runs included
    progress: bool = True
    # early stopping on held-out sequences (``train(..., val_sequences=...)``): evaluate every
    # ``eval_every`` optimizer steps, stop after ``patience`` evaluations without a new best
    # (None: train the whole budget), and end on the best weights seen
    eval_every: int = 50
    patience: int | None = None
    min_delta: float = 1e-3
    # on a plateau (patience run out) first go back to the best weights with the learning rate times
    # ``plateau_factor``, up to ``lr_reductions`` times, and only then stop
    lr_reductions: int = 2
    plateau_factor: float = 0.5


def bucket_batches(lengths: Sequence[int], batch_tokens: int, seed: int, epoch: int,
                   max_width_ratio: float = 1.25) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size fits ``batch_tokens``.

    A batch closes when the next sequence would not fit the budget or would be
    more than ``max_width_ratio`` times as long as the batch's shortest one.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i]  # sorted ascending: the newest is the longest
        if current and (width * (len(current) + 1) > batch_tokens
                        or width > max_width_ratio * lengths[current[0]]):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    random.Random(seed * 1_000_003 + epoch).shuffle(batches)
    return batches


def collate(seqs: Sequence[TokenSequence], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        n = len(s)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
    return ids, mask, labels


def token_weights(seqs: Sequence[TokenSequence], width: int):
    """Per-token loss weights (batch, width): each target's weight on its tokens, 0 elsewhere."""
    import torch

    weights = torch.zeros((len(seqs), width), dtype=torch.float32)
    for row, s in enumerate(seqs):
        for (start, end), w in zip(s.spans, s.weights or [1.0] * len(s.spans), strict=True):
            weights[row, start:end] = w
    return weights


def weighted_nll(logits, labels, weights):
    """Σ_tokens w·(−log π(token)) / number of target tokens: the actor loss of the RL stages, where w
    is the utterance's weight (exp(A/λ) for AWR, the advantage for policy gradient) on each of its tokens.
    Dividing by the token count, not by Σw, keeps the weights' scale (a weight of 2 counts twice)."""
    import torch

    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:],
                                            ignore_index=IGNORE, reduction="none")
    targets = labels[:, 1:] != IGNORE
    return (nll * weights[:, 1:]).sum() / targets.sum().clamp(min=1)


def batch_loss(model, batch: Sequence[TokenSequence], pad_id: int, device, weighted: bool):
    """The training loss of one batch: plain NLL on targets, or the RL actor's ``weighted_nll``.
    Returns (loss, attention mask, labels) for the caller's token accounting."""
    ids, mask, labels = collate(batch, pad_id)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    if weighted:
        weights = token_weights(batch, ids.size(1)).to(device)
        return weighted_nll(model(input_ids=ids, attention_mask=mask).logits, labels, weights), mask, labels
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss, mask, labels


def _schedule(cfg: TrainConfig, total: int, scale: list[float]):
    """Linear warm-up, then a cosine decay over ``total`` steps; with early stopping the horizon is
    unknown, so the rate stays constant and ``scale[0]`` (lowered on each plateau) sets it."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps * scale[0]
        if cfg.patience is not None:
            return scale[0]
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def evaluate_loss(model, seqs: Sequence[TokenSequence], pad_id: int, batch_tokens: int = 8192,
                  device=None) -> float:
    """Mean NLL per target token over ``seqs`` (no gradient)."""
    import torch

    if not seqs:
        return float("nan")
    device = device if device is not None else next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in bucket_batches([len(s) for s in seqs], batch_tokens, 0, 0):
            ids, mask, labels = collate([seqs[i] for i in batch], pad_id)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                     ignore_index=IGNORE, reduction="sum")
            total += float(loss)
            count += int((target != IGNORE).sum())
    model.train(was_training)
    return total / max(1, count)


@dataclass
class TrainResult:
    steps: int
    epochs_done: float
    train_loss: float  # mean over the last log window
    first_loss: float  # mean over the first log window
    tokens_per_s: float  # real (non-padding) tokens through forward+backward per second, resumes included
    target_tokens_per_s: float
    padding_share: float
    seconds: float
    stopped_early: bool  # by the time budget or by early stopping
    best_step: int | None = None  # with held-out sequences: the step whose weights the model ends on
    best_val_loss: float | None = None
    val_curve: list | None = None  # [[step, train loss, val loss], ...]

    def as_dict(self) -> dict:
        return asdict(self)


class AdapterReportLayout:
    """What an adapter's report (SFT, ORL) shares: its file layout puts the training loop's figures
    flat between the report's own, and the registry version, when there is one, last."""

    training: TrainResult
    published: str | None

    def flat(self, before: dict, after: dict | None = None) -> dict:
        out = {**before, **self.training.as_dict(), **(after or {})}
        if self.published is not None:
            out["published"] = self.published
        return out

    def to_dict(self) -> dict:
        raise NotImplementedError

    def scalars(self) -> dict[str, float]:
        """The numbers a registry version keeps as its metrics."""
        return {k: v for k, v in self.to_dict().items() if isinstance(v, int | float)}


def run_fingerprint(cfg: TrainConfig, sequences: Sequence[TokenSequence], *extra) -> str:
    """What a checkpoint must match to be resumed: the data, the optimiser setting, anything in ``extra``
    (base model, adapter config).  The step budget is left out: extending a run is a resume."""
    import hashlib

    key = [cfg.lr, cfg.batch_tokens, cfg.grad_accum, cfg.weight_decay, cfg.seed, len(sequences),
           sum(len(s) for s in sequences), sum(s.target_tokens for s in sequences),
           round(sum(sum(s.weights or ()) for s in sequences), 6), *map(str, extra)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _trainable_state(model) -> dict:
    """A CPU copy of the trainable weights (the LoRA matrices: small)."""
    unwrapped = getattr(model, "module", model)
    return {n: p.detach().to("cpu", copy=True) for n, p in unwrapped.named_parameters() if p.requires_grad}


def _load_trainable(model, state: dict) -> None:
    import torch

    unwrapped = getattr(model, "module", model)
    with torch.no_grad():
        for n, p in unwrapped.named_parameters():
            if n in state:
                p.copy_(state[n].to(p.device))


def plot_val_curve(curve: Sequence[Sequence[float]], path: Path, title: str = "") -> None:
    """Train and held-out loss against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [c[0] for c in curve]
    ax.plot(steps, [c[1] for c in curve], marker=".", label="train (last window)")
    ax.plot(steps, [c[2] for c in curve], marker="o", label="held-out variations")
    best = min(curve, key=lambda c: c[2])
    ax.axvline(best[0], color="grey", linestyle=":", label=f"best: step {best[0]}, {best[2]:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Checkpoints:
    """``<out_dir>/checkpoints/latest``: the accelerate state, the loop's position, the held-out curve
    and the best weights, replaced atomically (written beside, then renamed), and resumed only by the
    run it was written for (``fingerprint``)."""

    def __init__(self, out_dir: Path, fingerprint: str, name: str):
        self.root, self.fingerprint, self.name = Path(out_dir) / "checkpoints", fingerprint, name
        self.latest = self.root / "latest"

    def resume(self, accelerator) -> dict | None:
        """The saved progress (its accelerate state loaded into the prepared objects), or None."""
        path = self.latest / "progress.json"
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved is not None and saved.get("fingerprint", "") != self.fingerprint:
            log.warning("%s: checkpoint in %s is from another run (data or base changed); starting over",
                        self.name, self.latest)
            saved = None
            if accelerator.is_main_process:
                shutil.rmtree(self.root, ignore_errors=True)
            accelerator.wait_for_everyone()
        if saved is not None:
            accelerator.load_state(str(self.latest))
            log.info("%s: resuming at step %d (epoch %d, batch %d)", self.name, saved["step"], saved["epoch"],
                     saved["batch"])
        return saved

    def best_weights(self):
        import torch

        path = self.latest / "best.pt"
        return torch.load(path) if path.is_file() else None

    def save(self, accelerator, progress: dict, stopping: EarlyStopping) -> None:
        import torch

        tmp = self.root / "latest.tmp"
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            if stopping.best_weights is not None:
                torch.save(stopping.best_weights, tmp / "best.pt")
            (tmp / "progress.json").write_text(json.dumps({**progress, "val_curve": stopping.curve,
                                                           "best": stopping.best}))
            old = self.root / "latest.old"
            if self.latest.exists():
                os.replace(self.latest, old)
            os.replace(tmp, self.latest)
            shutil.rmtree(old, ignore_errors=True)


class EarlyStopping:
    """The held-out loss every ``cfg.eval_every`` steps. After ``cfg.patience`` measurements without a new
    best, first go back to the best weights at ``plateau_factor`` × the rate (``lr_reductions`` times),
    then stop; the run ends on the best weights."""

    def __init__(self, cfg: TrainConfig, name: str, saved: dict | None = None, best_weights=None):
        self.cfg, self.name = cfg, name
        self.curve: list = (saved or {}).get("val_curve", [])
        self.best: dict | None = (saved or {}).get("best")  # {"step", "loss", "stale", "reductions"}
        self.best_weights = best_weights if self.best is not None else None
        self.lr_scale = [cfg.plateau_factor ** self.best.get("reductions", 0) if self.best else 1.0]

    def measure(self, model, val_sequences, pad_id: int, device, step: int, train_loss: float,
                log_fn) -> bool:
        """Held-out loss now; on a plateau, back to the best weights at a lower rate; True when done."""
        cfg, best = self.cfg, self.best
        val = evaluate_loss(model, val_sequences, pad_id, device=device)
        self.curve.append([step, train_loss, val])
        log_fn(val)
        if best is None or val < best["loss"] - cfg.min_delta:
            best = self.best = {"step": step, "loss": val, "stale": 0,
                                "reductions": (best or {}).get("reductions", 0)}
            self.best_weights = _trainable_state(model)
        else:
            best["stale"] += 1
        if cfg.patience is None or best["stale"] < cfg.patience:
            return False
        if best["reductions"] >= cfg.lr_reductions:
            return True
        best["reductions"] += 1
        best["stale"] = 0
        self.lr_scale[0] = cfg.plateau_factor ** best["reductions"]
        _load_trainable(model, self.best_weights)
        log.info("%s: held-out loss flat since step %d; back to it at lr x%g", self.name, best["step"],
                 self.lr_scale[0])
        return False


def train(model, sequences: Sequence[TokenSequence], cfg: TrainConfig, out_dir: Path, *, pad_id: int,
          name: str = "train", fingerprint: str = "",
          val_sequences: Sequence[TokenSequence] | None = None,
          on_epoch: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model``'s trainable parameters on ``sequences``; checkpoints and logs under ``out_dir``.

    A checkpoint in ``out_dir`` is resumed only when it was written for the same ``fingerprint``
    (``run_fingerprint``); one from another run (other data, another base) is discarded.
    With ``val_sequences`` and ``cfg.patience``, stops early on their loss and ends on the best weights.
    ``on_epoch(epoch)`` runs before each epoch's first batch (a resumed epoch included): the RL stages
    recompute the sequences' weights there, in place, from the policy as it is.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, log_with="tensorboard",
                              project_dir=str(out_dir / "tensorboard"))
    accelerator.init_trackers(name, config={k: v for k, v in asdict(cfg).items() if v is not None})
    set_seed(cfg.seed)
    lengths = [len(s) for s in sequences]
    weighted = any(s.weights is not None for s in sequences)  # an RL actor stage, else plain NLL
    per_epoch = math.ceil(len(bucket_batches(lengths, cfg.batch_tokens, cfg.seed, 0))
                          / accelerator.num_processes / cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scale = [1.0]  # lowered on each plateau of the held-out loss (shared with EarlyStopping)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, total_steps, lr_scale))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    checkpoints = Checkpoints(out_dir, fingerprint, name)
    saved = checkpoints.resume(accelerator)
    progress = saved or {"step": 0, "epoch": 0, "batch": 0, "fingerprint": fingerprint}
    early = val_sequences is not None and len(val_sequences) > 0
    stopping = EarlyStopping(cfg, name, saved, checkpoints.best_weights() if saved else None)
    lr_scale[0] = stopping.lr_scale[0]
    stopping.lr_scale = lr_scale

    def measure(step: int, train_loss: float) -> bool:
        return stopping.measure(model, val_sequences, pad_id, accelerator.device, step, train_loss,
                                lambda val: accelerator.log({"val_loss": val, "lr": scheduler.get_last_lr()[0]},
                                                            step=step))

    model.train()
    step = progress["step"]
    started = time.monotonic()
    # training time of the runs this one resumes: the time box covers the whole run, however often it
    # was stopped and restarted (a resumed run with a fresh box would train longer than the one asked for)
    spent = progress.get("seconds", 0.0)

    def trained_s() -> float:
        return spent + time.monotonic() - started

    saved_at = started
    # the loss and token counts carry over a resume too: a run resumed with nothing left to train
    # reports the run's figures, not NaN and 0 tokens/s
    real_tokens, padded_tokens, target_tokens = progress.get("tokens", (0, 0, 0))
    window: list[float] = []
    first_loss, last_loss = (float("nan") if progress.get(k) is None else progress[k]
                             for k in ("first_loss", "last_loss"))

    def snapshot() -> dict:
        return {**progress, "seconds": trained_s(), "tokens": [real_tokens, padded_tokens, target_tokens],
                **{k: None if math.isnan(v) else v for k, v in (("first_loss", first_loss), ("last_loss", last_loss))}}
    # a run resumed with its time box spent takes no further step
    stopped_early = cfg.max_minutes is not None and spent > cfg.max_minutes * 60
    bar = tqdm(total=total_steps, initial=step, desc=name, unit="step",
               disable=not cfg.progress or not accelerator.is_local_main_process)
    epoch = progress["epoch"]
    while step < total_steps and not stopped_early:
        if on_epoch is not None:
            on_epoch(epoch)
        batches = bucket_batches(lengths, cfg.batch_tokens, cfg.seed, epoch)
        batches = batches[accelerator.process_index:: accelerator.num_processes]
        for b_index in range(progress["batch"] if epoch == progress["epoch"] else 0, len(batches)):
            batch = [sequences[i] for i in batches[b_index]]
            with accelerator.accumulate(model):
                loss, mask, labels = batch_loss(model, batch, pad_id, accelerator.device, weighted)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            real_tokens += int(mask.sum())
            padded_tokens += mask.numel()
            target_tokens += int((labels != IGNORE).sum())
            window.append(float(loss.detach()))
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress = {"step": step, "epoch": epoch, "batch": b_index + 1, "fingerprint": fingerprint}
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                last_loss = sum(window) / len(window)
                if math.isnan(first_loss):
                    first_loss = last_loss
                window = []
                accelerator.log({"loss": last_loss, "lr": scheduler.get_last_lr()[0],
                                 "tokens_per_s": real_tokens / max(trained_s(), 1e-9)}, step=step)
                bar.set_postfix(loss=f"{last_loss:.3f}")
            if early and (step % cfg.eval_every == 0 or step == total_steps):
                if measure(step, sum(window) / len(window) if window else last_loss):
                    stopped_early = True
                    break
            if step % cfg.checkpoint_every == 0 or (
                    cfg.checkpoint_minutes is not None and time.monotonic() - saved_at > cfg.checkpoint_minutes * 60):
                checkpoints.save(accelerator, snapshot(), stopping)
                saved_at = time.monotonic()
            if cfg.max_minutes is not None and trained_s() > cfg.max_minutes * 60:
                stopped_early = True
                break
            if step >= total_steps:
                break
        if stopped_early or step >= total_steps:
            break
        epoch += 1
        progress = {"step": step, "epoch": epoch, "batch": 0, "fingerprint": fingerprint}
    if window:
        last_loss = sum(window) / len(window)
        first_loss = last_loss if math.isnan(first_loss) else first_loss
    curve, best = stopping.curve, stopping.best
    if early and (not curve or curve[-1][0] != step):
        measure(step, last_loss)  # where it stopped, so the best is chosen among every end point
        best = stopping.best
    checkpoints.save(accelerator, snapshot(), stopping)
    bar.close()
    accelerator.end_training()
    seconds = trained_s()
    if early and stopping.best_weights is not None:
        _load_trainable(model, stopping.best_weights)
        if accelerator.is_main_process:
            (out_dir / "val_curve.json").write_text(json.dumps({"curve": curve, "best": best}))
            plot_val_curve(curve, out_dir / "val_curve.png", title=name)
    return TrainResult(steps=step, epochs_done=step / max(1, per_epoch), train_loss=last_loss,
                       first_loss=first_loss, tokens_per_s=real_tokens / max(seconds, 1e-9),
                       target_tokens_per_s=target_tokens / max(seconds, 1e-9),
                       padding_share=1 - real_tokens / max(1, padded_tokens), seconds=seconds,
                       stopped_early=stopped_early, best_step=best["step"] if early else None,
                       best_val_loss=best["loss"] if early else None, val_curve=curve if early else None)
