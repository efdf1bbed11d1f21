"""The control socket: the one way into a running daemon for the CLI, the web page and MQTT.

Imports only the vocabulary (``errors``, ``messages``, ``ports``).
"""
