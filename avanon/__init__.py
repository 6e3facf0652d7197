"""avanon: anonymize the people in AV datasets and measure what it costs the detectors trained on them."""
__version__ = "0.1.0"
