"""The menubar's "Local API" toggle and "Copy API Key" (menubar/core.py) with the real
ApiServer on an ephemeral loopback port, on the app's own worker."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from menubar.api_server import ApiServer
from menubar.core import App
from menubar.history import History
from menubar.launchagent import LaunchAgent
from menubar.settings import Settings
from tests.test_menubar_core import FakeCapture, FakeUI, pump, rig  # noqa: F401  (rig is a fixture)

pytest.importorskip("uvicorn")


def models(api: ApiServer, key: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_toggle_serves_the_apps_model_and_is_remembered(rig, tmp_path):
    app, ui, _, _, worker = rig
    app.api = ApiServer(worker, "127.0.0.1:0", key_file=tmp_path / "data" / "api-key", log=lambda line: None)
    try:
        app.toggle_local_api()
        assert ui.menus[-1].local_api and app.settings.local_api and ui.notes[-1][0] == "Local API on"
        app.copy_api_key()
        key = ui.copied[-1]
        assert key == (tmp_path / "data" / "api-key").read_text().strip()
        assert models(app.api, key) == (200, {"object": "list", "data": [
            {"id": "model-a", "object": "model", "created": app.api._server.config.app.created, "owned_by": "local"}]})
        assert Settings.load(tmp_path / "data" / "settings.json").local_api
        port = app.api.port
        app.toggle_local_api()
        assert not ui.menus[-1].local_api and not Settings.load(tmp_path / "data" / "settings.json").local_api
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        app.toggle_local_api()  # on again: the same key
        assert models(app.api, key)[0] == 200
    finally:
        app.stop_api()


def test_a_taken_port_is_a_notification_and_the_setting_stays_off(rig, tmp_path):
    app, ui, _, _, worker = rig
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        app.api = ApiServer(worker, f"127.0.0.1:{taken.getsockname()[1]}", key_file=tmp_path / "k",
                            log=lambda line: None)
        app.toggle_local_api()
    assert ui.notes[-1][0] == "Local API not started" and "cannot serve the API" in ui.notes[-1][1]
    assert not ui.menus[-1].local_api and not app.settings.local_api


def test_a_remembered_api_starts_with_the_app(tmp_path):
    from menubar.worker import Worker
    from tests.test_menubar_core import FakeModel, Lab

    lab, ui = Lab(), FakeUI()
    worker = Worker("model-a", factory=lambda m: FakeModel(m, lab), log=lambda line: None).start()
    settings = Settings.load(tmp_path / "settings.json")
    settings.model, settings.local_api = "model-a", True
    api = ApiServer(worker, "127.0.0.1:0", key_file=tmp_path / "api-key", log=lambda line: None)
    app = App(ui, worker, settings=settings, history=History(tmp_path / "history.json"), capture=FakeCapture(),
              launch_agent=LaunchAgent(tmp_path / "x.plist", ["/bin/true"]), api=api)
    try:
        app.start()
        pump(app, lambda: app.state == "ready")
        assert ui.menus[-1].local_api and models(api, api.key)[0] == 200
    finally:
        app.stop_api()
        worker.stop()
