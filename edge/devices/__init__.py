"""The Pi's hardware and outputs: camera sources, buttons and LEDs, sinks (terminal, JSON lines, OLED, preview),
the attached screen and the board's health.

Imports the model wing (image reading) and the vocabulary; never teaching, the daemon, the link or the apps.
"""
