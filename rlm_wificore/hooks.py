"""The radiusd boundary: the only module that imports ``radiusd``.

rlm_python3 calls these functions with a tuple of ``(name, value)`` string
pairs, one call at a time under a mutex. Each hook turns the tuple into a
dict, calls the :class:`~rlm_wificore.engine.Engine` and maps its
:class:`~rlm_wificore.engine.Result` to radiusd's return form. No exception
crosses this boundary: :func:`_guard` logs it and answers from one table.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable

import radiusd  # provided by rlm_python3

from wificore import log as wlog
from wificore.errors import ConfigError
from wificore.settings import Settings, is_config_check

from .engine import Engine, Result
from .metrics import Latency
from .request import view

RCODES = {
    "ok": radiusd.RLM_MODULE_OK,
    "updated": radiusd.RLM_MODULE_UPDATED,
    "reject": radiusd.RLM_MODULE_REJECT,
    "fail": radiusd.RLM_MODULE_FAIL,
    "notfound": radiusd.RLM_MODULE_NOTFOUND,
    "noop": radiusd.RLM_MODULE_NOOP,
    "handled": radiusd.RLM_MODULE_HANDLED,
}
_LOG_LEVELS = {"debug": radiusd.L_DBG, "info": radiusd.L_INFO, "warning": radiusd.L_WARN,
               "error": radiusd.L_ERR, "critical": radiusd.L_ERR}

_engine: Engine | None = None
_latency = Latency()
_metrics_server = None


def _radlog(level: str, line: str) -> None:
    radiusd.radlog(_LOG_LEVELS.get(level, radiusd.L_INFO), "rlm_wificore: " + line)


def _checking_config() -> bool:
    """True under `freeradius -C`: instantiate must then start no thread and bind no port."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return is_config_check(f.read().split(b"\0"))
    except OSError:
        return False


def _to_radiusd(result: Result):
    rcode = RCODES[result.rcode]
    if not result.request:
        if not result.reply and not result.config:
            return rcode
        return (rcode, result.reply, result.config)
    lists = {}
    if result.reply:
        lists["reply"] = result.reply
    if result.config:
        lists["config"] = result.config
    if result.request:
        lists["request"] = result.request
    if not lists:
        return rcode
    return (rcode, lists)


def _guard(hook: str, fn: Callable[[Engine, dict[str, str]], Result], p, on_error: str):
    start = time.perf_counter()
    try:
        engine = _engine
        if engine is None:
            _radlog("error", f"{hook}: module not instantiated")
            return RCODES[on_error]
        return _to_radiusd(fn(engine, view(p)))  # the first of a repeated attribute, as radiusd
    except Exception as exc:  # the boundary: nothing escapes into radiusd
        if _engine is not None:
            _engine.stats.errors[f"{hook}:{type(exc).__name__}"] += 1
        _radlog("error", f"{hook}: {type(exc).__name__}: {exc}")
        _radlog("debug", traceback.format_exc().replace("\n", " | "))
        if on_error == "reject":
            return (RCODES["reject"], {
                "reply": (("Reply-Message", "Service temporarily unavailable, please try again"),),
                "request": (("WiFiCore-Reason", "internal_error"),)})
        return RCODES[on_error]
    finally:
        _latency.observe(hook, time.perf_counter() - start)


def instantiate(_p):
    """Parse settings, load the shard map, build clients; start threads unless checking."""
    global _engine, _metrics_server
    try:
        settings = Settings.from_mapping(dict(radiusd.config), source="wificore")
        wlog.configure(settings.log_level, sink=_radlog)
        engine = Engine(settings)
        if not _checking_config():
            engine.start()
            if settings.metrics_port:
                from .metrics import serve
                _metrics_server = serve(engine, _latency, settings.metrics_addr,
                                        settings.metrics_port)
        _engine = engine
    except ConfigError as exc:
        radiusd.radlog(radiusd.L_ERR, f"rlm_wificore: invalid configuration: {exc}")
        return -1
    except Exception as exc:
        radiusd.radlog(radiusd.L_ERR, f"rlm_wificore: start-up failed: {type(exc).__name__}: {exc}")
        return -1
    radiusd.radlog(radiusd.L_INFO, f"rlm_wificore: ready ({len(engine.shard_map.shards)} shards)")
    return 0


def _authorize(engine: Engine, req: dict[str, str]) -> Result:
    lookup = req.get("WiFiCore-Client-Lookup")
    if lookup is not None:
        return engine.client(lookup)
    return engine.authorize(req)


def authorize(p):
    return _guard("authorize", _authorize, p, "reject")


def authenticate(p):
    # Every credential is checked by rlm_pap / rlm_chap / rlm_mschap in C,
    # outside the Python mutex; see docs/decisions.md.
    return RCODES["noop"]


def post_auth(p):
    def run(engine: Engine, req: dict[str, str]) -> Result:
        return engine.post_auth(req, accepted="WiFiCore-Reason" not in req)
    return _guard("post_auth", run, p, "noop")


def preacct(p):
    return RCODES["noop"]


def accounting(p):
    def run(engine: Engine, req: dict[str, str]) -> Result:
        return engine.accounting(req)
    # fail: no Accounting-Response, the NAS retransmits.
    return _guard("accounting", run, p, "fail")


def detach(_p):
    """Close every client and pool before radiusd finalises Python (see FACTS)."""
    global _engine, _metrics_server
    try:
        if _metrics_server is not None:
            _metrics_server.shutdown()
            _metrics_server.server_close()
        if _engine is not None:
            _engine.close()
    except Exception as exc:
        radiusd.radlog(radiusd.L_ERR, f"rlm_wificore: detach: {exc}")
    _engine = None
    _metrics_server = None
    gc.collect()
    return 0


def _check_settings_at_import() -> None:
    """Under `freeradius -C`, FreeRADIUS 3.2.5 and later import the module but no longer
    call instantiate: parse the settings and the shard map here, so that a bad one still fails the check
    (on every 3.2.x) with the message instantiate gives at start-up."""
    if not _checking_config():
        return
    from wificore.shardmap import ShardMap
    try:
        ShardMap.load(Settings.from_mapping(dict(radiusd.config), source="wificore").shard_map)
    except ConfigError as exc:
        radiusd.radlog(radiusd.L_ERR, f"rlm_wificore: invalid configuration: {exc}")
        raise


_check_settings_at_import()
