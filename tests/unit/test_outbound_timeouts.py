"""Every outbound client in src/ is built with an explicit timeout.

An AST scan of the source: each construction of an HTTP, Redis, ClickHouse, PostgreSQL/SQLite
or Kafka client must pass the timeout keyword(s) its library uses, so a call to a server that
stops answering fails after a bounded time instead of hanging a request or a worker. A new
client written without one fails this test. Library defaults (often "wait forever") do not
count as explicit.

What the scan accepts, per constructor (any one of the names listed):

| constructor | needs |
|---|---|
| httpx.Client / httpx.AsyncClient / authlib AsyncOAuth2Client | `timeout=` |
| redis.Redis / Redis.from_url / redis.from_url | `socket_timeout=` and `socket_connect_timeout=` |
| clickhouse_connect.get_client | `connect_timeout=` |
| sqlalchemy create_engine | `connect_args` with `timeout` (SQLite) or `connect_timeout` (psycopg) |
| psycopg.connect | `connect_timeout=` |
| confluent_kafka Producer / Consumer | `message.timeout.ms` / `session.timeout.ms` in the config |
| confluent_kafka AdminClient | every admin call in the module passes a timeout |
| limits storage_from_string | `socket_timeout` and `socket_connect_timeout` unless `memory://` |

`**kwargs` counts when the enclosing function builds that dict with the key.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "sendflowr"

# Constructor name (the last dotted part, or `Redis.from_url`) -> keyword sets; one set must
# be fully present.
REQUIRED: dict[str, list[set[str]]] = {
    "httpx.Client": [{"timeout"}],
    "httpx.AsyncClient": [{"timeout"}],
    "AsyncOAuth2Client": [{"timeout"}],
    "OAuth2Client": [{"timeout"}],
    "redis.Redis": [{"socket_timeout", "socket_connect_timeout"}],
    "Redis.from_url": [{"socket_timeout", "socket_connect_timeout"}],
    "redis.from_url": [{"socket_timeout", "socket_connect_timeout"}],
    "clickhouse_connect.get_client": [{"connect_timeout"}],
    "psycopg.connect": [{"connect_timeout"}],
}
CONFIG_KEYS = {"Producer": "message.timeout.ms", "Consumer": "session.timeout.ms"}
ADMIN_CALLS = {"list_topics", "create_topics", "delete_topics", "describe_configs", "list_groups"}
ADMIN_TIMEOUTS = {"timeout", "request_timeout", "operation_timeout"}

# Gaps that are known and reported, each with why; the test fails when one is fixed (so the
# entry is removed) or when a new one appears.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    call: str
    why: str


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _matches(called: str, wanted: str) -> bool:
    return (
        called == wanted
        or called.endswith("." + wanted)
        or ("." not in wanted and called.split(".")[-1] == wanted)
    )


def _enclosing_functions(tree: ast.Module) -> dict[ast.Call, ast.AST]:
    owner: dict[ast.Call, ast.AST] = {}

    def walk(node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else scope
            if isinstance(child, ast.Call):
                owner[child] = inner
            walk(child, inner)

    walk(tree, tree)
    return owner


def _keys(d: ast.Dict) -> set[str]:
    return {k.value for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def _keywords(call: ast.Call, scope: ast.AST) -> set[str]:
    """Keyword names given, including the keys of a dict literal passed as **kwargs (or
    assigned, in the enclosing function, to the name passed as **kwargs)."""
    names: set[str] = set()
    for kw in call.keywords:
        if kw.arg is not None:
            names.add(kw.arg)
            if kw.arg == "connect_args" and isinstance(kw.value, ast.Dict):
                names |= _keys(kw.value)
            continue
        if isinstance(kw.value, ast.Dict):
            names |= _keys(kw.value)
        elif isinstance(kw.value, ast.Name):
            for node in ast.walk(scope):
                if (
                    isinstance(node, ast.Assign | ast.AnnAssign)
                    and any(
                        isinstance(t, ast.Name) and t.id == kw.value.id
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    )
                    and isinstance(node.value, ast.Dict)
                ):
                    names |= _keys(node.value)
    return names


def _strings(node: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def scan(root: Path = SRC) -> Iterator[Finding]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        owner = _enclosing_functions(tree)
        admin_used = False
        for call, scope in owner.items():
            called = _name(call.func)
            if not called:
                continue
            for wanted, options in REQUIRED.items():
                if _matches(called, wanted):
                    given = _keywords(call, scope)
                    if not any(opt <= given for opt in options):
                        need = " or ".join("+".join(sorted(o)) for o in options)
                        yield Finding(rel, call.lineno, called, f"no {need}")
            if called.endswith("create_engine"):
                given = _keywords(call, scope)
                if not given & {"timeout", "connect_timeout"}:
                    yield Finding(rel, call.lineno, called, "connect_args without a timeout")
            for ctor, key in CONFIG_KEYS.items():
                if called.split(".")[-1] == ctor and key not in _strings(call):
                    yield Finding(rel, call.lineno, called, f"config without {key!r}")
            if called.split(".")[-1] == "AdminClient":
                admin_used = True
            if called.split(".")[-1] == "storage_from_string":
                in_memory = (
                    call.args
                    and isinstance(call.args[0], ast.Constant)
                    and str(call.args[0].value).startswith("memory://")
                )
                need_redis = {"socket_timeout", "socket_connect_timeout"}
                if not in_memory and not need_redis <= _keywords(call, scope):
                    yield Finding(rel, call.lineno, called, "no socket timeouts for a Redis store")
        if admin_used:
            for call in owner:
                attr = call.func.attr if isinstance(call.func, ast.Attribute) else ""
                if attr in ADMIN_CALLS and not {k.arg for k in call.keywords} & ADMIN_TIMEOUTS:
                    yield Finding(rel, call.lineno, f"AdminClient.{attr}", "no timeout")


def test_every_outbound_client_has_an_explicit_timeout() -> None:
    findings = list(scan())
    unknown = [f for f in findings if (f.file, f.call.split(".")[-1]) not in KNOWN_GAPS]
    assert not unknown, "\n".join(f"{f.file}:{f.line}: {f.call}: {f.why}" for f in unknown)
    still_open = {(f.file, f.call.split(".")[-1]) for f in findings}
    fixed = set(KNOWN_GAPS) - still_open
    assert not fixed, f"fixed, remove from KNOWN_GAPS: {sorted(fixed)}"


def test_the_scan_finds_clients_and_flags_one_without_a_timeout(tmp_path: Path) -> None:
    """The scan is not vacuous: it sees the project's clients, and a client written without
    a timeout (in any of the supported shapes) is reported."""
    seen = {
        _name(n.func)
        for p in SRC.rglob("*.py")
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.Call)
    }
    assert any(s.endswith("AsyncClient") for s in seen)
    assert any(s.endswith("create_engine") for s in seen)

    (tmp_path / "bad.py").write_text(
        "import httpx, redis, sqlalchemy as sa\n"
        "from confluent_kafka import Producer\n"
        "def f(url):\n"
        "    a = httpx.AsyncClient(base_url=url)\n"
        "    kw = {'headers': {}}\n"
        "    b = httpx.Client(**kw)\n"
        "    c = redis.Redis.from_url(url, socket_timeout=1)\n"
        "    d = sa.create_engine(url)\n"
        "    e = Producer({'bootstrap.servers': url})\n"
        "    ok = httpx.Client(timeout=5)\n"
        "    kw2 = {'timeout': 5}\n"
        "    ok2 = httpx.AsyncClient(**kw2)\n"
    )
    found = sorted((f.line, f.call) for f in scan(tmp_path))
    assert found == [
        (4, "httpx.AsyncClient"),
        (6, "httpx.Client"),
        (7, "redis.Redis.from_url"),
        (8, "sa.create_engine"),
        (9, "Producer"),
    ], found
