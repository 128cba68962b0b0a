"""python -m hands.builtin.web: serve web_search and web_fetch (the flags of `brainhands serve hand`)."""

import sys

from hands.cli import main

raise SystemExit(main(["hands.builtin.web", *sys.argv[1:]], prog="python -m hands.builtin.web"))
