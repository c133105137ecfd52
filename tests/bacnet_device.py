"""A BACnet/IP device simulated by bacpypes3, run as its own process by the BACnet tests.

    python -m tests.bacnet_device --port 47900 [--instance 1001]

Binds 127.0.0.1:<port> (unicast only, no broadcast socket), prints `ready` once the
socket is bound, then serves ReadProperty, ReadPropertyMultiple, WriteProperty and
SubscribeCOV from bacpypes3's own server side. Objects (a small chiller plant):

    analog-input,1    chw supply temp, 6.5 Cel
    analog-input,2    chw return temp, 12.25 Cel
    analog-input,3    chiller power in W (312500), the point list scales it to kW
    analog-input,4    outdoor dry bulb: steps by 0.5 every 0.2 s (values change; COV)
    analog-input,5..8 cw supply temp 29.5, tower 41.25 kW, pumps 18.5 kW, load 950 kW
    analog-value,2    cw supply setpoint, commandable, default 29.0
    analog-value,1    chw supply setpoint, commandable (priority array), default 7.0
    analog-output,1   chw valve %, commandable, default 40.0
    binary-input,1    chiller running: active
    binary-value,1    chiller enable, commandable, default active
    analog-value,9    present-value is a CharacterString (a device that sends a wrong type)

With `--no-rpm` the device has no ReadPropertyMultiple service (bacpypes3 then rejects
it as an unrecognized service), like small controllers that only do ReadProperty; with
`--no-cov` it has no SubscribeCOV service.

stdin commands (one per line, answered with one JSON line on stdout), so a test can see
the device's own state without going through the client under test:

    get <object id>          {"present_value": ..., "priority_array": [...] | null}
    set <object id> <value>  sets present-value (priority 16 for commandable objects)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from bacpypes3.app import Application
from bacpypes3.basetypes import PriorityValue
from bacpypes3.local.analog import (
    AnalogInputObject,
    AnalogOutputObject,
    AnalogValueObject,
    AnalogValueObjectCmd,
)
from bacpypes3.local.binary import BinaryInputObject, BinaryValueObjectCmd
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.primitivedata import CharacterString, ObjectIdentifier, Real


class StringValueObject(AnalogValueObject):
    """An analog value whose present-value is text: a wrong type for the client."""

    presentValue: CharacterString  # noqa: N815 (bacpypes3 property name)


def build_objects(instance: int) -> list[Any]:
    status = [0, 0, 0, 0]
    return [
        AnalogInputObject(
            objectIdentifier="analog-input,1",
            objectName="CHW-SUPPLY-T",
            presentValue=6.5,
            units="degreesCelsius",
            statusFlags=status,
            covIncrement=0.1,
        ),
        AnalogInputObject(
            objectIdentifier="analog-input,2",
            objectName="CHW-RETURN-T",
            presentValue=12.25,
            units="degreesCelsius",
            statusFlags=status,
            covIncrement=0.1,
        ),
        AnalogInputObject(
            objectIdentifier="analog-input,3",
            objectName="CH1-POWER",
            presentValue=312500.0,
            units="watts",
            statusFlags=status,
            covIncrement=100.0,
        ),
        AnalogInputObject(
            objectIdentifier="analog-input,4",
            objectName="OAT",
            presentValue=20.0,
            units="degreesCelsius",
            statusFlags=status,
            covIncrement=0.1,
        ),
        *(
            AnalogInputObject(
                objectIdentifier=f"analog-input,{i}",
                objectName=name,
                presentValue=value,
                statusFlags=status,
                covIncrement=0.1,
            )
            for i, name, value in (
                (5, "CW-SUPPLY-T", 29.5),
                (6, "TOWER-POWER", 41.25),
                (7, "PUMP-POWER", 18.5),
                (8, "COOLING-LOAD", 950.0),
            )
        ),
        AnalogValueObjectCmd(
            objectIdentifier="analog-value,2",
            objectName="CW-SUPPLY-SP",
            presentValue=29.0,
            relinquishDefault=29.0,
            units="degreesCelsius",
            statusFlags=status,
            covIncrement=0.1,
        ),
        AnalogValueObjectCmd(
            objectIdentifier="analog-value,1",
            objectName="CHW-SUPPLY-SP",
            presentValue=7.0,
            relinquishDefault=7.0,
            units="degreesCelsius",
            statusFlags=status,
            covIncrement=0.1,
        ),
        AnalogOutputObject(
            objectIdentifier="analog-output,1",
            objectName="CHW-VALVE",
            presentValue=40.0,
            relinquishDefault=40.0,
            units="percent",
            statusFlags=status,
            covIncrement=1.0,
        ),
        BinaryInputObject(
            objectIdentifier="binary-input,1",
            objectName="CH1-RUN",
            presentValue="active",
            statusFlags=status,
        ),
        BinaryValueObjectCmd(
            objectIdentifier="binary-value,1",
            objectName="CH1-ENABLE",
            presentValue="active",
            relinquishDefault="active",
            statusFlags=status,
        ),
        StringValueObject(
            objectIdentifier="analog-value,9",
            objectName="BROKEN",
            presentValue="n/a",
            statusFlags=status,
            covIncrement=0.1,
        ),
    ]


def _plain(value: Any) -> Any:
    """A bacpypes3 value as JSON: numbers stay numbers, enumerations become their name."""
    if isinstance(value, PriorityValue):
        for attr in ("real", "enumerated", "null", "unsigned"):
            v = getattr(value, attr, None)
            if v is not None:
                return None if attr == "null" else _plain(v)
        return None
    if isinstance(value, float | int) and not hasattr(value, "asn1"):
        return float(value)
    if hasattr(value, "asn1"):  # an Enumerated: its name
        return str(value.asn1)
    return str(value)


class NoRpmApplication(Application):
    """No ReadPropertyMultiple handler: bacpypes3 rejects it (unrecognized-service)."""

    do_ReadPropertyMultipleRequest = None  # noqa: N815 (bacpypes3 service helper name)


class NoCovApplication(Application):
    """No SubscribeCOV handler: bacpypes3 rejects it (unrecognized-service)."""

    do_SubscribeCOVRequest = None  # noqa: N815 (bacpypes3 service helper name)


async def serve(port: int, instance: int, rpm: bool, cov: bool) -> None:
    device = DeviceObject(
        objectIdentifier=("device", instance),
        objectName=f"chiller-plant-{instance}",
        vendorIdentifier=999,
    )
    net = NetworkPortObject(
        f"127.0.0.1/32:{port}",
        objectIdentifier=("network-port", 1),
        objectName="NetworkPort-1",
        networkNumberQuality="unknown",
    )
    objects = build_objects(instance)
    app_class = NoCovApplication if not cov else Application if rpm else NoRpmApplication
    app = app_class.from_object_list([device, net, *objects])
    link = next(iter(app.link_layers.values()))
    # the local socket is bound by a task: ready only once it exists
    for _ in range(500):
        server = getattr(getattr(link, "server", None), "local_transport", None)
        if server is not None:
            break
        await asyncio.sleep(0.01)
    by_id = {str(o.objectIdentifier): o for o in objects}

    async def ramp() -> None:  # a value that keeps changing, for COV
        oat = by_id["analog-input,4"]
        while True:
            await asyncio.sleep(0.2)
            oat.presentValue = Real(float(oat.presentValue) + 0.5)

    ramp_task = asyncio.create_task(ramp())
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:  # the test closed stdin: stop
            break
        cmd, *args = line.split()
        obj = by_id[str(ObjectIdentifier(args[0]))]
        if cmd == "set":
            pv_type = type(obj).get_property_type("presentValue")
            obj.presentValue = pv_type(float(args[1]) if pv_type is Real else args[1])
            print(json.dumps({"ok": True}), flush=True)
        elif cmd == "get":
            pa = getattr(obj, "priorityArray", None)
            print(
                json.dumps(
                    {
                        "present_value": _plain(obj.presentValue),
                        "priority_array": None if pa is None else [_plain(v) for v in pa],
                    }
                ),
                flush=True,
            )
    ramp_task.cancel()
    app.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--instance", type=int, default=1001)
    p.add_argument("--no-rpm", action="store_true", help="no ReadPropertyMultiple service")
    p.add_argument("--no-cov", action="store_true", help="no SubscribeCOV service")
    args = p.parse_args()
    asyncio.run(serve(args.port, args.instance, not args.no_rpm, not args.no_cov))


if __name__ == "__main__":
    main()
