"""Generate the archive sample data the demo migrates (``statekit demo``).

    python scripts/make_sample_data.py [--episodes 200] [--seconds 2] [--clips 24] [--out data/archive]

Writes ``catalog.csv`` (one row per episode: show, show title, episode id,
date, title, archive identifier, audio file), ``audio/clip-NN.wav`` (short
clips of generated tones, chirps, bells and noise that the episodes share)
and a ``README.md`` describing both. Everything is derived from a fixed seed
with the standard library only, so running it again gives byte-identical
files (``tests/test_demo.py`` checks that against the committed
``data/archive``). Bigger sets for trying the demo at scale::

    python scripts/make_sample_data.py --episodes 5000 --seconds 30 --out /tmp/big
    statekit demo --data /tmp/big

Some clips are odd on purpose: the one that is stereo at 22.05 kHz and the
8 kHz ones must be downmixed and resampled by the demo's convert stage, and
the last clip is not audio at all (an HTML error page saved as .wav, as a
flaky archive sometimes serves), which convert must reject as a permanent
error, so its episodes end ``skipped`` with the reason.
"""

from __future__ import annotations

import argparse
import array
import csv
import io
import math
import os
import random
import sys
import wave
from datetime import date, timedelta
from pathlib import Path

SEED = 20040414
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "archive"

# show id, title, id prefix, first episode date, days between episodes, share of the episodes
SHOWS = (
    ("hooting-yard", "Hooting Yard On The Air", "hy", date(2004, 4, 14), 7, 0.45),
    ("tidal-notes", "Tidal Notes", "tn", date(2005, 1, 3), 7, 0.35),
    ("lamp-room", "The Lamp Room", "lr", date(2006, 2, 1), 14, 0.20),
)
RATES = (8000, 11025, 16000)
STEREO_CLIP = 7  # stereo at 22.05 kHz: convert downmixes and resamples it
NOT_AUDIO = b"""<!DOCTYPE html>
<html><head><title>503 Service Unavailable</title></head>
<body><h1>Service Unavailable</h1><p>The archive is busy. Please try again later.</p></body></html>
"""
ADJECTIVES = ("Pointy", "Forgotten", "Dismal", "Radiant", "Muddy", "Spectral", "Clattering", "Tiny",
              "Abandoned", "Glittering", "Lugubrious", "Bewildered", "Windswept", "Crumbling")
NOUNS = ("Towers", "Pond", "Lighthouse", "Hamlet", "Almanac", "Pigeons", "Causeway", "Orchard",
         "Lantern", "Sea Wall", "Allotment", "Bus Shelter", "Tin Mine", "Marsh")


def clip_name(k: int) -> str:
    return f"clip-{k:02d}.wav"


