from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import (
    AggregateSettings,
    IngestSettings,
    PublishSettings,
    load_settings,
    parse_shard_ids,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("STREAMER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("STREAMER_ENV_FILE", "/nonexistent.env")


def test_defaults_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_BYBIT_SYMBOLS", "BTCUSDT, ETHUSDT,BTCUSDT")
    monkeypatch.setenv("STREAMER_KLINE_INTERVALS", "1m,1s")
    settings = load_settings(IngestSettings)
    assert settings.bybit_symbols == ["BTCUSDT", "ETHUSDT"]
    assert [i.label for i in settings.kline_intervals] == ["1s", "1m"]
    # the default is Bybit's public stream for the category (never connected to by a test)
    assert settings.ws_url.startswith("wss://") and settings.ws_url.endswith("/v5/public/linear")
    assert settings.fixed_shards() is None


def test_every_problem_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_BYBIT_SYMBOLS", "btcusdt")
    monkeypatch.setenv("STREAMER_KLINE_INTERVALS", "1x")
    monkeypatch.setenv("STREAMER_SHARDS", "0")
    monkeypatch.setenv("STREAMER_KLINE_INTERVAL", "1m")
    with pytest.raises(ConfigError) as err:
        load_settings(IngestSettings)
    lines = str(err.value).splitlines()
    assert (
        lines[0]
        == "STREAMER_KLINE_INTERVAL: unknown setting; did you mean STREAMER_KLINE_INTERVALS?"
    )
    assert any(line.startswith("STREAMER_SHARDS: ") for line in lines)
    assert any(line.startswith("STREAMER_KLINE_INTERVALS: interval '1x'") for line in lines)
    assert any("STREAMER_BYBIT_SYMBOLS: not Bybit symbols: btcusdt" in line for line in lines)


def test_klines_mode_allows_only_bybit_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_BYBIT_SYMBOLS", "BTCUSDT")
    monkeypatch.setenv("STREAMER_KLINES_MODE", "true")
    monkeypatch.setenv("STREAMER_KLINE_INTERVALS", "1m,15s,7m")
    with pytest.raises(ConfigError) as err:
        load_settings(IngestSettings)
    assert "STREAMER_KLINE_INTERVALS: 15s, 7m not available in klines mode" in str(err.value)
    assert "1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d 1w 1M" in str(err.value)


def test_symbols_required_unless_loading_all(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="STREAMER_BYBIT_SYMBOLS is empty"):
        load_settings(IngestSettings)
    monkeypatch.setenv("STREAMER_BYBIT_LOAD_ALL_SYMBOLS", "true")
    assert load_settings(IngestSettings).bybit_load_all_symbols


def test_publish_and_aggregate_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMER_ENABLED_CONSUMERS", "console,redis")
    (tmp_path / "cert.pem").write_text("not checked here")
    monkeypatch.setenv("STREAMER_WEBSOCKET_TLS_CERT", str(tmp_path / "cert.pem"))
    with pytest.raises(ConfigError, match="go together"):
        load_settings(PublishSettings)
    monkeypatch.delenv("STREAMER_WEBSOCKET_TLS_CERT")
    assert load_settings(PublishSettings).enabled_consumers == ["console", "redis"]
    monkeypatch.setenv("STREAMER_KLINE_OPEN", "last")
    with pytest.raises(ConfigError, match=r"STREAMER_KLINE_OPEN: .*previous_close.*first_trade"):
        load_settings(AggregateSettings)


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    env_file = Path(str(tmp_path)) / "x.env"
    env_file.write_text("STREAMER_SHARDS=8\nSTREAMER_TYPO=1\n")
    monkeypatch.setenv("STREAMER_ENV_FILE", str(env_file))
    with pytest.raises(ConfigError, match="STREAMER_TYPO: unknown setting"):
        load_settings(AggregateSettings)
    env_file.write_text("STREAMER_SHARDS=8\n")
    assert load_settings(AggregateSettings).shards == 8


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("auto", None), ("1,3", (1, 3)), ("0/2", (0, 2, 4, 6)), ("1/2", (1, 3, 5, 7))],
)
def test_shard_ids(text: str, expected: tuple[int, ...] | None) -> None:
    assert parse_shard_ids(text, 8) == expected


