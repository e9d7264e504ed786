"""The one typed configuration schema. Every key is a dataclass field whose ``Key`` metadata
says what conf/broker.toml writes above it (``doc``), which values it allows (``choices``,
``minimum``, ``maximum``), whether it is a size with units, and which ``shardbroker run``
flags set it. The TOML loader, the run flags' overrides, the allowed values and the commented
conf/broker.toml (``render``) all follow from here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class _FromFlag:
    def __repr__(self) -> str:
        return "the flag's value"


FROM_FLAG: Any = _FromFlag()  # a flag sets the key to the value it was given


@dataclass(frozen=True)
class Key:
    doc: str = ""  # comment lines written above the key in conf/broker.toml
    choices: tuple[str, ...] = ()
    size: bool = False  # bytes, or a string with a unit ("512MiB")
    minimum: float | None = None
    maximum: float | None = None
    hint: str = ""  # what to do when a value is refused, beyond the allowed range
    flags: tuple[str, ...] = ()  # `run` flags (argparse dest) that set it, later ones win
    flag_value: Any = FROM_FLAG  # what a store_true flag sets
    example: Any = None  # written in conf/broker.toml instead of the default (None: default)
    octal: bool = False  # written as 0o600


def key(default: Any, doc: str = "", **meta: Any) -> Any:
    """A config key: its default and its ``Key`` metadata."""
    md = {"key": Key(doc=doc, **meta)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=md)
    return field(default=default, metadata=md)


BACKENDS = ("auto", "epoll", "uring")  # receiver/backend.py chooses among them


@dataclass
class BrokerConfig:
    listen: str = key("127.0.0.1:1214", """
Address publishers connect to. A broker node usually listens on all interfaces
(this file); the built-in default is 127.0.0.1:1214. Port 0 picks a free port.""",
                      flags=("listen",), example="0.0.0.0:1214")
    threads: int = key(0, """
Receiver processes, one per CPU. 0 = one per CPU this process may run on (its cpuset).""",
                       minimum=0, flags=("threads",))
    max_threads: int = key(0, """
Shards in the segment: the most receivers `shardbroker scale` can run. 0 = the CPUs
this process may run on (or threads, if larger).""", minimum=0)
    broker_id: int = key(0, """
Broker id: sent to publishers first on the ack stream; top 16 bits of every batch_id.""",
                         minimum=0, maximum=(1 << 16) - 1, flags=("broker_id",))
    # epoll stays the default: measured on the 2-vCPU loopback hosts, io_uring receive cost
    # more receiver CPU per GB than epoll+lowat.
    backend: str = key("epoll", """
