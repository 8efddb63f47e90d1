"""Requantizing a registered model's file with llama.cpp's own quantize API.

The shipped SmolLM2 file is Q4_1, which has no fast multi-token kernel on x86; the same
weights requantized to Q4_0 decode faster batched, at a small cost in quality from quantizing
twice (tests/benchmarks/bench_quant.py measures both).
"""

import ctypes
import uuid
from enum import StrEnum
from pathlib import Path

from shared.model_registry.store import RegistryError


class QuantType(StrEnum):
    Q4_0 = "Q4_0"
    Q8_0 = "Q8_0"

    @property
    def ftype(self) -> int:
        import llama_cpp  # here: every `tokenq` command imports this module

        return int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{self.value}"))


def quantize(source: Path, models_dir: Path, kind: QuantType, threads: int = 0) -> Path:
    """Write `source` requantized to `kind` into `models_dir` under a temporary name; the
    caller registers it (which names it by its digest). `threads` <= 0: every core."""
    import llama_cpp

    models_dir.mkdir(parents=True, exist_ok=True)
    output = models_dir / f".quantize-{uuid.uuid4().hex}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = kind.ftype
    params.nthread = threads
    params.allow_requantize = True  # the source is quantized already (Q4_1)
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(output).encode(), ctypes.byref(params)
    )
    if status != 0 or not output.is_file():
        output.unlink(missing_ok=True)
        raise RegistryError(f"llama.cpp could not quantize {source} to {kind} (status {status})")
    return output
