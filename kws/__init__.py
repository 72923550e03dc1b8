"""kws: on-device keyword spotting with a tiny int8 DS-CNN."""

__version__ = "0.1.0"
