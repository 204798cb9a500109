"""Every row of FLEET-SPEC §4.3 and the page-token cases of §4.4 against a running ``fleetpyd`` process (its
unix socket, its own event loop, its token limit from ``FLEETPY_TOKEN_LIMIT``), plus the discovery document,
``/metrics`` and 503 before the machine is registered. The in-process tests next to this one go deeper into
each handler; this module checks that the daemon as shipped answers each row as fleet does.

``PATCH /fleet/v1/machines`` belongs to the machine-metadata work and is tested there.
"""

from __future__ import annotations

import os
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetpy import __version__
from fleetpy.devcluster import free_port
from fleetpy.registry.store import EtcdRegistry
from tests.api.conftest import JSON, V1, Http, options_of
from tests.api.seeding import add_machine, place, report
from tests.cli.conftest import start_process, stop_process, wait_serving

M1, M2 = "4d3895379ed84e6c9c4a2d5b9b6a1f01", "e793afb9c0d14f8e8a5a3c2b1d0e9f12"
HELLO = "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/sleep 100\n"
OTHER = "[Unit]\nDescription=Other\n\n[Service]\nExecStart=/bin/sleep 200\n"
GLOBAL = "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nGlobal=true\n"
TEMPLATE = "[Service]\nExecStart=/bin/echo %i\n"
ONLY_GET = "only GET supported against this resource"


