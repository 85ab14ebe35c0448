"""CLI-side clients over NATS: deploy, ingest, tail, dead letters, status. Never imported by
the runtime."""
