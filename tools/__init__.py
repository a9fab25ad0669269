"""Developer tools: pinned Kubernetes binaries, chart docs and the offline chart check."""
