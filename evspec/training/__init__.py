"""Training: the one loop (:mod:`evspec.training.loop`) and its tasks; ``evspec train`` trains a
family VLM, from scratch or from a checkpoint (:mod:`evspec.training.vlm`), ``evspec eval`` judges answers
(:mod:`evspec.training.evaluate`; the run: :mod:`evspec.training.eval_run`)."""
