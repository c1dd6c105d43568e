"""The cluster end to end, with real processes: a nats-server with JetStream in a temporary directory, two
model workers, a feed, gateways reading RAVDESS files; compared with the single-process engine on the same
files. The tests run in order on one broker (a killed worker stays dead for the tests after it)."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

pytest.importorskip("nats")

from .clusterkit import DATA, Broker, events, feed, finals, gateway, local, summary, wait_for, worker  # noqa: E402

FILES = sorted(DATA.glob("*.flac"))
GATEWAY_A, GATEWAY_B = FILES[0:3], FILES[3:6]
DEMO = DATA.parent.parent.parent / "stream" / "demo" / "demo.flac"
LOAD = FILES[6:14] + [DEMO]  # (the demo's four segments, read fast, make a backlog: its later finals go bulk)
REALTIME = FILES[14:16]
ACK_WAIT_S = 3.0
TTL_S = 2.0
latencies: dict[str, float] = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    broker = Broker(tmp / "store")
    files = GATEWAY_A + GATEWAY_B + LOAD + REALTIME
    reference = gateway(tmp, None, "reference", files, "--fast")  # the single process, meanwhile
    workers = [worker(tmp, broker, f"w{i}", "--ack-wait-s", str(ACK_WAIT_S)) for i in (1, 2)]
    the_feed = feed(tmp, broker, "feed", "--gateway-ttl-s", str(TTL_S))
    other = feed(tmp, broker, "other", "--nats-prefix", "other")  # another deployment on the same broker
    the_feed.wait_line("dashboard at", 30)
    other.wait_line("dashboard at", 30)
    for w in workers:
        w.wait_line("ready", 120)
    assert reference.wait(180) == 0, reference.stderr
    ref = {e["stream"]: [] for e in finals(tmp / "reference.jsonl")}
    for e in finals(tmp / "reference.jsonl"):
        ref[e["stream"]].append(e)
    state = dict(tmp=tmp, broker=broker, workers=workers, feed=the_feed, reference=ref, other=other)
    yield state
    for proc in [*workers, the_feed, other]:
        proc.kill(signal.SIGTERM)
    broker.stop()
    for proc in [*workers, the_feed]:
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    print(f"\ncluster tests: worst final latency with a worker killed: {latencies.get('kill', 'n/a')} ms")


def expected(cluster, files) -> list[tuple]:
    return summary([e for f in files for e in cluster["reference"][f.name]])


def feed_finals(cluster, gateway_name: str) -> list[dict]:
    return [e for e in finals(cluster["tmp"] / "feed.jsonl") if e["stream"].startswith(gateway_name + "/")]


def assert_exactly_once(cluster, gateway_name: str, files) -> None:
    got = feed_finals(cluster, gateway_name)
    keys = [(e["stream"], e["segment"]) for e in got]
    assert len(keys) == len(set(keys)), f"a final twice on the feed: {sorted(keys)}"
    assert summary(got, strip=True) == expected(cluster, files)
    for name in {e["stream"] for e in got}:  # in order per stream
        segments = [e["segment"] for e in got if e["stream"] == name]
        assert segments == sorted(segments)


def test_two_gateways_give_the_single_process_finals_once(cluster):
    tmp = cluster["tmp"]
    gateways = [gateway(tmp, cluster["broker"], "ga", GATEWAY_A, "--fast"),
                gateway(tmp, cluster["broker"], "gb", GATEWAY_B, "--fast")]
    for g in gateways:
        assert g.wait(120) == 0, g.stderr[-3000:]
        assert "Traceback" not in g.stderr
    assert summary(finals(tmp / "ga.jsonl")) == expected(cluster, GATEWAY_A)  # the gateway's own sinks
    assert summary(finals(tmp / "gb.jsonl")) == expected(cluster, GATEWAY_B)
    wait_for(lambda: len(feed_finals(cluster, "ga")) + len(feed_finals(cluster, "gb"))
             >= len(expected(cluster, GATEWAY_A + GATEWAY_B)), 20, "the finals on the feed")
    time.sleep(0.5)  # a duplicate would arrive right behind
    assert_exactly_once(cluster, "ga", GATEWAY_A)
    assert_exactly_once(cluster, "gb", GATEWAY_B)
    ended = [e for e in events(tmp / "feed.jsonl") if e["type"] == "stream" and e["state"] == "ended"
             and e["stream"].split("/")[0] in ("ga", "gb")]
    assert sorted(local(e["stream"]) for e in ended) == sorted(f.name for f in GATEWAY_A + GATEWAY_B)
    assert {e["reason"] for e in ended} == {"end_of_input"}
    assert events(tmp / "other.jsonl") == []  # --nats-prefix: the other deployment saw none of it


def test_a_late_dashboard_gets_the_recent_window(cluster):
    from websockets.sync.client import connect

    port = int(cluster["feed"].stderr.split("dashboard at http://127.0.0.1:")[1].split("/")[0])
    want = {(e["stream"], e["segment"]) for e in feed_finals(cluster, "ga")}
    seen, hello = set(), None
    with connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
        deadline = time.monotonic() + 10
        while not want <= seen and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=5))
            hello = hello or message
            if message["type"] == "prediction" and message["final"]:
                seen.add((message["stream"], message["segment"]))
    assert hello["type"] == "hello" and hello["labels"] == ["angry", "happy", "neutral", "sad"]
    assert want <= seen


def test_garbage_on_every_subject_is_dropped_and_counted(cluster):
    async def publish() -> None:
        import nats

        nc = await nats.connect(cluster["broker"].url)
        js = nc.jetstream()
        await js.publish("serlive.req.final.live.intruder", b"\xff\x00 not json")
        await js.publish("serlive.req.final.bulk.intruder", json.dumps({"id": "x", "chunks": [1]}).encode())
        await nc.publish("serlive.req.interim", b"{{{{")
        await js.publish("serlive.ev.intruder", b"<html>")
        await js.publish("serlive.ev.intruder", json.dumps({"type": "prediction", "segment": "x"}).encode())
        await nc.publish("serlive.hb.intruder", b"[1,2")
        await nc.flush()
        await nc.close()

    asyncio.run(publish())
    wait_for(lambda: sum(w.stderr.count("that is not a request") for w in cluster["workers"]) >= 3, 10,
             "the workers' drops")
    wait_for(lambda: cluster["feed"].stderr.count("that is not an event") >= 2
             and "heartbeat that does not parse" in cluster["feed"].stderr, 10, "the feed's drops")
    assert "(3 so far)" in cluster["feed"].stderr  # counted
    for proc in [*cluster["workers"], cluster["feed"]]:
        assert proc.proc.poll() is None and "Traceback" not in proc.stderr


async def delivered(url: str, consumer: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().consumer_info("serlive_REQ", consumer)).delivered.consumer_seq
    finally:
        await nc.close()


def test_a_worker_killed_under_load_loses_and_repeats_no_final(cluster):
    tmp = cluster["tmp"]
    g = gateway(tmp, cluster["broker"], "gload", LOAD, "--fast")
    wait_for(lambda: feed_finals(cluster, "gload"), 60, "the first final under load")
    cluster["workers"][0].kill()  # SIGKILL: whatever it held is redelivered after the ack deadline
    assert g.wait(120) == 0, g.stderr[-3000:]
    wait_for(lambda: len(feed_finals(cluster, "gload")) >= len(expected(cluster, LOAD)), 20, "every final")
    time.sleep(0.5)
    assert_exactly_once(cluster, "gload", LOAD)
    assert asyncio.run(delivered(cluster["broker"].url, "workers_bulk")) > 0  # the backlog went to the bulk lane
    worst_ms = max(e["latency_ms"] for e in finals(tmp / "gload.jsonl"))
    latencies["kill"] = worst_ms
    assert worst_ms < (ACK_WAIT_S + 30) * 1000


def test_a_broker_restart_loses_no_final(cluster):
    tmp = cluster["tmp"]
    g = gateway(tmp, cluster["broker"], "grestart", REALTIME)  # in real time: still running at the restart
    wait_for(lambda: any(e["type"] == "level" for e in events(tmp / "grestart.jsonl")), 60, "audio flowing")
    cluster["broker"].restart()
    assert g.wait(120) == 0, g.stderr[-3000:]
    wait_for(lambda: len(feed_finals(cluster, "grestart")) >= len(expected(cluster, REALTIME)), 30,
             "every final after the restart")
    time.sleep(0.5)
    assert_exactly_once(cluster, "grestart", REALTIME)


def test_a_killed_gateway_ends_its_streams_with_a_reason(cluster):
    tmp = cluster["tmp"]
    doomed = gateway(tmp, cluster["broker"], "gdoomed", [DEMO])
    survivor = gateway(tmp, cluster["broker"], "gsurvivor", REALTIME[:1])
    feed_events = lambda: events(tmp / "feed.jsonl")  # noqa: E731
    wait_for(lambda: any(e["type"] == "stream" and e["stream"] == "gdoomed/demo.flac" for e in feed_events()),
             60, "the doomed stream on the feed")
    doomed.kill()
    t0 = time.monotonic()
    ended = wait_for(lambda: [e for e in feed_events() if e["type"] == "stream" and e["state"] == "ended"
                              and e["stream"] == "gdoomed/demo.flac"], TTL_S + 10, "the doomed stream's end")
    assert ended[0]["reason"] == "connection_lost" and "gdoomed" in ended[0]["detail"]
    assert time.monotonic() - t0 < TTL_S + 5
    assert survivor.wait(60) == 0
    wait_for(lambda: [e for e in feed_events() if e["type"] == "stream" and e["state"] == "ended"
                      and e["stream"].startswith("gsurvivor/")], 10, "the survivor's end")
    end = [e for e in feed_events() if e["type"] == "stream" and e["stream"].startswith("gsurvivor/")
           and e["state"] == "ended"]
    assert [e["reason"] for e in end] == ["end_of_input"]
    assert_exactly_once(cluster, "gsurvivor", REALTIME[:1])
