"""Typed scan errors; each `code` is a stable part of the verdict document's contract."""

from __future__ import annotations


class ScanError(Exception):
    code = "scan_failed"
    retryable = False
    """True for transient failures a job queue may retry (network hiccups, a busy model server)."""

    def __init__(self, message: str, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class InvalidUrlError(ScanError):
    code = "invalid_url"


class BlockedAddressError(ScanError):
    code = "blocked_address"


class UnsupportedUrlError(ScanError):
    code = "unsupported_url"


class DownloadFailedError(ScanError):
    code = "download_failed"
    retryable = True


class TooLargeError(ScanError):
    code = "too_large"


class TooLongError(ScanError):
    code = "too_long"


class NotAVideoError(ScanError):
    code = "not_a_video"


class CorruptVideoError(ScanError):
    code = "corrupt_video"


class ScanTimeoutError(ScanError):
    """A download or scan over its time limit. Not retried: a remote server that is slow once is slow again, and
    each retry would hold a worker for the whole limit."""

    code = "timeout"


class ModelUnavailableError(ScanError):
    code = "model_unavailable"
    retryable = True
