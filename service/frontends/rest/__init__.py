"""The layertap REST API: ``/features``, ``/explain``, ``/shapes``, ``/info``, ``/labels``, the probes and metrics."""
