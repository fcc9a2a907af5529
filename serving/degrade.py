"""What the web does to a face, as fixed steps: Gaussian blur, downscale-then-upscale, JPEG re-compression.

Training draws these at random rates and strengths (serving/augment.py); evaluation applies one fixed chain to every
crop (`mesoscan evaluate --degrade downscale:0.5,jpeg:40`) to measure how a model holds up on re-encoded video. A
video is degraded whole instead (scanner/reencode.py: blur and downscale as FFmpeg filters, `h264:CRF` as an encode),
so each kind of data takes its own steps (`CROP_STEPS`, `VIDEO_STEPS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from serving.errors import InvalidInputError

Kind = Literal["blur", "downscale", "jpeg", "h264"]

LIMITS: dict[str, tuple[float, float, str]] = {
    "blur": (0.1, 10.0, "Gaussian sigma in pixels"),
    "downscale": (0.05, 1.0, "the shrunk side as a fraction of the original's"),
    "jpeg": (1, 100, "JPEG quality"),
    "h264": (0, 51, "x264's constant rate factor: 23 is its default, higher loses more"),
}
WHOLE_NUMBERS = {"jpeg", "h264"}
CROP_STEPS = ("blur", "downscale", "jpeg")
VIDEO_STEPS = ("blur", "downscale", "h264")


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


def downscale(x: np.ndarray, factor: float) -> np.ndarray:
    """Shrunk to `factor` of its side and scaled back up: the detail a lower-resolution video lost."""
    import cv2

    height, width = x.shape[:2]
    small = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(
        cv2.resize(x, small, interpolation=cv2.INTER_AREA), (width, height), interpolation=cv2.INTER_LINEAR
    )


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Encoded as JPEG at `quality` and decoded again (RGB in, RGB out)."""
    import cv2

    _, data = cv2.imencode(".jpg", x[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


OPERATIONS = {"blur": blur, "downscale": downscale, "jpeg": jpeg}


@dataclass(frozen=True)
class Step:
    kind: Kind
    value: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return OPERATIONS[self.kind](x, int(self.value) if self.kind in WHOLE_NUMBERS else self.value)


def parse_chain(spec: str) -> tuple[Step, ...]:
    """`downscale:0.5,jpeg:40` → its steps, applied in that order; a clear error for anything else."""
    steps = []
    for part in (p.strip() for p in spec.split(",")):
        kind, _, value = part.partition(":")
        if kind not in LIMITS:
            raise InvalidInputError(f"--degrade {part!r}: unknown step (choose {', '.join(LIMITS)}, as KIND:VALUE)")
        lo, hi, what = LIMITS[kind]
        try:
            number = float(value)
        except ValueError:
            raise InvalidInputError(f"--degrade {part!r}: {kind} takes a number ({what}), e.g. {kind}:{hi}") from None
        whole = kind in WHOLE_NUMBERS
        if not lo <= number <= hi or (whole and number != int(number)):
            raise InvalidInputError(
                f"--degrade {part!r}: {what} must be {'a whole number ' * whole}from {lo:g} to {hi:g}"
            )
        steps.append(Step(kind, number))  # type: ignore[arg-type]
    return tuple(steps)


def require_steps(chain: tuple[Step, ...], allowed: tuple[str, ...], what: str) -> None:
    """A clear error for a step `what` (a crop, a video) cannot take, e.g. JPEG on a video."""
    for step in chain:
        if step.kind not in allowed:
            instead = {"jpeg": "a video is re-encoded with h264:CRF", "h264": "a crop is re-compressed with jpeg:Q"}
            raise InvalidInputError(
                f"--degrade {step}: {step.kind} is not a step for {what} ({', '.join(allowed)}; {instead[step.kind]})"
            )


def degrade(images: np.ndarray, chain: tuple[Step, ...]) -> np.ndarray:
    """`images` [N, H, W, 3] uint8, each put through `chain` in order (a new array; `images` is left as it is)."""
    require_steps(chain, CROP_STEPS, "a crop")
    out = np.empty_like(images)
    for i, image in enumerate(images):
        x = np.ascontiguousarray(image)
        for step in chain:
            x = step.apply(x)
        out[i] = x
    return out


def chain_text(chain: tuple[Step, ...]) -> str:
    return ",".join(map(str, chain))
