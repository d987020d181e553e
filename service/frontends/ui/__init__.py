"""The debug page at ``/``: static HTML, CSS and JavaScript served by the service itself."""
