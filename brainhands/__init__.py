"""brainhands: orchestrator-workers LLM agents as gRPC microservices (shared core)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # LocalStack is imported on first use: `import brainhands` stays cheap for the command line.
    if name == "LocalStack":
        from brainhands.local_stack import LocalStack

        return LocalStack
    if name == "StackError":
        from brainhands.stack import StackError

        return StackError
    raise AttributeError(f"module 'brainhands' has no attribute {name!r}")
