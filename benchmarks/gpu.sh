#!/usr/bin/env bash
# The GPU benchmarks of unlearn_jax in one go, for one H100/H200 (about 6-8 minutes), writing one markdown table.
#
#   bash benchmarks/gpu.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --smoke    # tiny sizes on any machine (2-core CPU: about 8 minutes); checks every step
#
# Runs, each with a time cap and all within GPU_BUDGET_S seconds (default 450; a step that would start after the
# budget is spent is listed as skipped; --smoke: 1800 s):
#   ResNet-18 train step (benchmarks/train_step.py, the project's whole-epoch scan, crop+flip), fp32 and bf16;
#   ResNet-18 SGD step vs PyTorch (benchmarks/resnet18_vs_torch.py, fp32/TF32, MFU of 495 TFLOP/s);
#   SalUn epoch vs PyTorch at batch 128 and 256, fp32 and bf16 (benchmarks/salun_vs_torch.py);
#   LM gradient-ascent step vs PyTorch at GPT-2-125M and Llama-1B sizes, bf16 (benchmarks/lm_step.py, MFU of 989),
#   and GPT-2-125M's JAX step with cuDNN's fused attention (--attention_impl=cudnn); NPO's step at Llama-1B size on
#   TOFU-shaped batches, full fine-tuning vs LoRA r=8 (lm_step.py --lora_rank);
#   the 8 x 100M-parameter merges (benchmarks/merge.py); ResNet-20 x8 weight matching (benchmarks/weight_matching.py);
#   256 MNIST-1D MLPs trained as one population (benchmarks/population.py --models=256, last).
# Output: $OUT/gpu.md (the table, the device named) and $OUT/gpu.log (every step's full output). OUT defaults to
# workdir/gpu; on the lent device machine $OUT is the folder whose files come back.
#
# The device machine (see the device tool's README) has JAX (CUDA), flax, optax, orbax, chex, absl, scikit-learn,
# scipy and PyTorch, but no internet and no ml_collections, which unlearn_jax.config imports. Carry it as a wheel:
# here, once, from the repository root (.whl/ is git-ignored):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl ml_collections
#
# then call the device tool's `run` with carry [".whl"] and the command `bash benchmarks/gpu.sh`. This script
# installs whatever .whl/*.whl holds into /tmp/site (no index, no dependencies) before it starts. PYTHON selects the
# interpreter (default python3).
set -u
cd "$(dirname "$0")/.."

SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; fi
PY=${PYTHON:-python3}
OUT=${OUT:-workdir/gpu}
BUDGET=${GPU_BUDGET_S:-$(( SMOKE ? 1800 : 450 ))}  # --smoke on a CPU compiles ResNet-18 seven times: minutes
mkdir -p "$OUT"
LOGS=$(mktemp -d)
MANIFEST=$LOGS/manifest.tsv
: > "$MANIFEST"
: > "$OUT/gpu.log"

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu.sh: installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU inside one process in the *_vs_torch scripts: JAX takes at most half of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}

if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  DEVICE="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
else
  DEVICE="no GPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
