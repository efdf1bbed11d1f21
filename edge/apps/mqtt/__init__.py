"""``teachcam mqtt``: the bridge between the control socket and an MQTT broker (Home Assistant, scripts, the fleet).
"""
