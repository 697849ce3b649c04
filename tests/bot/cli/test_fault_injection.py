"""`MUSE_TEST_FAULT`, the test-only hook the fault tests drive a `muse run` subprocess with."""

from __future__ import annotations

import time

import pytest

from bot.cli.fault_injection import SLOW_STEP_S, fault_hook_from_env


def test_unset_means_no_hook():
    assert fault_hook_from_env({}) is None
    assert fault_hook_from_env({"MUSE_TEST_FAULT": "  "}) is None


@pytest.mark.parametrize("spec", ["melt:decode", "raise:sample", "raise:decode:-1"])
def test_a_bad_spec_is_refused(spec: str):
    with pytest.raises(ValueError, match="MUSE_TEST_FAULT"):
        fault_hook_from_env({"MUSE_TEST_FAULT": spec})


def test_raise_after_n_steps_of_its_phase_only():
    hook = fault_hook_from_env({"MUSE_TEST_FAULT": "raise:decode:2"})
    assert hook is not None
    hook("prefill", [])  # another phase does not count
    hook("decode", [])
    hook("decode", [])
    with pytest.raises(RuntimeError, match="injected failure in decode"):
        hook("decode", [])


def test_slow_delays_every_step_of_its_phase_and_never_fails():
    hook = fault_hook_from_env({"MUSE_TEST_FAULT": "slow:decode"})
    assert hook is not None
    started = time.monotonic()
    hook("prefill", [])
    assert time.monotonic() - started < SLOW_STEP_S
    for _ in range(3):
        hook("decode", [])
    assert time.monotonic() - started >= 3 * SLOW_STEP_S
