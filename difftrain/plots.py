"""FID against network calls per image, drawn with PIL (matplotlib is not a dependency; one plot does not justify
it): evaluate.py --sweep's sweep.png."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_fid_vs_nfe(rows: list[dict], size=(720, 460)) -> Image.Image:
    """FID against network calls per image (log scale), one line per scheduler, drawn with PIL (matplotlib is not a
    dependency; one plot does not justify it)."""
    width, height = size
    left, right, top, bottom = 70, 170, 30, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    nfe = [max(r["network_calls"], 1) for r in rows]
    fids = [r["fid"] for r in rows]
    x_lo, x_hi = math.log10(min(nfe)), math.log10(max(nfe))
    pad = max(x_hi - x_lo, 1.0) * 0.06  # keep the end points off the frame
    x_lo, x_hi = x_lo - pad, x_hi + pad
    y_hi = max(fids) * 1.05 if fids else 1.0
    y_hi = y_hi if y_hi > 0 else 1.0

    def xy(calls, value):
        x = left + (math.log10(max(calls, 1)) - x_lo) / (x_hi - x_lo) * (width - left - right)
        y = height - bottom - max(value, 0) / y_hi * (height - top - bottom)
        return x, y

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for calls in sorted(set(nfe)):
        x, _ = xy(calls, 0)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x - 8, height - bottom + 6), str(calls), fill="black", font=font)
    for k in range(6):
        value = y_hi * k / 5
        _, y = xy(1, value)
        draw.line([left - 4, y, left, y], fill="black")
        draw.line([left + 1, y, width - right - 1, y], fill=(230, 230, 230))
        draw.text((8, y - 6), f"{value:.1f}", fill="black", font=font)
    draw.text(((width - right + left) // 2 - 90, height - 22), "network calls per image (log)", fill="black",
              font=font)
    draw.text((left, 8), "FID (lower is better)", fill="black", font=font)
    schedulers = list(dict.fromkeys(r["scheduler"] for r in rows))
    for i, name in enumerate(schedulers):
        color = COLORS[i % len(COLORS)]
        points = sorted(xy(r["network_calls"], r["fid"]) for r in rows if r["scheduler"] == name)
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        ly = top + 10 + 16 * i
        draw.line([width - right + 12, ly + 6, width - right + 32, ly + 6], fill=color, width=3)
        draw.text((width - right + 38, ly), name, fill="black", font=font)
    return img
