"""brainhands: orchestrator-workers LLM agents as gRPC microservices (shared core)."""

__version__ = "0.1.0"
