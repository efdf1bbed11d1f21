from .imx500 import IMX500  # noqa: F401  (picamera2.devices.imx500 exports it)
