"""The run layer below every run command (``evspec bench``, ``evspec spec``, ``evspec train``):
the run folder (:mod:`evspec.run.rundir`), the one run loop (:mod:`evspec.run.orchestrator`), run
configs declared once as dataclass fields with their options (:mod:`evspec.run.config`), what the
commands share (:mod:`evspec.run.shared`: options, the "auto" device and dtype, models, samples,
progress) and run statistics (:mod:`evspec.run.stats`). It imports neither ``evspec.bench`` nor
``evspec.spec``."""
