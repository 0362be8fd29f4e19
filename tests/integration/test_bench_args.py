"""The benchmarks refuse bad arguments the way the ``tqstar`` command line does: one ``PROG: error: ...`` line on
stderr, exit status 2, no traceback, before any model is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize(("script", "args", "message"), [
    ("speed.py", ["--ablation-tokens", "0"], "--ablation-tokens must be an integer >= 1, got 0"),
    ("speed.py", ["--naive-steps", "9", "--tokens", "8"], "--naive-steps must be an integer from 1 to --tokens (8), got 9"),
    ("speed.py", ["--naive-tokens", "0"], "--naive-tokens must be an integer from 1 to --tokens (64), got 0"),
    ("speed.py", ["--greedy-reps", "0"], "--greedy-reps must be an integer >= 1, got 0"),
    ("speed.py", ["--batch-sizes", "4", "-1"], "--batch-sizes must be an integer >= 1, got -1"),
    ("speed.py", ["--prompts", "9"], "--prompts must be an integer from 1 to 8, got 9"),
    ("speed.py", ["--rm-scales", "nan"], "--rm-scales must be finite numbers > 0 (1e-06 to 1e+06), got nan"),
    ("speed.py", ["--k", "0"], "`k` must be an integer >= 1, got 0"),  # DecodeParams' own check, as the CLI's
    ("speed.py", ["--tokens", "x"], "argument --tokens: invalid int value: 'x'; see speed.py --help"),
    ("speed.py", ["--json", "docs"], "--json file 'docs' is a directory; give a file path"),
    ("step_profile.py", ["--reps", "0"], "--reps must be an integer >= 1, got 0"),
    ("step_profile.py", ["--tokens", "0"], "--tokens must be an integer >= 4, got 0"),
    ("step_profile.py", ["--before", "nowhere"], "--before 'nowhere' holds no tqstar package; give the folder that"
                                                  " holds tqstar/ (e.g. the src of a checkout)"),
])
def test_a_bad_argument_is_one_line_and_exit_2(script, args, message):
    run = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120,
                         cwd=BENCH.parent)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"{script}: error: {message}\n")
