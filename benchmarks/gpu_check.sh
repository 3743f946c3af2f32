#!/usr/bin/env bash
# GPU checks (issue 17), one script, < 7 min on one GPU; on a CPU-only machine it runs the same
# steps tiny (1 epoch, 400 images) and skips the GPU-only rows, so CI keeps it working.
#
#   benchmarks/gpu_check.sh <cifar10-mini.zip> [workdir]          (EPOCHS=4 by default on a GPU)
#
# Each kit train row is cut at ROW_TIMEOUT seconds (default 120; `timeout`), so one slow row
# (a first torch.compile) cannot eat a lent machine's whole budget: the script goes on and says so.
# Every line is also appended to $WORK/gpu_check.out as it is printed.
#
# 1. kit fetch cifar10-mini --from <zip>
# 2. kit train recipes/resnet_fast.yaml on fold 0 with train.mixed_precision bf16, fp16, no (fp32)
#    and bf16 + train.compile: prints last-epoch images/s, training images/s over all epochs,
#    fold-0 OOF accuracy and wall seconds per row
# 3. determinism: the fp32 row again with the same seed; its OOF file compared with the first
# 4. step cost: benchmarks/step_cost.py, kit's loop vs a hand-written PyTorch loop (fp32)
# Exit code 0 when every step ran; the numbers are for a person to read (and record).
set -euo pipefail
ZIP=${1:?usage: benchmarks/gpu_check.sh <cifar10-mini.zip> [workdir]}
WORK=${2:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
T0=$(date +%s)

GPU=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
if [ -n "$GPU" ]; then
  EPOCHS=${EPOCHS:-4}; ROWS="bf16 fp16 no bf16+compile"; SHRINK=(); STEP=(--epochs 3 --rounds 2)
  CAP=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  echo "device: $GPU (compute capability $CAP); torch $(python -c 'import torch; print(torch.__version__)')"
else
  EPOCHS=1; ROWS="no"; SHRINK=(data.limit=400 train.batch_size=64); STEP=(--epochs 1 --rounds 1 --limit 400)
  echo "device: CPU only -- tiny mode (1 epoch, 400 images); GPU rows (bf16, fp16, compile) skipped"
fi
mkdir -p "$WORK"; echo "workdir: $WORK"
exec > >(tee -a "$WORK/gpu_check.out") 2>&1  # what ran so far survives a killed session
ROW_TIMEOUT=${ROW_TIMEOUT:-120}

python -m kaggle_kit fetch cifar10-mini --from "$ZIP" --data-dir "$WORK/data" > "$WORK/fetch.log" 2>&1 \
  || { tail -5 "$WORK/fetch.log"; exit 1; }

train_row() {  # train_row <run name> <overrides...>: one kit train of fold 0, log in $WORK/<name>.log
  local name=$1; shift
  timeout "$ROW_TIMEOUT" python -m kaggle_kit train recipes/resnet_fast.yaml competition=cifar10-mini 'cv.folds=[0]' \
    cv.refit=false cv.test_from=folds train.epochs="$EPOCHS" "${SHRINK[@]}" "$@" \
    --name "$name" --data-dir "$WORK/data" --runs-dir "$WORK/runs" --force > "$WORK/$name.log" 2>&1 \
    || { echo "FAILED or over ${ROW_TIMEOUT}s: $name (last lines of $WORK/$name.log):"
         tail -5 "$WORK/$name.log"; return 1; }
}

row_line() {  # row_line <label> <run name>: the numbers of one finished run
  python - "$1" "$WORK/runs/$2" <<'EOF'
import json, sys
from pathlib import Path
label, run = sys.argv[1], Path(sys.argv[2])
rows = [json.loads(x) for x in (run / "fold0" / "metrics.jsonl").read_text().splitlines()]
done = json.loads((run / "fold0" / "done.json").read_text())
s, prov = json.loads((run / "summary.json").read_text()), json.loads((run / "provenance.json").read_text())
print(f"{label:14s} {prov.get('mixed_precision', '?'):>5s}  {rows[-1]['images_per_s']:10.0f} "
      f"{done['images_per_s']:10.0f}  {s['cv']['accuracy']:.4f}  {s['timings']['total_s']:7.1f}")
EOF
}

FAILED=0
echo
echo "kit train resnet_fast, cifar10-mini fold 0, $EPOCHS epochs"
printf "%-14s %5s  %10s %10s  %-6s  %7s\n" row precision "im/s last" "im/s all" "OOF" "wall s"
for row in $ROWS; do
  name="gc_${row/+/_}"
  mp=${row%%+*}
  extra=(train.mixed_precision="$mp")
  [[ $row == *compile* ]] && extra+=(train.compile=true)
  if train_row "$name" "${extra[@]}"; then row_line "$row" "$name"; else FAILED=1; fi
done

echo
if train_row gc_no_again train.mixed_precision=no; then
  python - "$WORK/runs/gc_no/fold0/oof.csv" "$WORK/runs/gc_no_again/fold0/oof.csv" <<'EOF'
import sys
import pandas as pd
a, b = (pd.read_csv(p, dtype={"Id": str}).set_index("Id").sort_index() for p in sys.argv[1:])
same_bytes = open(sys.argv[1], "rb").read() == open(sys.argv[2], "rb").read()
diff = float((a - b).abs().to_numpy().max())
agree = float((a.to_numpy().argmax(1) == b.to_numpy().argmax(1)).mean())
print(f"determinism (fp32, same seed, run twice): oof.csv {'byte-identical' if same_bytes else 'differs'}; "
      f"max |prob diff| {diff:.2e}; argmax agreement {agree:.4f}")
EOF
else FAILED=1; fi

echo
echo "step cost: kit loop vs hand-written loop (fp32, no augmentation; benchmarks/step_cost.py)"
python benchmarks/step_cost.py --competition cifar10-mini --data-dir "$WORK/data" "${STEP[@]}" \
  2>&1 | grep -E "^(round|images|kit_|[a-z_0-9]+ batch)" || FAILED=1

echo
echo "gpu_check: $(( $(date +%s) - T0 )) s total; logs and runs in $WORK"
exit $FAILED
