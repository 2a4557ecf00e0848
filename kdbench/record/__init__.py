"""The record of what ran: MLflow runs written and read with one schema.

- :mod:`~kdbench.record.schema`: every tag, param, metric and artifact name, declared once;
- :mod:`~kdbench.record.writer`: creating and completing runs (invocations, cells, teachers, bench, report);
- :mod:`~kdbench.record.reader`: reading them back (leaderboards, reports, resume, stage reuse, ``bench runs:/ID``);
- :mod:`~kdbench.record.client`: the MLflow client, every call retried on transient failures;
- :mod:`~kdbench.record.store`: plain store operations (experiments, paged search, batched logging);
- :mod:`~kdbench.record.heartbeat` and :mod:`~kdbench.record.liveness`: who owns an open run, and
  marking runs whose owner is gone;
- :mod:`~kdbench.record.provenance`: the versions and commit that produced a run;
- :mod:`~kdbench.record.settings`: the ``KDBENCH_*`` variables that tune all this.
"""
