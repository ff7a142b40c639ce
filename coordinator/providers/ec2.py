"""What the aws provider asks EC2 for, as plain data: a job's launch choices (the first choice,
then its fallbacks), the RunInstances request for one node, the user-data that starts the
node's agent, the tags that mark an instance as coord's, and what an EC2 error code means.

A place is one unit: a subnet (which lies in one zone) or a zone. A job's or a fallback's place
replaces the one before as a whole, and a request never names both (EC2 refuses a subnet and a
zone that disagree)."""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
from typing import Any

from botocore.exceptions import ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError, NoCredentialsError

from contract.errors import CoordError, InvalidSpec, PermissionDenied, ProviderError
from contract.spec import AwsChoice, AwsResources, JobSpec
from coordinator.settings import AwsSettings

TAG_MANAGED, TAG_COORDD = "coord:managed", "coord:coordd"
TAG_JOB, TAG_NODE = "coord:job", "coord:node"
LIVE_STATES = ("pending", "running", "stopping", "stopped")
USER_DATA_LIMIT = 16 * 1024  # EC2's limit, before base64

# This choice cannot be had now (no capacity, price, quota or offer in that place): another
# instance type, zone or market may work. The list AWS ParallelCluster fails over on, plus quotas.
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity", "UnfulfillableCapacity", "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded", "Unsupported", "InstanceLimitExceeded", "VcpuLimitExceeded",
})
# Worth the same call again after a pause.
TRANSIENT_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError",
    "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout",
})
AUTH_CODES = frozenset({
    "AuthFailure", "UnauthorizedOperation", "OptInRequired", "Blocked", "PendingVerification",
    "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "RequestExpired",
})
# Errors about what every choice shares (AMI, key pair, security groups, placement group): no
# other choice can succeed. Any other refusal may be about this choice's type, place or market.
SHARED_PREFIXES = ("InvalidAMIID.", "InvalidKeyPair.", "InvalidGroup.", "InvalidPlacementGroup.",
                   "InvalidSecurityGroupID.", "InvalidUserData.")


class NoPlace(Exception):
    """A choice's zone has no subnet in the VPC the launch is configured for."""

    code = "coord.NoSubnetInZone"


@dataclasses.dataclass(frozen=True)
class Choice:
    instance_type: str
    spot: bool
    subnet_id: str | None = None
    availability_zone: str | None = None

    def describe(self) -> str:
        where = self.subnet_id or self.availability_zone or "any zone"
        return f"{self.instance_type} {'spot' if self.spot else 'on-demand'} in {where}"


def launch_template(spec: JobSpec, defaults: AwsResources) -> AwsResources:
    """The job's `[resources.aws]` over coordd's `[aws.defaults]` (tags are merged), with the
    job's `resources.instance_type` / `resources.spot` where `[resources.aws]` leaves them out."""
    job = spec.resources.aws or AwsResources()
    update: dict[str, Any] = {key: getattr(job, key) for key in AwsResources.model_fields
                              if getattr(job, key) not in (None, [], {})}
    if job.subnet_id or job.availability_zone:  # the job's place replaces coordd's whole
        update |= {"subnet_id": job.subnet_id, "availability_zone": job.availability_zone}
    if job.instance_type is None and spec.resources.instance_type:
        update["instance_type"] = spec.resources.instance_type
    update["spot"] = spec.resources.spot if job.spot is None else job.spot
    update["tags"] = defaults.tags | job.tags
    template = defaults.model_copy(update=update)
    for key in ("ami", "instance_type"):
        if getattr(template, key) is None:
            raise InvalidSpec(f"key 'resources.aws.{key}': required for the aws provider (or "
                              f"set aws.defaults.{key} in coordd's config)")
    return template


def choices(template: AwsResources) -> list[Choice]:
    """The first choice, then one per fallback: each changes only what it sets."""
    first = _apply(Choice(template.instance_type or "", bool(template.spot)), template)
    return [first] + [_apply(first, fallback) for fallback in template.fallbacks]


def _apply(base: Choice, change: AwsChoice) -> Choice:
    fields: dict[str, Any] = {}
    if change.instance_type:
        fields["instance_type"] = change.instance_type
    if change.spot is not None:
        fields["spot"] = change.spot
    if change.subnet_id or change.availability_zone:  # a new place replaces the old one
        fields |= {"subnet_id": change.subnet_id, "availability_zone": change.availability_zone}
    return dataclasses.replace(base, **fields)


