#!/usr/bin/env bash
# The converged benchmark's cells on a borrowed GPU machine (one short, prepared run; see BENCHMARKS.md).
# It expects, in the ignored folder .devcarry/: minilm/ (the packaged all-MiniLM-L6-v2 with its weights
# stored as fp16; computed in fp32), glue.tar.xz (../shared/data/glue) and the transformers 5.24.0 wheel
# or, smaller, the wheel's contents as transformers-5.24.0.tar.xz; optionally the peft 0.21.2 wheel.
# Results land in benchmarks/results/converged/ and, as a tarball, in $OUT (refreshed every 20 s, so a run
# stopped at its limit still returns what it finished).
# Usage: [SKIP_SMOKE=1] [EXTRA="--rows ... --seeds ..."] bash benchmarks/gpu_converged.sh WORKERS DEADLINE HARD_LIMIT
set -u
WORKERS=${1:-12}; DEADLINE=${2:-380}; HARD=${3:-500}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi -L; nproc
# the wheel, or (smaller, to fit the 64 MiB that travels) its contents as transformers-<version>.tar.xz
mkdir -p /tmp/site
if ls .devcarry/transformers-*.tar.xz >/dev/null 2>&1; then tar -C /tmp/site -xJf "$(ls .devcarry/transformers-*.tar.xz | tail -1)"
else python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/transformers-*.whl; fi \
  && export PYTHONPATH=/tmp/site:$PWD/src || export PYTHONPATH=$PWD/src
# the peft rows (peft-prompt, peft-lora) pin peft 0.21.2 where its wheel travels too (else the image's peft)
# (its needs, accelerate among them, are in the image); the smoke check then runs peft-lora too
PEFT_WHL=$(ls .devcarry/peft-*.whl 2>/dev/null | tail -1); SMOKE_PEFT=
[ -n "$PEFT_WHL" ] && [[ ${PYTHONPATH:-} == /tmp/site:* ]] \
  && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$PEFT_WHL" && SMOKE_PEFT=peft-lora
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.is_available())" \
  || { echo "the carried transformers does not import: the image's, without the carried peft"; export PYTHONPATH=$PWD/src
       python3 -c "import transformers; print('fallback transformers', transformers.__version__)"; }
python3 -c "import peft; print('peft', peft.__version__)" || echo "no peft: the peft rows are skipped"
mkdir -p /tmp/glue && tar -C /tmp -xJf .devcarry/glue.tar.xz && export LTUNING_GLUE_DIR=/tmp/glue
RES=benchmarks/results/converged; mkdir -p $RES
# the JSONs only: no claims, locks or checkpoints (a GPU run's checkpoint does not resume on the CPU's fp32 weights)
pack() { tar -czf "$OUT/converged.tar.gz.tmp" --exclude=.checkpoints --exclude='*.claim' --exclude=.claims.lock \
  -C benchmarks/results converged 2>/dev/null && mv "$OUT/converged.tar.gz.tmp" "$OUT/converged.tar.gz"; }
# a check of every code path on the GPU first (tiny budgets, results in /tmp): stop early if it breaks
[ -n "${SKIP_SMOKE:-}" ] || LTUNING_SMOKE_DIR=/tmp/smoke timeout 90 python3 benchmarks/converged.py --smoke --tasks rte \
  --rows lt-prefix prompt full-finetune $SMOKE_PEFT --model-path .devcarry/minilm --stop-on-error > "$OUT/smoke.log" 2>&1
rc=$?; tail -5 "$OUT/smoke.log"; [ $rc -eq 0 ] || { echo "smoke failed ($rc)"; exit 3; }
( while true; do sleep 20; pack; done ) & PACKER=$!
timeout "$HARD" python3 benchmarks/converged.py --workers "$WORKERS" --model-path .devcarry/minilm \
  --deadline "$DEADLINE" ${EXTRA:-} > "$OUT/run.log" 2>&1
echo "runner rc $?"; kill $PACKER; find $RES -name '*.claim' -delete; pack
grep -c -- "->" "$OUT/run.log"; ls $RES | wc -l; ls $RES/lr | wc -l; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
