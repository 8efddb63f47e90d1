"""The llama.cpp backend (llama-cpp-python), holding one slot."""

import logging
import time
from collections.abc import Generator
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt

from shared.job import GenerationJob, SamplingParams
from shared.tokenizer import PromptTokenizer
from worker.engine import EngineBusyError, EngineCheckError, EngineInfo, Sampled
from worker.engine_check import CHECK_MESSAGES, check_decoding

log = logging.getLogger(__name__)

_SLOT = 0

_FILE_TYPES = {
    getattr(llama_cpp, name): name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_")
    for name in dir(llama_cpp)
    if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"
}


def quantization(metadata: dict[str, str]) -> str:
    """The weights' type as llama.cpp names it ("Q4_1", "F16", ...), from `general.file_type`."""
    file_type = metadata.get("general.file_type", "")
    return _FILE_TYPES.get(int(file_type), "unknown") if file_type.isdigit() else "unknown"


class LlamaEngine:
    """One model loaded once; prompts rendered with the GGUF's own chat template."""

    def __init__(
        self,
        gguf: Path,
        *,
        n_ctx: int,
        threads: int | None,
        n_gpu_layers: int,
        flash_attn: bool,
    ) -> None:
        started = time.perf_counter()
        self._llama = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers,
            flash_attn=flash_attn,
            verbose=False,
        )
        self._vocab = self._llama._model.vocab
        n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._eog_ids = np.array(
            [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)],
            dtype=np.intc,
        )
        self._tokenizer = PromptTokenizer(self._llama)
        offloaded = n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        self._info = EngineInfo(
            n_ctx=self._llama.n_ctx(),
            backend="cuda" if offloaded else "cpu",
            slots=1,
            load_seconds=time.perf_counter() - started,
            quantization=quantization(self._llama.metadata),
        )
        self._sequence: Generator[int, None, None] | None = None

    @property
    def info(self) -> EngineInfo:
        return self._info

    def prompt_tokens(self, job: GenerationJob) -> list[int]:
        return self._tokenizer.job_tokens(job)

    def start(self, prompt: list[int], sampling: SamplingParams, seed: int) -> int:
        if self._sequence is not None:
            raise EngineBusyError("the llama.cpp backend holds one sequence")
        self._llama.set_seed(seed)
        # Evaluate every prompt from scratch: reusing a cached prefix evaluates the tail in a
        # different batch shape, which can flip near-tie greedy picks between equal requests.
        self._llama.reset()  # type: ignore[no-untyped-call]
        self._sequence = self._llama.generate(
            prompt,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
            logits_processor=self._eog_ban(len(prompt), sampling),
        )
        return _SLOT

    def start_group(
        self, prompt: list[int], sampling: SamplingParams, seeds: list[int]
    ) -> list[int]:
        if len(seeds) != 1:
            raise EngineBusyError("the llama.cpp backend holds one sequence")
        return [self.start(prompt, sampling, seeds[0])]

    def _eog_ban(
        self, prompt_len: int, sampling: SamplingParams
    ) -> llama_cpp.LogitsProcessorList | None:
        """Bans end-of-generation tokens while `ignore_eos` or `min_tokens` asks to."""
        if not sampling.ignore_eos and sampling.min_tokens == 0:
            return None
        eog = self._eog_ids

        def ban(
            input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
        ) -> npt.NDArray[np.single]:
            if sampling.suppress_eog(len(input_ids) - prompt_len):
                scores[eog] = -np.inf
            return scores

        return llama_cpp.LogitsProcessorList([ban])

    def step(self) -> list[Sampled]:
        if self._sequence is None:
            return []
        token = next(self._sequence)
        return [
            Sampled(
                slot=_SLOT,
                token=token,
                piece=self._llama.detokenize([token]),
                end_of_generation=bool(llama_cpp.llama_vocab_is_eog(self._vocab, token)),
            )
        ]

    def release(self, slot: int) -> None:
        if self._sequence is not None:
            self._sequence.close()
            self._sequence = None

    def self_check(self) -> None:
        try:
            self._check()
        except EngineCheckError:
            raise
        except (RuntimeError, ValueError) as exc:  # llama_decode failed, a bad template, ...
            raise EngineCheckError(f"{type(exc).__name__}: {exc}") from exc

    def _check(self) -> None:
        n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)

        def logits(sampled: Sampled) -> npt.NDArray[np.float32]:
            pointer = llama_cpp.llama_get_logits_ith(self._llama._ctx.ctx, -1)
            return np.ctypeslib.as_array(pointer, shape=(n_vocab,))

        check_decoding(self, self._tokenizer.chat(CHECK_MESSAGES), n_vocab, logits)
