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
from worker.engine import InvalidSamplingError

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

    @property
    def end_token(self) -> int:
        """The end-of-generation token a sequence ends with when nothing else may follow."""
        eot = int(llama_cpp.llama_vocab_eot(self.vocab))
        return eot if eot >= 0 else int(llama_cpp.llama_vocab_eos(self.vocab))

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

    def copy(self, source: int, target: int) -> None:
        """Give `target` all of `source`'s cells (the target's own are dropped first). Between
        per-sequence caches llama.cpp copies the whole stream's data at the next decode; it
        asserts the copy is of whole sequences, which -1..-1 is."""
        llama_cpp.llama_memory_seq_rm(self.memory, target, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, source, target, -1, -1)

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


# llama_token_data as numpy sees it: the candidates array is filled from the logits in place.
_CANDIDATE = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class SamplerChain:
    """One sequence's samplers, in llama.cpp's common order (logit bias, penalties, top-k,
    top-p, min-p, temperature, distribution); greedy when the temperature is 0.

    A grammar is applied llama.cpp's way (`common_sampler_sample`): the grammar sampler over
    the whole vocabulary costs ~50x the rest of the chain, so the token is sampled without it
    and only checked against the grammar; only a rejected token is sampled again with the
    grammar applied to every candidate first. A grammar lets end-of-generation through only
    once it is complete.
    """

    def __init__(self, sampling: SamplingParams, seed: int, model: NativeModel) -> None:
        n_vocab = model.n_vocab
        outside = sorted(t for t in sampling.logit_bias if t >= n_vocab)
        if outside:
            raise InvalidSamplingError(
                f"logit_bias names token {outside[0]}, outside the vocabulary of {n_vocab}"
            )
        self._grammar: llama_cpp.llama_sampler_p | None = None
        if sampling.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                model.vocab, sampling.grammar.encode(), b"root"
            )
            if not grammar:  # llama.cpp's parser logged why; NULL is all it returns
                raise InvalidSamplingError(
                    "the grammar is not valid GBNF (or has no rule named `root`)"
                )
            self._grammar = grammar
            self._end = model.end_token
            self._ids = np.arange(n_vocab, dtype=np.int32)
            # The candidates (whole vocabulary) and the one-candidate check, reused each token.
            self._data = (llama_cpp.llama_token_data * n_vocab)()
            self._view = np.frombuffer(memoryview(self._data), dtype=_CANDIDATE)
            self._single = (llama_cpp.llama_token_data * 1)()
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain
        self.resampled = 0  # tokens the grammar rejected, sampled again under it

        def add(sampler: "llama_cpp.llama_sampler_p") -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)  # the chain owns it from here

        if sampling.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(sampling.logit_bias))(
                *(llama_cpp.llama_logit_bias(t, b) for t, b in sorted(sampling.logit_bias.items()))
            )
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
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
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self.chain, context.ctx, index))
        logits = np.ctypeslib.as_array(context.logits(index, len(self._ids)))
        token = self._apply(logits, grammar_first=False)
        if not self._allowed(token):
            self.resampled += 1
            token = self._apply(logits, grammar_first=True)
            if token < 0:  # the grammar allows nothing here (complete, and the end banned)
                token = self._end
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def _apply(
        self, logits: "np.ndarray[tuple[int], np.dtype[np.float32]]", *, grammar_first: bool
    ) -> int:
        """Run the chain (after the grammar, if asked) over every candidate; the token it
        selects, or -1 when the grammar left no candidate possible."""
        view = self._view
        view["id"] = self._ids
        view["logit"] = logits
        view["p"] = 0.0
        candidates = llama_cpp.llama_token_data_array(
            data=self._data, size=len(view), selected=-1, sorted=False
        )
        if grammar_first:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
            if not np.isfinite(view["logit"]).any():
                return -1
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(candidates))
        return int(self._data[candidates.selected].id)

    def _allowed(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (checked on a one-candidate array)."""
        self._single[0] = llama_cpp.llama_token_data(token, 1.0, 0.0)
        one = llama_cpp.llama_token_data_array(data=self._single, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(one))
        return bool(np.isfinite(self._single[0].logit))

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
