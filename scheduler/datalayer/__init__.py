"""What the scheduler knows about the pool between requests: endpoints, metrics, in-flight load."""