def _envelope(i: int, n: int, rate: int) -> float:
    """Fade in and out over 20 ms so no clip starts or ends with a click."""
    edge = max(1, rate // 50)
    return min(1.0, i / edge, (n - 1 - i) / edge)


def _samples(k: int, rate: int, n: int, rng: random.Random) -> list[float]:
    """One channel of clip ``k``: a tone, a chirp, bells or filtered noise, at a modest level."""
    level = rng.uniform(0.15, 0.7)  # the convert stage normalises these
    kind = k % 4
    out: list[float] = []
    if kind == 0:  # a tone with two harmonics and a slow vibrato
        f0 = rng.choice((110.0, 146.8, 196.0, 220.0, 261.6, 329.6))
        phase = 0.0
        for i in range(n):
            t = i / rate
            phase += 2 * math.pi * f0 * (1 + 0.01 * math.sin(2 * math.pi * 5 * t)) / rate
            out.append(math.sin(phase) + 0.4 * math.sin(2 * phase) + 0.2 * math.sin(3 * phase))
        peak = 1.6
    elif kind == 1:  # a linear chirp
        f_start, f_end = rng.uniform(100, 400), rng.uniform(600, min(3000, rate / 2.5))
        seconds = n / rate
        for i in range(n):
            t = i / rate
            out.append(math.sin(2 * math.pi * (f_start * t + (f_end - f_start) * t * t / (2 * seconds))))
        peak = 1.0
    elif kind == 2:  # bells: decaying inharmonic partials, struck every half second
        f0 = rng.uniform(300, 700)
        partials = ((1.0, 1.0), (2.76, 0.5), (5.4, 0.25))
        period = rate // 2
        for i in range(n):
            t = (i % period) / rate
            decay = math.exp(-5 * t)
            out.append(decay * sum(a * math.sin(2 * math.pi * f0 * r * t) for r, a in partials))
        peak = 1.75
    else:  # noise through a one-pole low-pass filter, in bursts
        y = 0.0
        alpha = rng.uniform(0.05, 0.3)
        for i in range(n):
            y += alpha * (rng.uniform(-1.0, 1.0) - y)
            out.append(y * (0.6 + 0.4 * math.sin(2 * math.pi * 1.5 * i / rate)))
        peak = max(abs(v) for v in out) or 1.0
    return [level * v / peak * _envelope(i, n, rate) for i, v in enumerate(out)]


def _pcm16(values: list[float]) -> bytes:
    data = array.array("h", (max(-32768, min(32767, round(v * 32767))) for v in values))
    if sys.byteorder == "big":
        data.byteswap()  # WAV is little-endian
    return data.tobytes()


def make_clip(k: int, clips: int, seconds: float) -> bytes:
    """The bytes of clip ``k``: 16-bit PCM WAV (or, for the last clip, not audio at all)."""
    if k == clips - 1:
        return NOT_AUDIO
    rng = random.Random(SEED * 1000 + k)
    length = seconds * rng.uniform(0.5, 1.5)
    stereo = k == STEREO_CLIP
    rate = 22050 if stereo else RATES[k % len(RATES)]
    n = max(1, round(length * rate))
    left = _samples(k, rate, n, rng)
    if stereo:  # the right channel a little quieter and a few ms late: downmixing must average them
        delay = rate // 200
        right = [0.0] * delay + [0.8 * v for v in left[: n - delay]]
        frames = [v for pair in zip(left, right) for v in pair]
    else:
        frames = left
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(2 if stereo else 1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(_pcm16(frames))
    return buffer.getvalue()


def catalog_rows(episodes: int, clips: int) -> list[dict[str, str]]:
    """One row per episode, shows in turn, dates in order; every episode names a shared clip."""
    rng = random.Random(SEED)
    counts = [int(episodes * share) for *_, share in SHOWS]
    counts[0] += episodes - sum(counts)
    good = [clip_name(k) for k in range(clips - 1)] or [clip_name(0)]
    rows: list[dict[str, str]] = []
    i = 0
    for (show, show_title, prefix, first, step, _), count in zip(SHOWS, counts):
        for n in range(count):
            day = first + timedelta(days=step * n)
            # about one episode in a hundred names the clip that is not audio
            audio = clip_name(clips - 1) if clips > 1 and i % 97 == 50 else good[(i * 5 + i // len(good)) % len(good)]
            rows.append({
                "show": show,
                "show_title": show_title,
                "episode": f"{prefix}-{day.isoformat()}",
                "date": day.isoformat(),
                "title": f"{show_title}, {day.day} {day.strftime('%B')} {day.year}: "
                         f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}",
                "identifier": f"{prefix}0_{show.replace('-', '_')}_{day.isoformat()}",
                "audio": audio,
            })
            i += 1
    return rows


def readme(episodes: int, clips: int, seconds: float, rows: list[dict[str, str]]) -> str:
    per_show = ", ".join(f"{show} {sum(r['show'] == show for r in rows)}" for show, *_ in SHOWS)
    command = "python scripts/make_sample_data.py"
    if (episodes, clips, seconds) != (200, 24, 2.0):
        command += f" --episodes {episodes} --clips {clips} --seconds {seconds:g}"
    return f"""# Archive sample data

Generated by `{command}`
(deterministic: running it again gives the same bytes). `statekit demo`
migrates it through the `archive` pipeline.

- `catalog.csv`: {len(rows)} episodes ({per_show});
  columns `show`, `show_title`, `episode`, `date`, `title`, `identifier`, `audio`.
- `audio/`: {clips} short clips (about {seconds:g} s each: tones, chirps, bells, filtered
  noise; 16-bit PCM at 8, 11.025 or 16 kHz) that the episodes share.
  `{clip_name(STEREO_CLIP)}` is stereo at 22.05 kHz. `{clip_name(clips - 1)}` is not audio but an HTML
  error page saved under a .wav name: the demo's convert stage rejects it as
  a permanent error and its episodes end `skipped`.
"""


def write(out: Path, episodes: int, clips: int, seconds: float) -> list[Path]:
    """Write the sample data under ``out``; returns the files written. Clips
    from an earlier, bigger run are removed, so ``out`` holds exactly this set."""
    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = catalog_rows(episodes, clips)
    written: list[Path] = []
    for k in range(clips):
        path = audio / clip_name(k)
        path.write_bytes(make_clip(k, clips, seconds))
        written.append(path)
    for stale in audio.glob("clip-*.wav"):
        if stale not in written:
            stale.unlink()
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out / "catalog.csv").write_text(text.getvalue(), encoding="utf-8")
    (out / "README.md").write_text(readme(episodes, clips, seconds, rows), encoding="utf-8")
    return [out / "catalog.csv", out / "README.md", *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200, help="episodes in the catalog (default 200)")
    parser.add_argument("--seconds", type=float, default=2.0, help="average clip length in seconds (default 2)")
    parser.add_argument("--clips", type=int, default=24, help="distinct clips the episodes share (default 24)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.clips < 2 or not 0 < args.seconds <= 3600:
        parser.error("need --episodes >= 1, --clips >= 2 and 0 < --seconds <= 3600")
    files = write(args.out, args.episodes, args.clips, args.seconds)
    size = sum(os.path.getsize(f) for f in files)
    print(f"wrote {len(files)} files ({size / 1e6:.1f} MB) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
