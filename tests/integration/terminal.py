"""A program driven in a pseudo-terminal as a person would (pexpect), its output read with
the terminal's escape sequences (colours, cursor moves) taken out."""

import os
import re
import sys
import time
from pathlib import Path

import pexpect

from tests.integration.procs import ROOT

# CSI sequences (colours, cursor, modes), OSC titles, and the two-byte escapes.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>]")


def plain(text: str) -> str:
    return _ESCAPES.sub("", text).replace("\r", "")


class Terminal:
    """`python -m shared.cli ARGS` in a 50x200 terminal; `expect` searches what it printed
    since the last match, escape sequences removed."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("a", encoding="utf-8")
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "shared.cli", *args],
            cwd=str(ROOT),
            # No cursor position requests: nobody answers them in a pseudo-terminal.
            env={**os.environ, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1", **env},
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(50, 200),
        )
        self.child.logfile_read = self.log
        self._raw = ""
        self._at = 0  # where the next search starts, in the plain text

    @property
    def text(self) -> str:
        return plain(self._raw)

    def expect(self, pattern: str, timeout_s: float = 180) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        compiled = re.compile(pattern)
        while True:
            found = compiled.search(self.text, self._at)
            if found:
                self._at = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in the terminal:\n{self.text[self._at :]}")
            try:
                self._raw += self.child.read_nonblocking(65536, timeout=min(left, 1))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                found = compiled.search(self.text, self._at)
                if found:
                    self._at = found.end()
                    return found
                raise AssertionError(
                    f"the program ended without {pattern!r}:\n{self.text[self._at :]}"
                ) from None

    def type(self, line: str, prompt: str = "you>") -> None:
        """Wait for the prompt (keys typed before it would reach a terminal still in line
        mode), then type the line and press Enter."""
        self.expect(re.escape(prompt))
        self.child.send(line + "\r")  # Enter, as a terminal sends it

    def interrupt(self) -> None:
        self.child.sendintr()

    def end_of_input(self, prompt: str = "you>") -> None:
        self.expect(re.escape(prompt))
        self.child.sendeof()

    def wait(self, timeout_s: float = 30) -> int:
        """The exit status, once the program has ended by itself."""
        self.child.expect(pexpect.EOF, timeout=timeout_s)
        self.child.close()
        status = self.child.exitstatus
        assert status is not None, f"killed by signal {self.child.signalstatus}"
        return status

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.log.close()