@pytest.mark.parametrize("text", ["8", "x", "2/2", "1/0", "-1"])
def test_bad_shard_ids(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_shard_ids(text, 8)


def test_env_example_lists_exactly_the_known_settings() -> None:
    from pathlib import Path

    from common.settings import known_variables

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    listed = {line.split("=", 1)[0] for line in text.splitlines() if line.startswith("STREAMER_")}
    assert listed == set(known_variables()) - {"STREAMER_ENV_FILE"}


def test_intervals_of_one_length_are_different_and_spellings_are_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMER_KLINE_INTERVALS", "1M,30d,1w,7d,60m")
    labels = [i.label for i in load_settings(AggregateSettings).kline_intervals]
    assert labels == ["1h", "7d", "1w", "30d", "1M"]
    monkeypatch.setenv("STREAMER_KLINE_INTERVALS", "60m,1h")
    with pytest.raises(ConfigError) as err:
        load_settings(AggregateSettings)
    assert str(err.value) == (
        "STREAMER_KLINE_INTERVALS: interval '1h' repeats '60m' (got '60m,1h')"
    )


@pytest.mark.parametrize(
    ("text", "port"), [("9100", 9100), ("9100+2", 9102), ("9100+3+1", 9104), ("0+5", 0)]
)
def test_metrics_port_base_plus_offsets(
    monkeypatch: pytest.MonkeyPatch, text: str, port: int
) -> None:
    monkeypatch.setenv("STREAMER_METRICS_PORT", text)
    assert load_settings(AggregateSettings).metrics_port == port


def test_metrics_port_bad_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_METRICS_PORT", "9100+x")
    with pytest.raises(ConfigError, match="STREAMER_METRICS_PORT: '9100\\+x': use a port"):
        load_settings(AggregateSettings)


KUBERNETES_NAMES = {
    "STREAMER_SERVICE_HOST": "10.0.0.7",
    "STREAMER_SERVICE_PORT": "9500",
    "STREAMER_SERVICE_PORT_FEED": "9500",
    "STREAMER_PORT": "tcp://10.0.0.7:9500",
    "STREAMER_PORT_9500_TCP": "tcp://10.0.0.7:9500",
    "STREAMER_PORT_9500_TCP_PROTO": "tcp",
    "STREAMER_PORT_9500_TCP_PORT": "9500",
    "STREAMER_PORT_9500_TCP_ADDR": "10.0.0.7",
}


def test_names_kubernetes_injects_are_ignored_with_a_debug_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from common.logs import setup_logging
    from common.settings import LogFormat, take_notes

    take_notes()
    for name, value in KUBERNETES_NAMES.items():
        monkeypatch.setenv(name, value)
    assert load_settings(PublishSettings).websocket_port == 9500
    setup_logging("DEBUG", LogFormat.TEXT, "test")  # emits the notes kept until logging is up
    try:
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    for name in KUBERNETES_NAMES:
        assert f"DEBUG test common.settings: {name}: ignored (a name Kubernetes injects" in err
    # a real typo next to them is still refused
    monkeypatch.setenv("STREAMER_WEBSOCKET_PROT", "9501")
    with pytest.raises(ConfigError, match="STREAMER_WEBSOCKET_PROT: unknown setting; did you mean"):
        load_settings(PublishSettings)


@pytest.mark.parametrize(
    "symbol", ["BTCUSDT", "BTC-26DEC25", "BTCUSDT-26DEC25", "BTC-26DEC25-100000-C", "1000PEPEUSDT"]
)
def test_every_bybit_symbol_shape_is_accepted(monkeypatch: pytest.MonkeyPatch, symbol: str) -> None:
    monkeypatch.setenv("STREAMER_BYBIT_SYMBOLS", f"ETHUSDT,{symbol}")
    assert load_settings(IngestSettings).bybit_symbols == ["ETHUSDT", symbol]


@pytest.mark.parametrize("symbol", ["btcusdt", "BTC USDT", "-BTC", "B"])
def test_non_symbols_are_refused(monkeypatch: pytest.MonkeyPatch, symbol: str) -> None:
    monkeypatch.setenv("STREAMER_BYBIT_SYMBOLS", symbol)
    with pytest.raises(ConfigError, match="not Bybit symbols"):
        load_settings(IngestSettings)
