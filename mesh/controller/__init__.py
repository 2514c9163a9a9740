"""The Kubernetes and file providers, the config API and shadow Services."""
