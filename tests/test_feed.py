"""The local Twelve Data-compatible feed, over real sockets on 127.0.0.1, with websocket-client as the client."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import websocket

from shardctl.feed.faults import GARBAGE_FRAME, parse_fault_spec
from shardctl.feed.server import CLOSE_EVICTED, FeedError, FeedServer

NO_PROXY = ["127.0.0.1", "localhost"]


@pytest.fixture
def feeds() -> Iterator[Any]:
    """Start FeedServers with ``feeds(**kwargs)``; every one is stopped at teardown."""
    started: list[FeedServer] = []

    def make(**kwargs: Any) -> FeedServer:
        server = FeedServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def connect(server: FeedServer, key: str = "demo", **options: Any) -> websocket.WebSocket:
    url = server.url + (f"?apikey={key}" if key else "")
    return websocket.create_connection(url, timeout=5, http_no_proxy=NO_PROXY, **options)


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    return json.loads(ws.recv())


def subscribe(ws: websocket.WebSocket, symbols: Any) -> dict[str, Any]:
    ws.send(json.dumps({"action": "subscribe", "params": {"symbols": symbols}}))
    return recv_json(ws)


def recv_until_close(ws: websocket.WebSocket, limit: int = 100_000) -> tuple[int, list[str]]:
    """Read frames until the server's close frame, then drop the socket; return (close code, text frames)."""
    texts: list[str] = []
    for _ in range(limit):
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            ws.shutdown()  # recv_data_frame already answered the close frame
            return int.from_bytes(frame.data[:2], "big"), texts
        if opcode == websocket.ABNF.OPCODE_TEXT:
            texts.append(frame.data.decode())
    raise AssertionError("no close frame")


def test_subscribe_string_and_list_forms(feeds: Any) -> None:
    server = feeds(rate=1)
    ws = connect(server)
    status = subscribe(ws, "AAPL,BTC/USD,RY:TSX,NOPE")
    assert status["event"] == "subscribe-status" and status["status"] == "ok"
    assert [s["symbol"] for s in status["success"]] == ["AAPL", "BTC/USD", "RY"]
    assert status["success"][0] == {"symbol": "AAPL", "exchange": "NASDAQ", "mic_code": "XNGS",
                                    "country": "United States", "type": "Common Stock"}
    assert status["success"][1]["type"] == "Digital Currency"
    assert status["fails"] == [{"symbol": "NOPE"}]

    status = subscribe(ws, [{"symbol": "EUR/USD", "type": "Forex"}, {"symbol": "MSFT", "exchange": "NASDAQ"}])
    assert [s["symbol"] for s in status["success"]] == ["EUR/USD", "MSFT"]
    assert status["fails"] is None

    assert subscribe(ws, "ZZZZ")["status"] == "error"
    ws.send(json.dumps({"action": "unsubscribe", "params": {"symbols": "AAPL,TSLA"}}))
    unsub = recv_until_event(ws, "unsubscribe-status")
    assert [s["symbol"] for s in unsub["success"]] == ["AAPL"] and unsub["fails"] == [{"symbol": "TSLA"}]
    ws.send(json.dumps({"action": "reset"}))
    assert recv_until_event(ws, "reset-status")["status"] == "ok"
    ws.close()


def recv_until_event(ws: websocket.WebSocket, event: str, limit: int = 1000) -> dict[str, Any]:
    for _ in range(limit):
        msg = recv_json(ws)
        if msg.get("event") == event:
            return msg
    raise AssertionError(f"no {event} event")


