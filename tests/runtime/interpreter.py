"""Running a script under Triton's CPU interpreter, for the kernel tests.

The interpreter is chosen when ``triton.jit`` decorates a kernel, i.e. at import, so each check
runs in a fresh process with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def run_interpreted(script: str) -> str:
    """The script's standard output; fails the test with its error output if it exits non-zero."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
