"""The model at run time: the bundle reader, preprocessing, the TFLite runtime and the models on it.

Imports only the vocabulary (``errors``); never teaching, devices, the daemon, the link or the apps.
"""
