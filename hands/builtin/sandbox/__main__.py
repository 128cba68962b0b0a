"""python -m hands.builtin.sandbox: `brainhands serve hand hands.builtin.sandbox`."""

from hands.cli import module_main

raise SystemExit(module_main("hands.builtin.sandbox"))