def test_price_events_have_the_fields_of_their_asset_class(feeds: Any) -> None:
    server = feeds(rate=0, count=40, symbols=["ZZTOP", "DOGE/EUR", "NOK/SEK"], seed=7)
    ws = connect(server)
    subscribe(ws, "AAPL,BTC/USD,EUR/USD,XAU/USD,ZZTOP,DOGE/EUR,NOK/SEK")
    events: dict[str, dict[str, Any]] = {}
    for _ in range(40):
        event = recv_json(ws)
        assert event["event"] == "price"
        assert isinstance(event["timestamp"], int) and abs(event["timestamp"] - time.time()) < 5
        assert isinstance(event["price"], float) and event["price"] > 0
        events[event["symbol"]] = event
    assert len(events) == 7
    stock = events["AAPL"]
    assert {k for k in stock} == {"event", "symbol", "currency", "exchange", "mic_code", "type",
                                  "timestamp", "price", "day_volume"}
    assert stock["currency"] == "USD" and stock["type"] == "Common Stock"
    for crypto in (events["BTC/USD"], events["DOGE/EUR"]):
        assert crypto["type"] == "Digital Currency" and crypto["exchange"] == "Coinbase Pro"
        assert crypto["bid"] <= crypto["price"] <= crypto["ask"] and isinstance(crypto["day_volume"], int)
    assert events["BTC/USD"]["currency_base"] == "Bitcoin" and events["BTC/USD"]["currency_quote"] == "US Dollar"
    for forex in (events["EUR/USD"], events["NOK/SEK"]):
        assert "day_volume" not in forex and "bid" in forex and "ask" in forex
        assert forex["type"] == "Physical Currency"
    gold = events["XAU/USD"]
    assert gold["currency_base"] == "Gold Spot" and "day_volume" not in gold and "bid" in gold
    assert events["ZZTOP"]["type"] == "Common Stock"
    ws.close()


def test_count_gives_exactly_n_events_and_the_sent_log_matches(feeds: Any, tmp_path: Path) -> None:
    log_path = tmp_path / "sent.jsonl"
    server = feeds(rate=0, count=250, sent_log=log_path)
    ws = connect(server)
    subscribe(ws, "AAPL,BTC/USD,EUR/USD")
    received = [recv_json(ws) for _ in range(250)]
    assert all(e["event"] == "price" for e in received)
    volumes = [e["day_volume"] for e in received if e["symbol"] == "AAPL"]
    assert volumes == sorted(volumes) and len(set(volumes)) == len(volumes)
    # Streaming is over, but the connection still answers: the next frame is the heartbeat reply.
    ws.send(json.dumps({"action": "heartbeat"}))
    assert recv_json(ws) == {"event": "heartbeat", "status": "ok"}
    stats = server.wait_sent(250)
    assert stats.sent == 250 and list(stats.per_connection.values()) == [250]
    assert server.sent_events() == received
    ws.close()
    server.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["event"] for line in lines] == received
    assert {line["conn"] for line in lines} == set(stats.per_connection)


def test_heartbeat_and_unparsable_messages(feeds: Any) -> None:
    server = feeds(rate=0, count=0)
    ws = connect(server)
    ws.send(json.dumps({"action": "heartbeat"}))
    assert recv_json(ws) == {"event": "heartbeat", "status": "ok"}
    for bad in ("not json", "[1, 2]", json.dumps({"action": "dance"}), json.dumps({"action": "subscribe"})):
        ws.send(bad)
        reply = recv_json(ws)
        assert reply["status"] == "error" and reply["messages"] == ["Cant parse message"]
    ws.send(json.dumps({"action": "heartbeat"}))
    assert recv_json(ws)["event"] == "heartbeat"
    ws.close()


def test_garbage_and_malformed_price_keep_streaming(feeds: Any) -> None:
    server = feeds(rate=0, count=30, faults=[parse_fault_spec("garbage:after=10"),
                                             parse_fault_spec("malformed_price:after=20")])
    ws = connect(server)
    subscribe(ws, "AAPL")
    frames = [ws.recv() for _ in range(32)]
    assert frames[10] == GARBAGE_FRAME
    malformed = json.loads(frames[21])
    assert malformed["event"] == "price" and malformed["symbol"] == "AAPL" and malformed["price"] == "n/a"
    prices = [json.loads(f) for i, f in enumerate(frames) if i not in (10, 21)]
    assert all(isinstance(p["price"], float) for p in prices) and len(prices) == 30
    stats = server.stats()
    assert (stats.garbage_sent, stats.malformed_sent, stats.sent) == (1, 1, 30)
    ws.close()


def test_standing_close_after_n_events_then_reconnect(feeds: Any) -> None:
    server = feeds(rate=0, faults=[parse_fault_spec("close:after=5,code=1001")])
    for _ in range(2):
        ws = connect(server)
        subscribe(ws, "MSFT")
        code, texts = recv_until_close(ws)
        assert code == 1001 and len(texts) == 5
    server.wait_connections(0)
    assert list(server.stats().per_connection.values()) == [5, 5]


