#!/usr/bin/env bash
# Regenerates the TensorBoard screenshots of docs/experiments.md, docs/images/tensorboard-*.png,
# from a real run: two short LeNet-5 runs on MNIST, TensorBoard on localhost, headless Chromium.
# Not run by CI or the tests; run it by hand from anywhere after changing what the runner logs:
#
#     JAXCNN_DATA=../shared/data docs/screenshots.sh [WORK_DIR]
#
# Needs: the repository's .venv (pip install -e .), Chromium (`apt-get install chromium`, or
# CHROMIUM=/path/to/chrome), and the MNIST files (in $JAXCNN_DATA, the jaxcnn cache, or
# downloaded on first use). WORK_DIR (default: a new temporary folder) receives the runs and the
# full-size screenshots; about 3 minutes on a 2-core CPU.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$(mktemp -d)}"
chromium="${CHROMIUM:-chromium}"
py="$repo/.venv/bin/python"
mkdir -p "$work/shots" "$repo/docs/images"
cd "$work"

# Two runs to compare: the experiment as it is, and one with a lower learning rate and random
# crops under another experiment name (so TensorBoard can show the first one alone).
"$repo/.venv/bin/jaxcnn" run mnist_lenet5 --epochs 3 --runs-dir "$work/runs"
"$repo/.venv/bin/jaxcnn" run mnist_lenet5 --epochs 3 --lr 0.02 --augment crop:2 \
    --experiment mnist_lenet5_crop --runs-dir "$work/runs"

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
both=$(free_port)
one=$(free_port)
"$repo/.venv/bin/tensorboard" --logdir "$work/runs" --host 127.0.0.1 --port "$both" \
    > "$work/tensorboard-both.log" 2>&1 &
pids=($!)
"$repo/.venv/bin/tensorboard" --logdir "$work/runs/mnist_lenet5" --host 127.0.0.1 --port "$one" \
    > "$work/tensorboard-one.log" 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

# Wait until each TensorBoard serves its runs' scalars (it reads the event files lazily).
for port in "$both" "$one"; do
    "$py" - "$port" <<'EOF'
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/data/plugin/scalars/tags"
for _ in range(120):
    try:
        if json.load(urllib.request.urlopen(url, timeout=5)):
            break
    except OSError:
        pass
    time.sleep(1)
else:
    sys.exit(f"TensorBoard at {url} served no runs")
EOF
done

shot() {  # shot NAME WIDTHxHEIGHT URL
    local size="${2/x/,}"
    "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$(mktemp -d)" --window-size="$size" --hide-scrollbars \
        --virtual-time-budget=15000 --screenshot="$work/shots/$1.png" "$3" > /dev/null 2>&1
}
shot scalars 1400x1000 "http://127.0.0.1:$both/#scalars&tagFilter=accuracy%7Closs&_smoothingWeight=0"
shot explain 1400x1300 "http://127.0.0.1:$one/#images&tagFilter=explain"
shot confusion 1400x760 "http://127.0.0.1:$one/#images&tagFilter=confusion%7Cmisclassified"
shot features 1400x1000 "http://127.0.0.1:$one/#images&tagFilter=features%7Cfilters"
shot histograms 1400x900 "http://127.0.0.1:$one/#histograms&tagFilter=conv"

# Smaller files for the repository: 256-colour PNGs (TensorBoard's flat colours survive).
"$py" - "$work/shots" "$repo/docs/images" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for png in sorted(src.glob("*.png")):
    img = Image.open(png).convert("RGB")
    if img.width > 1200:
        img = img.resize((1200, round(img.height * 1200 / img.width)), Image.Resampling.LANCZOS)
    out = dst / f"tensorboard-{png.stem}.png"
    img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True)
    print(f"{out}: {img.width}x{img.height}, {out.stat().st_size // 1024} KB")
EOF
