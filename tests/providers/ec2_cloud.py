"""A stand-in EC2 on loopback for the aws provider's tests.

- moto's EC2 server, bound to 127.0.0.1;
- in front of it, a small proxy of ours that answers RunInstances with EC2's own error
  (XML, status code) for a chosen instance type or AMI, and forwards everything else: moto
  has no way to refuse capacity by itself;
- a "hypervisor" thread: moto's instances never boot, so it boots each instance coord launches
  by running its user-data's agent start script (with the environment file the user-data
  writes, in a directory of its own instead of /etc/coord), and stops that agent (SIGTERM, as
  a shutdown does) once the instance is terminated. Nothing else tells the agent where coordd
  is or which node it is: the user-data alone must be enough.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import shlex
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

from coordinator.providers import ec2
from coordinator.providers.procs import session_pids, signal_session
from tests.integration.harness import ROOT, wait_for

# coordd's [aws] settings that make the user-data's start line run this checkout's agent
AGENT_SETTINGS = {"agent_command": f"{sys.executable} -m agent.main --stop-grace 3",
                  "agent_workdir": ".", "imds_endpoint": ""}

REGION = "us-east-1"
# Dummy credentials, and nothing read from this machine's AWS configuration.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
# EC2 reports a lack of capacity as a server error, a bad request as a client error.
STATUS = {"InsufficientInstanceCapacity": 500, "InsufficientCapacity": 500}


class FaultProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        # instance type, AMI, zone, subnet or client token (NODE-ATTEMPT) -> EC2 error code
        self.faults: dict[str, str] = {}
        self.launches: list[tuple[str, ...]] = []  # RunInstances: (type, AMI, zone, subnet, token)
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def calls(self, key: str) -> int:
        with self.lock:
            return sum(key in launch for launch in self.launches)


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FaultProxy

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("Action") == "RunInstances":
            launch = tuple(form.get(key, "") for key in (
                "InstanceType", "ImageId", "Placement.AvailabilityZone", "SubnetId",
                "ClientToken"))
            with self.server.lock:
                self.server.launches.append(launch)
            code = next((self.server.faults[k] for k in launch if k in self.server.faults), None)
            if code:
                return self._reply(STATUS.get(code, 400), _error_xml(code))
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request("POST", self.path, body, headers)
        answer = upstream.getresponse()
        self._reply(answer.status, answer.read(), answer.getheader("Content-Type", "text/xml"))
        upstream.close()

    def _reply(self, status: int, payload: bytes, content_type: str = "text/xml") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _error_xml(code: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}'
            f'</Code><Message>injected by the test proxy: {code}</Message></Error></Errors>'
            f'<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>').encode()


def heredoc(script: str, mark: str) -> str:
    """The body of the user-data's `cat > FILE <<'MARK'` block."""
    return script.split(f"<<'{mark}'\n", 1)[1].split(f"\n{mark}\n", 1)[0]


def agent_env_of(script: str) -> dict[str, str]:
    """The agent environment a user-data script carries (what the instance will run with)."""
    words = shlex.split(heredoc(script, ec2.ENV_MARK))
    return dict(word.split("=", 1) for word in words if word != "export")


class Hypervisor(threading.Thread):
    """Boots coord's instances as local agent processes and shuts them down when terminated."""

    def __init__(self, client, workdir: Path):
        super().__init__(daemon=True)
        self.client, self.workdir = client, workdir
        self.agents: dict[str, subprocess.Popen | None] = {}  # instance id -> its agent
        self.halt = threading.Event()
        self.error: BaseException | None = None  # why the thread died: raised at close

    def run(self) -> None:
        try:
            while not self.halt.wait(0.2):
                for instance in coord_instances(self.client):
                    state = instance["State"]["Name"]
                    if state in ("pending", "running") and instance["InstanceId"] not in \
                            self.agents:
                        self._boot(instance)
                    elif state in ("shutting-down", "terminated"):
                        self._shut_down(instance["InstanceId"])
        except BaseException as exc:  # noqa: BLE001 - kept for the test to raise
            self.error = exc

    def _boot(self, instance: dict) -> None:
        instance_id = instance["InstanceId"]
        attribute = self.client.describe_instance_attribute(InstanceId=instance_id,
                                                            Attribute="userData")
        script = base64.b64decode(attribute["UserData"]["Value"]).decode()
        if ec2.START_MARK not in script:  # launched by a test, not by coordd: nothing to start
            self.agents[instance_id] = None
            return
        root = self.workdir / tags_of(instance)[ec2.TAG_NODE]
        root.mkdir(parents=True, exist_ok=True)
        (root / "agent.env").write_text(heredoc(script, ec2.ENV_MARK) + "\n")
        start = heredoc(script, ec2.START_MARK).replace("/etc/coord/agent.env",
                                                        shlex.quote(str(root / "agent.env")))
        (root / "start-agent").write_text(start + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
        with open(root / "agent.log", "ab") as log:
            self.agents[instance_id] = subprocess.Popen(
                ["bash", str(root / "start-agent")], cwd=root, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=env | {"PYTHONPATH": str(ROOT)})

    def _shut_down(self, instance_id: str) -> None:
        agent = self.agents.get(instance_id)
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
        agents = [agent for agent in self.agents.values() if agent is not None]
        for agent in agents:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGTERM)
        for agent in agents:
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                signal_session(agent.pid, signal.SIGKILL)
                agent.wait()
            wait_for(lambda: not session_pids(agent.pid), 10, what="agent processes to end")
        if self.error is not None:
            raise RuntimeError("the hypervisor thread failed: no instance booted after "
                               "this") from self.error


def coord_instances(client, **tags: str) -> list[dict]:
    filters = [{"Name": f"tag:{k}", "Values": [v]}
               for k, v in ({ec2.TAG_MANAGED: "true"} | tags).items()]
    reply = client.describe_instances(Filters=filters)
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def tags_of(instance: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


class Ec2Cloud:
    """moto behind the fault proxy; with a `workdir`, a hypervisor boots coordd's instances."""

    def __init__(self, workdir: Path | None):
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        # moto's state lives in this process, shared by every server: start from nothing
        urllib.request.urlopen(urllib.request.Request(
            f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=10).close()
        self.proxy = FaultProxy(f"{host}:{port}")
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self.client = boto3.client(
            "ec2", endpoint_url=f"http://{host}:{port}", region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing")
        self.ami = self.client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        self.hypervisor = Hypervisor(self.client, workdir) if workdir else None
        if self.hypervisor:
            self.hypervisor.start()

    def instances(self, **tags: str) -> list[dict]:
        return coord_instances(self.client, **tags)

    def assert_all_terminated(self, timeout: float = 30) -> None:
        """Every instance coord launched ends terminated: nothing leaks."""
        wait_for(lambda: all(i["State"]["Name"] == "terminated" for i in self.instances()),
                 timeout, what="every coord instance to be terminated")

    def close(self) -> None:
        try:
            if self.hypervisor:
                self.hypervisor.stop()
        finally:
            self.proxy.shutdown()
            self.proxy.server_close()
            self.moto.stop()
