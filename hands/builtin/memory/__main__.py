"""python -m hands.builtin.memory: `brainhands serve hand hands.builtin.memory`."""

from hands.cli import module_main

raise SystemExit(module_main("hands.builtin.memory"))
