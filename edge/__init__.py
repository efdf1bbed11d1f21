"""teachcam on the device: bundle reader, preprocessing, TFLite runtime, enrollment, daemon.

Nothing in this package imports TensorFlow or Keras (a test checks it): a Raspberry Pi
installs only the small TFLite runtime.
"""

__version__ = "0.1.0"
