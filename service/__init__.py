"""tickprop's I/O layer: settings, Kafka in and out, the Redis store, metrics, worker, CLI."""
