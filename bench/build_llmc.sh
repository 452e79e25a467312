#!/usr/bin/env bash
# Build llm.c's train_gpt2cu with cuDNN attention on the GPU machine (CUDA 13), for
# bench/gpt2_step.py. Takes the folders as arguments; fetches nothing; edits the llm.c
# copy it is given (two lines that CUDA 13 and cuDNN's pip layout need):
#   bench/build_llmc.sh LLMC_DIR CUDNN_FRONTEND_DIR        (the latter holds include/)
# cuDNN's headers and libraries come from PyTorch's wheel (nvidia.cudnn).
set -euo pipefail
llmc=$(realpath "$1"); frontend=$(realpath "$2")
# CUDA 13: cudaMemAdvise takes a cudaMemLocation, no longer a device number
sed -i 's/cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId)/cudaMemAdviseSetPreferredLocation, cudaMemLocation{cudaMemLocationTypeHost, 0})/' \
    "$llmc/llmc/cuda_utils.cuh"
grep -q -- "-lcudnn -lnvrtc -lcuda" "$llmc/Makefile" || sed -i 's/NVCC_LDFLAGS += -lcudnn$/NVCC_LDFLAGS += -lcudnn -lnvrtc -lcuda/' "$llmc/Makefile"
cudnn=$(python3 -c "import nvidia.cudnn, os; print(list(nvidia.cudnn.__path__)[0])")
libs=$(mktemp -d)
for f in "$cudnn"/lib/libcudnn*.so.9; do ln -sf "$f" "$libs/$(basename "$f" .9)"; done
cd "$llmc"
[ -e cudnn-frontend ] || ln -s "$frontend" cudnn-frontend     # where llm.c's Makefile looks for it
CPATH="$cudnn/include" LIBRARY_PATH="$libs:$cudnn/lib" \
    make train_gpt2cu NO_MULTI_GPU=1 USE_CUDNN=1 CUDNN_FRONTEND_PATH="$frontend/include" >&2
echo "LD_LIBRARY_PATH=$cudnn/lib"
