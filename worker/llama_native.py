"""Typed wrappers over llama-cpp-python's low-level (ctypes) API, for the batched engine.

The high-level `Llama` serves one sequence; decoding several in one batch takes the model,
a context with several sequences, a hand-filled batch and one sampler chain per sequence.
Each wrapper owns one native object and frees it in `close()`.
"""

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt

from shared.job import SamplingParams

# The penalties look back this many tokens: `Llama`'s default `last_n_tokens_size`.
PENALTY_LAST_N = 64

# llama_decode's return value when no KV cells are free for the batch (nothing was computed).
DECODE_NO_KV_SLOT = 1


class NativeModel:
    """A GGUF's weights and vocabulary (llama_model_load_from_file)."""

    def __init__(self, gguf: Path, n_gpu_layers: int) -> None:
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
        if model is None:
            raise ValueError(f"llama.cpp could not load {gguf}")
        self.model = model
        vocab = llama_cpp.llama_model_get_vocab(model)
        assert vocab is not None  # every loaded model has one
        self.vocab = vocab
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(vocab)
        self.n_embd: int = llama_cpp.llama_model_n_embd(model)
        # An encoder-decoder model's decoder states are not an embedding of its input.
        self.decoder_only: bool = not llama_cpp.llama_model_has_encoder(model)
        self._piece = ctypes.create_string_buffer(64)

    def metadata(self, key: str) -> str | None:
        """One GGUF metadata value as text, or None when the file does not have the key."""
        size = 256
        buffer = ctypes.create_string_buffer(size)
        length = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buffer, size)
        if length < 0:
            return None
        if length >= size:  # the value was cut; ask again with room for all of it
            buffer = ctypes.create_string_buffer(length + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buffer, length + 1)
        return buffer.value.decode("utf-8", errors="replace")

    def piece(self, token: int) -> bytes:
        """The token's bytes as `Llama.detokenize([token])` gives them (special tokens empty)."""
        length = llama_cpp.llama_token_to_piece(
            self.vocab, token, self._piece, len(self._piece), 0, False
        )
        if length < 0:  # the buffer is too small: minus the length needed
            self._piece = ctypes.create_string_buffer(-length)
            length = llama_cpp.llama_token_to_piece(
                self.vocab, token, self._piece, len(self._piece), 0, False
            )
        return self._piece.raw[:length]

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        llama_cpp.llama_model_free(self.model)


@dataclass(frozen=True)
class ContextShape:
    """What a batched context is built with."""

    n_ctx: int
    n_batch: int  # tokens per llama_decode call at most
    n_ubatch: int  # tokens per compute graph
    n_seq_max: int
    threads: int | None
    flash_attn: bool
    # One KV cache for all sequences, so one may use the whole context; False gives each
    # sequence its own n_ctx / n_seq_max cells.
    unified_kv: bool = True


class NativeContext:
    """One llama.cpp context for several sequences."""

    def __init__(self, model: NativeModel, shape: ContextShape) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = shape.n_ctx
        params.n_batch = shape.n_batch
        params.n_ubatch = shape.n_ubatch
        params.n_seq_max = shape.n_seq_max
        params.kv_unified = shape.unified_kv
        # Embedding decodes read every token's last hidden state and pool them here
        # (worker/embedding.py): llama.cpp's own pooling averages only the tokens of one
        # ubatch, and a per-slot cache splits a batch of several sequences into many.
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        if shape.threads is not None:
            params.n_threads = shape.threads
            params.n_threads_batch = shape.threads
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if shape.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ctx = llama_cpp.llama_init_from_model(model.model, params)
        if ctx is None:
            raise ValueError("llama.cpp could not create the context")
        self.ctx = ctx
        memory = llama_cpp.llama_get_memory(ctx)
        assert memory is not None  # a generation context always has a KV cache
        self.memory = memory
        self.n_ctx: int = llama_cpp.llama_n_ctx(ctx)
        self.n_ctx_seq: int = llama_cpp.llama_n_ctx_seq(ctx)  # cells one sequence may hold

    def set_threads(self, threads: int) -> None:
        """Threads for the next decodes (generation and prompt batches alike)."""
        llama_cpp.llama_set_n_threads(self.ctx, threads, threads)

    def decode(self, batch: "TokenBatch") -> int:
        """llama_decode's status: 0 done, DECODE_NO_KV_SLOT, or another failure code."""
        return int(llama_cpp.llama_decode(self.ctx, batch.batch))

    def remove(self, seq: int, keep: int = 0) -> bool:
        """Drop the sequence's cells from position `keep` on; False if the cache cannot."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq, keep, -1))

    def cells(self, seq: int) -> int:
        """KV cells the sequence holds (its positions are contiguous from its first)."""
        last = llama_cpp.llama_memory_seq_pos_max(self.memory, seq)
        return 0 if last < 0 else last - llama_cpp.llama_memory_seq_pos_min(self.memory, seq) + 1

    def logits(self, index: int, n_vocab: int) -> "ctypes.Array[ctypes.c_float]":
        """The logits of batch position `index` of the last decode (it must have asked for them)."""
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, index)
        return ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float * n_vocab)).contents

    def set_embeddings(self, on: bool) -> None:
        """Whether the next decodes output every token's hidden state (and no sampling)."""
        llama_cpp.llama_set_embeddings(self.ctx, on)

    def token_embeddings(self, n_tokens: int, n_embd: int) -> npt.NDArray[np.float32]:
        """Every token's last hidden state from the last decode (made with embeddings on), in
        batch order: a view of shape (n_tokens, n_embd), valid until the next decode."""
        pointer = llama_cpp.llama_get_embeddings(self.ctx)
        if not pointer:
            raise RuntimeError("llama.cpp returned no embeddings for the decode")
        return np.ctypeslib.as_array(pointer, shape=(n_tokens, n_embd))

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)


class TokenBatch:
    """One llama_batch, refilled for every decode: a token, its position, one sequence each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.batch.n_tokens = 0

    def clear(self) -> None:
        self.batch.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token; returns its index in the batch (where its logits are)."""
        i: int = self.batch.n_tokens
        if i >= self.capacity:
            raise ValueError(f"the batch holds {self.capacity} tokens at most")
        self.batch.token[i] = token
        self.batch.pos[i] = pos
        self.batch.n_seq_id[i] = 1
        self.batch.seq_id[i][0] = seq
        self.batch.logits[i] = logits
        self.batch.n_tokens = i + 1
        return i

    def __len__(self) -> int:
        return int(self.batch.n_tokens)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)


class SamplerChain:
    """One sequence's samplers, in `Llama`'s order; greedy when the temperature is 0."""

    def __init__(self, sampling: SamplingParams, seed: int, n_vocab: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain

        def add(sampler: "llama_cpp.llama_sampler_p") -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)  # the chain owns it from here

        add(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                PENALTY_LAST_N,
                sampling.repeat_penalty,
                sampling.frequency_penalty,
                sampling.presence_penalty,
            )
        )
        if sampling.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))  # 0: off
        add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))  # llama.cpp takes uint32

    def sample(self, context: NativeContext, index: int) -> int:
        """Sample (and accept) a token from the logits at batch position `index`.

        The position must have had logits requested: llama.cpp aborts the process otherwise.
        """
        return int(llama_cpp.llama_sampler_sample(self.chain, context.ctx, index))

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)
