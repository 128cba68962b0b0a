"""Shared memory for workers: memory_put, memory_get, memory_search per tenant, on SQLite or PostgreSQL."""

from hands.builtin.memory.service import DEFAULT_PORT, HANDS, MemoryConfig, make_memory_hands
from hands.builtin.memory.store import MemoryEntry, MemoryStore, open_memory_store

__all__ = ["DEFAULT_PORT", "HANDS", "MemoryConfig", "MemoryEntry", "MemoryStore", "make_memory_hands", "open_memory_store"]
