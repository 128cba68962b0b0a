"""Generate the Python gRPC code for every contract under proto/ (run from anywhere)."""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit status {code}", file=sys.stderr)
        return code
    for proto in protos:
        init = ROOT / pathlib.Path(proto).parent / "__init__.py"
        if not init.exists():
            init.write_text("")
    print(f"generated {len(protos)} contract(s): {', '.join(protos)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
