#!/usr/bin/env bash
# The GPU proof in one command: install the carried wheels, run loadtests.bench_gpu on the
# Llama-3.2-3B shape, and leave gpu.json, the decode profile and the log in $OUT.
#
#   On the lent GPU machine, from the repository root, carrying .gpu-wheels
#   (made here beforehand by `python -m tools.gpu_wheels`):
#       bash loadtests/gpu_device_run.sh
#   Rehearsal on a CPU machine: the same steps on the tiny shape. pip installs the wheels
#   for the device's CPython 3.12 (so a set that would not install fails here too), and
#   the benchmark then runs on this machine's own packages (its Python may be another):
#       bash loadtests/gpu_device_run.sh --rehearse
#
# Environment: OUT, the folder the results go to (required on the device; a temporary
# folder when the rehearsal has none); OURO_GPU_WHEELS, the wheel folder (.gpu-wheels);
# PYTHON, the interpreter (python3 on the device, .venv/bin/python in the rehearsal);
# OURO_GPU_BENCH_TIMEOUT_S, the benchmark's limit in seconds (420: with the install it
# ends inside 8 minutes; gpu.json is rewritten after each phase, so a run cut short
# keeps what it measured).
#
# Leaves in $OUT: gpu.json, profile_trace.json.gz (batch-1 decode steps, Chrome trace
# format) and bench.log. Exit status: the benchmark's (1 when a check failed, 124 when
# it ran out of time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=device
case "${1:-}" in
  "") ;;
  --rehearse) mode=rehearse ;;
  *)
    echo "usage: $0 [--rehearse]" >&2
    exit 2
    ;;
esac

wheels=${OURO_GPU_WHEELS:-.gpu-wheels}
limit=${OURO_GPU_BENCH_TIMEOUT_S:-420}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
site=$scratch/site
if [[ $mode == device ]]; then
  python=${PYTHON:-python3}
  out=${OUT:?OUT must name the folder the results go to}
  bench=(--shape llama-3.2-3b --device cuda)
  target=()
else
  python=${PYTHON:-.venv/bin/python}
  out=${OUT:-$(mktemp -d)}
  bench=(--shape tiny --device cpu)
  read -r -a target <<<"$("$python" -m tools.gpu_wheels --target-flags)"
fi
mkdir -p "$out"
: >"$out/bench.log"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1

shopt -s nullglob
files=("$wheels"/*.whl)
shopt -u nullglob
if ((${#files[@]})); then
  echo "installing ${#files[@]} wheels from $wheels"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${target[@]}" "${files[@]}"
  if [[ -d $site/bitsandbytes ]] && ! compgen -G "$site/bitsandbytes/libbitsandbytes_cuda130*" >/dev/null; then
    echo "bitsandbytes is installed without its CUDA 13 library" >&2
    exit 1
  fi
elif [[ $mode == device ]]; then
  echo "no wheels in $wheels: make them with python -m tools.gpu_wheels and carry the folder" >&2
  exit 1
else
  echo "rehearsal: no wheels in $wheels, nothing to install"
fi
if [[ $mode == device ]]; then
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  if command -v nvidia-smi >/dev/null; then nvidia-smi | tee "$out/bench.log"; fi
fi

set +e
timeout --signal=INT --kill-after=20 "$limit" \
  "$python" -m loadtests.bench_gpu "${bench[@]}" \
  --out "$out/gpu.json" --trace "$out/profile_trace.json.gz" 2>&1 | tee -a "$out/bench.log"
status=${PIPESTATUS[0]}
set -e
echo "gpu_device_run ($mode): status $status; in $out: $(cd "$out" && echo *)"
exit "$status"
