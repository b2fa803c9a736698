"""python-dbusmock template: dbusmock's ``bluez5`` plus what BLE sensors need.

Loaded by ``python -m dbusmock --system --template hil/devices/bluez_template.py`` (see
``hil/devices/ble_bluez.py``), it runs inside the dbusmock process, which is why it speaks
dbus-python. On top of ``bluez5`` (adapters, Adapter1 discovery, AdvertisementMonitorManager1)
it adds, on the ``org.bluez.Mock`` interface of ``/``:

- ``AddLeDevice(adapter, address, name)``: a BLE peripheral the way bluetoothd shows one,
  without the empty ManufacturerData/ServiceData containers of ``bluez5.AddDevice`` (real
  bluetoothd omits those properties until something is advertised).
- ``Advertise(adapter, address, rssi, manufacturer_data, service_data)``: one received
  advertisement: the properties are updated and PropertiesChanged is emitted, as bluetoothd does.
- ``AddGattCharacteristic(adapter, address, service_uuid, char_uuid, value)`` and
  ``SetCharacteristicValue(char_path, value)``: a readable GattCharacteristic1 whose
  ``ReadValue`` works only while the device is connected.
- ``SetConnectable(adapter, address, ok)``: make ``Device1.Connect`` fail (out of range).

This file is not a protocol module of the product; it is test equipment.
"""

# ruff: noqa: F403, F405  (the bluez5 template is re-exported on purpose)

import dbus
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from dbusmock.templates import bluez5 as _bluez5
from dbusmock.templates.bluez5 import *

GATT_SERVICE_IFACE = "org.bluez.GattService1"
GATT_CHARACTERISTIC_IFACE = "org.bluez.GattCharacteristic1"


def load(mock, parameters):
    _bluez5.load(mock, parameters)


def _device_path(adapter_name, address):
    return f"/org/bluez/{adapter_name}/dev_{address.replace(':', '_').upper()}"


def _device(adapter_name, address):
    path = _device_path(adapter_name, address)
    if path not in mockobject.objects:
        raise dbus.exceptions.DBusException(
            f"no device {address} on {adapter_name}", name="org.bluez.Mock.NoSuchDevice"
        )
    return mockobject.objects[path]


def _changed(obj, interface, props):
    """Store new property values (new or not) and emit PropertiesChanged for them."""
    obj.props.setdefault(interface, {}).update(props)
    obj.EmitSignal(dbus.PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as", [interface, props, []])


def _bytes(value):
    return dbus.Array([dbus.Byte(b) for b in value], signature="y")


def _le_connect(device):
    if not getattr(device, "connectable", True):
        raise dbus.exceptions.DBusException("Page Timeout", name="org.bluez.Error.Failed")
    if device.props[DEVICE_IFACE]["Connected"]:
        raise dbus.exceptions.DBusException("Already Connected", name="org.bluez.Error.AlreadyConnected")
    _changed(device, DEVICE_IFACE, {"Connected": dbus.Boolean(True), "ServicesResolved": dbus.Boolean(True)})


def _le_disconnect(device):
    if device.props[DEVICE_IFACE]["Connected"]:
        _changed(device, DEVICE_IFACE, {"Connected": dbus.Boolean(False), "ServicesResolved": dbus.Boolean(False)})


def _read_value(char, options):
    device = mockobject.objects.get(char.device_path)
    if device is None or not device.props[DEVICE_IFACE]["Connected"]:
        raise dbus.exceptions.DBusException("Not connected", name="org.bluez.Error.Failed")
    return _bytes(char.props[GATT_CHARACTERISTIC_IFACE]["Value"])


@dbus.service.method(BLUEZ_MOCK_IFACE, in_signature="sss", out_signature="s")
def AddLeDevice(self, adapter_name, address, name):
    """Add a BLE peripheral (no advertisement data yet); returns its object path."""
    adapter_path = "/org/bluez/" + adapter_name
    if adapter_path not in mockobject.objects:
        raise dbus.exceptions.DBusException(
            f"Adapter {adapter_name} does not exist.", name="org.bluez.Mock.NoSuchAdapter"
        )
    path = _device_path(adapter_name, address)
    props = {
        "Address": dbus.String(address.upper()),
        "AddressType": dbus.String("random"),
        "Alias": dbus.String(name or address.upper().replace(":", "-")),
        "Adapter": dbus.ObjectPath(adapter_path),
        "Paired": dbus.Boolean(False),
        "Bonded": dbus.Boolean(False),
        "Trusted": dbus.Boolean(False),
        "Blocked": dbus.Boolean(False),
        "LegacyPairing": dbus.Boolean(False),
        "Connected": dbus.Boolean(False),
        "ServicesResolved": dbus.Boolean(False),
        "UUIDs": dbus.Array([], signature="s"),
    }
    if name:
        props["Name"] = dbus.String(name)
    self.AddObject(
        path,
        DEVICE_IFACE,
        props,
        [
            ("Connect", "", "", _le_connect),
            ("Disconnect", "", "", _le_disconnect),
            ("Pair", "", "", ""),
            ("CancelPairing", "", "", ""),
        ],
    )
    mockobject.objects[path].connectable = True
    mockobject.objects["/"].EmitSignal(
        OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}", [dbus.ObjectPath(path), {DEVICE_IFACE: props}]
    )
    return path


