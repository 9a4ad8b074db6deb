#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench`, `llama-quantize` and `llama-completion` from the source that
# the llama-cpp-python sdist on PyPI vendors, for tools/bench_vs_pytorch.py and
# tools/check_gguf_llama_cpp.py. The build is cached
# outside the repo; a second run only prints where it is.
#
#     tools/build_llama_cpp.sh            # prints the build directory (has bin/llama-bench, bin/llama-quantize, bin/llama-completion)
#
# LLAMA_CPP_PYTHON_VERSION picks the sdist (default below), LUMIND_LLAMA_CPP
# the cache (default ~/.cache/lumind/llama.cpp). Needs python3 and a C++
# compiler; cmake and ninja come from PyPI when they are not installed.
#
# Built with -march=native but without AMX: with GCC 12, llama.cpp's AMX
# int8 path dies of an illegal instruction on Sapphire Rapids (its tile
# set-up is optimised away), so its q8_0 figures are its AVX-512/AVX2 path.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
root="${LUMIND_LLAMA_CPP:-$HOME/.cache/lumind/llama.cpp}/$version"
if [ -x "$root/build/bin/llama-bench" ] && [ -x "$root/build/bin/llama-quantize" ] && [ -x "$root/build/bin/llama-completion" ]; then
  echo "$root/build"
  exit 0
fi
mkdir -p "$root"
log="$root/build.log"
echo "building llama.cpp (llama-cpp-python $version) in $root; log: $log" >&2

# the sdist (an sdist has no wheel to pick, so fetch it by PyPI's JSON API)
if [ ! -d "$root/src/vendor/llama.cpp" ]; then
  python3 - "$version" "$root" <<'EOF'
import json, os, sys, tarfile, urllib.parse, urllib.request
version, root = sys.argv[1], sys.argv[2]
api = "https://pypi.org/pypi/llama-cpp-python/json"
releases = json.load(urllib.request.urlopen(api))["releases"]
sdist = next(u for u in releases[version] if u["packagetype"] == "sdist")
path = f"{root}/{sdist['filename']}"
urllib.request.urlretrieve(urllib.parse.urljoin(api, sdist["url"]), path)
with tarfile.open(path) as t:
    top = t.getnames()[0].split("/")[0]
    t.extractall(root, filter="data")
os.rename(f"{root}/{top}", f"{root}/src")
os.remove(path)
EOF
fi
src="$root/src/vendor/llama.cpp"

# cmake and ninja, from PyPI where missing
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  python3 -m pip install --quiet --target "$root/py" cmake ninja
  export PATH="$root/py/bin:$PATH" PYTHONPATH="$root/py${PYTHONPATH:+:$PYTHONPATH}"
fi

no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$src" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
cmake --build "$root/build" --target llama-bench llama-quantize llama-completion -j "$(nproc)" >>"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
echo "$root/build"
