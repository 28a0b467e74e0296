#!/usr/bin/env bash
# hf_distill's GPU check (issue 16): every check in order of value, each under its own budget, about 6 minutes of
# checks on one H200. Writes report.md, figures.json and log.txt to $OUT (the device tool's output folder) or
# outputs/gpu_check (ignored by git). Extra arguments go to gpu_check.py: --dry-run, --checks bdf, --budget b=60,
# --total-budget 200.
#
#   here, once:      python benchmarks/gpu/prepare_carry.py        # wheels + quick start stand-ins -> build/gpu_carry
#   device tool:     run(command="bash benchmarks/gpu/run_all.sh", carry=["build/gpu_carry"], timeout_s=480)
#   CPU dry run:     OUT=/tmp/gpu_check bash benchmarks/gpu/run_all.sh --dry-run
#
# Nothing is downloaded: the carried wheels (if any) are installed with --no-index into a folder of their own that
# goes first on PYTHONPATH, so the image's torch, Triton and CUDA stay as they are.
set -uo pipefail
cd "$(dirname "$0")/../.."

CARRY="${GPU_CHECK_CARRY:-build/gpu_carry}"
OUT_DIR="${OUT:-outputs/gpu_check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"

SITE="$(mktemp -d /tmp/gpu_check_site.XXXXXX)"
trap 'rm -rf "$SITE"' EXIT
PIP=("$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$SITE")
if compgen -G "$CARRY/wheels/*.whl" > /dev/null; then
  if ! "${PIP[@]}" "$CARRY"/wheels/*.whl; then
    # one wheel that does not fit this Python must not cost the others: install them one by one, say which failed
    for wheel in "$CARRY"/wheels/*.whl; do
      "${PIP[@]}" --upgrade "$wheel" || echo "run_all.sh: $(basename "$wheel") did not install; the image's own is used" >&2
    done
  fi
fi
# hf_distill itself, built from this tree, unless this Python already has it: installed, its card templates (a
# package, templates included) import as they do for users.
if ! (cd / && "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('hf_distill') is None)"); then
  "${PIP[@]}" --no-build-isolation . \
    || echo "run_all.sh: could not install hf_distill from this tree; gpu_check.py uses the source tree (no card templates)" >&2
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# No network there: fail fast instead of waiting on Hub timeouts.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" benchmarks/gpu/gpu_check.py --out "$OUT_DIR" --assets "$CARRY" "$@" 2>&1 | tee "$OUT_DIR/log.txt"
exit "${PIPESTATUS[0]}"
