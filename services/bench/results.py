"""What a run of ``make bench`` records: ``bench/results/<time>.json`` is ``Results`` encoded, and the console table,
the Markdown summary and the PNG are all drawn from it.

Every CPU figure is in *units*: the CPU time of one request to the unit (a trivial aiohttp JSON endpoint, two
processes, uvloop) under the same load tool in the same run. A unit scales with the machine, so units per login
travel between machines better than milliseconds do. The matrix of scenarios is ``expected_keys``: the smoke check
holds a run to it, and rows the product cannot run yet are recorded as ``NOT_SUPPORTED`` so they light up later.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

SCHEMA = 1
OK, NOT_SUPPORTED = "ok", "not supported yet"
ALGORITHMS = ("RS256", "ES256")
#: Shares of new users in the login windows (the rest are users who logged in during the warm-up).
NEW_USER_SHARES = (0.25, 1.0)
CONNECTIONS = (16, 64, 256)
#: The minidoor process types whose CPU a request costs, in the order they are shown.
STACK_TYPES = ("gateway", "workers", "user store", "postgres", "redis")
#: Processes that take part but are not minidoor: counted, and shown apart from the sum.
APART_TYPES = ("sandbox", "load tool")


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Milliseconds, as the load tool measured them (request written to response read)."""

    p50: float
    p90: float
    p99: float
    max: float


class Errors(msgspec.Struct, frozen=True, kw_only=True):
    """Failed requests: socket errors and timeouts, answers of 400 and up, and 2xx answers without what was asked."""

    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    status: int = 0
    unexpected: int = 0
    #: The answers of 400 and up, by status code ("503": 12).
    statuses: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self.connect + self.read + self.write + self.timeout + self.status + self.unexpected


class Revocation(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One token revoked mid-window: how long after the revocation was sent it was answered, and each replica read
    the token inactive."""

    answered_ms: float
    inactive_after_ms: dict[str, float]
    #: Answers in the window that read a token inactive (the revoked one, once it was).
    inactive_answers: int


class Frame(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    #: "name (file:line of its def)", as py-spy names it.
    function: str
    #: Share of the process's samples in this frame itself (not its callees).
    self_percent: float


class Profile(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A CPU profile of one process of a scenario that missed a target, from a second window after the measured one."""

    process: str
    pid: int
    #: The process type's units in the measured window.
    units: float
    #: Paths relative to the directory of the JSON: the flame graph and py-spy's collapsed stacks.
    svg: str
    stacks: str
    seconds: float
    samples: int = 0
    #: The frames with the most self time, most first.
    frames: list[Frame] = []
    #: Why there is no profile ("" when there is).
    error: str = ""


class Scenario(msgspec.Struct, kw_only=True, rename="camel"):
    key: str
    system: str  # "minidoor", "peer", or "unit"
    kind: str  # "unit", "login", "grant", "introspection", "verification"
    label: str
    alg: str = ""
    connections: int = 0
    #: Share of the window's logins by new users, as sent (it can exceed the asked share if returning users ran out).
    new_users: float | None = None
    status: str = OK
    #: Requests (or verifications) per second.
    rate: float = 0.0
    requests: int = 0
    seconds: float = 0.0
    errors: Errors | None = None
    latency_ms: Latency | None = None
    #: CPU per request by process type: milliseconds and units; ``units_total`` sums ``units``, not the apart types.
    cpu_ms: dict[str, float] = {}
    units: dict[str, float] = {}
    units_total: float = 0.0
    #: Units of the processes counted apart (the WeChat sandbox, the load tool).
    units_apart: dict[str, float] = {}
    #: Peak resident memory (VmHWM) of the largest process of each type, in MiB.
    peak_rss_mib: dict[str, float] = {}
    #: What a rate measured in the same process is compared with (verification: bare PyJWT).
    baseline: str = ""
    baseline_rate: float = 0.0
    revocation: Revocation | None = None
    #: A once-only pool (login codes) ran out before the window ended: the rate is a lower bound.
    ran_dry: bool = False
    notes: list[str] = []
    #: CPU profiles of the processes that dominate it, when it missed a target (``profiles.py``).
    profiles: list[Profile] = []
    #: Why a scenario that missed a target has no profiles ("" otherwise).
    unprofiled: str = ""


class Target(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    scenario: str
    goal: str
    #: The measured figure, in the goal's terms; None when it could not be measured.
    figure: float | None
    met: bool | None
    #: "met by 12%", "missed by 30%", "not supported yet", "not measured".
    verdict: str
    #: Whether a CPU profile explains a miss (every target but memory).
    profiled: bool = False
    #: For a miss: by how much, where the time goes, and the profiles' paths.
    explanation: str = ""


class Machine(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    cpu_model: str
    cores: int
    memory_gib: float
    kernel: str


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    smoke: bool
    duration: float
    warmup: float
    threads: int
    connections: list[int]
    unit_connections: int
    auth_workers: int
    introspection_tokens: int
    groups: list[str]


class Results(msgspec.Struct, kw_only=True, rename="camel"):
    schema: int
    started_at: str
    finished_at: str
    machine: Machine
    versions: dict[str, str]
    settings: Settings
    #: CPU milliseconds of one unit (one request to the unit endpoint).
    unit_ms: float
    scenarios: list[Scenario]
    targets: list[Target] = []

    def scenario(self, key: str) -> Scenario | None:
        return next((s for s in self.scenarios if s.key == key), None)


def key(system: str, kind: str, *, alg: str = "", connections: int = 0, new_users: float | None = None) -> str:
    """The scenario's id, e.g. ``minidoor/login/ES256/c64/new25``."""
    parts = [system, kind, alg, f"c{connections}" if connections else ""]
    if new_users is not None:
        parts.append(f"new{round(100 * new_users)}")
    return "/".join(p for p in parts if p)


def expected_keys(groups: list[str], connections: list[int]) -> list[str]:
    """Every scenario a run of these groups records, supported or not."""
    keys = [key("unit", "unit")]
    for group in groups:
        match group:
            case "peer":
                keys.append(key("peer", "unit"))
                for c in connections:
                    keys += [key("peer", "grant", alg=alg, connections=c) for alg in ALGORITHMS]
                    keys.append(key("peer", "introspection", connections=c))
            case "introspection":
                keys += [key("minidoor", "introspection", connections=c) for c in connections]
            case "verification":
                keys += [key("minidoor", "verification", alg=alg) for alg in ALGORITHMS]
            case "login":
                keys += [
                    key("minidoor", "login", alg=alg, connections=c, new_users=share)
                    for alg in ALGORITHMS
                    for c in connections
                    for share in NEW_USER_SHARES
                ]
    return keys


def write(results: Results, directory: Path, stem: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=2) + b"\n")
    return path


def read(path: Path) -> Results:
    return msgspec.json.decode(path.read_bytes(), type=Results)