@dbus.service.method(BLUEZ_MOCK_IFACE, in_signature="ssna{qay}a{say}", out_signature="")
def Advertise(self, adapter_name, address, rssi, manufacturer_data, service_data):
    """One received advertisement: update RSSI, ManufacturerData, ServiceData and signal it."""
    device = _device(adapter_name, address)
    changed = {"RSSI": dbus.Int16(rssi)}
    if manufacturer_data:
        changed["ManufacturerData"] = dbus.Dictionary(
            {dbus.UInt16(k): _bytes(v) for k, v in manufacturer_data.items()}, signature="qv"
        )
    if service_data:
        changed["ServiceData"] = dbus.Dictionary(
            {dbus.String(k): _bytes(v) for k, v in service_data.items()}, signature="sv"
        )
    _changed(device, DEVICE_IFACE, changed)


@dbus.service.method(BLUEZ_MOCK_IFACE, in_signature="ssb", out_signature="")
def SetConnectable(self, adapter_name, address, ok):
    """Let Device1.Connect succeed (True) or fail like an out-of-range device (False)."""
    _device(adapter_name, address).connectable = bool(ok)


@dbus.service.method(BLUEZ_MOCK_IFACE, in_signature="ssssay", out_signature="s")
def AddGattCharacteristic(self, adapter_name, address, service_uuid, char_uuid, value):
    """Add a primary service (if new) with one readable characteristic; returns its path."""
    device = _device(adapter_name, address)
    manager = mockobject.objects["/"]
    handle = getattr(device, "next_handle", 0x000A)
    service_path = None
    for path, obj in list(mockobject.objects.items()):
        is_service = path.startswith(device.path + "/service") and "/char" not in path
        if is_service and str(obj.props[GATT_SERVICE_IFACE]["UUID"]) == service_uuid:
            service_path = path
    if service_path is None:
        service_path = f"{device.path}/service{handle:04x}"
        handle += 1
        service_props = {
            "UUID": dbus.String(service_uuid),
            "Device": dbus.ObjectPath(device.path),
            "Primary": dbus.Boolean(True),
            "Includes": dbus.Array([], signature="o"),
        }
        self.AddObject(service_path, GATT_SERVICE_IFACE, service_props, [])
        manager.EmitSignal(
            OBJECT_MANAGER_IFACE,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [dbus.ObjectPath(service_path), {GATT_SERVICE_IFACE: service_props}],
        )
    char_path = f"{service_path}/char{handle:04x}"
    device.next_handle = handle + 1
    char_props = {
        "UUID": dbus.String(char_uuid),
        "Service": dbus.ObjectPath(service_path),
        "Value": _bytes(value),
        "Flags": dbus.Array(["read"], signature="s"),
        "Notifying": dbus.Boolean(False),
    }
    self.AddObject(char_path, GATT_CHARACTERISTIC_IFACE, char_props, [("ReadValue", "a{sv}", "ay", _read_value)])
    mockobject.objects[char_path].device_path = device.path
    manager.EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesAdded",
        "oa{sa{sv}}",
        [dbus.ObjectPath(char_path), {GATT_CHARACTERISTIC_IFACE: char_props}],
    )
    return char_path


@dbus.service.method(BLUEZ_MOCK_IFACE, in_signature="say", out_signature="")
def SetCharacteristicValue(self, char_path, value):
    """Change what the next ReadValue of a characteristic returns."""
    char = mockobject.objects[char_path]
    char.props[GATT_CHARACTERISTIC_IFACE]["Value"] = _bytes(value)
