"""Test double for lgpio (Raspberry Pi OS: python3-lgpio; PyPI's is an sdist that needs SWIG).

Only what gpiozero's LGPIOFactory calls. Like the real library, ``gpiochip_open(N)`` opens
``/dev/gpiochipN`` and raises ``lgpio.error`` when it cannot; the folder is $FAKE_LGPIO_DEV
(default /dev) so a test can give a stand-in Pi its GPIO chip.
"""

import os

SET_PULL_NONE, SET_PULL_UP, SET_PULL_DOWN = 0, 32, 64
SET_BIAS_DISABLE, SET_BIAS_PULL_UP, SET_BIAS_PULL_DOWN = 128, 32, 64
RISING_EDGE, FALLING_EDGE, BOTH_EDGES = 1, 2, 3

_chips: dict[int, dict] = {}


class error(Exception):  # noqa: N801 - lgpio's name
    pass


def gpiochip_open(gpiochip):
    path = os.path.join(os.environ.get("FAKE_LGPIO_DEV", "/dev"), f"gpiochip{gpiochip}")
    try:
        with open(path, "rb"):
            pass
    except OSError:
        raise error("can not open gpiochip") from None
    handle = len(_chips) + 1
    _chips[handle] = {"lines": {}}
    return handle


def gpiochip_close(handle):
    _chips.pop(handle, None)


def gpio_claim_input(handle, gpio, lFlags=0):  # noqa: N803 - lgpio's names
    _chips[handle]["lines"][gpio] = ("input", 1 if lFlags & SET_PULL_UP else 0)
    return 0


def gpio_claim_output(handle, gpio, level=0, lFlags=0):  # noqa: N803
    _chips[handle]["lines"][gpio] = ("output", level)
    return 0


def gpio_free(handle, gpio):
    _chips[handle]["lines"].pop(gpio, None)
    return 0


def gpio_get_mode(handle, gpio):
    mode, _ = _chips[handle]["lines"].get(gpio, ("input", 0))
    return 2 if mode == "output" else 0


def gpio_read(handle, gpio):
    return _chips[handle]["lines"].get(gpio, ("input", 0))[1]


def gpio_write(handle, gpio, level):
    _chips[handle]["lines"][gpio] = ("output", level)
    return 0


def gpio_set_debounce_micros(handle, gpio, debounce_micros):
    return 0
