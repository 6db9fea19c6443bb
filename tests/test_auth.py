"""Bearer tokens: POST needs one when tokens are set; health stays open; metrics on request."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from support import Logwriters, stop_service

from service.app import create_app, runtime
from service.auth import BearerTokens
from service.settings import Settings, SettingsError

TOKENS = ("s3cret-one", "other-Token_2")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FlaskClient]:
    app = create_app(Settings(dir=tmp_path, tokens=TOKENS))
    writer = runtime(app).writer
    writer.start()
    yield app.test_client()
    writer.stop()


@pytest.mark.unit
@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Basic czNjcmV0LW9uZQ==",
        "s3cret-one",
        "Bearer s3cret-on",
        "Bearer s3cret-one2",
    ],
)
def test_post_without_a_valid_token_is_401_and_writes_nothing(
    client: FlaskClient, tmp_path: Path, header: str | None
):
    headers = {} if header is None else {"Authorization": header}
    answer = client.post("/v1/logs/s?ack=written", data=b"x\n", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="logwriter"'
    assert answer.json == {"error": "missing or invalid bearer token"}
    assert not (tmp_path / "s.log").exists()


@pytest.mark.unit
@pytest.mark.parametrize("token", TOKENS)
def test_any_configured_token_may_write(client: FlaskClient, tmp_path: Path, token: str):
    answer = client.post(
        "/v1/logs/s?ack=written", data=b"x\n", headers={"Authorization": f"bearer  {token} "}
    )
    assert answer.status_code == 200
    assert (tmp_path / "s.log").read_bytes() == b"x\n"


@pytest.mark.unit
def test_health_readiness_and_metrics_stay_open_by_default(client: FlaskClient):
    assert [client.get(path).status_code for path in ("/healthz", "/readyz", "/metrics")] == [
        200,
        200,
        200,
    ]


@pytest.mark.unit
def test_metrics_can_require_a_token(tmp_path: Path):
    app = create_app(Settings(dir=tmp_path, tokens=TOKENS, metrics_auth=True))
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    authorized = client.get("/metrics", headers={"Authorization": f"Bearer {TOKENS[0]}"})
    assert authorized.status_code == 200
    assert client.get("/healthz").status_code == 503  # writer not started here, but not 401


@pytest.mark.unit
def test_no_tokens_means_open(tmp_path: Path):
    assert not BearerTokens([]).required
    app = create_app(Settings(dir=tmp_path))
    runtime(app).writer.start()
    try:
        client = app.test_client()
        bare = client.post("/v1/logs/s?ack=written", data=b"no header\n")
        assert (bare.status_code, bare.json) == (200, {"accepted": 1})
        ignored = {"Authorization": "Bearer anything"}  # nothing to match, nothing checked
        anything = client.post("/v1/logs/s?ack=written", data=b"any\n", headers=ignored)
        assert anything.status_code == 200
        assert client.get("/metrics").status_code == 200
    finally:
        runtime(app).writer.stop()
    assert (tmp_path / "s.log").read_bytes() == b"no header\nany\n"


@pytest.mark.unit
def test_a_configured_token_is_allowed_with_the_bearer_scheme():
    assert BearerTokens(["a"]).allows("Bearer a")


@pytest.mark.unit
def test_tokens_from_env_and_file(tmp_path: Path):
    token_file = tmp_path / "tokens"
    token_file.write_text("# ops team\nfrom-file\n\n  spaced  \n")
    settings = Settings.from_env(
        {"LOGWRITER_TOKENS": "a, b,,", "LOGWRITER_TOKENS_FILE": str(token_file)}
    )
    assert settings.tokens == ("a", "b", "from-file", "spaced")
    assert "from-file" not in repr(settings)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LOGWRITER_TOKENS_FILE": "/nonexistent/tokens"}, "cannot read"),
        ({"LOGWRITER_TOKENS": "has space"}, "printable ASCII without spaces"),
        ({"LOGWRITER_TOKENS": "caf\u00e9"}, "printable ASCII without spaces"),
        ({"LOGWRITER_METRICS_AUTH": "true"}, "needs tokens"),
        ({"LOGWRITER_METRICS_AUTH": "maybe", "LOGWRITER_TOKENS": "a"}, "true or false"),
    ],
)
def test_bad_token_settings_are_named(env: dict[str, str], words: str):
    with pytest.raises(SettingsError, match=words):
        Settings.from_env(env)


@pytest.mark.service
def test_tokens_never_reach_the_log(start_logwriter: Logwriters):
    service = start_logwriter(
        env={"LOGWRITER_TOKENS": "tok-visible-nowhere", "GUNICORN_CMD_ARGS": "--access-logfile -"}
    )
    good = service.request(
        "POST", "/v1/logs/a", b"x\n", {"Authorization": "Bearer tok-visible-nowhere"}
    )
    bad = service.request("POST", "/v1/logs/a", b"x\n", {"Authorization": "Bearer tok-guess"})
    assert (good.status, bad.status) == (202, 401)
    stop_service(service)  # its log complete
    log = service.log_text()
    assert '"POST /v1/logs/a HTTP/1.1" 202' in log  # the access log is on
    assert "tok-visible-nowhere" not in log and "tok-guess" not in log
