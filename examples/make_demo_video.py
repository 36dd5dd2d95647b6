"""Regenerate examples/demo.mp4: a 3-second cartoon street (sky, trees, grass, road, a car).

    python examples/make_demo_video.py [OUT]

A small synthetic clip the repository can carry (real footage has licences); it has a
moving object, a camera pan and an audio track, so every output of `ovseg segment` can be
tried on it.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

W, H, FPS, SECONDS = 480, 270, Fraction(30000, 1001), 3


def scene(t: float) -> np.ndarray:
    """The picture at time t (seconds)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    pan = 20 * t  # the camera drifts right
    img = np.empty((H, W, 3), np.float32)
    sky = yy < 0.45 * H
    img[sky] = np.stack([110 + 0.3 * yy, 170 + 0.2 * yy, np.full_like(yy, 235)], -1)[sky]
    ground = ~sky
    img[ground] = (70, 140, 60)  # grass
    road = ground & (yy > 0.62 * H)
    img[road] = (95, 95, 100)
    stripe = road & (np.abs(yy - 0.8 * H) < 2) & (((xx + pan * 3) // 30) % 2 == 0)
    img[stripe] = (235, 235, 235)
    for k in range(6):  # trees: trunk and crown
        cx = (k * 95 + 40 - pan) % (W + 60) - 30
        trunk = (np.abs(xx - cx) < 5) & (yy > 0.35 * H) & (yy < 0.5 * H)
        crown = (xx - cx) ** 2 + ((yy - 0.3 * H) * 1.2) ** 2 < 28**2
        img[trunk] = (90, 60, 30)
        img[crown] = (40, 110 + 10 * (k % 3), 45)
    car_x = 60 + 110 * t
    body = (xx > car_x) & (xx < car_x + 90) & (yy > 0.68 * H) & (yy < 0.8 * H)
    cabin = (xx > car_x + 20) & (xx < car_x + 65) & (yy > 0.6 * H) & (yy < 0.69 * H)
    img[body | cabin] = (200, 30, 40)
    for wx in (car_x + 20, car_x + 70):
        img[(xx - wx) ** 2 + (yy - 0.81 * H) ** 2 < 10**2] = (20, 20, 20)
    noise = np.random.default_rng(int(t * 1000)).normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def main(out: Path) -> None:
    """Write the demo clip with an H.264 video and an AAC audio track."""
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=FPS, options={"crf": "26", "preset": "slow"})
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = container.add_stream("aac", rate=44100, layout="mono")
        n = int(SECONDS * FPS)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(scene(i / float(FPS)), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        total = int(44100 * n / FPS)
        for start in range(0, total, 1024):
            t = np.arange(start, min(start + 1024, total)) / 44100.0
            hum = 0.1 * np.sin(2 * np.pi * 110 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
            frame = av.AudioFrame.from_ndarray(
                hum.astype(np.float32)[None], format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 44100, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("demo.mp4"))
