"""picamera2.devices, as far as teachcam uses it: the AI Camera's IMX500 (the double in imx500/imx500.py)."""
from .imx500 import IMX500  # noqa: F401
