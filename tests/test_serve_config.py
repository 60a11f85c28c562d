import dataclasses

import pytest

from fastret.serve.config import ServeConfig, exposure_warning, is_loopback


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.org", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_a_warning_only_beyond_loopback_without_a_key():
    assert exposure_warning(ServeConfig()) is None
    assert exposure_warning(ServeConfig(host="0.0.0.0", api_key="k")) is None
    warning = exposure_warning(ServeConfig(host="0.0.0.0", port=9000))
    assert "0.0.0.0" in warning and "port 9000" in warning and "FASTRET_API_KEY" in warning


def test_the_api_key_stays_out_of_repr_and_info():
    config = ServeConfig(api_key="s3cret", cors_origins=["https://a.example"])
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.public())
    assert set(config.public()) == {f.name for f in dataclasses.fields(ServeConfig)} - {"api_key"}
    assert config.cors_origins == ("https://a.example",)


@pytest.mark.parametrize("values, error, message", [
    ({"port": -1}, ValueError, r"port must be in \[0, 65535\], got -1"),
    ({"max_wait_ms": 60_000}, ValueError, r"max_wait_ms must be in \[0, 60000\)"),
    ({"max_k": 0}, ValueError, "max_k must be an int >= 1, got 0"),
    ({"max_body_bytes": True}, ValueError, "max_body_bytes must be an int >= 1, got True"),
    ({"api_key": ""}, ValueError, "api_key is empty"),
    ({"cors_origins": "https://a.example"}, TypeError, "cors_origins must be a list of origins"),
    ({"cors_origins": ["a.example"]}, ValueError, r"CORS origin 'a.example': expected scheme://host"),
    ({"search_device": "gpu"}, ValueError, "search_device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"search_device": "cuda", "index": "store", "shards": 2}, ValueError, "searches on its actors' CPUs"),
])
def test_bad_settings_are_refused(values, error, message):
    with pytest.raises(error, match=message):
        ServeConfig(**values)
