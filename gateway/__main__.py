"""python -m gateway --config FILE: the same as `brainhands serve gateway`."""

from gateway.cli import main

raise SystemExit(main())
