"""bnstat in PyTorch Lightning and in the Hugging Face Trainer: two callbacks
around bnstat.BNStatsHooks. Each library is imported only when its callback
is made, so this file imports without either (neither is packaged in
Debian 12: pip install lightning / transformers).

    from integrations import lightning_callback, hf_callback
    trainer = lightning.pytorch.Trainer(callbacks=[lightning_callback(client, "exp1")],
                                        accumulate_grad_batches=4)
    trainer = transformers.Trainer(..., callbacks=[hf_callback(client, "exp1")])

Both report every BatchNorm layer of the model being trained as worker
f"rank{global rank}", with gradient accumulation (each micro-batch its own
seq: the frameworks' global_step only advances at an optimizer step) and
resumed runs (global_step at the start); keyword arguments go to
BNStatsReporter (every=, domain=, merge_micro_batches=, ...).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bnstat import BNStatsHooks  # noqa: E402


def lightning_callback(client, run, **reporter_kwargs):
    """A lightning.pytorch.Callback (or pytorch_lightning's) that reports the
    LightningModule's BatchNorm layers during fit()."""
    try:
        from lightning.pytorch import Callback
    except ImportError:
        from pytorch_lightning import Callback

    class BNStatsCallback(Callback):
        def __init__(self):
            self.hooks = BNStatsHooks(client, run, **reporter_kwargs)

        def on_train_start(self, trainer, pl_module):
            self.hooks.on_train_begin(pl_module, global_step=trainer.global_step,
                                      rank=trainer.global_rank)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.hooks.on_batch_end(trainer.global_step)

        def on_train_end(self, trainer, pl_module):
            self.hooks.on_train_end()

    return BNStatsCallback()


def hf_callback(client, run, **reporter_kwargs):
    """A transformers.TrainerCallback that reports the model's BatchNorm
    layers during Trainer.train()."""
    from transformers import TrainerCallback

    class BNStatsCallback(TrainerCallback):
        def __init__(self):
            self.hooks = BNStatsHooks(client, run, **reporter_kwargs)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.hooks.on_train_begin(model, global_step=state.global_step,
                                      rank=args.process_index)

        def on_step_end(self, args, state, control, **kwargs):
            # called after each optimizer step, state.global_step already advanced
            self.hooks.on_batch_end(state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            self.hooks.on_train_end()

    return BNStatsCallback()
