"""The MSI's source, packaging/windows/holdfast.wxs, checked statically.

The MSI cannot be built or installed on Linux. What an administrator relies on is in the
source: the hidden installer arguments, the service as `holdfast install` would make it, the
custom action that writes deploy.properties without the token reaching a log, the upgrade
rule. The expected values come from agent/service_windows.py, so the two cannot drift.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path, PureWindowsPath

import pytest

from agent import service_windows
from agent.deploy_args import parse_cp_args

REPO = Path(__file__).resolve().parents[2]
WXS = REPO / "packaging" / "windows" / "holdfast.wxs"
WIX = "{http://wixtoolset.org/schemas/v4/wxs}"
UTIL = "{http://wixtoolset.org/schemas/v4/wxs/util}"
INSTALLER_ARGUMENTS = ("CP_ARGS", "CP_SILENT", "DEVICE_CLOAKED")
WRITE_ACTION = "WriteDeployProperties"
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TOKEN = "0fb12341-246b-448d-b07f-c6573ad5ad02"
URL = "https://backup.example.com:4285"
# SDDL trustee abbreviations for the SIDs that agent/service_windows.py grants conf to.
SDDL_TRUSTEES = {"SY": "S-1-5-18", "BA": "S-1-5-32-544"}


@pytest.fixture(scope="module")
def wxs() -> ET.Element:
    # Our own file, not untrusted input.
    return ET.parse(WXS).getroot()  # noqa: S314


def parents_of(root: ET.Element) -> dict[ET.Element, ET.Element]:
    return {child: parent for parent in root.iter() for child in parent}


def only(root: ET.Element, tag: str, **attributes: str) -> ET.Element:
    """The one element `tag` (namespaced) whose attributes include `attributes`."""
    found = [
        element
        for element in root.iter(tag)
        if all(element.get(name) == value for name, value in attributes.items())
    ]
    assert len(found) == 1, f"{len(found)} {tag} elements with {attributes}"
    return found[0]


def custom_action_data(wxs: ET.Element, action: str) -> ET.Element:
    """The SetProperty that gives deferred `action` its CustomActionData."""
    return only(wxs, WIX + "SetProperty", Id=action)


def msi_format(template: str, properties: dict[str, str]) -> str:
    """`template` with each [NAME] replaced as Windows Installer does (unset: empty)."""
    return re.sub(r"\[([A-Za-z_][A-Za-z0-9_.]*)\]", lambda m: properties.get(m[1], ""), template)


def run_write_action(wxs: ET.Element, given: dict[str, str]) -> str:
    """The command line WriteDeployProperties runs for the public properties `given`."""
    properties = {"INSTALLFOLDER": "C:\\Program Files\\Holdfast\\", **given}
    # The SetProperty actions that feed it, each when its condition (a property's name) holds.
    for setter in wxs.iter(WIX + "SetProperty"):
        if setter.get("Before") == f"Set{WRITE_ACTION}" and properties.get(
            setter.get("Condition", "")
        ):
            properties[setter.get("Id", "")] = msi_format(setter.get("Value", ""), properties)
    return msi_format(custom_action_data(wxs, WRITE_ACTION).get("Value", ""), properties)


def deploy_args_of(command_line: str) -> str:
    found = re.fullmatch(
        r'"C:\\Program Files\\Holdfast\\holdfast\.exe" save-deploy-args --deploy-args "(.*)"',
        command_line,
    )
    assert found, command_line
    return found[1]


def test_package_is_wix_v4_per_machine_with_major_upgrade(wxs: ET.Element) -> None:
    assert wxs.tag == WIX + "Wix"
    package = only(wxs, WIX + "Package")
    assert package.get("Scope") == "perMachine"
    assert UUID.fullmatch(package.get("UpgradeCode", "").strip("{}"))
    upgrade = only(package, WIX + "MajorUpgrade")
    assert upgrade.get("DowngradeErrorMessage")


def test_installer_arguments_are_hidden_secure_and_have_no_default(wxs: ET.Element) -> None:
    for name in INSTALLER_ARGUMENTS:
        prop = only(wxs, WIX + "Property", Id=name)
        assert prop.get("Hidden") == "yes", name
        assert prop.get("Secure") == "yes", name
        assert prop.get("Value") is None, name


def test_files_install_to_program_files_holdfast(wxs: ET.Element) -> None:
    parents = parents_of(wxs)
    folder = only(wxs, WIX + "Directory", Id="INSTALLFOLDER")
    assert parents[folder].get("Id") == "ProgramFiles64Folder"
    exe = only(wxs, WIX + "File", Id="HoldfastExe")
    assert exe.get("KeyPath") == "yes"
    assert parents[exe].get("Directory") == "INSTALLFOLDER"
    name = PureWindowsPath(exe.get("Source", "").replace("\\", "/")).name
    assert str(PureWindowsPath("C:/Program Files", folder.get("Name", ""), name)) == (
        service_windows.DEFAULT_EXECUTABLE
    )
    # PyInstaller's one-folder layout: _internal beside the executable, harvested at build.
    internal = only(wxs, WIX + "Directory", Id="INTERNALFOLDER")
    assert internal.get("Name") == "_internal"
    assert parents[internal] is folder
    assert only(wxs, WIX + "ComponentGroupRef", Id="HoldfastInternalFiles") is not None


def test_service_is_installed_as_holdfast_install_makes_it(wxs: ET.Element) -> None:
    parents = parents_of(wxs)
    service = only(wxs, WIX + "ServiceInstall", Name=service_windows.SERVICE)
    assert service.get("DisplayName") == service_windows.DISPLAY_NAME
    assert service.get("Description") == service_windows.DESCRIPTION
    assert service.get("Account") == "LocalSystem"
    assert service.get("Start") == "auto"
    assert service.get("Type") == "ownProcess"
    assert service.get("Arguments") == service_windows.SERVICE_COMMAND
    # The service's program is its component's key file: holdfast.exe.
    component = parents[service]
    assert only(component, WIX + "File", KeyPath="yes").get("Id") == "HoldfastExe"


def test_service_restarts_after_every_failure(wxs: ET.Element) -> None:
    service = only(wxs, WIX + "ServiceInstall", Name=service_windows.SERVICE)
    config = only(service, UTIL + "ServiceConfig")
    for which in ("First", "Second", "Third"):
        assert config.get(f"{which}FailureActionType") == "restart"
    # sc.exe failure ... actions= restart/30000/... reset= 86400
    delay_ms = int(service_windows.FAILURE_ACTIONS.split("/")[1])
    assert int(config.get("RestartServiceDelayInSeconds", "")) * 1000 == delay_ms
    reset = int(service_windows.FAILURE_RESET_SECONDS)
    assert int(config.get("ResetPeriodInDays", "")) * 86400 == reset


def test_service_restarts_after_an_error_exit_code_too(wxs: ET.Element) -> None:
    data = custom_action_data(wxs, "SetServiceFailureFlag")
    assert data.get("Value") == (
        f'"[System64Folder]sc.exe" failureflag {service_windows.SERVICE} 1'
    )
    action = only(wxs, WIX + "CustomAction", Id="SetServiceFailureFlag")
    assert action.get("Execute") == "deferred"
    assert action.get("Impersonate") == "no"
    scheduled = only(wxs, WIX + "Custom", Action="SetServiceFailureFlag")
    assert scheduled.get("After") == "InstallServices"
    assert 'NOT REMOVE~="ALL"' in scheduled.get("Condition", "")


def test_service_control_starts_on_install_stops_and_removes(wxs: ET.Element) -> None:
    control = only(wxs, WIX + "ServiceControl", Name=service_windows.SERVICE)
    assert control.get("Start") == "install"
    assert control.get("Stop") == "both"
    assert control.get("Remove") == "uninstall"
    assert control.get("Wait") == "yes"


def test_tray_starts_at_sign_in_from_the_run_key(wxs: ET.Element) -> None:
    parents = parents_of(wxs)
    value = only(wxs, WIX + "RegistryValue", Name=service_windows.RUN_VALUE)
    assert f"{value.get('Root')}\\{value.get('Key')}" == service_windows.RUN_KEY
    assert value.get("Value") == '"[#HoldfastExe]" tray'
    assert parents[value].get("Bitness") == "always64"


def test_conf_folder_is_for_system_and_administrators_only(wxs: ET.Element) -> None:
    parents = parents_of(wxs)
    conf = only(wxs, WIX + "Directory", Id="CONFFOLDER")
    assert conf.get("Name") == "conf"
    assert parents[conf].get("Name") == "Holdfast"
    assert parents[parents[conf]].get("Id") == "CommonAppDataFolder"
    component = only(wxs, WIX + "Component", Directory="CONFFOLDER")
    sddl = only(component, WIX + "PermissionEx").get("Sddl", "")
    dacl = sddl.partition("D:")[2]
    assert dacl.startswith("P"), "inheritance from ProgramData must be cut"
    trustees = {SDDL_TRUSTEES[ace.split(";")[-1]] for ace in re.findall(r"\(([^)]*)\)", dacl)}
    assert trustees == {sid.lstrip("*") for sid in service_windows.CONF_READERS}


def test_deploy_properties_action_is_deferred_elevated_and_hidden(wxs: ET.Element) -> None:
    action = only(wxs, WIX + "CustomAction", Id=WRITE_ACTION)
    assert action.get("Execute") == "deferred"
    assert action.get("Impersonate") == "no"
    assert action.get("HideTarget") == "yes"
    assert action.get("Return") == "check"
    # WixQuietExec logs the command line it runs; WixSilentExec logs neither it nor the output.
    assert action.get("DllEntry") == "WixSilentExec"
    assert action.get("ExeCommand") is None and action.get("Value") is None
    # Its CustomActionData is a property named after it: hidden too, or MSI logs it when set.
    assert only(wxs, WIX + "Property", Id=WRITE_ACTION).get("Hidden") == "yes"
    data = custom_action_data(wxs, WRITE_ACTION)
    assert data.get("Sequence") == "execute"
    scheduled = only(wxs, WIX + "Custom", Action=WRITE_ACTION)
    assert scheduled.get("Before") == "StartServices"
    for condition in (scheduled.get("Condition", ""), data.get("Condition", "")):
        assert condition == 'CP_ARGS AND NOT REMOVE~="ALL"'


def test_cp_args_reaches_only_the_custom_action_data(wxs: ET.Element) -> None:
    users = [
        (element.tag, element.get("Id"), name)
        for element in wxs.iter()
        for name, value in element.attrib.items()
        if "[CP_ARGS]" in value
    ]
    assert users == [(WIX + "SetProperty", WRITE_ACTION, "Value")]
    for name in ("CP_SILENT", "DEVICE_CLOAKED"):
        setters = [e.get("Id") for e in wxs.iter() if f"[{name}]" in "".join(e.attrib.values())]
        assert len(setters) == 1, name
        feeder = only(wxs, WIX + "SetProperty", Id=setters[0] or "")
        assert feeder.get("Before") == f"Set{WRITE_ACTION}"
        assert f"[{setters[0]}]" in custom_action_data(wxs, WRITE_ACTION).get("Value", "")


def test_the_msiexec_line_gives_the_agent_its_arguments(wxs: ET.Element) -> None:
    cp_args = f"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={TOKEN}"
    command = run_write_action(
        wxs, {"CP_ARGS": cp_args, "CP_SILENT": "false", "DEVICE_CLOAKED": "true"}
    )
    args = parse_cp_args(deploy_args_of(command))
    assert (args.deployment_url, args.token) == (URL, TOKEN)
    assert (args.silent, args.cloaked) == (False, True)


def test_cp_silent_inside_cp_args_alone_is_not_contradicted(wxs: ET.Element) -> None:
    # The MSI appends no empty `&CP_SILENT=` (harmless now: an empty value counts as absent).
    cp_args = f"DEPLOYMENT_URL={URL}&DEPLOYMENT_POLICY_TOKEN={TOKEN}&CP_SILENT=false"
    args = parse_cp_args(deploy_args_of(run_write_action(wxs, {"CP_ARGS": cp_args})))
    assert (args.silent, args.cloaked) == (False, False)


def test_no_token_like_string_in_the_package_sources() -> None:
    # GUIDs are allowed where WiX needs them: the upgrade code and component GUIDs.
    text = WXS.read_text(encoding="utf-8")
    allowed = re.findall(r'(?:UpgradeCode|Guid)="\{?([0-9A-Fa-f-]{36})\}?"', text)
    assert [u for u in UUID.findall(text) if u not in allowed] == []
    build_doc = (WXS.parent / "BUILD.md").read_text(encoding="utf-8")
    assert UUID.findall(build_doc) == []
    assert "DEPLOYMENT_POLICY_TOKEN=<token>" in build_doc