async def test_every_row_of_fleets_endpoint_table(fleetpyd: Http, registry: EtcdRegistry) -> None:
    call = fleetpyd
    # GET /fleet/v1/discovery; any other method is 400
    discovery = await call("GET", V1 + "/discovery")
    assert discovery.status == 200
    doc = discovery.json
    assert (doc["id"], doc["rootUrl"], doc["servicePath"]) == ("fleet:v1", "$ENDPOINT/", "fleet/v1/")
    assert {r: sorted(v["methods"]) for r, v in doc["resources"].items()} == {
        "Machines": ["List"],
        "Units": ["Delete", "Get", "List", "Set"],
        "UnitState": ["Get", "List"],
    }
    assert (await call("GET", "/v1-alpha/discovery")).json == doc
    for method in ("POST", "PUT", "DELETE"):
        assert (await call(method, V1 + "/discovery")).error == (400, "only HTTP GET supported against this resource")

    # an empty collection is {}
    for path in ("/units", "/machines", "/state"):
        assert (await call("GET", V1 + path)).raw == b"{}"

    # GET /machines: sorted by ID, only live machines, empty fields omitted, pages of 2
    await add_machine(registry, M2, "10.0.0.3")
    await add_machine(registry, M1, "10.0.0.1", {"region": "us-east", "disk": "ssd"})
    await add_machine(registry, "m3")
    first = await call("GET", V1 + "/machines?alt=json")  # the Go client's alt=json is ignored
    assert first.json == {
        "machines": [
            {"id": M1, "metadata": {"disk": "ssd", "region": "us-east"}, "primaryIP": "10.0.0.1"},
            {"id": M2, "primaryIP": "10.0.0.3"},
        ],
        "nextPageToken": "AgACAA==",
    }
    assert (await call("GET", V1 + "/machines?nextPageToken=AgACAA==")).json == {"machines": [{"id": "m3"}]}
    for method in ("POST", "PUT", "DELETE"):
        assert (await call(method, V1 + "/machines", {})).error == (
            405,
            "only GET and PATCH supported against this resource",
        )
    assert (await call("GET", V1 + "/machines/" + M1)).error == (404, "")

    # PUT /units/<name>: the state machine, in fleet's order
    assert (await call("PUT", V1 + "/units/a.service", raw=b"{}", headers={})).error == (
        415,
        "only acceptable Content-Type is application/json",
    )
    bad = await call("PUT", V1 + "/units/a.service", raw=b"{", headers=JSON)
    assert bad.status == 400
    assert bad.error[1].startswith("unable to decode body:")
    assert (await call("PUT", V1 + "/units/a.service", {"name": "b.service"})).error == (
        400,
        'name in URL "a.service" differs from unit name in request body "b.service"',
    )
    assert (await call("PUT", V1 + "/units/foo.servICE", {"options": options_of(HELLO)})).error == (
        400,
        'invalid unit type: "servICE"',
    )
    assert (await call("PUT", V1 + "/units/a.service", {"desiredState": "launched"})).error == (
        409,
        "unit does not exist and options field empty",
    )
    conflicting = "[X-Fleet]\nMachineID=abc\nGlobal=true\n"
    assert (await call("PUT", V1 + "/units/a.service", {"options": options_of(conflicting)})).error == (
        400,
        "MachineID cannot be used with Global",
    )
    assert (
        await call("PUT", V1 + "/units/a.service", {"options": options_of(HELLO), "desiredState": "bogus"})
    ).status == 400
    created = await call("PUT", V1 + "/units/hello.service", {"name": "hello.service", "options": options_of(HELLO)})
    assert (created.status, created.raw) == (201, b"")
    assert (
        await call("PUT", V1 + "/units/g.service", {"options": options_of(GLOBAL), "desiredState": "launched"})
    ).status == 201
    assert (await call("PUT", V1 + "/units/t@.service", {"options": options_of(TEMPLATE)})).status == 201
    assert (await call("PUT", V1 + "/units/t@.service", {"desiredState": "launched"})).error == (
        400,
        'cannot activate template "t@.service"',
    )
    assert (await call("PUT", V1 + "/units/hello.service", {})).error == (
        409,
        "must provide DesiredState to update existing unit",
    )
    assert (await call("PUT", V1 + "/units/hello.service", {"desiredState": "whatever"})).status == 400
    updated = await call("PUT", V1 + "/units/hello.service", {"desiredState": "launched"})
    assert (updated.status, updated.raw) == (204, b"")
    same = await call("PUT", V1 + "/units/hello.service", {"options": options_of(HELLO), "desiredState": "launched"})
    assert same.status == 204

    # GET /units and /units/<name>: global units show inactive in the list and no current state alone
    await place(registry, "hello.service", M1)
    await report(registry, M1, "hello.service")
    listed = await call("GET", V1 + "/units")
    assert [(u["name"], u.get("currentState")) for u in listed.json["units"]] == [
        ("g.service", None),
        ("hello.service", "launched"),
    ]
    assert listed.json["nextPageToken"] == "AgACAA=="
    page_two = await call("GET", V1 + "/units?nextPageToken=AgACAA==")
    assert [u["name"] for u in page_two.json["units"]] == ["t@.service"]
    hello = (await call("GET", V1 + "/units/hello.service")).json
    assert hello == {
        "currentState": "launched",
        "desiredState": "launched",
        "machineID": M1,
        "name": "hello.service",
        "options": [{"name": o["name"], "section": o["section"], "value": o["value"]} for o in options_of(HELLO)],
    }
    assert "currentState" not in (await call("GET", V1 + "/units/g.service")).json
    assert (await call("GET", V1 + "/units/missing.service")).error == (404, "unit does not exist")
    for method in ("POST", "PUT", "DELETE"):
        assert (await call(method, V1 + "/units", {})).error == (405, ONLY_GET)
    for method in ("POST", "PATCH"):
        assert (await call(method, V1 + "/units/hello.service", {})).error == (
            405,
            "only GET, PUT and DELETE supported against this resource",
        )
    for path in ("/units/", "/units/a/b"):
        assert (await call("GET", V1 + path)).error == (404, "")

    # a replace: different options, 201, desired from the body
    replaced = await call("PUT", V1 + "/units/hello.service", {"options": options_of(OTHER), "desiredState": "loaded"})
    assert replaced.status == 201
    assert (await call("GET", V1 + "/units/hello.service")).json["desiredState"] == "loaded"

    # GET /state: filtered, sorted, paged; /state/<name>
    await report(registry, M2, "g.service")
    await report(registry, M1, "g.service")
    states = (await call("GET", V1 + "/state")).json
    assert [(s["name"], s["machineID"]) for s in states["states"]] == [("g.service", M1), ("g.service", M2)]
    assert [
        (s["name"], s["machineID"]) for s in (await call("GET", V1 + "/state?nextPageToken=AgACAA==")).json["states"]
    ] == [("hello.service", M1)]
    only = (await call("GET", f"{V1}/state?machineID={M1}&unitName=g.service")).json
    assert [(s["name"], s["machineID"]) for s in only["states"]] == [("g.service", M1)]
    one = (await call("GET", V1 + "/state/g.service")).json
    assert list(one) == ["hash", "machineID", "name", "systemdActiveState", "systemdLoadState", "systemdSubState"]
    assert (await call("GET", V1 + "/state/missing.service")).error == (404, "unit state does not exist")
    for method in ("POST", "PUT", "DELETE"):
        assert (await call(method, V1 + "/state", {})).error == (405, ONLY_GET)
        assert (await call(method, V1 + "/state/g.service", {})).error == (405, ONLY_GET)

    # DELETE /units/<name>
    deleted = await call("DELETE", V1 + "/units/t@.service")
    assert (deleted.status, deleted.raw) == (204, b"")
    assert (await call("DELETE", V1 + "/units/t@.service")).error == (404, "unit does not exist")

    # the prefix itself, the root, anything else; the legacy prefix
    for path in (V1, "/"):
        assert (await call("GET", path)).error == (405, "")
    assert (await call("GET", "/nothing")).error == (404, "")
    assert (await call("GET", "/v1-alpha/units/hello.service")).json == (
        await call("GET", V1 + "/units/hello.service")
    ).json

    # every answer has fleet's Server header (with fleetpyd's name)
    for path in (V1 + "/units", "/nothing", V1 + "/discovery"):
        assert (await call("GET", path)).headers["Server"] == f"fleetpyd/{__version__}"

    # GET /metrics: Prometheus text
    scraped = await call("GET", "/metrics")
    assert scraped.status == 200
    assert scraped.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(scraped.raw.decode())}
    fleets = {
        "fleet_engine_leader_start_time": "gauge",
        "fleet_engine_task_count": "counter",
        "fleet_engine_task_failure_count": "counter",
        "fleet_engine_reconcile_count": "counter",
        "fleet_engine_reconcile_failure_count": "counter",
        "fleet_engine_reconcile_duration_second": "histogram",
        "fleet_registry_operation_count": "counter",
        "fleet_registry_operation_failed_count": "counter",
        "fleet_registry_operation_duration_second": "histogram",
    }
    assert {name: families[name].type for name in fleets} == fleets  # all nine, registered (fleet exported five)
    task_types = {s.labels["type"] for s in families["fleet_engine_task_count"].samples if s.name.endswith("_total")}
    assert task_types == {"attemptscheduleunit", "unscheduleunit", "updateunit"}
    gets = [s for s in families["fleet_registry_operation_count"].samples if s.labels == {"type": "get"}]
    assert gets[0].value > 0  # this test's GETs of units were counted
    assert "fleetpy_etcd_operations" in families
    units = {(s.labels["desired"], s.labels["current"]): s.value for s in families["fleetpy_units"].samples}
    assert units == {("launched", "global"): 1.0, ("loaded", "inactive"): 1.0}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("nextPageToken=AgACAA==&nextPageToken=AgACAA==", "too many values for page token", id="two"),
        pytest.param("nextPageToken=", "EOF", id="empty"),
        pytest.param("nextPageToken=AgA=", "unexpected EOF", id="two bytes"),
        pytest.param("nextPageToken=ZAACAA==", "token limit must be 2", id="another limit"),
        pytest.param("nextPageToken=AgAAAA==", "token page must be greater than zero", id="page zero"),
        pytest.param("nextPageToken=Ag*CAA==", "illegal base64 data at input byte 2", id="not base64"),
    ],
)
async def test_page_token_errors(fleetpyd: Http, query: str, message: str) -> None:
    for path in ("/units", "/machines", "/state"):
        assert (await fleetpyd("GET", f"{V1}{path}?{query}")).error == (400, message)


