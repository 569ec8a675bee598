"""Tests of deploy/: the image, the Kubernetes manifests, the monitoring and the dashboard."""
