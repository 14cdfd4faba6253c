"""Audio and unit framing constants, defined once for the whole package (imports nothing heavy).

Units are 50 per second: one frame per 320 samples of 16 kHz audio with a 400-sample (25 ms) receptive field,
exactly HuBERT's convolutional front end, and the unit vocoder's hop is the same 320 samples.
"""

SAMPLE_RATE = 16_000
"""Sample rate of every waveform inside the package (Hz)."""
HOP_LENGTH = 320
"""Samples between two unit frames at :data:`SAMPLE_RATE`."""
WINDOW_LENGTH = 400
"""Samples seen by one frame (HuBERT's receptive field, 25 ms)."""
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH
"""Unit frames per second (50)."""
RELEASED_NUM_UNITS = 1000
"""Speech units of the released system (mHuBERT layer-11 k-means with 1000 clusters): the LM's unit tokens
``<0>``..``<999>`` and the unit vocoder's embedding rows."""
