"""The typed settings of stage 1 (`ExtractSettings`), made once from `config.extract`.

Also the stage's error type and the settings' fixed vocabularies: the storage
dtypes and the performance knobs a resumed run may change. Every field is
documented where its default is set (`probing.extraction.config`).
"""

from __future__ import annotations

import dataclasses

import ml_collections

FEATURE_DTYPES = ("float32", "float16", "bfloat16")
# Settings that change speed but not which rows are computed nor (beyond the
# batch-invariance tolerance) their values; a resume may change them.
PERFORMANCE_KNOBS = (
    "num_workers",
    "torch_threads",
    "log_every_s",
    "bucket_window",
    "prefix_sharing",
)


class ExtractionError(ValueError):
    """Bad extraction input, reported before long work starts."""


@dataclasses.dataclass(frozen=True)
class ExtractSettings:
    """How stage 1 runs: `config.extract`, typed and checked (no model needed)."""

    batch_size: int
    poolings: tuple[str, ...]
    feature_dtype: str
    num_workers: int
    torch_threads: int
    bucket_window: int
    prefix_sharing: bool
    first_token_topk: int
    skip_rejected_images: bool
    log_every_s: float

    def __post_init__(self) -> None:
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ExtractionError(
                f"config.extract.feature_dtype={self.feature_dtype!r}; "
                f"use one of {', '.join(FEATURE_DTYPES)}"
            )
        for field in ("batch_size", "bucket_window"):
            if getattr(self, field) < 1:
                raise ExtractionError(
                    f"config.extract.{field} must be >= 1, got {getattr(self, field)}"
                )
        if self.first_token_topk < 0:
            raise ExtractionError(
                f"config.extract.first_token_topk must be >= 0, got {self.first_token_topk}"
            )

    @classmethod
    def from_config(cls, extract_cfg: ml_collections.ConfigDict) -> ExtractSettings:
        """Reads `config.extract` (see `probing.extraction.config.extract_settings`)."""
        return cls(
            batch_size=int(extract_cfg.batch_size),
            poolings=tuple(extract_cfg.poolings),
            feature_dtype=extract_cfg.feature_dtype,
            num_workers=int(extract_cfg.num_workers),
            torch_threads=int(extract_cfg.torch_threads),
            bucket_window=int(extract_cfg.bucket_window),
            prefix_sharing=bool(extract_cfg.prefix_sharing),
            first_token_topk=int(extract_cfg.first_token_topk),
            skip_rejected_images=bool(extract_cfg.skip_rejected_images),
            log_every_s=float(extract_cfg.log_every_s),
        )
