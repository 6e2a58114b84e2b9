"""BNStatsHooks: the reporter's life cycle as a training framework's callbacks call it.

    hooks = BNStatsHooks(client, run="exp1")
    hooks.on_train_begin(model, global_step=0, rank=0)
    # after every forward-backward (micro-batch), with the optimizer steps taken so far
    hooks.on_batch_end(global_step)
    hooks.on_train_end()

A PyTorch Lightning Callback or a Hugging Face TrainerCallback is a few lines
around these three calls (clients/python/examples/integrations.py): both
count optimizer steps in a global_step that advances only when the optimizer
steps, whatever the gradient accumulation, and both call back after every
batch. Nothing here imports torch or either library.
"""

from .reporter import BNStatsReporter

__all__ = ["BNStatsHooks"]


class BNStatsHooks:
    """A BNStatsReporter driven by a framework's global step.

    client, run: as for BNStatsReporter; worker: the worker name (default
    f"rank{rank}" of on_train_begin); reporter_kwargs: the other arguments
    of BNStatsReporter (every, domain, merge_micro_batches, dtype, ...).
    The forwards between two advances of global_step are the micro-batches
    of one optimizer step, reported at the step they were made at (the
    global_step before the advance).
    """

    def __init__(self, client, run, worker=None, **reporter_kwargs):
        self.client = client
        self.run = run
        self.worker = worker
        self.reporter_kwargs = reporter_kwargs
        self.reporter = None
        self._global_step = None

    def on_train_begin(self, model, global_step=0, rank=0):
        """Start reporting model's BatchNorm layers (model may be wrapped in
        DDP); global_step: the optimizer steps already taken (a resumed run);
        rank: this process's rank, for the default worker name."""
        if self.reporter is not None:
            self.reporter.close()
        worker = self.worker if self.worker is not None else "rank%d" % rank
        self.reporter = BNStatsReporter(model, self.client, self.run, worker,
                                        start_step=global_step, **self.reporter_kwargs)
        self._global_step = int(global_step)

    def on_batch_end(self, global_step):
        """After a batch's backward (and the optimizer step, when there was
        one): when global_step advanced, report the forwards since the last
        advance at the step they were made at. Returns what
        BNStatsReporter.step() returned, or None when the step did not
        advance (a micro-batch of gradient accumulation)."""
        if self.reporter is None:
            raise RuntimeError("bnstat: BNStatsHooks.on_batch_end() before on_train_begin()")
        global_step = int(global_step)
        if global_step == self._global_step:
            return None
        made_at, self._global_step = self._global_step, global_step
        return self.reporter.step(made_at)

    def on_batch_skipped(self):
        """Forget the forwards since the last advance of global_step without
        reporting them (batches whose statistics should not count)."""
        if self.reporter is not None:
            self.reporter.discard()

    def on_train_end(self):
        """Send what is queued and stop; returns the reporter's counters."""
        if self.reporter is None:
            return None
        counters = self.reporter.close()
        self.reporter = None
        return counters