def run_request(template: AwsResources, choice: Choice, tags: dict[str, str], user_data: str,
                client_token: str) -> dict[str, Any]:
    """RunInstances parameters for one node."""
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    request: dict[str, Any] = {
        "ImageId": template.ami, "InstanceType": choice.instance_type, "MinCount": 1,
        "MaxCount": 1, "UserData": user_data, "ClientToken": client_token,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [{"ResourceType": kind, "Tags": tag_list}
                              for kind in ("instance", "volume")],
    }
    placement = {"AvailabilityZone": None if choice.subnet_id else choice.availability_zone,
                 "GroupName": template.placement_group}
    if placement := {k: v for k, v in placement.items() if v}:
        request["Placement"] = placement
    if choice.subnet_id:
        request["SubnetId"] = choice.subnet_id
    if template.security_group_ids:
        request["SecurityGroupIds"] = list(template.security_group_ids)
    if template.key_name:
        request["KeyName"] = template.key_name
    if profile := template.iam_instance_profile:
        request["IamInstanceProfile"] = {"Arn" if profile.startswith("arn:") else "Name": profile}
    if choice.spot:
        request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    return request


def instance_tags(template: AwsResources, coordd_id: str, job_id: str, node_id: str
                  ) -> dict[str, str]:
    return {**template.tags, "Name": f"coord-{node_id}", TAG_MANAGED: "true",
            TAG_COORDD: coordd_id, TAG_JOB: job_id, TAG_NODE: node_id}


ENV_MARK, UNIT_MARK, START_MARK = "COORD_AGENT_ENV", "COORD_AGENT_UNIT", "COORD_AGENT_START"


def user_data(settings: AwsSettings, env: dict[str, str]) -> str:
    """A boot script: the agent's credentials in a root-only file, an optional install step,
    and a systemd unit that runs the agent (restarted if it fails; SIGTERM at shutdown lets it
    leave gracefully). `env` (coordd's address, the node id, the agent's credentials) reaches
    the agent only through its environment: the start line names neither."""
    exports = "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())
    if any(mark in exports for mark in (ENV_MARK, UNIT_MARK, START_MARK)):
        raise InvalidSpec("agent environment contains a user-data delimiter")
    start = (f"exec {settings.agent_command} --workdir {shlex.quote(settings.agent_workdir)} "
             f"--imds-endpoint {shlex.quote(settings.imds_endpoint)}")
    script = f"""#!/bin/bash
# coord node {env.get("COORD_NODE_ID", "")}: written by coordd. Starts coord-agent.
set -euo pipefail
install -d -m 0700 /etc/coord
umask 077
cat > /etc/coord/agent.env <<'{ENV_MARK}'
{exports}
{ENV_MARK}
cat > /etc/coord/start-agent <<'{START_MARK}'
#!/bin/bash
. /etc/coord/agent.env
{start}
{START_MARK}
chmod 0700 /etc/coord/start-agent
{settings.agent_install}
cat > /etc/systemd/system/coord-agent.service <<'{UNIT_MARK}'
[Unit]
Description=coord node agent
Wants=network-online.target
After=network-online.target
[Service]
ExecStart=/etc/coord/start-agent
Restart=on-failure
KillMode=mixed
TimeoutStopSec=90
[Install]
WantedBy=multi-user.target
{UNIT_MARK}
systemctl daemon-reload
systemctl enable --now coord-agent.service
"""
    if len(script.encode()) > USER_DATA_LIMIT:
        raise InvalidSpec(f"user-data is {len(script.encode())} bytes, EC2 takes at most "
                          f"{USER_DATA_LIMIT}: shorten aws.agent_install")
    return script


def unreachable_from_ec2(address: str) -> bool:
    """A coordd address (HOST:PORT) that names this machine only: loopback or unspecified."""
    host = address.rpartition(":")[0].strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: resolved on the instance
    return ip.is_loopback or ip.is_unspecified


def error_code(exc: BaseException) -> str:
    if isinstance(exc, NoPlace):
        return exc.code
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""


def message_of(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Message", "")
    return str(exc)


def is_capacity(exc: BaseException) -> bool:
    return error_code(exc) in CAPACITY_CODES


def is_choice_refusal(exc: BaseException) -> bool:
    """EC2 refused this choice for its own sake (e.g. a type not offered in that zone, a subnet
    that does not exist): the next choice may work, this one will not on another pass."""
    if isinstance(exc, NoPlace):
        return True
    code = error_code(exc)
    return (isinstance(exc, ClientError) and code not in AUTH_CODES and not is_capacity(exc)
            and not is_transient(exc) and not code.startswith(SHARED_PREFIXES))


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = error_code(exc)
        return code in TRANSIENT_CODES or (status >= 500 and code not in CAPACITY_CODES)
    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def refusal(exc: BaseException, what: str) -> CoordError:
    """One EC2 failure as coord's error: permission and input errors are final (never retried
    in a loop), capacity and availability ones are worth trying again later."""
    code = error_code(exc)
    text = f"aws: {what}: {code or type(exc).__name__}: {message_of(exc)}"
    if code in AUTH_CODES or isinstance(exc, NoCredentialsError):
        return PermissionDenied(text + " (check the credentials and IAM permissions of coordd)")
    if code in CAPACITY_CODES or is_transient(exc):
        return ProviderError(text)
    return InvalidSpec(text)
