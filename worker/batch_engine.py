"""The llama.cpp backend with N slots decoded together: continuous batching.

Each slot is one llama.cpp sequence id in a context whose KV cache all slots share
(`kv_unified`, so one long prompt may use the whole context), or, with `unified_kv=False`,
where each slot has its own n_ctx / slots cells. Every `step()` is one
`llama_decode` of one batch: a token for each decoding sequence plus chunks of the prompts
still being evaluated (at most `prefill_chunk` prompt tokens per step, so a long prompt does
not stall the others for long). Each sequence samples with its own chain.

A released slot keeps its KV cache: the next prompt goes to the free slot whose cache shares
the longest prefix with it, and only the rest of the prompt is evaluated (llama-server's
prefix reuse). Idle caches are evicted, oldest first, when the cells are wanted.

Measured on CPU: a sequence's logits are bit-identical whether it decodes alone or batched
with others, given the same KV cells; in a unified cache the cells it gets depend on what the
other sequences hold, and other cells move some logits by up to ~1, enough to flip near-tie
greedy picks. With `unified_kv=False` every sequence's cells start at 0 in its own stream,
and greedy output did not depend on the batch (the price: each job gets n_ctx / slots).

Not thread-safe: one thread (the scheduler's) owns an engine. `prompt_tokens` only reads the
vocabulary and may be called from any thread, and the metric attributes may be read anywhere.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt

from shared.job import GenerationJob, SamplingParams
from shared.tokenizer import PromptTokenizer
from worker.embedding import MeanPool, Vector, chunks, pack
from worker.engine import (
    EngineBusyError,
    EngineCheckError,
    EngineInfo,
    KVCacheFullError,
    Sampled,
    StepStats,
)
from worker.engine_check import CHECK_MESSAGES, check_decoding
from worker.llama_engine import quantization
from worker.llama_native import (
    DECODE_NO_KV_SLOT,
    ContextShape,
    NativeContext,
    NativeModel,
    SamplerChain,
    TokenBatch,
)
from worker.logprobs import entry, log_softmax

DEFAULT_PREFILL_CHUNK = 256
# Tokens per compute graph: llama.cpp's default. A step of several prompt chunks is split
# into graphs of this size inside one llama_decode.
_UBATCH = 512


@dataclass
class _Slot:
    seq: int  # the llama.cpp sequence id, equal to the slot number
    # Tokens whose KV cells this sequence holds, at positions 0..len-1: kept after release
    # for prefix reuse. The next position to evaluate is len(cached).
    cached: list[int] = field(default_factory=list)
    active: bool = False
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet evaluated
    next_token: int | None = None  # sampled, evaluated in the next step
    chain: SamplerChain | None = None
    started: int = 0  # start order: the youngest sequence is the first to go when full
    released: int = 0  # release order: the oldest idle cache is the first evicted
    logits_index: int = -1  # where the last sampled token's logits are in the last batch
    sampling: SamplingParams | None = None
    generated: int = 0  # tokens sampled since start
    # A sibling (n > 1) waiting for this slot's prompt: it gets a copy of the prompt's KV
    # cells and samples from the same logits once the prompt's last chunk is evaluated.
    copy_of: int | None = None


@dataclass(frozen=True)
class _Plan:
    """One step's batch: who decodes, and how many prompt tokens each prefill takes."""

    decoders: list[_Slot]
    prefills: list[tuple[_Slot, int]]


