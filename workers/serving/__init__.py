"""The worker process (docs/architecture.md, "The path of one request"):

- ``worker``: the queue loop (read a batch, take over the jobs of dead workers, run);
- ``heartbeat``: the thread that keeps this worker's liveness, its model cards and its jobs fresh;
- ``execute``: the jobs of one model: admitted, run (explain in batches, evaluate / compare alone);
- ``outcome``: the one way a job ends (result stored, counted, announced, entry acknowledged);
- ``reporter``: progress and cancellation of one job;
- ``pipeline`` / ``render``: a batch of explain requests, end to end, and the client formats;
- ``targets``: a request's target as a class index, for callers that have no gateway (CLI, tests);
- ``main``: ``python -m workers``.
"""
