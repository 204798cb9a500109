"""The agent plan: fleet's reconciler rules, reasons and task order (FLEET-SPEC §3.8), and convergence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.model import DesiredState
from fleetpy.plan import ActionKind, AgentAction, Current, Desired, agent_plan, apply_agent_action

LAUNCHED, LOADED, INACTIVE = DesiredState.LAUNCHED, DesiredState.LOADED, DesiredState.INACTIVE
UNLOAD, LOAD, RELOAD, STOP, START = (
    ActionKind.UNLOAD,
    ActionKind.LOAD,
    ActionKind.RELOAD,
    ActionKind.STOP,
    ActionKind.START,
)

NOT_SCHEDULED = "unit loaded but not scheduled here"
NOT_LOADED = "unit scheduled here but not loaded"
HASH_DIFFERS = "unit loaded but hash differs to expected"
WANT_LAUNCHED = "unit currently loaded but desired state is launched"
WANT_LOADED = "unit currently launched but desired state is loaded"
RELOADED = (RELOAD, "", "unit files changed")


def steps(actions: list[AgentAction]) -> list[tuple[ActionKind, str, str]]:
    return [(a.kind, a.unit, a.reason) for a in actions]


@pytest.mark.parametrize(
    ("desired", "current", "expected"),
    [
        pytest.param(None, None, [], id="a unit neither desired nor present needs nothing"),
        pytest.param(None, Current("h1", LOADED), [(UNLOAD, "u", NOT_SCHEDULED), RELOADED], id="not scheduled here"),
        pytest.param(
            None, Current("h1", LAUNCHED), [(UNLOAD, "u", NOT_SCHEDULED), RELOADED], id="a launched unit not wanted"
        ),
        pytest.param(
            Desired("h1", INACTIVE),
            Current("h1", LAUNCHED),
            [(UNLOAD, "u", NOT_SCHEDULED), RELOADED],
            id="desired inactive is unloaded",
        ),
        pytest.param(Desired("h1", INACTIVE), None, [], id="desired inactive and absent needs nothing"),
        pytest.param(Desired("h1", LOADED), None, [(LOAD, "u", NOT_LOADED), RELOADED], id="desired loaded is loaded"),
        pytest.param(
            Desired("h1", LAUNCHED),
            None,
            [(LOAD, "u", NOT_LOADED), RELOADED, (START, "u", WANT_LAUNCHED)],
            id="desired launched is loaded then started after the reload",
        ),
        pytest.param(Desired("h1", LOADED), Current("h1", LOADED), [], id="loaded as desired"),
        pytest.param(Desired("h1", LAUNCHED), Current("h1", LAUNCHED), [], id="launched as desired"),
        pytest.param(
            Desired("h1", LAUNCHED),
            Current("h1", LOADED),
            [(START, "u", WANT_LAUNCHED)],
            id="a start needs no reload",
        ),
        pytest.param(
            Desired("h1", LOADED),
            Current("h1", LAUNCHED),
            [(STOP, "u", WANT_LOADED)],
            id="a stop needs no reload",
        ),
        pytest.param(
            Desired("h2", LOADED),
            Current("h1", LOADED),
            [(UNLOAD, "u", HASH_DIFFERS), (LOAD, "u", NOT_LOADED), RELOADED],
            id="a new hash is unloaded and loaded",
        ),
        pytest.param(
            Desired("h2", LAUNCHED),
            Current("h1", LAUNCHED),
            [(UNLOAD, "u", HASH_DIFFERS), (LOAD, "u", NOT_LOADED), RELOADED, (START, "u", WANT_LAUNCHED)],
            id="a new hash of a launched unit is reloaded and restarted",
        ),
        pytest.param(
            Desired("h1", LOADED),
            Current("h1", INACTIVE),
            [(LOAD, "u", NOT_LOADED), RELOADED],
            id="a file the agent did not load itself is loaded",
        ),
        pytest.param(
            Desired("h1", LAUNCHED),
            Current("h1", INACTIVE),
            [(LOAD, "u", NOT_LOADED), RELOADED, (START, "u", WANT_LAUNCHED)],
            id="a file the agent did not load itself is loaded and started",
        ),
    ],
)
def test_one_unit(
    desired: Desired | None, current: Current | None, expected: list[tuple[ActionKind, str, str]]
) -> None:
    plan = agent_plan({"u": desired} if desired else {}, {"u": current} if current else {})
    assert steps(plan) == expected


def test_load_carries_the_desired_hash() -> None:
    (load, _) = agent_plan({"u": Desired("h2", LOADED)}, {})
    assert (load.kind, load.hash) == (LOAD, "h2")


def test_tasks_are_ordered_unload_load_reload_stop_start_and_by_name_within_a_kind() -> None:
    desired = {
        "b-start": Desired("h", LAUNCHED),
        "a-start": Desired("h", LAUNCHED),
        "c-stop": Desired("h", LOADED),
        "d-new": Desired("h", LAUNCHED),
        "e-changed": Desired("h2", LOADED),
    }
    current = {
        "b-start": Current("h", LOADED),
        "a-start": Current("h", LOADED),
        "c-stop": Current("h", LAUNCHED),
        "e-changed": Current("h1", LOADED),
        "z-gone": Current("h", LAUNCHED),
    }
    assert steps(agent_plan(desired, current)) == [
        (UNLOAD, "e-changed", HASH_DIFFERS),
        (UNLOAD, "z-gone", NOT_SCHEDULED),
        (LOAD, "d-new", NOT_LOADED),
        (LOAD, "e-changed", NOT_LOADED),
        RELOADED,
        (STOP, "c-stop", WANT_LOADED),
        (START, "a-start", WANT_LAUNCHED),
        (START, "b-start", WANT_LAUNCHED),
        (START, "d-new", WANT_LAUNCHED),
    ]


def test_no_reload_without_load_or_unload() -> None:
    plan = agent_plan(
        {"a": Desired("h", LAUNCHED), "b": Desired("h", LOADED)},
        {"a": Current("h", LOADED), "b": Current("h", LAUNCHED)},
    )
    assert RELOAD not in [a.kind for a in plan]
    assert len(plan) == 2


def test_the_plan_is_empty_when_everything_is_as_desired() -> None:
    assert agent_plan({"a": Desired("h", LAUNCHED)}, {"a": Current("h", LAUNCHED)}) == []


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [
        pytest.param(AgentAction(UNLOAD, "u", ""), {"u": Current("h", LAUNCHED)}, {}, id="unload forgets the unit"),
        pytest.param(AgentAction(UNLOAD, "u", ""), {}, {}, id="unload of an absent unit is harmless"),
        pytest.param(AgentAction(LOAD, "u", "", "h2"), {}, {"u": Current("h2", LOADED)}, id="load records the hash"),
        pytest.param(
            AgentAction(START, "u", ""), {"u": Current("h", LOADED)}, {"u": Current("h", LAUNCHED)}, id="start"
        ),
        pytest.param(AgentAction(STOP, "u", ""), {"u": Current("h", LAUNCHED)}, {"u": Current("h", LOADED)}, id="stop"),
        pytest.param(
            AgentAction(RELOAD, "", ""), {"u": Current("h", LOADED)}, {"u": Current("h", LOADED)}, id="reload"
        ),
    ],
)
def test_apply_agent_action(action: AgentAction, before: dict[str, Current], after: dict[str, Current]) -> None:
    current = dict(before)
    apply_agent_action(current, action)
    assert current == after


NAMES = st.sampled_from(["a.service", "b.service", "c.service", "d.service"])
HASHES = st.sampled_from(["h1", "h2"])
desired_sets = st.dictionaries(NAMES, st.builds(Desired, HASHES, st.sampled_from(list(DesiredState))), max_size=4)
current_sets = st.dictionaries(NAMES, st.builds(Current, HASHES, st.sampled_from(list(DesiredState))), max_size=4)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(desired_sets, current_sets)
def test_property_applying_every_action_and_planning_again_gives_nothing_to_do(
    desired: dict[str, Desired], current: dict[str, Current]
) -> None:
    state = dict(current)
    plan = agent_plan(desired, state)
    for action in plan:
        apply_agent_action(state, action)
    assert agent_plan(desired, state) == []
    # and the result is what was desired
    for name, want in desired.items():
        if want.state == INACTIVE:
            assert name not in state
        else:
            assert state[name] == Current(want.hash, want.state)
    assert set(state) == {n for n, w in desired.items() if w.state != INACTIVE}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(desired_sets, current_sets)
def test_property_plans_are_ordered_and_reload_only_with_file_changes(
    desired: dict[str, Desired], current: dict[str, Current]
) -> None:
    plan = agent_plan(desired, current)
    kinds = [a.kind for a in plan]
    assert kinds == sorted(kinds)
    changes_files = any(k in (LOAD, UNLOAD) for k in kinds)
    assert kinds.count(RELOAD) == (1 if changes_files else 0)
    for kind in (UNLOAD, LOAD, STOP, START):
        units = [a.unit for a in plan if a.kind == kind]
        assert units == sorted(set(units))
    assert {a.unit for a in plan if a.kind != RELOAD} <= desired.keys() | current.keys()
    assert agent_plan(desired, current) == plan
