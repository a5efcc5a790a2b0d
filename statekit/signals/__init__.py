"""Operations signals (issue 17): what a store tells the world after a commit.

- ``state``: ``.statekit/signals.db`` (per-episode cursors, the alerts' outbox, streaks);
- ``alerts``: failure streaks and give-ups -> alerts, delivered through Apprise;
- ``stream``: committed events -> NATS JetStream;
- ``worker``: ``Signals``, the post-commit hook and the background worker;
- ``metrics``: Prometheus metrics read from the index at scrape time;
- ``logs``: JSON log lines.
"""
