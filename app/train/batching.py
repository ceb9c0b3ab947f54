"""How a job's batches are cut into the micro-batches the Trainer runs: one row at a time on CPU.

A padding-free batch is one flattened sequence; PyTorch's SDPA then attends over the whole flattened
length under a block-diagonal mask, so its cost grows with the square of the batch's total tokens, not
with the sum of each row's square, and every activation of the batch is alive at once. On CPU the
studio therefore runs each row (each preference pair for DPO) as its own micro-batch and accumulates
the gradients over the rows of the batch before the optimizer step. The update is the same: the rows
of an optimizer step are the same, and the loss is normalised over the whole batch (SFT divides by the
label tokens of the whole accumulated batch, `num_items_in_batch`; DPO averages the pairs).

Measured (SmolLM2-135M, LoRA r8 q/v, 8 rows of 30-500 tokens in 2 batches of 4, one thread): batch of
4 flattened 23.1 CPU s and 4,184 MB peak RSS; 2 rows per micro-batch 18.5 s, 2,741 MB; 1 row 16.3 s,
1,738 MB. On a GPU, batches stay whole (FlashAttention-2's varlen kernel has no quadratic waste, and
small micro-batches would leave the GPU idle).
"""

from __future__ import annotations

from app.config import JobConfig

# Stages whose loss is a sum or mean over rows (pairs): splitting a batch leaves the update unchanged.
# Not KTO (its KL estimate pairs rows within a batch), nor GRPO (a batch holds whole groups of
# generations), nor reward modelling's in-batch statistics.
ROW_BY_ROW_STAGES = ("sft", "pt", "dpo")


def micro_batches(job: JobConfig, on_gpu: bool) -> tuple[int, int]:
    """(per-device micro-batch size, gradient accumulation steps) that the Trainer runs for the job."""
    batch, accumulation = job.per_device_train_batch_size, job.gradient_accumulation_steps
    if on_gpu or batch == 1 or job.stage not in ROW_BY_ROW_STAGES:
        return batch, accumulation
    return 1, accumulation * batch