class BatchEngine:
    """One model, one context, `slots` sequences decoded together (the `Engine` protocol)."""

    def __init__(
        self,
        gguf: Path,
        *,
        slots: int,
        n_ctx: int,
        threads: int | None,
        n_gpu_layers: int,
        flash_attn: bool,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        reuse_prefix: bool = True,
        unified_kv: bool = True,
        seq_ctx: int | None = None,
        embeddings: bool = True,
    ) -> None:
        """`n_ctx` is the KV cache's size in cells (shared by the slots when `unified_kv`);
        `seq_ctx` caps what one sequence may use (default: all it can); `embeddings`: serve
        `embed()` too (a decoder-only model can)."""
        if slots < 1 or prefill_chunk < 1:
            raise ValueError("an engine needs at least one slot and one prompt token a step")
        # All the CPUs this process may use, unless told (llama.cpp's own default is 4).
        self._threads = threads or len(os.sched_getaffinity(0))
        # A step of one sequence's single token is too small to keep every core busy: it runs
        # on one core fewer, leaving one to the worker's I/O (publishing, Redis, the API on a
        # small host), which would otherwise preempt ggml's threads while they wait for each
        # other. Measured on 2 cores, one stream: 142 tokens/s on 1 thread, 97 on 2.
        self._light_threads = max(1, self._threads - 1)
        self._current_threads = self._threads
        started = time.perf_counter()
        # First: loading the vocabulary with verbose=False also quiets llama.cpp's log.
        self._tokenizer = PromptTokenizer.load(gguf)
        llama_cpp.llama_backend_init()
        self._model = NativeModel(gguf, n_gpu_layers)
        n_batch = prefill_chunk + slots  # every decoding slot fits beside a full prompt chunk
        shape = ContextShape(
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=min(n_batch, _UBATCH),
            n_seq_max=slots,
            threads=self._threads,
            flash_attn=flash_attn,
            unified_kv=unified_kv,
        )
        try:
            self._ctx = NativeContext(self._model, shape)
        except BaseException:
            self._model.close()
            raise
        self._batch = TokenBatch(n_batch)
        n_vocab = self._model.n_vocab
        self.last_step: StepStats | None = None  # what the last step did (metrics)
        self._reported_reuse = 0
        self._eog_ids = np.array([t for t in range(n_vocab) if self._model.is_eog(t)], np.intc)
        self._slots = [_Slot(seq=i) for i in range(slots)]
        self._prefill_chunk = prefill_chunk
        self._reuse_prefix = reuse_prefix
        self._unified = unified_kv
        # Cells one sequence may hold: the whole context when the cache is unified.
        self._seq_cells = self._ctx.n_ctx if unified_kv else self._ctx.n_ctx_seq
        if seq_ctx is not None:
            self._seq_cells = min(self._seq_cells, seq_ctx)
        self._order = 0
        offloaded = n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        self._info = EngineInfo(
            n_ctx=self._seq_cells,  # the most one job can use
            backend="cuda" if offloaded else "cpu",
            slots=slots,
            load_seconds=time.perf_counter() - started,
            quantization=quantization(
                {"general.file_type": self._model.metadata("general.file_type") or ""}
            ),
            n_vocab=n_vocab,
            embedding_dims=self._model.n_embd if embeddings and self._model.decoder_only else None,
        )
        # Metrics, readable from any thread.
        self.reused_tokens = 0  # prompt tokens not evaluated thanks to a cached prefix, in all
        self.last_reused = 0  # ... by the last start
        self.last_batch_sequences = 0  # sequences in the last step's batch
        self.last_batch_tokens = 0  # tokens in the last step's batch
        self.grammar_resampled = 0  # tokens a grammar rejected, sampled again under it

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def kv_cells_used(self) -> int:
        """KV cells held by every slot, running or idle (idle caches can be evicted)."""
        return sum(len(slot.cached) for slot in self._slots)

    @property
    def active_slots(self) -> int:
        return sum(slot.active for slot in self._slots)

    def native_kv_cells(self) -> int:
        """KV cells held as llama.cpp counts them; only from the engine's thread."""
        return sum(self._ctx.cells(slot.seq) for slot in self._slots)

    def last_logits(self, slot: int) -> npt.NDArray[np.float32]:
        """The logits the slot's last token was sampled from (a view, valid until the next
        step); only from the engine's thread."""
        index = self._slots[slot].logits_index
        if index < 0:
            raise ValueError(f"slot {slot} has sampled nothing yet")
        return np.ctypeslib.as_array(self._ctx.logits(index, self._model.n_vocab))

    def clear_cache(self) -> int:
        """Drop every idle slot's cache; returns the cells freed."""
        return self._evict_idle(self._ctx.n_ctx)

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        return self._tokenizer.job_tokens(job)

    def text_tokens(self, text: str) -> list[int]:
        """Text as an embedding input: tokenized as a raw prompt (no chat template)."""
        return self._tokenizer.raw(text)

    def embed(self, inputs: list[list[int]]) -> list[Vector]:
        """Embed the first of `inputs` (at least one) in embedding-only decodes, under the
        sequence ids of slots running nothing (worker/embedding.py); their unit vectors.

        Idle slots used lose their cached prefix. Each input must fit one sequence's cells;
        KVCacheFullError, with nothing computed, when a unified cache has no room for them.
        """
        dims = self._info.embedding_dims
        if dims is None:
            raise ValueError("this engine does not embed")
        # The emptiest idle caches first: the least prefix reuse is lost.
        free = sorted((s for s in self._slots if not s.active), key=lambda s: len(s.cached))
        if not free:
            raise EngineBusyError(f"all {len(self._slots)} slots are busy")
        count = pack(inputs, len(free), self._batch.capacity)
        todo, seqs = inputs[:count], free[:count]
        if any(len(tokens) > self._seq_cells for tokens in todo):
            raise ValueError(f"an input is longer than the context ({self._seq_cells} tokens)")
        for slot in seqs:
            self._evict(slot)
        if self._unified:
            need = sum(map(len, todo))
            free_cells = self._ctx.n_ctx - self.kv_cells_used
            if free_cells < need:
                free_cells += self._evict_idle(need - free_cells)
            if free_cells < need:
                raise KVCacheFullError((), f"the context has no room for {need} tokens to embed")
        pools = [MeanPool.empty(dims) for _ in todo]
        self._use_threads(self._threads)
        self._ctx.set_embeddings(True)
        try:
            for decode in chunks([len(tokens) for tokens in todo], self._batch.capacity):
                self._batch.clear()
                for part in decode:
                    for pos in range(part.start, part.end):
                        self._batch.add(todo[part.index][pos], pos, seqs[part.index].seq, True)
                status = self._ctx.decode(self._batch)
                if status != 0:
                    raise RuntimeError(f"llama_decode failed with status {status} (embedding)")
                rows = self._ctx.token_embeddings(len(self._batch), dims)
                for part in decode:
                    pools[part.index].add(rows[part.row : part.row + part.end - part.start])
        finally:
            for slot in seqs:
                self._ctx.remove(slot.seq)
            self._ctx.set_embeddings(False)
            for slot in self._slots:  # the logits of the last step are gone
                slot.logits_index = -1
        return [pool.vector() for pool in pools]

    def start(self, prompt: list[int], sampling: SamplingParams, seed: int) -> int:
        """Take the free slot whose cache shares the longest prefix with `prompt`; its
        prompt is evaluated over the next steps."""
        if not prompt:
            raise ValueError("an empty prompt has nothing to continue")
        if len(prompt) >= self._seq_cells:
            raise ValueError(f"a prompt of {len(prompt)} tokens fills the whole context")
        free = [slot for slot in self._slots if not slot.active]
        if not free:
            raise EngineBusyError(f"all {len(self._slots)} slots are busy")
        chain = SamplerChain(sampling, seed, self._model)  # InvalidSamplingError: nothing taken
        # The longest shared prefix; among equals the smallest cache, to keep the others.
        slot = max(free, key=lambda s: (_common_prefix(s.cached, prompt), -len(s.cached)))
        # At least the last prompt token is evaluated again: its logits give the first token.
        keep = min(_common_prefix(slot.cached, prompt), len(prompt) - 1)
        if keep < len(slot.cached) and not self._ctx.remove(slot.seq, keep):
            self._ctx.remove(slot.seq)  # this cache cannot drop a tail: drop all of it
            keep = 0
        slot.cached = slot.cached[:keep]
        self._activate(slot, prompt[keep:], chain, sampling)
        self.last_reused = keep
        self.reused_tokens += keep
        return slot.seq

    def start_group(
        self, prompt: list[int], sampling: SamplingParams, seeds: list[int]
    ) -> list[int]:
        """len(seeds) sequences of one prompt, each with its own chain and seed: the prompt is
        evaluated once, in the first slot, and its KV cells copied to the others
        (llama_memory_seq_cp; between per-slot caches llama.cpp copies the stream's data)."""
        if not seeds:
            raise ValueError("a group has at least one sequence")
        free = sum(not slot.active for slot in self._slots)
        if free < len(seeds):
            raise EngineBusyError(f"{len(seeds)} sequences want slots; {free} are free")
        first = self.start(prompt, sampling, seeds[0])
        slots = [first]
        try:
            for seed in seeds[1:]:
                slots.append(self._fork(first, sampling, seed))
        except BaseException:
            for slot in slots:
                self.release(slot)
            raise
        return slots

    def _fork(self, parent: int, sampling: SamplingParams, seed: int) -> int:
        chain = SamplerChain(sampling, seed, self._model)
        # The emptiest free cache: it is dropped for the copy.
        slot = min((s for s in self._slots if not s.active), key=lambda s: len(s.cached))
        self._evict(slot)
        slot.copy_of = parent
        self._activate(slot, [], chain, sampling)
        return slot.seq

    def _activate(
        self, slot: _Slot, pending: list[int], chain: SamplerChain, sampling: SamplingParams
    ) -> None:
        """A free slot starts a sequence: `pending` prompt tokens to evaluate, its own chain."""
        slot.pending = pending
        slot.next_token = None
        slot.logits_index = -1
        slot.chain = chain
        slot.sampling = sampling
        slot.generated = 0
        slot.active = True
        self._order += 1
        slot.started = self._order

    def step(self) -> list[Sampled]:
        """One llama_decode: a token for every decoding slot, chunks of pending prompts.

        A slot whose prompt is still being evaluated gets nothing this step. Raises
        KVCacheFullError, having computed nothing, when the context cannot hold the step.
        """
        began = time.perf_counter()
        plan = self._plan()
        batch = self._batch
        batch.clear()
        indices: dict[int, int] = {}  # slot -> batch index of the logits it samples from
        for slot in plan.decoders:
            assert slot.next_token is not None
            indices[slot.seq] = batch.add(slot.next_token, len(slot.cached), slot.seq, True)
        for slot, n in plan.prefills:
            last = n == len(slot.pending)  # logits only for a prompt's final token
            for j, token in enumerate(slot.pending[:n]):
                index = batch.add(token, len(slot.cached) + j, slot.seq, last and j == n - 1)
            if last:
                indices[slot.seq] = index
        if not len(batch):
            self.last_batch_sequences = self.last_batch_tokens = 0
            return []
        self._decode(plan)
        # The batch is in the cache: account for it, then sample who has logits.
        for slot in plan.decoders:
            assert slot.next_token is not None
            slot.cached.append(slot.next_token)
        for slot, n in plan.prefills:
            slot.cached.extend(slot.pending[:n])
            slot.pending = slot.pending[n:]
        for sibling in self._slots:  # n > 1: siblings of a prompt evaluated just now
            if sibling.copy_of is not None and sibling.copy_of in indices:
                parent = self._slots[sibling.copy_of]
                if not parent.pending:
                    self._ctx.copy(parent.seq, sibling.seq)
                    sibling.cached = list(parent.cached)
                    sibling.copy_of = None
                    indices[sibling.seq] = indices[parent.seq]
        self.last_batch_sequences = len(plan.decoders) + len(plan.prefills)
        self.last_batch_tokens = len(batch)
        logprobs: dict[int, npt.NDArray[np.float64]] = {}  # batch index -> raw logprobs
        sampled = [
            self._sample(self._slots[seq], index, logprobs) for seq, index in indices.items()
        ]
        self.last_step = StepStats(
            sequences=self.last_batch_sequences,
            prompt_tokens=len(batch) - len(plan.decoders),
            decoded_tokens=len(sampled),
            seconds=time.perf_counter() - began,
            kv_cells_used=self.kv_cells_used,
            reused_tokens=self.reused_tokens - self._reported_reuse,
        )
        self._reported_reuse = self.reused_tokens
        return sampled

    def release(self, slot: int) -> None:
        """Free the slot; its cache stays for prefix reuse (unless reuse is off)."""
        state = self._slots[slot]
        if not state.active:
            return
        if state.chain is not None:
            state.chain.close()
        state.chain = None
        state.active = False
        if state.copy_of is not None:  # released before its prompt was evaluated: no cache
            state.copy_of = None
            state.cached = []
        # Siblings still waiting for this prompt will get nothing: they stay idle until their
        # own release (a job's sequences are released together when it ends early).
        for sibling in self._slots:
            if sibling.copy_of == slot:
                sibling.copy_of = None
        state.pending = []
        state.next_token = None
        self._order += 1
        state.released = self._order
        if not self._reuse_prefix:
            self._evict(state)

    def self_check(self) -> None:
        try:
            check_decoding(
                self,
                self._tokenizer.chat(CHECK_MESSAGES),
                self._model.n_vocab,
                lambda sampled: self.last_logits(sampled.slot),
            )
            if self._info.embedding_dims is not None:
                self._check_embedding()
        except EngineCheckError:
            raise
        except (RuntimeError, ValueError) as exc:  # llama_decode failed, a bad template, ...
            raise EngineCheckError(f"{type(exc).__name__}: {exc}") from exc

    def _check_embedding(self) -> None:
        (vector,) = self.embed([self.text_tokens("The engine embeds this sentence.")])
        if not np.isfinite(vector).all() or abs(float(np.linalg.norm(vector)) - 1) > 1e-3:
            raise EngineCheckError("the embedding decode gave no finite unit vector")

    def close(self) -> None:
        """Free the native objects; the engine is unusable afterwards."""
        for slot in self._slots:
            if slot.chain is not None:
                slot.chain.close()
                slot.chain = None
        self._batch.close()
        self._ctx.close()
        self._model.close()

    def _plan(self) -> _Plan:
        """Who goes in this step's batch, within the KV cells the context has left."""
        active = [slot for slot in self._slots if slot.active]
        decoders = [slot for slot in active if slot.next_token is not None]
        prefilling = sorted((slot for slot in active if slot.pending), key=lambda s: s.started)
        if self._unified:
            budget = self._shared_room(active, decoders, prefilling) - len(decoders)
        else:  # each sequence in its own cells: only its own length limits it
            full = tuple(slot.seq for slot in decoders if len(slot.cached) >= self._seq_cells)
            if full:
                raise self._full(full)
            budget = self._prefill_chunk
        budget = min(self._prefill_chunk, budget)
        prefills: list[tuple[_Slot, int]] = []
        for slot in prefilling:  # the earliest first, to finish one prompt before the next
            n = min(budget, len(slot.pending))
            if n == 0:
                break
            prefills.append((slot, n))
            budget -= n
        if prefilling and not decoders and not prefills:
            # Only unfinished prompts hold the context: the youngest gives way.
            raise self._full((prefilling[-1].seq,))
        return _Plan(decoders, prefills)

    def _shared_room(
        self, active: list[_Slot], decoders: list[_Slot], prefilling: list[_Slot]
    ) -> int:
        """Free cells of the unified cache for this step, evicting idle caches if they are
        wanted; KVCacheFullError if the decoding sequences do not get one each."""
        wanted = len(decoders) + min(self._prefill_chunk, sum(len(s.pending) for s in prefilling))
        free = self._ctx.n_ctx - self.kv_cells_used
        if free < wanted:
            free += self._evict_idle(wanted - free)
        if free >= len(decoders):
            return free
        # Not one more token for everyone: the youngest sequences go (the least work lost),
        # each freeing its cells and its need of one.
        victims: list[int] = []
        need = len(decoders)
        for slot in sorted(active, key=lambda s: s.started, reverse=True):
            if free >= need:
                break
            victims.append(slot.seq)
            free += len(slot.cached)
            need -= slot.next_token is not None
        raise self._full(tuple(victims))

    def _use_threads(self, threads: int) -> None:
        if threads != self._current_threads:
            self._ctx.set_threads(threads)
            self._current_threads = threads

    def _decode(self, plan: _Plan) -> None:
        light = not plan.prefills and len(plan.decoders) == 1
        self._use_threads(self._light_threads if light else self._threads)
        status = self._ctx.decode(self._batch)
        if status == 0:
            return
        slots = tuple(s.seq for s in plan.decoders) + tuple(s.seq for s, _ in plan.prefills)
        # A failed decode may leave some of the batch in the cache: drop what is not accounted.
        for seq in slots:
            self._ctx.remove(seq, len(self._slots[seq].cached))
        if status == DECODE_NO_KV_SLOT:
            raise self._full(slots)
        raise RuntimeError(f"llama_decode failed with status {status}")

    def _sample(
        self, slot: _Slot, index: int, logprobs: dict[int, npt.NDArray[np.float64]]
    ) -> Sampled:
        """Sample the slot's next token; `logprobs` caches, per batch index, the raw logits'
        log-softmax (siblings of n > 1 share their first index)."""
        assert slot.chain is not None and slot.sampling is not None
        k = slot.sampling.logprobs
        if k is not None and index not in logprobs:  # before anything edits the logits
            raw = np.ctypeslib.as_array(self._ctx.logits(index, self._model.n_vocab))
            logprobs[index] = log_softmax(raw)
        if slot.sampling.suppress_eog(slot.generated):  # ignore_eos, min_tokens
            logits = np.ctypeslib.as_array(self._ctx.logits(index, self._model.n_vocab))
            logits[self._eog_ids] = -np.inf
        resampled = slot.chain.resampled
        token = slot.chain.sample(self._ctx, index)
        self.grammar_resampled += slot.chain.resampled - resampled
        slot.generated += 1
        slot.next_token = token
        slot.logits_index = index
        return Sampled(
            slot=slot.seq,
            token=token,
            piece=self._model.piece(token),
            end_of_generation=self._model.is_eog(token),
            logprob=None if k is None else entry(logprobs[index], token, k, self._model.piece),
        )

    def _evict_idle(self, wanted: int) -> int:
        """Evict idle caches, the least recently used first, until `wanted` cells are free;
        returns the cells freed."""
        freed = 0
        idle = (s for s in self._slots if not s.active and s.cached)
        for slot in sorted(idle, key=lambda s: s.released):
            if freed >= wanted:
                break
            freed += self._evict(slot)
        return freed

    def _evict(self, slot: _Slot) -> int:
        cells = len(slot.cached)
        self._ctx.remove(slot.seq)
        slot.cached = []
        return cells

    def _full(self, slots: tuple[int, ...]) -> KVCacheFullError:
        if not self._unified:
            return KVCacheFullError(slots, f"the slot's {self._seq_cells} cells are full")
        return KVCacheFullError(
            slots,
            f"the context ({self._ctx.n_ctx} tokens, shared by {len(self._slots)} slots) is "
            "full: the job cannot go on while the others hold it",
        )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
