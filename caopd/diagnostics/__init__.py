"""Diagnostics: readings of a finished run that are not part of the pipeline's outputs.

Each is a command of the ``caopd`` command line (:mod:`caopd.cli`) reading a run through its
``results/index/``; the ``arith_`` ones need the embedded ``arith`` task (its levels, its work
line) and mean nothing on another task.

- :mod:`caopd.diagnostics.arith_greedy_reading` – what greedy decoding reads from each arith
  level's training targets, for an ideal level-conditional student (``caopd greedy-reading``);
- :mod:`caopd.diagnostics.arith_work_agreement` – whether an arith answer follows its own work
  line (``caopd work-agreement``);
- :mod:`caopd.diagnostics.seed_study` – the whole pipeline at several seeds and the paper's
  checks (:mod:`caopd.checks`) across them (``caopd seed-study``, ``benchmarks/seed_study.py``).
"""
