"""Continuous batching over one model: requests join and leave a running batch between decode steps.

One scheduler thread owns the model. Each iteration it
  1. drops requests whose client went away (they leave the batch before the next step),
  2. admits waiting requests while the batch has room: each prompt is prefilled alone (so its KV cache is
     exactly what it would be without company) and its first token chosen at once (time to first token),
  3. runs one decode step for every batch: all rows' last tokens in one forward pass.

Rows of one batch have different lengths, so the batch's KV cache is left-padded: every row's newest
token sits in the same column, padding columns are masked out and position ids count each row's own
tokens. A row joining with a longer prompt pads the others; columns that only held padding are cut when
rows leave. Rows are grouped by the weights they run on: the shared base (LoRA adapters of one base mix
in one batch through PEFT's `adapter_names`) or a full fine-tuned model of its own.

Why not transformers' own continuous batching (`generate_batch`, `init_continuous_batching`): it runs on
CPU, but it packs all requests into one flattened row, so PEFT cannot apply a different adapter per
request, and sampling (do_sample, per-request temperature) and seeds are fixed per manager, not per request.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.chat.decoding import RowDecoder

log = logging.getLogger(__name__)


@dataclass
class Row:
    decoder: RowDecoder
    group: Hashable  # which weights: rows of one group decode together
    adapter: str | None  # the PEFT adapter name on the shared base; None = the base itself
    target: Any  # the backend's own description of what to run


Forward = Callable[[list[Row], dict[str, Any]], torch.Tensor]  # (rows, model inputs) -> last logits [B, V]


def _mergeable(cache: DynamicCache) -> bool:
    """Only plain growing layers can be padded and stacked (not sliding windows, linear attention, ...)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class Batch:
    """Rows decoding together on one model, with their left-padded KV cache and attention mask."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, columns], 1 = a real token
        self.mergeable = True

    def add(self, row: Row, cache: DynamicCache, length: int, device: str) -> None:
        ones = torch.ones((1, length), dtype=torch.long, device=device)
        if not self.rows:
            self.rows, self.cache, self.mask, self.mergeable = [row], cache, ones, _mergeable(cache)
            return
        assert self.cache is not None and self.mask is not None
        width = max(self.mask.shape[1], length)
        _pad_left(self.cache, width - self.mask.shape[1])
        _pad_left(cache, width - length)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            if mine.is_initialized and theirs.is_initialized:
                mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
                mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self.mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)), F.pad(ones, (width - length, 0))])
        self.rows.append(row)

    def keep(self, indices: list[int]) -> None:
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        if not self.rows:
            self.cache, self.mask = None, None
            return
        assert self.cache is not None and self.mask is not None
        index = torch.tensor(indices, device=self.mask.device)
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.batch_select_indices(index)
        self.mask = self.mask[index]
        unused = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min())  # padding columns no row needs
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                if layer.is_initialized:
                    layer.keys, layer.values = layer.keys[..., unused:, :], layer.values[..., unused:, :]


def _pad_left(cache: DynamicCache, n: int) -> None:
    if n <= 0:
        return
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys = F.pad(layer.keys, (0, 0, n, 0))
            layer.values = F.pad(layer.values, (0, 0, n, 0))


class Scheduler:
    def __init__(self, forward: Forward, device: str, max_batch: int = 32, prefill_budget: int = 1024):
        self.forward, self.device = forward, device
        self.max_batch, self.prefill_budget = max_batch, prefill_budget
        self.lock = threading.RLock()  # held during a step; loading an adapter takes it to change the weights
        self._cond = threading.Condition()
        self._waiting: deque[Row] = deque()
        self._batches: dict[Hashable, Batch] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running = 0
        self.steps = 0
        self.tokens = 0  # tokens chosen so far (prefill first tokens and decode steps)

    # ------------------------------------------------------------------ other threads
    def submit(self, row: Row) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ftstudio-scheduler", daemon=True)
                self._thread.start()
                atexit.register(self._stop_at_exit)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def running(self) -> int:
        return self._running  # other threads read this count, never the batches the scheduler changes

    def _count(self) -> int:
        self._running = sum(len(b.rows) for b in self._batches.values())
        return self._running

    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _stop_at_exit(self) -> None:
        """Let the thread leave torch before the interpreter tears down (else C++ may abort the exit)."""
        self.close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the scheduler thread
    def _has_work(self) -> bool:
        return bool(self._waiting) or any(b.rows for b in self._batches.values())

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closed and not self._has_work():
                        self._cond.wait()
                    if self._closed:
                        self._fail_all(RuntimeError("the engine was closed"))
                        return
                with self.lock:
                    try:
                        self._iteration()
                    except Exception as exc:  # noqa: BLE001 - a bug must fail requests, never stop serving
                        log.exception("scheduler step failed")
                        self._fail_all(exc)

    def _iteration(self) -> None:
        for batch in self._batches.values():
            gone = [i for i, row in enumerate(batch.rows) if row.decoder.result.cancelled]
            for i in gone:
                batch.rows[i].decoder.finish("cancelled")
            if gone:
                batch.keep([i for i in range(len(batch.rows)) if i not in gone])
        self._admit()
        for batch in list(self._batches.values()):
            if batch.rows:
                self._decode(batch)
        self._count()
        self.steps += 1

    def _admit(self) -> None:
        budget, skipped = self.prefill_budget, []
        while self._waiting and budget > 0 and self._count() < self.max_batch:
            with self._cond:
                row = self._waiting.popleft()
            if row.decoder.result.cancelled:
                row.decoder.finish("cancelled")
                continue
            batch = self._batches.setdefault(row.group, Batch())
            if batch.rows and not batch.mergeable:
                skipped.append(row)  # this model's cache cannot be stacked: one request at a time
                continue
            budget -= len(row.decoder.prompt)
            self._prefill(row, batch)
        with self._cond:
            self._waiting.extendleft(reversed(skipped))

    def _prefill(self, row: Row, batch: Batch) -> None:
        cache = DynamicCache()
        prompt = torch.tensor([row.decoder.prompt], dtype=torch.long, device=self.device)
        try:
            logits = self.forward([row], {"input_ids": prompt, "past_key_values": cache})
            row.decoder.accept(row.decoder.choose(logits[0]))
        except Exception as exc:  # noqa: BLE001 - the request fails, the server goes on
            log.exception("prefill failed")
            row.decoder.result.put("error", exc)
            return
        self.tokens += 1
        if not row.decoder.finished:
            batch.add(row, cache, len(row.decoder.prompt), self.device)

    def _decode(self, batch: Batch) -> None:
        rows = batch.rows
        assert batch.mask is not None
        tokens = torch.tensor([[r.decoder.ids[-1]] for r in rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.decoder.position] for r in rows], dtype=torch.long, device=self.device)
        mask = F.pad(batch.mask, (0, 1), value=1)
        try:
            logits = self.forward(rows, {"input_ids": tokens, "attention_mask": mask, "position_ids": positions,
                                         "past_key_values": batch.cache})
            batch.mask = mask
            greedy = logits.argmax(dim=-1).tolist()
            for i, row in enumerate(rows):
                decoder = row.decoder
                decoder.accept(decoder.choose(logits[i]) if decoder.needs_full_logits else greedy[i])
        except Exception as exc:  # noqa: BLE001 - fail this batch's requests, keep serving
            log.exception("decode step failed")
            for row in rows:
                if not row.decoder.finished:
                    row.decoder.finished = "error"
                    row.decoder.result.put("error", exc)
            batch.keep([])
            return
        self.tokens += len(rows)
        batch.keep([i for i, row in enumerate(rows) if not row.decoder.finished])
        self._count()

    def _fail_all(self, exc: BaseException) -> None:
        for row in list(self._waiting) + [r for b in self._batches.values() for r in b.rows]:
            if not row.decoder.finished:
                row.decoder.finished = "error"
                row.decoder.result.put("error", exc)
        self._waiting.clear()
        self._batches.clear()
        self._running = 0
