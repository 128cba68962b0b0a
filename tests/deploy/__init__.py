"""Tests of deploy/: the image, compose and Kubernetes manifests."""
