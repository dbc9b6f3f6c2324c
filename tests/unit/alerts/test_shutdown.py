"""An analysis stops within the time it is given, however its alert receivers and its collector
hang: the receivers are closed together, against one deadline, and the final export gets what is
left (closed in turn, three hanging receivers took 2 s each, and the export the whole budget)."""

from __future__ import annotations

import socket
import threading
import time

from modeltap.config import ExportConfig, ModelTapConfig
from modeltap.worker.analyzer import Analyzer
from tests.support.backends import wait_for


def test_shutdown_keeps_to_its_budget_when_every_receiver_and_the_collector_hang() -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []

    def hold() -> None:  # accepts, reads nothing, answers nothing
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=hold, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    config = ModelTapConfig(
        alert_webhooks=(f"{url}/hook",),
        alertmanagers=(url,),
        alert_slack_webhooks=(f"{url}/slack",),
        export=ExportConfig(endpoint=url, timeout_s=5.0, shutdown_timeout_s=5.0),
    )
    analyzer = Analyzer(config, None, mode="process")
    try:
        analyzer.start()
        for sender in (analyzer.webhooks, analyzer.alertmanager.poster, analyzer.slack):
            sender.offer({"kind": "firing"})
        assert wait_for(lambda: len(held) >= 3, 10)  # every receiver's post is under way

        started = time.monotonic()
        analyzer.shutdown(4.0)
        took = time.monotonic() - started
    finally:
        server.close()
        for conn in held:
            conn.close()

    assert took < 5.5  # 4 s and some slack; in turn, the receivers alone took 6 s