def test_injected_close_is_clean(feeds: Any) -> None:
    server = feeds(rate=200)
    ws = connect(server)
    subscribe(ws, "AAPL")
    server.wait_sent(3)
    server.inject("close")
    code, _ = recv_until_close(ws)
    assert code == 1000
    server.wait_connections(0)


def test_abort_drops_tcp_without_close_frame(feeds: Any) -> None:
    server = feeds(rate=500)
    ws = connect(server)
    subscribe(ws, "AAPL")
    server.wait_sent(3)
    server.inject("abort")
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionResetError)):
        for _ in range(10_000):
            opcode, _ = ws.recv_data_frame(control_frame=True)
            assert opcode != websocket.ABNF.OPCODE_CLOSE, "abort must not send a close frame"
    server.wait_connections(0)


def test_silence_sends_nothing_then_resumes(feeds: Any) -> None:
    server = feeds(rate=200)
    ws = connect(server)
    subscribe(ws, "AAPL,BTC/USD")
    server.wait_sent(5)
    server.inject("silence", seconds=0.8)
    ws.send(json.dumps({"action": "heartbeat"}))  # its reply is swallowed by the silence
    arrivals: list[tuple[float, dict[str, Any]]] = []
    gap_at: list[int] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (gap_at and len(arrivals) - gap_at[0] >= 3):
        arrivals.append((time.monotonic(), recv_json(ws)))
        gap_at = [i for i in range(1, len(arrivals)) if arrivals[i][0] - arrivals[i - 1][0] > 0.6]
    assert len(gap_at) == 1, "expected one silent gap, then prices again"
    assert all(e["event"] == "price" for _, e in arrivals[gap_at[0]:])
    assert all(e["event"] != "heartbeat" for _, e in arrivals)
    ws.send(json.dumps({"action": "heartbeat"}))
    assert recv_until_event(ws, "heartbeat")["status"] == "ok"
    ws.close()


def test_bad_key_is_refused_with_http_200(feeds: Any) -> None:
    server = feeds(rate=1, api_key="s3cret")
    for key in ("wrong", ""):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(server, key=key)
        assert info.value.status_code == 200
    connect(server, key="s3cret").close()
    connect(server, key="", header=["X-TD-APIKEY: s3cret"]).close()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(server.url.replace("/v1/quotes/price", "/v1/other?apikey=s3cret"),
                                    timeout=5, http_no_proxy=NO_PROXY)
    assert info.value.status_code == 404
    server.inject("bad_key")
    with pytest.raises(websocket.WebSocketBadStatusException):
        connect(server, key="s3cret")
    server.clear("bad_key")
    connect(server, key="s3cret").close()
    assert server.stats().rejected == 3


def test_fourth_connection_with_one_key_evicts_the_oldest(feeds: Any) -> None:
    server = feeds(rate=0, count=0)
    sockets = [connect(server, key="k1") for _ in range(3)]
    other = connect(server, key="k2")
    server.wait_connections(4)
    sockets.append(connect(server, key="k1"))
    code, _ = recv_until_close(sockets[0])
    assert code == CLOSE_EVICTED
    server.wait_for(lambda s: s.open_connections == 4 and s.accepted == 5 and s.evicted == 1)
    for ws in sockets[1:] + [other]:
        ws.send(json.dumps({"action": "heartbeat"}))
        assert recv_json(ws)["event"] == "heartbeat"
        ws.close()


