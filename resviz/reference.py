"""Published numbers that figures draw beside measured ones, each labelled as its source states it.

He et al. 2015 (arXiv:1512.03385), Table 6: CIFAR-10 test error (%) of the CIFAR ResNets. For ResNet-110 the
paper ran 5 times and reports "best (mean ± std)": 6.43 is the best of the 5 runs, 6.61 ± 0.16 their mean and
standard deviation. The other depths are single numbers as printed.

akamaster/pytorch_resnet_cifar10, README table "Test err(this impl.)": the test error of each released
checkpoint (one training run each; 200 epochs on the full 50k training set, ImageNet mean/std input
normalisation), including ResNet-1202.

Both are errors on CIFAR-10's own test set (the pickled batches torchvision downloads), not on any other copy
of the images. tests/test_reference.py checks every number here against a verbatim copy of its source table
(tests/sources/).
"""
from __future__ import annotations

from dataclasses import dataclass

HE_2015 = "He et al. 2015, Table 6"
AKAMASTER = "akamaster/pytorch_resnet_cifar10 README"
DATA = "CIFAR-10 test set"


@dataclass(frozen=True)
class PublishedError:
    """One published CIFAR-10 test error, with what kind of number it is."""

    source: str
    depth: int
    error: float  # test error, %
    statistic: str  # what the number is, as the source says: "as printed", "best of 5 runs", ...
    params_m: float  # parameters, millions, as the source prints them
    mean: float | None = None  # mean over runs, where the source gives one (%)
    std: float | None = None  # std over runs, where the source gives one (%)
    runs: int = 1  # runs behind the number

    @property
    def label(self) -> str:
        """e.g. "ResNet-110: 6.43 % (best of 5 runs; mean 6.61 ± 0.16)"."""
        extra = f"; mean {self.mean:.2f} ± {self.std:.2f}" if self.mean is not None else ""
        return f"ResNet-{self.depth}: {self.error:.2f} % ({self.statistic}{extra})"


HE_TABLE6: tuple[PublishedError, ...] = (
    PublishedError(HE_2015, 20, 8.75, "as printed", 0.27),
    PublishedError(HE_2015, 32, 7.51, "as printed", 0.46),
    PublishedError(HE_2015, 44, 7.17, "as printed", 0.66),
    PublishedError(HE_2015, 56, 6.97, "as printed", 0.85),
    PublishedError(HE_2015, 110, 6.43, "best of 5 runs", 1.7, mean=6.61, std=0.16, runs=5),
    PublishedError(HE_2015, 1202, 7.93, "as printed", 19.4),
)
AKAMASTER_TABLE: tuple[PublishedError, ...] = tuple(
    PublishedError(AKAMASTER, depth, error, "the released checkpoint (one run)", params)
    for depth, error, params in ((20, 8.27, 0.27), (32, 7.37, 0.46), (44, 6.90, 0.66), (56, 6.61, 0.85),
                                 (110, 6.32, 1.7), (1202, 6.18, 19.4))
)
PUBLISHED: dict[str, tuple[PublishedError, ...]] = {HE_2015: HE_TABLE6, AKAMASTER: AKAMASTER_TABLE}


def published_errors(source: str) -> dict[int, float]:
    """{depth: test error %} of one source (`HE_2015` or `AKAMASTER`), the numbers as printed."""
    if source not in PUBLISHED:
        raise ValueError(f"source={source!r} is unknown; use one of {', '.join(map(repr, PUBLISHED))}")
    return {p.depth: p.error for p in PUBLISHED[source]}


__all__ = ["AKAMASTER", "AKAMASTER_TABLE", "DATA", "HE_2015", "HE_TABLE6", "PUBLISHED", "PublishedError",
           "published_errors"]
