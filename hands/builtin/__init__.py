"""Built-in hands, each runnable as its own service: fs, sandbox, llm."""
