"""``python -m coa_sender`` / ``wificore-coa``: the CoA sidecar (docs/coa.md).

    wificore-coa              run until SIGTERM / SIGINT (jobs in flight finished, exit 0)
    wificore-coa --settings   print every environment variable and its default

Configuration is the environment only (``WIFICORE_*``, ``WIFICORE_COA_*``); a bad
value exits with status 2 and a message that names the variable.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from wificore import log as wlog
from wificore.errors import ConfigError
from wificore.settings import Settings

from .config import SHARED_SETTINGS, CoaConfig, load


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wificore-coa", description="Send Disconnect- and CoA-Requests "
                                "(RFC 5176) to the NAS for the jobs queued in Redis.")
    p.add_argument("--settings", action="store_true", help="print the environment variables and defaults")
    args = p.parse_args(argv)
    if args.settings:
        for name, default, doc in Settings.describe():
            if name in SHARED_SETTINGS:
                print(f"WIFICORE_{name.upper()}={default}\n    {doc}")
        for var, default, doc in CoaConfig.describe():
            print(f"{var}={default}\n    {doc}")
        return 0
    try:
        settings, cfg = load()
        wlog.configure(settings.log_level)
        from .service import Sidecar
        sidecar = Sidecar(settings, cfg)
    except ConfigError as exc:
        print(f"wificore-coa: {exc}", file=sys.stderr)
        return 2
    if cfg.metrics_port:
        from .metrics import serve
        serve(sidecar.stats, cfg.metrics_addr, cfg.metrics_port)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        sidecar.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    wlog.get_logger("coa_sender").info("coa_started", consumer=cfg.consumer, group=cfg.group)
    return sidecar.run()


if __name__ == "__main__":
    sys.exit(main())
