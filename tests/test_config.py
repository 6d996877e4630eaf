"""Settings: flags > PROVISIONER_* env > defaults, one frozen object, clear errors for bad values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.config import SETTINGS, Config, settings_table_markdown
from provisioner.errors import ConfigError, ExitCode


def test_defaults_are_the_documented_ones() -> None:
    cfg = Config.from_sources(environ={})
    assert cfg.repo_id == "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
    assert cfg.revision == "main"
    assert cfg.verify == "full"
    assert cfg.token is None
    # the dataclass defaults and the table defaults must agree
    assert cfg == Config()


def test_flag_beats_env_beats_default() -> None:
    env = {"PROVISIONER_REVISION": "v1", "PROVISIONER_MAX_WORKERS": "7", "PROVISIONER_VERIFY": "checksums"}
    cfg = Config.from_sources(args={"revision": "v2"}, environ=env)
    assert cfg.revision == "v2"
    assert cfg.max_workers == 7
    assert cfg.verify == "checksums"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.revision = "x"  # type: ignore[misc]


def test_hf_endpoint_and_token_env() -> None:
    cfg = Config.from_sources(environ={"HF_ENDPOINT": "http://127.0.0.1:9/", "HF_TOKEN": "hf_abcdefghijklmnop"})
    assert cfg.endpoint == "http://127.0.0.1:9"
    assert cfg.token == "hf_abcdefghijklmnop"
    assert "hf_abcdefghijklmnop" not in repr(cfg)
    assert "hf_abcdefghijklmnop" not in str(cfg.redacted())


def test_token_file_wins_and_missing_file_is_a_config_error(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("hf_fromfile12345\n")
    cfg = Config.from_sources(environ={"PROVISIONER_TOKEN_FILE": str(tok), "HF_TOKEN": "hf_fromenv123456"})
    assert cfg.token == "hf_fromfile12345"
    with pytest.raises(ConfigError, match="token-file"):
        Config.from_sources(environ={"PROVISIONER_TOKEN_FILE": str(tmp_path / "absent")})


@pytest.mark.parametrize(("env", "message"), [
    ({"PROVISIONER_VERIFY": "sometimes"}, "verify: must be one of none, checksums, full"),
    ({"PROVISIONER_STALL_TIMEOUT": "-1"}, "stall-timeout"),
    ({"PROVISIONER_STALL_TIMEOUT": "nan"}, "stall-timeout"),
    ({"PROVISIONER_MAX_WORKERS": "0"}, "max-workers"),
    ({"PROVISIONER_MAX_WORKERS": "four"}, "max-workers"),
    ({"PROVISIONER_SPLIT_THRESHOLD": "12 parsecs"}, "split-threshold"),
    ({"PROVISIONER_REPO_ID": "../etc/passwd"}, "repo-id"),
    ({"PROVISIONER_REVISION": "a b"}, "revision"),
    ({"PROVISIONER_LISTEN": "8080"}, "listen"),
    ({"PROVISIONER_ENDPOINT": "ftp://x"}, "endpoint"),
    ({"PROVISIONER_REVERIFY": "maybe"}, "reverify"),
])
def test_bad_values_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_sources(environ=env)


def test_cli_bad_value_exits_with_usage_code(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["run", "--target", str(tmp_path), "--max-workers", "-3", "--listen", "off"])
    assert code == ExitCode.USAGE == 2
    err = capsys.readouterr().err
    assert "max-workers" in err and "Traceback" not in err


def test_sizes_and_patterns() -> None:
    cfg = Config.from_sources(args={"split_threshold": "8MiB", "include": "*.json, *.safetensors"}, environ={})
    assert cfg.split_threshold == 8 << 20
    assert cfg.include == ("*.json", "*.safetensors")
    assert Config.from_sources(args={"exclude": ""}, environ={}).exclude == ()


def test_commit_pinned() -> None:
    assert Config(revision="a" * 40).commit_pinned
    assert not Config(revision="main").commit_pinned


def test_every_setting_has_flag_env_and_field() -> None:
    names = {f.name for f in dataclasses.fields(Config)}
    for s in SETTINGS:
        assert s.attr in names
        assert s.env == "PROVISIONER_" + s.name.upper().replace("-", "_")
        assert s.help


def test_readme_carries_the_settings_table() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert settings_table_markdown() in readme, "README settings table is stale: run scripts/gen_readme_tables.py"


def test_hf_environment_maps_to_our_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "42", "HF_HUB_ETAG_TIMEOUT": "7",
           "REQUESTS_CA_BUNDLE": str(ca)}
    cfg = Config.from_sources(environ=env)
    assert (cfg.offline, cfg.stall_timeout, cfg.api_timeout, cfg.ca_bundle) == (True, 42.0, 7.0, str(ca))
    # PROVISIONER_* beats HF_*, a flag beats both
    env |= {"PROVISIONER_STALL_TIMEOUT": "5", "PROVISIONER_OFFLINE": "false"}
    cfg = Config.from_sources(args={"api_timeout": "3"}, environ=env)
    assert (cfg.offline, cfg.stall_timeout, cfg.api_timeout) == (False, 5.0, 3.0)
    # SSL_CERT_FILE is read before REQUESTS_CA_BUNDLE; an empty HF_* value counts as unset
    assert Config.from_sources(environ={"SSL_CERT_FILE": "", "HF_HUB_OFFLINE": ""}).offline is False
    assert Config.from_sources(environ={"SSL_CERT_FILE": str(ca), "REQUESTS_CA_BUNDLE": "/nope"}).ca_bundle == str(ca)


def test_hf_token_path_after_hf_token(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("hf_from_file\n")
    assert Config.from_sources(environ={"HF_TOKEN_PATH": str(tok)}).token == "hf_from_file"
    assert Config.from_sources(environ={"HF_TOKEN_PATH": str(tok), "HF_TOKEN": "hf_env"}).token == "hf_env"
    # as huggingface_hub does: a token file that does not exist means "no token"
    assert Config.from_sources(environ={"HF_TOKEN_PATH": str(tmp_path / "missing")}).token is None
