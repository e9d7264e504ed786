"""Control plane and metrics over ZeroMQ: endpoints, request envelope, client, aggregation."""
