"""The llama.cpp build runs on the machine it is built for, and images carry no build-host CPU.

Machines that advertise AMX can fault in ggml's AMX kernels (a general protection fault at
`ldtilecfg`, killing the worker on its first real prompt). The native build keeps AMX out even
where -march=native would enable it; these tests prove that on any machine, AMX or not.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "deploy" / "build-llama-cpp.sh"
# AMX instructions as objdump prints them (tile config, loads, stores and dot products).
AMX = re.compile(r"\b(ldtilecfg|sttilecfg|tileloadd\w*|tilestored|tilezero|tilerelease|tdp\w+)\b")


def script(*args: str, **env: str) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "CMAKE_ARGS": "", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def cmake_flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"-D{name}=")]
    return value


def amx_macros(*flags: str) -> set[str]:
    """The AMX feature macros the C compiler defines with these flags."""
    cc = shutil.which("cc")
    assert cc, "no C compiler (make installs build-essential)"
    done = subprocess.run(
        [cc, *flags, "-dM", "-E", "-x", "c", "-"], input="", capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return set(re.findall(r"#define (__AMX_\w+__)", done.stdout))


def test_native_build_compiles_no_amx_even_on_an_amx_host() -> None:
    args = shlex.split(script("--cmake-args"))
    assert "-DGGML_NATIVE=ON" in args
    c_flags, cxx_flags = cmake_flag(args, "CMAKE_C_FLAGS"), cmake_flag(args, "CMAKE_CXX_FLAGS")
    assert c_flags == cxx_flags
    # -march=sapphirerapids is what -march=native means on an AMX Xeon: it turns AMX on ...
    assert {"__AMX_TILE__", "__AMX_INT8__", "__AMX_BF16__"} <= amx_macros("-march=sapphirerapids")
    # ... and the build's flags turn it off again, whichever comes first (ggml guards its AMX
    # kernels with these macros), while AVX-512 and VNNI stay.
    assert amx_macros(*c_flags.split(), "-march=sapphirerapids") == set()
    assert amx_macros("-march=sapphirerapids", *c_flags.split()) == set()


def test_the_installed_library_holds_no_amx_instructions() -> None:
    objdump = shutil.which("objdump")
    assert objdump, "objdump is missing (binutils, part of build-essential)"
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu*.so*"))
    assert libs, "llama-cpp-python has no libggml-cpu"
    for lib in libs:
        listing = subprocess.run(
            [objdump, "-d", "--no-show-raw-insn", str(lib)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "vfmadd" in listing  # the disassembly is real: SIMD code is there
        assert not AMX.findall(listing), f"{lib} holds AMX instructions"


def test_portable_build_does_not_target_the_build_host() -> None:
    args = shlex.split(script("--cmake-args", LLAMA_CPP_TARGET="portable"))
    assert "-DGGML_NATIVE=OFF" in args
    assert not any("native" in a and a != "-DGGML_NATIVE=OFF" for a in args)
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        lines = (ROOT / "deploy" / dockerfile).read_text().splitlines()
        text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
        assert "-march=native" not in text and "GGML_NATIVE=ON" not in text
        assert "LLAMA_CPP_TARGET=portable" in text or "LLAMA_CPP_TARGET=${LLAMA_CPP_TARGET}" in text
        assert "build-llama-cpp.sh" in text


def test_a_wheel_is_reused_only_for_the_same_build() -> None:
    python = sys.executable
    key = script("--key", python)
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert script("--key", python) == key
    assert script("--key", python, CMAKE_ARGS="-DGGML_CUDA=on") != key
    assert script("--key", python, LLAMA_CPP_TARGET="portable") != key
    assert script("--key", python, LLAMA_CPP_VERSION="0.3.35") != key


def test_the_venv_records_the_build_it_has() -> None:
    stamp = Path(sys.prefix) / ".llama-cpp-build"
    assert stamp.read_text().strip() == script("--key", sys.executable)
