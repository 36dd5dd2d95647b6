#!/usr/bin/env bash
# Issue 22's GPU checks as one prepared run for a lent device machine (see /work/.library/device).
#
#   here:    bash benchmarks/gpu_check.sh prepare
#            (wheels the device lacks, the 720p dog clip and 40 CamVid val frames into .device/,
#            which git ignores; never committed, about 50 MB, under the 64 MiB carry limit)
#   device:  run(command="bash benchmarks/gpu_check.sh run", carry=[".device"], timeout_s=540)
#   dry run: OVSEG_CHECK_DEVICE=cpu OVSEG_CHECK_FRAMES=8 bash benchmarks/gpu_check.sh run
#
# Everything it measures goes to $OUT: summary.txt (the numbers the issue asks for, one per
# line) and one log per step. Each step has its own timeout, so one hang leaves the others'
# numbers. The device has torch, OpenCV, timm, typer, rich, onnxruntime and pytest; the
# wheels bring the rest (PyAV, open_clip, ftfy, wcwidth, pycocotools).
set -uo pipefail
cd "$(dirname "$0")/.."
HERE=.device
mode=${1:-run}

if [ "$mode" = prepare ]; then
    shared=../shared/data
    mkdir -p "$HERE/wheels" "$HERE/camvid/val" "$HERE/camvid/valannot"
    python -m pip download -q --no-deps --python-version 3.12 --only-binary=:all: \
        -d "$HERE/wheels" av open_clip_torch ftfy wcwidth pycocotools || exit 1
    cp "$shared/videos/sam2_01_dog.mp4" "$HERE/dog.mp4" || exit 1
    for f in $(ls "$shared/camvid/val" | head -40); do
        cp "$shared/camvid/val/$f" "$HERE/camvid/val/" && cp "$shared/camvid/valannot/$f" "$HERE/camvid/valannot/"
    done
    du -sh "$HERE"
    exit 0
fi

OUT=${OUT:-/tmp/ovseg-gpu-check}
DEVICE=${OVSEG_CHECK_DEVICE:-cuda}
FRAMES=${OVSEG_CHECK_FRAMES:-160}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

if [ -d "$HERE/wheels" ] && ! python -c "import av, open_clip" 2>/dev/null; then
    python -m pip install -q --no-deps --target "$HERE/deps" "$HERE"/wheels/*.whl > "$OUT/install.txt" 2>&1
fi
export PYTHONPATH="$PWD:$PWD/$HERE/deps${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
ovseg() { python -m ovseg_cli "$@"; }
last_json() { tail -n 1 "$1" 2>/dev/null; }

say "device: $DEVICE; $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
say "python $(python -c 'import sys, torch, av; print(sys.version.split()[0], "torch", torch.__version__, "av", av.__version__)' 2>&1 | tail -n 1)"
python - > "$OUT/codecs.txt" 2>&1 <<'EOF'
import av
names = ("h264_cuvid", "hevc_cuvid", "h264_nvenc", "hevc_nvenc")
print({n: n in av.codecs_available for n in names})
EOF
say "codecs: $(tail -n 1 "$OUT/codecs.txt")"

# 1. the CUDA tests (CPU against CUDA logits, precisions, batches, every command on cuda)
if [ "$DEVICE" = cuda ]; then
    timeout 180 python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
else
    OVSEG_TEST_GPU=cpu timeout 180 python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
fi
say "pytest -m gpu: rc $? $(tail -n 1 "$OUT/pytest.txt")"

# 2. segment on the 720p clip, overlay and masks written: end to end at K=1 and K=4
video="$HERE/dog.mp4"
[ -f "$video" ] || video=""  # bench_segment then makes a synthetic 720p clip
timeout 150 python benchmarks/bench_segment.py $video --device "$DEVICE" --frames "$FRAMES" \
    --rounds 2 --keyframe-interval 4 > "$OUT/bench_segment.txt" 2>&1
say "bench_segment K=1/K=4: rc $? $(last_json "$OUT/bench_segment.txt")"
timeout 60 python benchmarks/bench_segment.py $video --device "$DEVICE" --frames "$FRAMES" \
    --rounds 1 --keyframe-interval 4 --host-only > "$OUT/bench_host.txt" 2>&1
say "bench_segment --host-only: rc $? $(last_json "$OUT/bench_host.txt")"

# 3. eval on 480x360 CamVid frames (the model on every frame, then K=4)
if [ -d "$HERE/camvid/val" ]; then
    rm -rf "$OUT/prep" "$OUT/eval1" "$OUT/eval4"
    ovseg prep camvid "$HERE/camvid" --out "$OUT/prep" > "$OUT/eval.txt" 2>&1
    for k in 1 4; do
        timeout 50 ovseg eval --data "$OUT/prep" --split all --device "$DEVICE" --pretrained none \
            --keyframe-interval $k --out "$OUT/eval$k" >> "$OUT/eval.txt" 2>&1
        say "eval K=$k: rc $? $(grep -o '([0-9.]* fps)' "$OUT/eval.txt" | tail -n 1)"
    done
    rm -rf "$OUT/prep" "$OUT/eval1" "$OUT/eval4"  # only the logs come back
fi
cat "$summary"
