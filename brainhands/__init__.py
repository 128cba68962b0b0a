"""brainhands: orchestrator-workers LLM agents as gRPC microservices (shared core)."""

from brainhands.local_stack import LocalStack
from brainhands.stack import StackError

__version__ = "0.1.0"

__all__ = ["LocalStack", "StackError", "__version__"]
