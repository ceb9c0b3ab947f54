"""What the studio's SFT and DPO trainers do differently from TRL's, for speed; each measured, see README.

SFT (`FastSFTMixin`): the loss head scores the label positions only (app.train.loss_head; on CPU with a
frozen head in chunks, never holding the label tokens' logits whole) and the
per-step extras of TRL's SFTTrainer are gone: it computes the entropy and the top-1 token accuracy of
every position at every step, and reads them back with `.item()` (a device sync on GPU). The token
count (tokens/s of the `log` events) is kept.

DPO (`FastDPOMixin`): TRL's DPO trainer needs per-token log-probabilities of chosen and rejected
answers from its fused head, plus entropy, mean logit and top-1 match for its logged metrics. Here
the head computes the log-probabilities of the label positions only (on CPU TRL scores every position,
prompt and padding included) and the three extras are not computed: their metrics are dropped from
the logs instead of being logged as zeros. Each pair runs as one row whose prompt is computed once
(app.train.shared_prompt) where the model and the device allow it.
"""

from __future__ import annotations

import logging

import torch

from app.train import loss_head, shared_prompt

log = logging.getLogger(__name__)

DPO_EXTRA_METRICS = ("entropy", "mean_token_accuracy", "logits/chosen", "logits/rejected")


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


class FastSFTMixin:
    """Mix in before trl.SFTTrainer (after the checkpoint mixin)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._studio_loss = None
        special = (getattr(self, "aux_loss_enabled", False) or self.compute_loss_func is not None
                   or self.label_smoother is not None or getattr(self.args, "loss_type", "nll") != "nll")
        base = _base_model(self.model)
        if special:
            log.info("loss: TRL's own (a custom loss, label smoothing or MoE aux loss is set)")
        elif loss_head.fused_head_available(self.args.device):
            loss_head.install_log_prob_head(base)
            self._studio_loss = loss_head.fused_completion_loss
            log.info("loss: TRL's fused LM head over label positions (log-probs only)")
        elif (why := loss_head.chunked_head_reason(base, self.accelerator.num_processes)) is None:
            self._studio_loss = loss_head.chunked_completion_loss
            log.info("loss: the frozen head over label positions in chunks, gradient in the forward pass")
        elif loss_head.accepts_logits_to_keep(base):
            self._studio_loss = loss_head.completion_loss
            log.info("loss: logits at label positions only (logits_to_keep; no chunked head: %s)", why)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or self._studio_loss is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs = {k: v for k, v in inputs.items() if k != "use_cache"}
        loss, _ = self._studio_loss(model, inputs, num_items_in_batch)
        # As Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP averages gradients
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(local).sum().item())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss


class FastDPOMixin:
    """Mix in before trl.DPOTrainer (after the checkpoint mixin)."""

    def __init__(self, *args, **kwargs):
        compact_selection()  # before TRL's __init__, which may precompute the reference log-probs
        super().__init__(*args, **kwargs)
        base = _base_model(self.model)
        extra = ("log_sum_sq_probs",) if getattr(self, "use_weighting", False) else ()  # WPO's weights
        install_compact_dpo_head(base, ref=self.ref_model, outputs=("log_probs", *extra))
        # One row per pair with the prompt computed once, where the model and device allow (README, Training speed)
        self.shared_prompt = shared_prompt.install([base, self.ref_model], self.args.device, logits_head=not extra)

    def log(self, logs: dict, *args, **kwargs):
        for metrics in self._metrics.values():  # DPOTrainer.log merges these into the logs
            for key in DPO_EXTRA_METRICS:
                metrics.pop(key, None)
        return super().log(logs, *args, **kwargs)


def install_compact_dpo_head(base: torch.nn.Module, ref: torch.nn.Module | None = None,
                             outputs: tuple[str, ...] = ("log_probs",)) -> None:
    """TRL's fused head, log-probabilities only, scoring label positions only on every device.

    TRL compacts to the label positions only where Triton runs (elsewhere it avoids shape-dependent
    recompilation, a concern of compiled backends such as Neuron, not of eager CPU); the fold itself
    runs in torch there. The extras DPO's metrics read become zeros (their metrics are dropped)."""
    import trl.trainer.utils as trl_utils

    compact_selection()
    for model in (base, ref):
        if model is None:
            continue
        trl_utils.add_fused_lm_head(model, outputs=outputs if model is base else ("log_probs",))
        _zero_extras(model)


def compact_selection() -> None:
    """Make TRL's fused head select the label positions on every device (it decides per call)."""
    import trl.trainer.utils as trl_utils

    if not getattr(trl_utils, "_ftstudio_compact", False):
        trl_utils._use_triton = lambda device: True  # noqa: E731 - the torch fold still runs off-Triton
        trl_utils._ftstudio_compact = True


def _zero_extras(model: torch.nn.Module) -> None:
    """Fill the extras DPO's metric code reads with zeros of the right shape (cheap, no vocabulary pass)."""
    fused = model.forward

    def forward(*args, **kwargs):
        out = fused(*args, **kwargs)
        if kwargs.get("fused_lm_head") and getattr(out, "log_probs", None) is not None:
            zeros = torch.zeros_like(out.log_probs)
            out.entropy = zeros if out.entropy is None else out.entropy
            out.mean_logits = zeros if out.mean_logits is None else out.mean_logits
            out.is_top1 = zeros.bool() if out.is_top1 is None else out.is_top1
        return out

    model.forward = forward
