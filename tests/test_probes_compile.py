"""Compiling the sweep's programs (probing.probes.devices._lower).

On CPU they compile with devices.CPU_COMPILER_OPTIONS (XLA's loop emitters,
which compile the epoch program in less CPU time); other platforms get XLA's
defaults; a jaxlib that refuses an option compiles with its defaults and says
so once. Lowering and compiling are two steps so that set-up lowers on its
own thread and compiles on others.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probing.probes import devices


class _Lowered:
    """Stands in for a jax Lowered: records the options it is compiled with."""

    def __init__(self):
        self.options = []

    def compile(self, compiler_options=None):
        self.options.append(compiler_options)
        return "compiled"


def test_cpu_programs_compile_with_the_sweep_options_and_others_with_defaults():
    assert devices.CPU_COMPILER_OPTIONS  # else this test checks nothing
    on_cpu, on_gpu = _Lowered(), _Lowered()
    devices._compile_lowered(on_cpu, "cpu")
    devices._compile_lowered(on_gpu, "gpu")
    assert on_cpu.options == [devices.CPU_COMPILER_OPTIONS]
    assert on_gpu.options == [None]


def test_the_platform_is_where_the_arguments_live():
    placed = jnp.zeros(3)
    assert devices._platform([placed]) == "cpu"
    assert devices._platform([jax.ShapeDtypeStruct((3,), jnp.float32)]) == jax.devices()[0].platform


def test_an_option_xla_refuses_falls_back_to_its_defaults_and_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(devices, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": True})
    monkeypatch.setattr(devices, "_compiled", {})
    devices._warn_options_refused.cache_clear()

    def double(x):
        return 2 * x

    with caplog.at_level(logging.WARNING):
        for size in (3, 4):  # two programs, one warning
            compiled = devices._lower(jax.jit(double), jnp.ones(size))()
            np.testing.assert_array_equal(np.asarray(compiled(jnp.ones(size))), 2 * np.ones(size))
    refused = [r for r in caplog.records if "xla_cpu_no_such_option" in r.getMessage()]
    assert len(refused) == 1, caplog.text
    devices._warn_options_refused.cache_clear()


def test_other_compile_errors_are_not_swallowed():
    class Failing:
        def compile(self, compiler_options=None):
            raise jax.errors.JaxRuntimeError("INTERNAL: out of memory")

    with pytest.raises(jax.errors.JaxRuntimeError, match="out of memory"):
        devices._compile_lowered(Failing(), "cpu")


def test_lowering_is_one_step_and_compiling_another():
    monkeypatch_free = dict(devices._compiled)
    try:
        devices._compiled.clear()

        def add_one(x):
            return x + 1

        program = jax.jit(add_one)
        compile_later = devices._lower(program, jnp.ones(5))
        assert not devices._compiled  # lowered, not compiled yet
        compiled = compile_later()
        assert len(devices._compiled) == 1
        # The same shapes again: the compiled program, without lowering.
        assert devices._lower(program, jnp.zeros(5))() is compiled
        np.testing.assert_array_equal(np.asarray(compiled(jnp.ones(5))), 2 * np.ones(5))
    finally:
        devices._compiled.clear()
        devices._compiled.update(monkeypatch_free)
