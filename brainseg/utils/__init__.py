"""The ground floor: helpers that import no other brainseg package. Error types
(:mod:`.errors`), atomic writes (:mod:`.io`), the CLIs' error path (:mod:`.cli`), strict
LazyConfig loading (:mod:`.config`), safe checkpoints (:mod:`.checkpoint`), fork-safe data-loader
workers (:mod:`.workers`), malloc tuning and a timing helper for benchmarks."""