Receive backend, chosen by each receiver at start:
  "epoll": non-blocking recv_into straight into the segment (drain until EAGAIN,
           SO_RCVLOWAT); always available.
  "uring": io_uring, one RECV + MSG_WAITALL per payload into the segment and one
           io_uring_enter per loop iteration; startup fails if io_uring cannot run here
           (kernel.io_uring_disabled, a seccomp profile such as Docker's default).
  "auto":  io_uring if the receiver's probe says it can run, else epoll; the
           fallback is logged (receiver.backend.fallback) with its reason.
`shardbroker status` shows what each receiver actually runs.""",
                       choices=BACKENDS, flags=("backend",))
    pin_cpus: bool = key(True, """
Pin each receiver to its own CPU with sched_setaffinity.""", flags=("no_pin",), flag_value=False)
    nic: str = key("", """
Interface publishers arrive on; its NUMA node (sysfs device/numa_node) decides where
receivers run and the segment lives. "" = the default route's interface.""")
    reserve_cpus: int = key(0, """
CPUs of that node left to the supervisor and NIC interrupts (the first ones).""", minimum=0)
    numactl: bool = key(False, """
Start receivers under `numactl --cpunodebind=N --membind=M` (needs numactl installed).""")
    accept: str = key("supervisor", """
How connections reach receivers: "supervisor" accepts and hands each socket to the
least-loaded receiver (at most ceil(C/N) each); "reuseport" gives every receiver its own
SO_REUSEPORT listener with SO_INCOMING_CPU, so the kernel picks the receiver on the CPU
that processed the connection (no even-spread guarantee).""", choices=("supervisor", "reuseport"))
    restart_backoff_s: float = key(0.2, """
Wait this long before restarting a receiver that died.""", minimum=0)
    heartbeat_timeout_s: float = key(10.0, """
A ready receiver whose heartbeat (it writes one every 0.5 s) is older than this is wedged
(stopped, or stuck in a call): it is killed and restarted, which is logged
(supervisor.receiver.unresponsive) and counted (watchdog_kills in status and stats).
0 = no watchdog; otherwise at least 1.""", minimum=0)
    oversubscribe: bool = key(False, """
Allow more receivers (threads, or `shardbroker scale`) than the CPUs they may run on; they
then share CPUs. Off by default, so that a typo such as --threads 999 is refused instead of
spawning 999 processes (run --oversubscribe sets it for one run).""",
                              flags=("oversubscribe",), flag_value=True)


RETENTIONS = ("overwrite", "block")


@dataclass
class SegmentConfig:
    name: str = key("", """
POSIX shm name ("" = shardbroker-<supervisor pid>); the segment is /dev/shm/<name>.""",
                    flags=("segment", "recover"))
    pbr_slots: int = key(16384, """
PBR ring slots (128-byte batch headers) per shard.""", minimum=2, flags=("pbr_slots",))
    blog_bytes_per_shard: int = key(512 << 20, """
BLog payload ring per shard. The segment is about shards x this; /dev/shm (or a
container's --shm-size) must hold it. Must be at least 2 x limits.max_batch_bytes.
A segment that does not fit in /dev/shm's free space and in MemAvailable, with 256 MiB
to spare, is refused at start (before anything is allocated).""",
                                    size=True, minimum=1 << 20, flags=("blog_size",))
    prefault: bool = key(True, """
Touch every page before serving (MADV_POPULATE_WRITE): first-touch faults on the
receive path cost throughput.""")
    keep: bool = key(False, """
Keep the segment in /dev/shm when the broker stops (readers can still open it).""",
                     flags=("keep_segment",), flag_value=True)
    recover: bool = key(False, """
Re-attach the segment `name` of a broker that died, instead of creating one: each shard's
log continues after its last committed batch (run --recover SEGMENT sets both).""",
                        flags=("recover",), flag_value=True)
    mode: int = key(0o600, """
File mode of the segment (octal). 0o600: only the broker's user can read the log.""",
                    minimum=0, maximum=0o777, octal=True)
    group: str = key("", """
Give this group read access (mode 0640) so consumers running as another user can map the
segment read-only. "" = owner only.""")
    memory_node: int = key(-1, """
NUMA node for the segment's pages (mbind before prefault). -1 = the receivers' node;
a CPU-less node is how CXL memory appears.""", minimum=-1)
    hugepages: str = key("off", """
off | thp (madvise MADV_HUGEPAGE; the kernel's shmem_enabled decides) | hugetlbfs
(the segment is a file on hugetlbfs_mount; reserve pages with tools/reserve_hugepages.sh).""",
                         choices=("off", "thp", "hugetlbfs"))
    hugetlbfs_mount: str = key("/dev/hugepages")
    retention: str = key("overwrite", """
What happens when a shard's rings are full (PBR slots or BLog bytes):
  overwrite: the oldest batches are overwritten; a consumer that falls a full ring behind
             is told exactly how many batches it missed (`lapped`).
  block:     receivers stop reading publisher sockets while the slowest *live* consumer
             (`shardbroker consumers`) still needs the space; TCP flow control then stalls
             the publishers -- nothing is dropped. With no live consumer it overwrites.""",
                         choices=RETENTIONS, flags=("retention",))
    # below publishers' 30 s ack timeout, so an expired consumer releases them in time
    consumer_timeout_s: float = key(10.0, """
A registered consumer whose heartbeat is older than this stops holding data back under
`block` and is told it was expired. Keep it below publishers' ack timeout (30 s by default)
if a stuck consumer must not make publishers give up.""",
                                    minimum=0.1, maximum=86_400, flags=("consumer_timeout",))


@dataclass
class SocketConfig:
    rcvbuf: int = key(0, """
SO_RCVBUF per connection in bytes; 0 leaves kernel autotuning on (it grows to
net.ipv4.tcp_rmem's max). A value switches autotuning off and is capped by
net.core.rmem_max unless rcvbuf_force (SO_RCVBUFFORCE, root) is set.""",
                      size=True, flags=("rcvbuf",))
    rcvbuf_force: bool = key(False)
    rcvlowat_cap: int = key(1 << 20, """
SO_RCVLOWAT cap: wake a receiver only when min(bytes left in the batch, cap) are
queued. Fewer wakeups per batch; 0 turns it off.""", size=True, flags=("rcvlowat_cap",))
    readahead: int = key(256 << 10, """
Per-connection read-ahead buffer: one recv takes every small batch queued (up to this
many bytes) and the whole batches of that read are committed with one copy. At least
4KiB.""",
                         size=True, minimum=4096, hint="use at least 4KiB (default 256KiB)")
    direct_min: int = key(64 << 10, """
Payloads of at least this size skip the read-ahead buffer and are received straight into
the segment (capped at readahead minus one header). Measured crossover: README Performance.""",
                          size=True, minimum=1,
                          hint="default 64KiB; payloads this large go straight to the log")
    quickack: bool = key(True, """
TCP_QUICKACK on accepted sockets (not sticky: the kernel may return to delayed acks).""")
    nodelay: bool = key(True, """
TCP_NODELAY on accepted sockets, so small acks go out at once.""")
    busy_poll_us: int = key(0, """
SO_BUSY_POLL in microseconds (0 = off): poll the device queue instead of sleeping;
lower latency for more CPU. SO_PREFER_BUSY_POLL with it.""", minimum=0)
    prefer_busy_poll: bool = key(False)
    incoming_cpu: bool = key(False, """
Set SO_INCOMING_CPU to the receiver's CPU on its sockets.""")


@dataclass
class LimitsConfig:
    max_batch_bytes: int = key(16 << 20, """
Largest batch payload a publisher may send (total_size); larger closes the connection.""",
                               size=True, minimum=64)
    max_messages_per_batch: int = key(10_000, """
Most messages per batch (Embarcadero's limit is 10000).""", minimum=1, maximum=1_000_000)
    max_message_bytes: int = key(1 << 20, """
Largest single message (Embarcadero's limit is 1 MiB).""", size=True)
    validate_payload: bool = key(False, """
Walk every message header of every batch before committing it (costs CPU).""")
    allow_cidrs: list[str] = key(["0.0.0.0/0", "::/0"], """
Publisher networks allowed to connect, checked at accept (others get a refusal and a close).""")
    max_connections_per_receiver: int = key(4096, """
Connection caps: per receiver, and per source IP address across all receivers.""", minimum=1)
    max_connections_per_source: int = key(1024, minimum=1)
    handshake_timeout_s: float = key(10.0, """
A connection must finish its 64-byte handshake within this many seconds.""", minimum=0)
    idle_timeout_s: float = key(300.0, """
A connection that sends nothing for this long is closed (0 = never).""", minimum=0)
    batch_timeout_s: float = key(60.0, """
A batch must arrive in full within this many seconds of its header (0 = never): bounds
slow senders that would hold BLog space.""", minimum=0)


@dataclass
class MetricsConfig:
    interval_s: float = key(1.0, """
Receivers send their counters to the supervisor this often (seconds); 0 turns it off.""",
                            minimum=0)
    prometheus: str = key("", """
HOST:PORT of an HTTP /metrics endpoint for Prometheus ("" = off), e.g. "127.0.0.1:9464".""")


@dataclass
class ControlConfig:
    endpoint: str = key("", """
ZeroMQ control endpoint. "" = ipc:// socket in a 0700 runtime directory
($XDG_RUNTIME_DIR/shardbroker, /run/shardbroker as root, /tmp/shardbroker-UID).
tcp://HOST:PORT only on request; a non-loopback host needs CURVE keys below.""")
    curve_secret_key_file: str = key("", """
CURVE server secret key file (from `shardbroker keys DIR`); clients then need the
matching public key (--curve-server-key).""")


@dataclass
class LogConfig:
    level: str = key("info", """
debug | info | warning | error""", choices=("debug", "info", "warning", "error"),
                     flags=("log_level",))
    format: str = key("auto", """
auto: JSON lines when stderr is not a terminal, readable console output when it is.""",
                      choices=("auto", "json", "console"))


@dataclass
class Config:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    socket: SocketConfig = field(default_factory=SocketConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    log: LogConfig = field(default_factory=LogConfig)


def sections() -> list[tuple[str, type]]:
    """(section name, its dataclass), in file order."""
    defaults = Config()
    return [(f.name, type(getattr(defaults, f.name))) for f in dataclasses.fields(Config)]


def keys(section_type: type) -> list[tuple[dataclasses.Field[Any], Key]]:
    return [(f, f.metadata["key"]) for f in dataclasses.fields(section_type)]


def key_of(dotted: str) -> Key:
    """The metadata of ``section.key``."""
    section, name = dotted.split(".")
    cls = dict(sections())[section]
    return next(k for f, k in keys(cls) if f.name == name)
