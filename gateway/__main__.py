"""python -m gateway --config FILE: the same as `brainhands serve gateway`."""

import sys

from brainhands.cli import main

raise SystemExit(main(["serve", "gateway", *sys.argv[1:]]))
