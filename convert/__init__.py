"""teachcam on the laptop: build backbones, train heads, quantize, write bundles.

Needs the ``host`` extra (TensorFlow). TensorFlow is imported lazily, inside the
functions that need it, so ``teachcam --help`` stays fast.
"""
