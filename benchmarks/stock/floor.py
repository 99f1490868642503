"""The floor of rlm_python3 (benchmarks/stock/python.conf): take the call, decide nothing."""

import radiusd

_ACCEPT = (radiusd.RLM_MODULE_UPDATED, (), (("Auth-Type", "Accept"),))


def authorize(p):
    return _ACCEPT if dict(p).get("User-Name") else radiusd.RLM_MODULE_REJECT


def accounting(p):
    return radiusd.RLM_MODULE_OK if dict(p).get("Acct-Status-Type") else radiusd.RLM_MODULE_FAIL