async def test_before_its_machine_is_registered_every_path_is_503(workdir: str, prefix: str) -> None:
    """A fleetpyd with an agent whose etcd cannot be reached: its API answers, with fleet's 503, everywhere."""
    name = prefix.strip("/")
    sock = os.path.join(workdir, f"unreg-{name}.sock")
    runtime = os.path.join(workdir, f"unreg-{name}")
    command = [
        sys.executable, "-m", "fleetpy.cli.fleetpyd", "--api-socket", sock, "--machine-id", "a" * 32,
        "--etcd-servers", f"http://127.0.0.1:{free_port()}", "--etcd-key-prefix", prefix, "--systemd-user",
    ]  # fmt: skip
    env = dict(os.environ, FLEETPY_RUNTIME_DIRECTORY=runtime)
    api = start_process(command, sock, os.path.join(workdir, f"unreg-{name}.log"), env=env)
    try:
        wait_serving(api)
        http = Http(sock)
        try:
            for method, path in [("GET", V1 + "/units"), ("GET", "/metrics"), ("GET", V1 + "/discovery"), ("GET", "/")]:
                reply = await http(method, path)
                assert reply.status == 503
                assert reply.raw == b'{"error":{"code":503,"message":"fleet server unable to communicate with etcd"}}'
                assert "Server" not in reply.headers or "fleetpyd" not in reply.headers["Server"]
        finally:
            await http.session.close()
    finally:
        stop_process(api)
