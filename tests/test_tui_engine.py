"""The monitor on the real streaming engine (a random-weight model, the demo file read as fast as possible)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serlive.tui.app import MonitorApp
from serlive.tui.source import EngineSource
from serlive.tui.widgets import SegmentLog

from .test_tui_app import SIZE, settle, sync

DEMO = Path(__file__).resolve().parents[1] / "stream" / "demo" / "demo.flac"

engine_mod = pytest.importorskip("serlive.stream.engine", reason="the streaming engine is not there yet")


@pytest.mark.slow
@sync
async def test_engine_events_fill_the_screen():
    from serlive.model import ModelConfig, Predictor, SERModel
    from serlive.stream.config import EngineConfig
    from serlive.stream.sources import FileSource

    if not DEMO.is_file():
        pytest.skip("no demo audio")
    predictor = Predictor(SERModel(ModelConfig()).eval())
    engine = engine_mod.Engine(predictor, EngineConfig(ws=None), [FileSource(str(DEMO), realtime=False)])
    app = MonitorApp(EngineSource(engine))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        view = app.state.view
        assert app.state.finished == 0 and app.state.hello.labels == predictor.config.labels
        assert len(view.log) == 4, "the demo has four utterances"
        assert app.query_one(SegmentLog).row_count == 4 and view.current.final
        assert app.state.stats is not None and view.level_db is not None
        await pilot.press("q")
    assert app.return_value == 0
