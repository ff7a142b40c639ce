from coord.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_PHASE_UNSPECIFIED: _ClassVar[WorkerPhase]
    WORKER_PHASE_PREPARING: _ClassVar[WorkerPhase]
    WORKER_PHASE_RUNNING: _ClassVar[WorkerPhase]
    WORKER_PHASE_EXITED: _ClassVar[WorkerPhase]
    WORKER_PHASE_FAILED_TO_START: _ClassVar[WorkerPhase]
WORKER_PHASE_UNSPECIFIED: WorkerPhase
WORKER_PHASE_PREPARING: WorkerPhase
WORKER_PHASE_RUNNING: WorkerPhase
WORKER_PHASE_EXITED: WorkerPhase
WORKER_PHASE_FAILED_TO_START: WorkerPhase

class AgentMessage(_message.Message):
    __slots__ = ("seq", "register", "heartbeat", "worker_state", "logs", "event", "leaving")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    WORKER_STATE_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    seq: int
    register: Register
    heartbeat: Heartbeat
    worker_state: WorkerStateChange
    logs: LogBatch
    event: AgentEvent
    leaving: Leaving
    def __init__(self, seq: _Optional[int] = ..., register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., worker_state: _Optional[_Union[WorkerStateChange, _Mapping]] = ..., logs: _Optional[_Union[LogBatch, _Mapping]] = ..., event: _Optional[_Union[AgentEvent, _Mapping]] = ..., leaving: _Optional[_Union[Leaving, _Mapping]] = ...) -> None: ...

class Leaving(_message.Message):
    __slots__ = ("reason", "deadline_s")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    reason: str
    deadline_s: float
    def __init__(self, reason: _Optional[str] = ..., deadline_s: _Optional[float] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("node_id", "host", "resources", "agent_version", "running", "free_port", "incarnation", "exited", "scratch_jobs")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FREE_PORT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    SCRATCH_JOBS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    host: str
    resources: _types_pb2.Resources
    agent_version: str
    running: _containers.RepeatedCompositeFieldContainer[RunningWorker]
    free_port: int
    incarnation: str
    exited: _containers.RepeatedCompositeFieldContainer[WorkerStateChange]
    scratch_jobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., host: _Optional[str] = ..., resources: _Optional[_Union[_types_pb2.Resources, _Mapping]] = ..., agent_version: _Optional[str] = ..., running: _Optional[_Iterable[_Union[RunningWorker, _Mapping]]] = ..., free_port: _Optional[int] = ..., incarnation: _Optional[str] = ..., exited: _Optional[_Iterable[_Union[WorkerStateChange, _Mapping]]] = ..., scratch_jobs: _Optional[_Iterable[str]] = ...) -> None: ...

class RunningWorker(_message.Message):
    __slots__ = ("job_id", "generation", "rank", "pid")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    generation: int
    rank: int
    pid: int
    def __init__(self, job_id: _Optional[str] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("free_port",)
    FREE_PORT_FIELD_NUMBER: _ClassVar[int]
    free_port: int
    def __init__(self, free_port: _Optional[int] = ...) -> None: ...

class WorkerStateChange(_message.Message):
    __slots__ = ("job_id", "generation", "rank", "phase", "exit_code", "pid", "detail")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    generation: int
    rank: int
    phase: WorkerPhase
    exit_code: int
    pid: int
    detail: str
    def __init__(self, job_id: _Optional[str] = ..., generation: _Optional[int] = ..., rank: _Optional[int] = ..., phase: _Optional[_Union[WorkerPhase, str]] = ..., exit_code: _Optional[int] = ..., pid: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[_types_pb2.LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[_types_pb2.LogLine, _Mapping]]] = ...) -> None: ...

class AgentEvent(_message.Message):
    __slots__ = ("job_id", "generation", "kind", "message", "data_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    generation: int
    kind: str
    message: str
    data_json: str
    def __init__(self, job_id: _Optional[str] = ..., generation: _Optional[int] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("registered", "start", "stop", "drain", "reconfigure", "ack")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    RECONFIGURE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    start: StartWorkers
    stop: StopWorkers
    drain: Drain
    reconfigure: Reconfigure
    ack: Ack
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., start: _Optional[_Union[StartWorkers, _Mapping]] = ..., stop: _Optional[_Union[StopWorkers, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., reconfigure: _Optional[_Union[Reconfigure, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("upto",)
    UPTO_FIELD_NUMBER: _ClassVar[int]
    upto: int
    def __init__(self, upto: _Optional[int] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval_s", "finished_jobs", "coordd_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_JOBS_FIELD_NUMBER: _ClassVar[int]
    COORDD_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_interval_s: float
    finished_jobs: _containers.RepeatedScalarFieldContainer[str]
    coordd_id: str
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., finished_jobs: _Optional[_Iterable[str]] = ..., coordd_id: _Optional[str] = ...) -> None: ...

class WorkerSpec(_message.Message):
    __slots__ = ("rank", "local_rank", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    env: _containers.ScalarMap[str, str]
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartWorkers(_message.Message):
    __slots__ = ("job_id", "generation", "command", "setup", "bundle_digest", "workers", "keep_warm")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    KEEP_WARM_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    generation: int
    command: str
    setup: str
    bundle_digest: str
    workers: _containers.RepeatedCompositeFieldContainer[WorkerSpec]
    keep_warm: bool
    def __init__(self, job_id: _Optional[str] = ..., generation: _Optional[int] = ..., command: _Optional[str] = ..., setup: _Optional[str] = ..., bundle_digest: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[WorkerSpec, _Mapping]]] = ..., keep_warm: _Optional[bool] = ...) -> None: ...

class StopWorkers(_message.Message):
    __slots__ = ("job_id", "generation", "grace_s", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    generation: int
    grace_s: float
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., generation: _Optional[int] = ..., grace_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("reason", "grace_s")
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    reason: str
    grace_s: float
    def __init__(self, reason: _Optional[str] = ..., grace_s: _Optional[float] = ...) -> None: ...

class Reconfigure(_message.Message):
    __slots__ = ("job_id", "generation", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    generation: int
    env: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., generation: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FetchBundleRequest(_message.Message):
    __slots__ = ("job_id", "digest")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    digest: str
    def __init__(self, job_id: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...