fi
VERSIONS=$("$PY" -c 'import importlib.metadata as m, jax
def v(d):
  try:
    return m.version(d)
  except m.PackageNotFoundError:
    return "absent"
print("jax %s (%s), torch %s" % (jax.__version__, jax.default_backend(), v("torch")))' 2>&1 | tail -1)
START=$SECONDS

# step NAME CAP_S ARGS...: runs python ARGS with a time cap (cut to what is left of the budget), logs it.
step() {
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  local log=$LOGS/$name.log
  if (( left < 10 )); then
    printf '%s\tskipped\t0\t%s\t%s\n' "$name" "$log" "$*" >> "$MANIFEST"
    return
  fi
  (( cap > left )) && cap=$left
  local t0=$SECONDS
  echo "== $name (cap ${cap}s): $PY $*" | tee -a "$OUT/gpu.log"
  timeout -k 5 "$cap" "$PY" "$@" > "$log" 2>&1
  local rc=$?
  grep -v -E '^[IW][0-9]{4} ' "$log" | tail -n 40 | tee -a "$OUT/gpu.log"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$log" "$*" >> "$MANIFEST"
}

if (( SMOKE )); then
  step resnet18_train_fp32 300 benchmarks/train_step.py --model=resnet18 --num_train=8 --batch_size=4 --epochs=1 --noaugment
  step resnet18_train_bf16 300 benchmarks/train_step.py --model=resnet18 --num_train=8 --batch_size=4 --epochs=1 --noaugment --dtype=bfloat16
  step resnet18_vs_torch 300 benchmarks/resnet18_vs_torch.py --batch=2 --steps=1 --rounds=1
  for b in 2 4; do for d in float32 bfloat16; do
    step "salun_b${b}_${d}" 300 benchmarks/salun_vs_torch.py --num_forget=$b --num_retain=$b --batch_size=$b --epochs=2 --dtype=$d
  done; done
  step lm_gpt2_125m_bf16 300 benchmarks/lm_step.py --config=tiny --batch=2 --seq=16 --dtype=bfloat16 --steps=1
  step lm_llama_1b_bf16 300 benchmarks/lm_step.py --config=tiny --batch=2 --seq=16 --dtype=bfloat16 --steps=1
  step merge_8x100m 300 benchmarks/merge.py --scale=0.02 --methods=linear,ties,regmean
  step weight_matching_x8 300 benchmarks/weight_matching.py --widths=1 --max_iter=2
  step lm_lora_npo 300 benchmarks/lm_step.py --config=tiny --batch=2 --seq=16 --steps=1 --lora_rank=4
  step population_256 300 benchmarks/population.py --models=4 --epochs=1 --loop=scan --sequential=1
else
  step resnet18_train_fp32 50 benchmarks/train_step.py --model=resnet18 --num_train=5120 --batch_size=256 --epochs=2
  step resnet18_train_bf16 50 benchmarks/train_step.py --model=resnet18 --num_train=5120 --batch_size=256 --epochs=2 --dtype=bfloat16
  step resnet18_vs_torch 50 benchmarks/resnet18_vs_torch.py --batch=128 --steps=50 --rounds=3 --peak_tflops=495
  for b in 128 256; do for d in float32 bfloat16; do
    step "salun_b${b}_${d}" 50 benchmarks/salun_vs_torch.py --num_forget=512 --num_retain=4608 --batch_size=$b --epochs=2 --dtype=$d
  done; done
  step lm_gpt2_125m_bf16 45 benchmarks/lm_step.py --config=gpt2-125m --batch=8 --seq=512 --dtype=bfloat16 --steps=10 --peak_tflops=989
  step lm_llama_1b_bf16 60 benchmarks/lm_step.py --config=llama-1b --batch=8 --seq=512 --dtype=bfloat16 --steps=10 --peak_tflops=989
  step merge_8x100m 100 benchmarks/merge.py --k=8
  step weight_matching_x8 45 benchmarks/weight_matching.py --widths=8
  # last, so that it never takes budget from the steps above
  step lm_gpt2_125m_bf16_cudnn 45 benchmarks/lm_step.py --config=gpt2-125m --batch=8 --seq=512 --dtype=bfloat16 --steps=10 --peak_tflops=989 --attention_impl=cudnn --sides=jax
  # NPO's unlearning step at Llama-3.2-1B shape on TOFU-shaped batches (8 QAs of 256 tokens), all weights vs LoRA
  step lm_llama_1b_npo_lora 60 benchmarks/lm_step.py --config=llama-1b --batch=8 --seq=256 --dtype=bfloat16 --steps=5 --lora_rank=8
  # 256 MNIST-1D MLPs trained as one population (10 epochs, whole-epoch scan) vs 8 of them trained alone, scaled
  step population_256 90 benchmarks/population.py --models=256 --epochs=10 --loop=scan --sequential=8
fi

{
  "$PY" benchmarks/gpu_table.py "$MANIFEST" "$DEVICE; $VERSIONS; $((SECONDS - START)) s in all$( ((SMOKE)) && echo '; --smoke sizes, not figures')"
} > "$OUT/gpu.md"
cat "$OUT/gpu.md"
FAILED=$(cut -f2 "$MANIFEST" | grep -cv '^0$')
rm -rf "$LOGS"
(( FAILED == 0 ))  # the exit status says whether every step ran to the end
