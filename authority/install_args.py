"""The installer arguments of a policy, in every form administrators paste into their tools.

Key names are the Code42 installers' (CONTRACT.md section 2), so existing SCCM, Intune and
Jamf scripts carry over.
"""

from __future__ import annotations

from dataclasses import dataclass

MSI_NAME = "Holdfast.msi"


@dataclass(frozen=True)
class InstallArgs:
    deployment_url: str
    token: str
    ssl_whitelist: tuple[str, ...]  # SHA-1 fingerprints, current first

    def pairs(self) -> list[tuple[str, str]]:
        out = [("DEPLOYMENT_URL", self.deployment_url), ("DEPLOYMENT_POLICY_TOKEN", self.token)]
        if self.ssl_whitelist:
            out.append(("SSL_WHITELIST", ",".join(self.ssl_whitelist)))
        return out

    @property
    def cp_args(self) -> str:
        return "&".join(f"{k}={v}" for k, v in self.pairs())

    @property
    def msiexec(self) -> str:
        return (
            f'msiexec /i {MSI_NAME} CP_ARGS="{self.cp_args}" '
            "CP_SILENT=true DEVICE_CLOAKED=false /norestart /qn"
        )

    @property
    def deploy_properties(self) -> str:
        lines = [f"{k}={v}" for k, v in self.pairs()]
        lines += ["CP_SILENT=true", "DEVICE_CLOAKED=false"]
        return "\n".join(lines) + "\n"

    @property
    def linux(self) -> str:
        # Single quotes: the string holds `&`, which a shell would otherwise act on.
        return f"sudo holdfast install --deploy-args '{self.cp_args}'"

    def as_dict(self) -> dict[str, str]:
        return {
            "cp_args": self.cp_args,
            "msiexec": self.msiexec,
            "deploy_properties": self.deploy_properties,
            "linux": self.linux,
        }


__all__ = ["MSI_NAME", "InstallArgs"]
