#!/usr/bin/env bash
# The end-to-end CPU demo: synth-amass -> render-amass -> build-shards -> train.py -> evaluate.py -> lavimo-search.
# Each stage leaves a stamp in $DEMO/.done-<stage> after it succeeds, so a second run skips it;
# `make demo-clean` starts over. Settings are chosen for a 2-core CPU and printed at the start.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BIN=$VENV/bin
DEMO=${DEMO:-demo}
MOTIONS=${DEMO_MOTIONS:-800}
TEST_FRACTION=${DEMO_TEST_FRACTION:-0.15}
VAL_FRACTION=${DEMO_VAL_FRACTION:-0.07}
PRESET=${DEMO_PRESET:-demo}
SIZE=${DEMO_SIZE:-112}
FPS=${DEMO_FPS:-10}
# epochs: the preset's (training/presets/demo.json for 'demo') unless DEMO_EPOCHS is set
EPOCHS=${DEMO_EPOCHS:-$("$BIN/python" -c 'import sys; from lavimo.training.config import load_run_config; print(load_run_config(sys.argv[1]).train.epochs)' "$PRESET")}
WORKERS=${DEMO_WORKERS:-2}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
mkdir -p "$DEMO"
TIMES="$DEMO/stage-times.txt"
: > "$TIMES.new"

echo "LAVIMO demo: $MOTIONS synthetic motions (test fraction $TEST_FRACTION, val $VAL_FRACTION), videos ${SIZE}x${SIZE} at ${FPS} fps" \
     "(CPU settings; the paper renders 512x512 at 20 fps), 13 avatars x 4 lighting setups, preset '$PRESET', $EPOCHS epochs"

stage() {  # stage NAME COMMAND...
  local name=$1; shift
  local stamp="$DEMO/.done-$name"
  if [[ -f $stamp ]]; then
    echo "== $name: already complete (remove $stamp or run 'make demo-clean' to redo)"
    printf '%-8s %8s\n' "$name" "skipped" >> "$TIMES.new"
    return
  fi
  echo "== $name: $*"
  local t0=$SECONDS
  "$@"
  local dt=$((SECONDS - t0))
  date -u +%FT%TZ > "$stamp"
  printf '%-8s %7ss\n' "$name" "$dt" >> "$TIMES.new"
}

stage synth  "$BIN/synth-amass" --out "$DEMO/corpus" --motions "$MOTIONS" --seed 0 --test-fraction "$TEST_FRACTION" \
  --val-fraction "$VAL_FRACTION"
stage render "$BIN/render-amass" --amass "$DEMO/corpus/amass" --annotations "$DEMO/corpus/annotations.json" \
  --avatars assets/ --lights 4 --out "$DEMO/videos" --size "$SIZE" --fps "$FPS" --workers "$WORKERS"
stage shards "$BIN/build-shards" --annotations "$DEMO/corpus/annotations.json" --amass "$DEMO/corpus/amass" \
  --videos "$DEMO/videos" --out "$DEMO/shards" --frame-size "$SIZE" --workers "$WORKERS"
stage train  "$BIN/python" train.py --shards "$DEMO/shards" --preset "$PRESET" --epochs "$EPOCHS" --out "$DEMO/run" \
  --workers 1 --threads 1 --device cpu
# the dissimilar protocol runs on the nsim_test split that synth-amass chose and build-shards packed (as TMR's)
stage eval   "$BIN/python" evaluate.py --run "$DEMO/run" --shards "$DEMO/shards" --split test --protocol everything \
  --out "$DEMO/eval" --gallery --videos "$DEMO/videos" --tsne
# index the test split, then a text, a video (a rendered test clip re-encoded) and a motion query (search/demo.py)
stage search "$BIN/python" -m lavimo.search.demo --demo "$DEMO"

mv "$TIMES.new" "$TIMES"
echo
echo "== results (text->motion and video->motion on the synthetic test split)"
cat "$DEMO/eval/metrics.md"
echo
echo "== search (top-5 of a text, a video and a motion query over the test split's index)"
cat "$DEMO/search/queries.txt"
echo
echo "stage times (this run):"
cat "$TIMES"
echo
echo "metrics:        $DEMO/eval/metrics.md  ($DEMO/eval/metrics.json)"
echo "gallery:        $DEMO/eval/gallery.html"
echo "t-SNE:          $DEMO/eval/tsne.png"
echo "contact sheets: docs/img/avatars.png, docs/img/lights.png (regenerate: $BIN/python -m lavimo.render.contact_sheet --out docs/img)"
