"""python -m brainhands: the same as the brainhands command."""

from brainhands.cli import main

raise SystemExit(main())