def test_replay_fast_and_at_recorded_pace(feeds: Any, tmp_path: Path) -> None:
    path = tmp_path / "replay.jsonl"
    base = 1_700_000_000
    lines = [
        {"event": "price", "symbol": "AAPL", "timestamp": base, "price": 1.0},
        {"event": "price", "symbol": "QQQX", "timestamp": base, "price": 2.0},
        {"event": "weird", "note": "unknown events are replayed too"},
        {"conn": 1, "event": {"event": "price", "symbol": "AAPL", "timestamp": base + 1, "price": 3.0}},
        {"event": "price", "symbol": "MSFT", "timestamp": base + 1, "price": 4.0},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json at all\n")

    fast = feeds(replay=path, replay_fast=True)
    ws = connect(fast)
    assert subscribe(ws, "AAPL,QQQX")["fails"] is None  # replayed symbols are known
    frames = [ws.recv() for _ in range(5)]
    assert [json.loads(f).get("price") for f in frames[:4]] == [1.0, 2.0, None, 3.0]
    assert frames[4] == "not json at all"
    assert fast.wait_sent(3).sent == 3
    ws.close()

    paced = feeds(replay=path)
    ws = connect(paced)
    subscribe(ws, "MSFT")
    start = time.monotonic()
    first = json.loads(ws.recv())
    assert first["event"] == "weird" and time.monotonic() - start < 0.5
    assert json.loads(ws.recv())["price"] == 4.0
    assert time.monotonic() - start > 0.8  # one recorded second later
    ws.close()


def _feed_command() -> list[str]:
    return [sys.executable, "-m", "shardctl", "feed"]


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 15.0) -> str:
    """Read the process's stderr until a line contains ``needle``; return that line."""
    assert proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if sel.select(deadline - time.monotonic()):
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if needle in line:
                return line
    raise AssertionError(f"{needle!r} not seen; stderr so far: {''.join(seen)}")


def test_cli_serves_and_stops_on_sigterm() -> None:
    env = {**os.environ, "FEED_TEST_KEY": "hush-hush"}
    proc = subprocess.Popen([*_feed_command(), "--port", "0", "--rate", "50", "--symbols", "ABC,XYZ/USD",
                             "--api-key-env", "FEED_TEST_KEY"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = _read_until(proc, "feed listening on")
        url = line.split("feed listening on ", 1)[1].split(",", 1)[0]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/quotes/price")
        ws = websocket.create_connection(url + "?apikey=hush-hush", timeout=5, http_no_proxy=NO_PROXY)
        assert subscribe(ws, "ABC")["success"][0]["symbol"] == "ABC"
        assert recv_json(ws)["symbol"] == "ABC"
        proc.send_signal(signal.SIGTERM)
        code, _ = recv_until_close(ws)
        assert code == 1001
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "feed stopped (SIGTERM)" in err and "hush-hush" not in err + line + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_is_one_line_error(feeds: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FeedError, match="address already in use"):
            FeedServer(port=port).start()
        proc = subprocess.run([*_feed_command(), "--port", str(port)], capture_output=True, text=True,
                              timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("shardctl: error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in proc.stderr


def test_non_loopback_host_is_refused() -> None:
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ValueError, match="loopback"):
            FeedServer(host=host)
    with pytest.raises(ValueError, match="link-local"):
        FeedServer(also_on=["169.254.7.1", "192.168.0.1"])  # the tests' network namespaces: link-local only
    with pytest.raises(ValueError, match="link-local"):
        FeedServer(also_on=["fe80::1"])  # IPv4 only: an IPv6 link-local address needs a zone
    proc = subprocess.run([*_feed_command(), "--host", "0.0.0.0"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--host" in proc.stderr and "Traceback" not in proc.stderr


def test_duration_bounds_the_stream_and_the_connection_stays_open(feeds: Any) -> None:
    server = feeds(rate=100, duration=0.2)
    ws = connect(server)
    subscribe(ws, "AAPL")
    ws.settimeout(0.6)
    prices = 0
    with pytest.raises(websocket.WebSocketTimeoutException):
        while True:
            assert recv_json(ws)["event"] == "price"
            prices += 1
    assert 10 <= prices <= 30 and server.stats().sent == prices
    ws.settimeout(5)
    ws.send(json.dumps({"action": "heartbeat"}))
    assert recv_json(ws)["event"] == "heartbeat"
    ws.close()


def test_clear_ends_a_silence_and_fault_specs_are_checked(feeds: Any) -> None:
    server = feeds(rate=0, count=0)
    ws = connect(server)
    server.wait_connections(1)
    server.inject("silence", seconds=60)
    server.clear("silence")
    ws.send(json.dumps({"action": "heartbeat"}))
    assert recv_json(ws)["event"] == "heartbeat"
    ws.close()
    assert parse_fault_spec("garbage:every=100").after == 100
    assert parse_fault_spec("silence:after=2,seconds=1.5").seconds == 1.5
    for bad in ("explode", "close:after", "close:after=x", "bad_key:after=1", "close:code=999"):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)
    with pytest.raises(ValueError):
        server.inject("close", seconds=3)
