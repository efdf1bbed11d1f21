"""The device daemon: the loop, the command router, assembly from config, the change gate and smoothing.

The only wing that wires the others; nothing imports it but the tools and the CLI.
"""

MODES = ("knn", "head", "imagenet")  # what classifies: the taught examples, a trained head, ImageNet
