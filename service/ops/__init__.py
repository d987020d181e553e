"""Running in production: Prometheus metrics, structured logs, and process tuning of the C runtimes under torch."""
