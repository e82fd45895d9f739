"""Test fixtures that write workdirs by hand through the contract of probing.store.layout.

`planted` writes extracted workdirs (features with a planted signal) for the
probe trainer's tests and benchmarks; `probed` writes probed workdirs
(fabricated probe results) for the report's tests. Neither needs a model.
"""
