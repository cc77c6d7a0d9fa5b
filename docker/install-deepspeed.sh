#!/usr/bin/env bash
# Install DeepSpeed with the ops scaletrain uses prebuilt for TORCH_CUDA_ARCH_LIST, so GPU
# workers never JIT-compile at start-up. Usage: install-deepspeed.sh VERSION
set -euo pipefail

version="${1:?usage: install-deepspeed.sh DEEPSPEED_VERSION}"
: "${TORCH_CUDA_ARCH_LIST:?set TORCH_CUDA_ARCH_LIST, e.g. 8.0;8.6;9.0}"

# Fused Adam / Lamb and the CPU Adam (ZeRO-Offload), the utils op (flatten/unflatten) and
# async I/O (ZeRO-Infinity); DS_BUILD_OPS=1 would also try ops that need extra toolchains.
export DS_BUILD_FUSED_ADAM=1 DS_BUILD_FUSED_LAMB=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 DS_BUILD_AIO=1
export MAX_JOBS="${MAX_JOBS:-8}"

pip install --no-build-isolation "deepspeed==${version}"
ds_report
