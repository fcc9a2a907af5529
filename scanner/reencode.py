"""Re-encoding a video the way the web does (FFmpeg: downscale, blur, H.264 at a chosen CRF), for measuring a model
at video level under `mesoscan evaluate --degrade` (serving/degrade.py's steps, the video kinds).

A chain is cut into passes at each `h264:CRF`: the filters before it, then one x264 encode at that CRF, so
`h264:23,downscale:0.5,h264:30` is a video re-uploaded at half its size. Filters after the last `h264` step get a
lossless pass (`-qp 0`), so only they are measured. `downscale` shrinks the frame and stays small (a lower
rendition: the scanner scales the face back up to the model's input); `blur` is in the frame's own pixels.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from scanner.errors import CorruptVideoError
from serving.degrade import VIDEO_STEPS, Step, require_steps
from serving.errors import InvalidInputError

PASS_TIMEOUT_S = 600.0
"""One encode of one video; the frame count is bounded too (`max_frames`)."""


def passes(chain: tuple[Step, ...]) -> list[tuple[list[str], int | None]]:
    """(FFmpeg filters, CRF or None for lossless) for each encode `chain` needs, in order."""
    require_steps(chain, VIDEO_STEPS, "a video")
    out: list[tuple[list[str], int | None]] = []
    filters: list[str] = []
    for step in chain:
        if step.kind == "h264":
            out.append((filters, int(step.value)))
            filters = []
        elif step.kind == "downscale":
            # Even sides: x264's 4:2:0 needs them.
            side = f"max(2\\,trunc({step.value:g}*{{}}/2)*2)"
            filters.append(f"scale={side.format('iw')}:{side.format('ih')}:flags=area")
        else:
            filters.append(f"gblur=sigma={step.value:g}")
    if filters:
        out.append((filters, None))
    return out


def ffmpeg_command(source: Path, target: Path, filters: list[str], crf: int | None, max_frames: int) -> list[str]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise InvalidInputError("--degrade on videos re-encodes them with ffmpeg, which is not installed")
    quality = ["-qp", "0"] if crf is None else ["-crf", str(crf)]
    return [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file",
        "-i",
        str(source),
        "-map",
        "0:v:0",
        "-frames:v",
        str(max_frames + 1),  # one over: a video too long to scan stays too long
        *(["-vf", ",".join(filters)] if filters else []),
        "-c:v",
        "libx264",
        "-preset",
        "medium",
        *quality,
        "-pix_fmt",
        "yuv420p",
        "-an",
        "-y",
        str(target),
    ]


def reencode(source: Path, workdir: Path, chain: tuple[Step, ...], max_frames: int) -> Path:
    """`source` put through `chain` as new mp4 files in `workdir` (the caller removes it); the last one's path.

    A video FFmpeg cannot read or encode is a `CorruptVideoError` naming the pass and FFmpeg's own words."""
    current = Path(source)
    for i, (filters, crf) in enumerate(passes(chain)):
        target = Path(workdir) / f"pass{i}.mp4"
        try:
            subprocess.run(
                ffmpeg_command(current, target, filters, crf, max_frames),
                check=True,
                capture_output=True,
                timeout=PASS_TIMEOUT_S,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip()[-300:]
            what = "timed out" if isinstance(e, subprocess.TimeoutExpired) else "failed"
            raise CorruptVideoError(f"re-encoding {Path(source).name} (pass {i + 1}) {what}: {detail}") from e
        if current != Path(source):
            current.unlink()
        current = target
    return current
