# Sourced by the one-call GPU recipes (scripts/*_gpu.sh): timing and log helpers, the carried wheels, and one
# line naming the GPU and library versions. Needs START (epoch seconds) and OUT (results folder) set.
# SKIP_INSTALL=1 uses the current environment (a CPU dry run).
el() { echo $(( $(date +%s) - START )); }
say() { echo "[$(el)s] $*" | tee -a "$OUT/run.log"; }
if [ -z "${SKIP_INSTALL:-}" ]; then
  # Pure-Python wheels only: the device's Python (3.12) already has regex, and a cp311 wheel will not install.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*-py3-none-any.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
xc() { python3 -c "from xcounter.cli import run; run()" "$@"; }
# stop_at_deadline SECONDS PID...: wait until SECONDS after START (or until every PID has ended), then stop each
# PID's whole process group (the runs are started with setsid), so every run can be finished at its checkpoint.
stop_at_deadline() {
  local deadline=$1 pid; shift
  while [ "$(el)" -lt "$deadline" ]; do
    local alive=0; for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break; sleep 5
  done
  for pid in "$@"; do kill -TERM -- -"$pid" 2>/dev/null; done; sleep 3
  for pid in "$@"; do kill -KILL -- -"$pid" 2>/dev/null; done
}
say "$(nvidia-smi -L 2>/dev/null | head -1) | $(python3 -c 'import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.is_available())')"
