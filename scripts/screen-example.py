#!/usr/bin/env python3
"""Draw what the attached screen shows (the README's picture): a sample photo with teachcam's overlay.

Usage: .venv/bin/python scripts/screen-example.py [OUT.jpg]   (default scripts/screen-example.jpg)
"""

import sys
from pathlib import Path

from PIL import Image

from teachcam.edge.devices.screen import Shown, render_overlay
from teachcam.edge.samples import sample_photos

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("screen-example.jpg")
photo = Image.open(sample_photos(("coffee.png",))[0]).convert("RGB").resize((640, 480))
shown = Shown("coffee", 93, (("cat", 4, 12), ("coffee", 93, 9), ("rocket", 3, 7)), "+1 coffee  (9)", 1, "",
              "int8 · CPU · 30 fps")
overlay = render_overlay(shown, photo.size, ["cat", "coffee", "rocket"])
photo.paste(overlay, (0, 0), overlay)
photo.save(out, quality=85, optimize=True)
print(out)
