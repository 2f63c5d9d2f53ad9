"""The shard state machine with a fake clock: fast, no processes."""

from __future__ import annotations

import pytest

from shardctl.config.model import SupervisorConfig
from shardctl.report import ShardState
from shardctl.supervisor.states import (
    ALLOWED,
    Action,
    IllegalTransition,
    ShardMachine,
    describe_exit,
)

S = ShardState
POLICY = SupervisorConfig(start_grace=2.0, heartbeat_timeout=5.0, restart_initial=1.0, restart_max=8.0,
                       healthy_after=30.0, max_failures=3, failure_window=60.0)


def machine(policy: SupervisorConfig = POLICY) -> tuple[ShardMachine, list[tuple[S, S, str]]]:
    seen: list[tuple[S, S, str]] = []
    m = ShardMachine("crypto", policy, listener=lambda _m, old, new, why: seen.append((old, new, why)),
                     rng=lambda: 0.5)  # jitter 0: delays are exact
    return m, seen


def test_happy_path_start_ready_stop() -> None:
    m, seen = machine()
    m.spawned(0.0)
    assert m.state is S.STARTING and m.wanted
    m.ready(0.5)
    assert m.state is S.RUNNING
    assert m.stop_requested(10.0) is True
    assert m.state is S.STOPPING and not m.wanted
    m.exited(11.0, 0)
    assert m.state is S.STOPPED
    assert [(o, n) for o, n, _ in seen] == [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING),
                                            (S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED)]


def test_start_grace_promotes_a_silent_but_alive_worker() -> None:
    m, _ = machine()
    m.spawned(0.0)
    assert m.poll(1.9) is Action.NONE and m.state is S.STARTING
    assert m.poll(2.0) is Action.NONE and m.state is S.RUNNING
    assert "start_grace" in m.reason


def test_unexpected_exit_backs_off_then_spawns() -> None:
    m, _ = machine()
    m.spawned(0.0)
    m.ready(0.1)
    m.exited(1.0, -9)
    assert m.state is S.BACKOFF
    assert "killed by SIGKILL" in m.reason
    assert m.poll(1.5) is Action.NONE
    assert m.poll(2.0) is Action.SPAWN          # restart_initial = 1 s
    m.spawned(2.0)
    assert m.state is S.STARTING and m.restarts == 1


def test_backoff_grows_and_is_capped() -> None:
    m, _ = machine(SupervisorConfig(restart_initial=1.0, restart_max=3.0, max_failures=100, failure_window=1e9))
    delays = []
    now = 0.0
    for _ in range(5):
        m.spawned(now)
        m.exited(now + 0.1, 1)
        delays.append(m.backoff_until - (now + 0.1))
        now += 10
    assert delays == pytest.approx([1.0, 2.0, 3.0, 3.0, 3.0], abs=0.31)


def test_healthy_period_resets_backoff() -> None:
    m, _ = machine(SupervisorConfig(restart_initial=1.0, restart_max=8.0, healthy_after=30.0, max_failures=10))
    m.spawned(0.0)
    m.exited(0.1, 1)
    m.spawned(2.0)
    m.exited(2.1, 1)
    assert m.backoff_until - 2.1 == pytest.approx(2.0)
    m.spawned(5.0)
    m.ready(5.0)
    m.exited(40.0, 1)                            # ran healthy for 35 s > healthy_after
    assert m.backoff_until - 40.0 == pytest.approx(1.0)


def test_too_many_failures_is_fatal_and_manual_start_leaves_it() -> None:
    m, _ = machine()
    now = 0.0
    for _ in range(3):
        m.spawned(now)
        m.exited(now + 0.1, 1)
        now += 5
    assert m.state is S.FATAL
    assert "3 failures" in m.reason
    assert m.poll(now + 100) is Action.NONE      # FATAL never restarts by itself
    m.spawned(now + 100, manual=True)
    assert m.state is S.STARTING and m.failures_in_window(now + 100) == 0


def test_failures_outside_the_window_do_not_count() -> None:
    m, _ = machine()
    for start in (0.0, 100.0, 200.0, 300.0):
        m.spawned(start)
        m.exited(start + 0.1, 1)
        assert m.state is S.BACKOFF


def test_exit_code_2_is_fatal_at_once() -> None:
    m, _ = machine()
    m.spawned(0.0)
    m.exited(0.2, 2)
    assert m.state is S.FATAL and "configuration error" in m.reason


def test_lost_heartbeats_stop_the_worker_and_count_as_failure() -> None:
    m, _ = machine()
    m.spawned(0.0)
    m.ready(0.0)
    m.heartbeat(3.0)
    assert m.poll(7.9) is Action.NONE
    assert m.poll(8.0) is Action.TERMINATE
    assert m.state is S.STOPPING
    m.exited(8.5, 0)                             # clean exit after SIGTERM, still a failure
    assert m.state is S.BACKOFF and "heartbeats stopped" in m.reason
    assert m.failures_in_window(8.5) == 1


def test_stop_during_backoff_cancels_the_restart() -> None:
    m, _ = machine()
    m.spawned(0.0)
    m.exited(0.1, 1)
    assert m.stop_requested(0.2) is False
    assert m.state is S.STOPPED and m.poll(100.0) is Action.NONE


def test_operator_stop_overrides_a_heartbeat_stop() -> None:
    m, _ = machine()
    m.spawned(0.0)
    m.ready(0.0)
    assert m.poll(6.0) is Action.TERMINATE
    assert m.stop_requested(6.1) is False        # already STOPPING; now a clean stop
    m.exited(6.5, 0)
    assert m.state is S.STOPPED


@pytest.mark.parametrize("old,new", [(S.STOPPED, S.RUNNING), (S.FATAL, S.RUNNING), (S.RUNNING, S.STARTING),
                                     (S.STOPPED, S.STOPPING), (S.BACKOFF, S.RUNNING)])
def test_illegal_transitions_raise(old: S, new: S) -> None:
    m, _ = machine()
    m.state = old
    with pytest.raises(IllegalTransition):
        m.transition(new, 0.0, "test")
    assert m.state is old


def test_every_state_can_be_left() -> None:
    assert set(ALLOWED) == set(S)
    assert all(ALLOWED[s] for s in S)


def test_exit_reported_when_no_process_is_a_bug() -> None:
    m, _ = machine()
    with pytest.raises(IllegalTransition):
        m.exited(0.0, 1)


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(None) == "exit status unknown"
