"""Entry points: the ``speechgpt`` command line (and, later, the web UI and HTTP API), thin shells over the library."""
