"""The network-facing processes, each run apart from the daemon: the web page and the MQTT bridge.

They reach the daemon only through :mod:`teachcam.edge.link`.
"""
