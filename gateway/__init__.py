"""The gateway: one HandService in front of many hand services, with routing, health, retries and metrics."""
