"""signals: windowing, filters, preprocessing, window entropy and the offload policy.

Pure functions of numpy arrays and integers: no I/O, no clock, no logging. The specification the
C firmware follows is docs/signals.md.
"""

from gatewayd.signals.entropy import (
    ENTROPY_BINS,
    ENTROPY_MAX_BITS,
    ENTROPY_MBITS_MAX,
    ENTROPY_RANGE_SIGMA,
    entropy_bin_indices,
    entropy_histogram,
    entropy_milli_bits,
    histogram_entropy_bits,
    window_entropy_bits,
    window_entropy_bits_float,
)
from gatewayd.signals.filters import (
    BANDPASS_HIGH_HZ,
    BANDPASS_LOW_HZ,
    BANDPASS_ORDER,
    bandpass,
    bandpass_sos,
    preprocess_window,
    resample_to,
    zscore,
)
from gatewayd.signals.offload import (
    CONFIDENCE_SCALE,
    OffloadReason,
    confidence_e4,
    decide_offload,
    should_offload,
)
from gatewayd.signals.windows import (
    ACC_RATE_HZ,
    BVP_RATE_HZ,
    MODEL_CHANNELS,
    MODEL_RATE_HZ,
    MODEL_WINDOW_LEN,
    STEP_S,
    WINDOW_S,
    samples_in,
    sliding_windows,
    window_count,
    window_length,
    window_start_samples,
    window_start_times,
)

__all__ = [
    "ACC_RATE_HZ",
    "BANDPASS_HIGH_HZ",
    "BANDPASS_LOW_HZ",
    "BANDPASS_ORDER",
    "BVP_RATE_HZ",
    "CONFIDENCE_SCALE",
    "ENTROPY_BINS",
    "ENTROPY_MAX_BITS",
    "ENTROPY_MBITS_MAX",
    "ENTROPY_RANGE_SIGMA",
    "MODEL_CHANNELS",
    "MODEL_RATE_HZ",
    "MODEL_WINDOW_LEN",
    "STEP_S",
    "WINDOW_S",
    "OffloadReason",
    "bandpass",
    "bandpass_sos",
    "confidence_e4",
    "decide_offload",
    "entropy_bin_indices",
    "entropy_histogram",
    "entropy_milli_bits",
    "histogram_entropy_bits",
    "preprocess_window",
    "resample_to",
    "samples_in",
    "should_offload",
    "sliding_windows",
    "window_count",
    "window_entropy_bits",
    "window_entropy_bits_float",
    "window_length",
    "window_start_samples",
    "window_start_times",
    "zscore",
]
