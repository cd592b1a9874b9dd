"""``python -m producers [--once]``: the producer loop.

Wakes on NOTIFY (or every ``PGFLEET_POLL_INTERVAL_S``), publishes pending work, republishes
work whose messages were lost, and queues docs that never got pending rows. ``--once``
does one full pass (reconcile, requeue, drain) and exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from pgfleet.errors import ConfigurationError, PgfleetError

logger = logging.getLogger("producers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producers", description=__doc__)
    parser.add_argument("--once", action="store_true", help="drain pending work and exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(once=args.once)
    except ConfigurationError as exc:
        print(f"pgfleet producer: {exc}", file=sys.stderr)
        return 2


def run(*, once: bool) -> int:
    from pgfleet.settings import Settings
    from producers.loop import ProducerLoop

    loop = ProducerLoop(Settings.from_env())
    if once:
        try:
            published = loop.run_once()
        except PgfleetError as exc:
            print(f"pgfleet producer: {exc}", file=sys.stderr)
            return 1
        finally:
            loop.close()
        logger.info("published %d docs in %d messages", published.docs, published.messages)
        return 0

    def stop(signum, _frame):
        logger.info("received %s, stopping", signal.Signals(signum).name)
        loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.monotonic()
    loop.run_forever()
    logger.info("producer stopped after %.0f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
