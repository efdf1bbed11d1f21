"""Jobs around the daemon: the doctor, the per-stage benchmark and the demo.
"""
