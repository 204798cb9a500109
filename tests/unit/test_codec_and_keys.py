"""The etcd key layout and the JSON values stored under it: round trips and strict decoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpy.keys import DEFAULT_PREFIX, Keys, normalize_prefix
from fleetpy.model import DesiredState, Machine, MachineID, ScheduleEntry, UnitRecord, UnitState
from fleetpy.registry import codec

# ------------------------------------------------------------------------------------------------------------
# Keys


@pytest.mark.parametrize(
    ("prefix", "normal"),
    [
        pytest.param("fleetpy", "/fleetpy", id="no slashes"),
        pytest.param("/fleetpy", "/fleetpy", id="a leading slash"),
        pytest.param("/fleetpy/", "/fleetpy", id="a trailing slash"),
        pytest.param("//a/b//", "/a/b", id="several slashes around"),
        pytest.param("/", "", id="the root"),
        pytest.param("", "", id="nothing"),
    ],
)
def test_normalize_prefix(prefix: str, normal: str) -> None:
    assert normalize_prefix(prefix) == normal
    assert Keys(prefix).prefix == normal


def test_the_key_layout() -> None:
    keys = Keys("/test/")
    assert keys.machines == "/test/machines/"
    assert keys.machine("m1") == "/test/machines/m1"
    assert keys.machine_meta_all == "/test/machine-meta/"
    assert keys.machine_meta("m1") == "/test/machine-meta/m1/"
    assert keys.machine_meta("m1", "disk") == "/test/machine-meta/m1/disk"
    assert keys.units == "/test/units/"
    assert keys.unit("a.service") == "/test/units/a.service"
    assert keys.bodies == "/test/bodies/"
    assert keys.body("abc") == "/test/bodies/abc"
    assert keys.schedule_all == "/test/schedule/"
    assert keys.schedule("m1") == "/test/schedule/m1/"
    assert keys.schedule("m1", "a.service") == "/test/schedule/m1/a.service"
    assert keys.placed_all == "/test/placed/"
    assert keys.placed("a.service", "m1") == "/test/placed/a.service/m1"
    assert keys.states_all == "/test/states/"
    assert keys.state("m1", "a.service") == "/test/states/m1/a.service"
    assert keys.leader == "/test/engine/leader"
    assert keys.unplaced("a.service") == "/test/unplaced/a.service"


def test_the_default_prefix() -> None:
    assert Keys().prefix == DEFAULT_PREFIX == "/fleetpy"
    assert Keys().unit("a.service") == "/fleetpy/units/a.service"


def test_one_machine_prefix_is_not_a_prefix_of_another() -> None:
    keys = Keys()
    assert not keys.schedule("m1", "x.service").startswith(keys.schedule("m"))
    assert keys.schedule("m1", "x.service").startswith(keys.schedule("m1"))


def test_splitting_keys() -> None:
    keys = Keys("/p")
    assert Keys.tail("/p/units/a.service", keys.units) == "a.service"
    assert Keys.split_pair("/p/states/m1/a.service", keys.states_all) == ("m1", "a.service")
    assert keys.schedule_key_parts(keys.schedule("m1", "a@b.service")) == ("m1", "a@b.service")
    with pytest.raises(ValueError, match="is not under"):
        Keys.tail("/other/units/a.service", keys.units)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.text(st.sampled_from("ab/-"), max_size=8),
    st.text(st.sampled_from("0123456789abcdef"), min_size=1, max_size=12),
    st.text(st.sampled_from("ab@.-:_\\"), min_size=1, max_size=12),
)
def test_schedule_keys_split_back_into_their_parts(prefix: str, machine: str, unit: str) -> None:
    keys = Keys(prefix)
    assert keys.schedule_key_parts(keys.schedule(machine, unit)) == (machine, unit)
    assert Keys.split_pair(keys.placed(unit, machine), keys.placed_all) == (unit, machine)


# ------------------------------------------------------------------------------------------------------------
# Codec round trips

ids = st.text(st.sampled_from("0123456789abcdef"), min_size=1, max_size=32).map(MachineID)
strings = st.text(max_size=12)
states = st.sampled_from(list(DesiredState))
machines = st.builds(
    Machine,
    id=ids,
    public_ip=strings,
    metadata=st.dictionaries(strings, strings, max_size=3),
    version=strings,
    capabilities=st.dictionaries(strings, st.booleans(), max_size=2),
    unit_allow=st.lists(strings, max_size=2).map(tuple),
    unit_deny=st.lists(strings, max_size=2).map(tuple),
    refused=st.dictionaries(strings, strings, max_size=2),
)
records = st.builds(
    UnitRecord,
    name=st.just("a.service"),
    hash=st.text(st.sampled_from("0123456789abcdef"), min_size=40, max_size=40),
    desired=states,
    is_global=st.booleans(),
    requirements=st.lists(st.tuples(strings, strings), max_size=3).map(tuple),
)
entries = st.builds(ScheduleEntry, unit=st.just("a.service"), machine=ids, hash=strings, desired=states)
unit_states = st.builds(
    UnitState,
    unit=st.just("a.service"),
    machine=ids,
    load=strings,
    active=strings,
    sub=strings,
    hash=strings,
    achieved=states,
)

ROUND_TRIP = settings(max_examples=100, deadline=None, derandomize=True)


@ROUND_TRIP
@given(machines)
def test_machines_round_trip(machine: Machine) -> None:
    assert codec.decode_machine(codec.encode_machine(machine)) == machine


@ROUND_TRIP
@given(records)
def test_unit_records_round_trip(record: UnitRecord) -> None:
    assert codec.decode_unit(record.name, codec.encode_unit(record)) == record


@ROUND_TRIP
@given(entries)
def test_schedule_entries_round_trip(entry: ScheduleEntry) -> None:
    assert codec.decode_entry(entry.machine, entry.unit, codec.encode_entry(entry)) == entry


@ROUND_TRIP
@given(unit_states)
def test_unit_states_round_trip(state: UnitState) -> None:
    assert codec.decode_state(state.machine, state.unit, codec.encode_state(state)) == state


def test_encoding_is_compact_and_stable() -> None:
    entry = ScheduleEntry("a.service", MachineID("m1"), "abc", DesiredState.LAUNCHED)
    assert codec.encode_entry(entry) == b'{"desired":"launched","hash":"abc"}'
    record = UnitRecord("a.service", "abc", DesiredState.LOADED, True, (("Global", "true"),))
    assert codec.encode_unit(record) == (
        b'{"desired":"loaded","global":true,"hash":"abc","requirements":[["Global","true"]]}'
    )


def test_missing_optional_fields_take_defaults() -> None:
    assert codec.decode_machine(b'{"id":"m1"}') == Machine(MachineID("m1"))
    assert codec.decode_machine(b'{"id":"m1","metadata":null,"capabilities":null}') == Machine(MachineID("m1"))
    assert codec.decode_unit("a.service", b'{"hash":"h","desired":"launched"}') == UnitRecord(
        "a.service", "h", DesiredState.LAUNCHED
    )
    assert codec.decode_state(MachineID("m1"), "a.service", b'{"achieved":"loaded"}') == UnitState(
        "a.service", MachineID("m1"), "", "", "", "", DesiredState.LOADED
    )


# ------------------------------------------------------------------------------------------------------------
# Strict decoding


def _unit(**fields: object) -> bytes:
    return json.dumps({"hash": "h", "desired": "launched", **fields}).encode()


@pytest.mark.parametrize(
    ("decode", "raw", "message"),
    [
        pytest.param(codec.decode_machine, b"not json", "not JSON", id="text that is not JSON"),
        pytest.param(codec.decode_machine, b"\xff\xfe", "not JSON", id="bytes that are not UTF-8"),
        pytest.param(codec.decode_machine, b"[1]", "expected a JSON object, got list", id="a list"),
        pytest.param(codec.decode_machine, b"{}", "field 'id' must be a string", id="a machine without an ID"),
        pytest.param(codec.decode_machine, b'{"id":5}', "field 'id' must be a string", id="a numeric ID"),
        pytest.param(
            codec.decode_machine,
            b'{"id":"m1","metadata":{"a":1}}',
            "field 'metadata' must map strings to strings",
            id="metadata with a number",
        ),
        pytest.param(
            codec.decode_machine,
            b'{"id":"m1","metadata":[]}',
            "field 'metadata' must map strings to strings",
            id="metadata that is a list",
        ),
        pytest.param(
            codec.decode_machine,
            b'{"id":"m1","capabilities":{"GRPC":"false"}}',
            "field 'capabilities' must map names to true or false",
            id="a capability that is a string",
        ),
        pytest.param(
            codec.decode_machine,
            b'{"id":"m1","capabilities":[]}',
            "field 'capabilities' must map names to true or false",
            id="capabilities that are a list",
        ),
        pytest.param(
            codec.decode_machine, b'{"id":"m1","publicIP":null}', "field 'publicIP' must be a string", id="a null IP"
        ),
        pytest.param(
            lambda raw: codec.decode_unit("a.service", raw),
            _unit(desired="whatever"),
            "invalid value 'whatever' for desired state: expected inactive, loaded or launched",
            id="an unknown desired state",
        ),
        pytest.param(
            lambda raw: codec.decode_unit("a.service", raw),
            _unit(**{"global": "false"}),
            "field 'global' must be true or false",
            id="a global flag that is a string",
        ),
        pytest.param(
            lambda raw: codec.decode_unit("a.service", raw),
            _unit(requirements=[["Global"]]),
            "field 'requirements' must be a list of [name, value] pairs",
            id="a requirement that is not a pair",
        ),
        pytest.param(
            lambda raw: codec.decode_unit("a.service", raw),
            _unit(requirements={"Global": "true"}),
            "field 'requirements' must be a list of [name, value] pairs",
            id="requirements that are an object",
        ),
        pytest.param(
            lambda raw: codec.decode_unit("a.service", raw),
            b'{"desired":"launched"}',
            "field 'hash' must be a string",
            id="a unit without a hash",
        ),
        pytest.param(
            lambda raw: codec.decode_entry(MachineID("m1"), "a.service", raw),
            b'{"hash":"h"}',
            "field 'desired' must be a string",
            id="an entry without a desired state",
        ),
        pytest.param(
            lambda raw: codec.decode_state(MachineID("m1"), "a.service", raw),
            b'{"achieved":"running"}',
            "invalid value 'running' for desired state: expected inactive, loaded or launched",
            id="a state with an unknown achieved state",
        ),
        pytest.param(
            lambda raw: codec.decode_state(MachineID("m1"), "a.service", raw),
            b'{"achieved":"loaded","load":1}',
            "field 'load' must be a string",
            id="a state with a numeric load state",
        ),
    ],
)
def test_strict_decoding(decode: object, raw: bytes, message: str) -> None:
    assert callable(decode)
    with pytest.raises(ValueError) as caught:
        decode(raw)
    assert str(caught.value).startswith(message)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=40) | st.text(st.sampled_from('{}[]":,01tfnaehirsdlu '), max_size=40).map(str.encode))
def test_decoding_raises_nothing_but_value_error(raw: bytes) -> None:
    for decode in (
        codec.decode_machine,
        lambda r: codec.decode_unit("a.service", r),
        lambda r: codec.decode_entry(MachineID("m1"), "a.service", r),
        lambda r: codec.decode_state(MachineID("m1"), "a.service", r),
    ):
        try:
            decode(raw)
        except ValueError:
            pass
